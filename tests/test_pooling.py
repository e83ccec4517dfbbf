"""z(x) and the prompted classifier read one feature, whatever the backbone's pooling.

z(x) follows the backbone's own pooling (``forward_head(pre_logits=True)``); the prompted
path must pool the same way, over the same tokens (never the prompts), or PEP-FedPT would
match queries against prototypes of a different feature than the one it classifies.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from pep_fedpt.config import ConfigError
from pep_fedpt.models import PromptedViT
from pep_fedpt.models.prompted_vit import check_pooling

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 2}


def tiny_vit(**kwargs: object) -> VisionTransformer:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY, **kwargs)
    return model.requires_grad_(False).eval()


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_without_prompts_both_paths_give_the_backbones_own_feature(pool: str) -> None:
    backbone = tiny_vit(global_pool=pool)
    model = PromptedViT(backbone, 5, shared_length=0, ccmp_blocks=())
    images = torch.randn(3, 3, 16, 16)
    own = backbone.forward_head(backbone.forward_features(images), pre_logits=True)
    torch.testing.assert_close(model.query_features(images), own)
    torch.testing.assert_close(model.forward_features(images, torch.ones(3, 5) / 5), own)


def test_average_pooling_pools_the_image_patches_and_never_the_prompts() -> None:
    backbone = tiny_vit(global_pool="avg")
    model = PromptedViT(backbone, 4, shared_length=3, class_length=2, ccmp_blocks=(0, 1))
    images, weights = torch.randn(2, 3, 16, 16), torch.softmax(torch.randn(2, 4), -1)
    seen: list[torch.Tensor] = []
    hook = backbone.norm.register_forward_hook(lambda _m, _a, out: seen.append(out))
    feature = model.forward_features(images, weights)
    hook.remove()
    (tokens,) = seen
    patches = backbone.patch_embed.num_patches
    assert tokens.shape[1] == 1 + 3 + 2 + patches  # [CLS], shared, mixed, patches
    expected = backbone.fc_norm(tokens[:, -patches:].mean(dim=1))
    torch.testing.assert_close(feature, expected)


def test_the_token_path_reads_the_normed_class_token() -> None:
    backbone = tiny_vit()
    model = PromptedViT(backbone, 4, shared_length=3, class_length=2, ccmp_blocks=(1,))
    seen: list[torch.Tensor] = []
    hook = backbone.norm.register_forward_hook(lambda _m, _a, out: seen.append(out))
    feature = model.forward_features(torch.randn(2, 3, 16, 16), torch.ones(2, 4) / 4)
    hook.remove()
    torch.testing.assert_close(feature, backbone.fc_norm(seen[0][:, 0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"global_pool": "map"}, r"global_pool = 'map'; z\(x\) and the prompted classifier"),
        ({"global_pool": ""}, r"global_pool = ''"),
        ({"global_pool": "avg", "pool_include_prefix": True}, r"pool_include_prefix"),
    ],
)
def test_a_pooling_the_prompted_path_cannot_share_is_refused(kwargs: dict, match: str) -> None:
    backbone = tiny_vit(**kwargs)
    with pytest.raises(ConfigError, match=match):
        PromptedViT(backbone, 3)
    with pytest.raises(ConfigError, match=r"model.name = 'eva'"):
        check_pooling(backbone, "eva")
