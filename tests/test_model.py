"""The prompted ViT: timm's blocks used as they are, prompts where the design puts them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from pep_fedpt.config import ConfigError, ModelConfig
from pep_fedpt.models import PromptedViT, create_backbone, vpt_init_bound

TINY = ModelConfig(
    pretrained="random", img_size=16, patch_size=4, embed_dim=64, depth=3, num_heads=2
)


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(TINY, seed=0)


def test_backbone_is_frozen_and_seeded(backbone) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    again = create_backbone(TINY, seed=0)
    other = create_backbone(TINY, seed=1)
    assert torch.equal(backbone.pos_embed, again.pos_embed)
    assert not torch.equal(backbone.pos_embed, other.pos_embed)


def test_unknown_model_and_missing_checkpoint_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        create_backbone(ModelConfig(name="vit_does_not_exist"))
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        create_backbone(ModelConfig(name="vit_tiny_patch16_224", pretrained="/nonexistent/w.pth"))


def test_local_checkpoint_is_loaded(backbone, tmp_path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), path)
    loaded = create_backbone(ModelConfig(**{**TINY.__dict__, "pretrained": str(path)}), seed=123)
    assert torch.equal(loaded.pos_embed, backbone.pos_embed)


def test_without_prompts_the_feature_is_the_backbones_own(backbone) -> None:
    model = PromptedViT(backbone, 5, shared_length=0, ccmp_blocks=())
    x = torch.randn(2, 3, 16, 16)
    weights = torch.ones(2, 5) / 5
    assert torch.allclose(model.forward_features(x, weights), model.query_features(x), atol=1e-5)


def test_token_layout_and_count(backbone) -> None:
    model = PromptedViT(backbone, 4, shared_length=3, class_length=2, ccmp_blocks=(1, 2))
    lengths = []
    hooks = [
        b.register_forward_pre_hook(lambda _m, a: lengths.append(a[0].shape[1]))
        for b in backbone.blocks
    ]
    model(torch.randn(2, 3, 16, 16), torch.ones(2, 4) / 4)
    for h in hooks:
        h.remove()
    patches = (16 // 4) ** 2
    # block 1: CLS + shared; blocks 2 and 3: + the mixed-prompt slot (inserted once, overwritten)
    assert lengths == [1 + 3 + patches, 1 + 3 + 2 + patches, 1 + 3 + 2 + patches]


def test_one_hot_weights_select_that_class_prompt(backbone) -> None:
    """CCMP with w = e_c equals VPT-deep whose deep prompts are P_c."""
    torch.manual_seed(0)
    ccmp = PromptedViT(
        backbone, 3, shared_length=2, class_length=1, ccmp_blocks=(1, 2), head_init="normal"
    )
    deep = PromptedViT(
        backbone, 3, shared_length=2, class_length=1, ccmp_blocks=(1, 2), num_prompt_sets=1
    )
    with torch.no_grad():
        deep.shared_prompt.copy_(ccmp.shared_prompt)
        deep.class_prompts.copy_(ccmp.class_prompts[:, 2:3])
        deep.head.load_state_dict(ccmp.head.state_dict())
    x = torch.randn(2, 3, 16, 16)
    out_ccmp = ccmp(x, F.one_hot(torch.tensor([2, 2]), 3).float())
    out_deep = deep(x, torch.ones(2, 1))
    assert torch.allclose(out_ccmp, out_deep, atol=1e-5)


def test_only_prompts_and_head_train(backbone) -> None:
    # A zero head passes no gradient to the prompts on the first step: start from a normal one.
    model = PromptedViT(backbone, 3, shared_length=2, ccmp_blocks=(1,), head_init="normal")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"shared_prompt", "class_prompts", "head.weight", "head.bias"}
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = F.cross_entropy(
        model(torch.randn(4, 3, 16, 16), torch.ones(4, 3) / 3), torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    optimizer.step()
    assert model.class_prompts.grad is not None and model.class_prompts.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert not backbone.training  # stays in eval mode under model.train()


def test_prompt_init_follows_vpt_bound(backbone) -> None:
    bound = vpt_init_bound(4, 64)
    assert bound == pytest.approx((6 / (3 * 16 + 64)) ** 0.5)
    model = PromptedViT(backbone, 3, shared_length=50, ccmp_blocks=(1, 2))
    assert model.shared_prompt.abs().max() <= bound
    assert model.class_prompts.abs().max() <= bound
    assert torch.count_nonzero(model.head.weight) == 0  # zero-initialised head (default)


@pytest.mark.integration
def test_hub_weights_that_cannot_be_fetched_fail_with_the_way_out() -> None:
    """Offline, 'hub' names the key and the alternatives instead of a bare hub error."""
    code = (
        "from pep_fedpt.config import ModelConfig\n"
        "from pep_fedpt.models import create_backbone\n"
        "create_backbone(ModelConfig(pretrained='hub', img_size=16, patch_size=4,"
        " embed_dim=64, depth=1, num_heads=2))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode != 0
    assert "ConfigError: model.pretrained = 'hub': timm could not fetch" in run.stderr
    assert "'local:0-4'" in run.stderr
