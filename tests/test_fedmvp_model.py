"""FedMVP's model side: attribute sentences, the text bank and its cache, the PromptFormer,
the prompted encoder, logits, the consistency loss, adapters, local training, the wire format.

Everything runs on the tiny seeded open_clip CLIP (32 px, width 64) on the CPU.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from PIL import Image

from pep_fedpt.config import ConfigError, FedMVPConfig, RunConfig, TrainConfig
from pep_fedpt.data.images import ImageFiles
from pep_fedpt.feature_cache import feature_store
from pep_fedpt.fedmvp import (
    FedMVPModel,
    PromptFormer,
    TextBank,
    build_clip,
    build_text_bank,
    evaluate_local,
    flipped_features,
    load_attributes,
    sentences,
    train_local,
)
from pep_fedpt.fedmvp.attributes import AttributesError, connector
from pep_fedpt.fedmvp.clip import (
    ClipBundle,
    ClipWeightsError,
    clip_image_spec,
    uses_quick_gelu,
    wants_quick_gelu,
)

CPU = torch.device("cpu")
ATTRIBUTES = next(
    (p / "shared" / "fedmvp-attributes" for p in Path(__file__).resolve().parents
     if (p / "shared" / "fedmvp-attributes").is_dir()),
    None,
)  # fmt: skip


@pytest.fixture(scope="module")
def bundle() -> ClipBundle:
    return build_clip(FedMVPConfig(), seed=0, device=CPU)


@pytest.fixture
def model(bundle: ClipBundle) -> FedMVPModel:
    return FedMVPModel(bundle, FedMVPConfig(), seed=0)


def _phrases_file(folder: Path, table: dict[str, list[str]], dataset: str = "toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset}.json"
    path.write_text(json.dumps(table))
    return path


TOY = {
    "cat": ["pointed ears", "a long tail", "often found indoors"],
    "dog": ["floppy ears", "used for herding"],
}


@pytest.fixture
def bank(bundle: ClipBundle, tmp_path: Path) -> TextBank:
    _phrases_file(tmp_path / "attrs", TOY)
    attrs = load_attributes(tmp_path / "attrs", "toy", ["cat", "dog"], plain_template=False)
    return build_text_bank(bundle, ["cat", "dog"], attrs, FedMVPConfig(), tmp_path / "cache")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- sentences and attributes


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("spotted fur", "which has"),
        ("curved tusks", "which has"),
        ("antlers on the head", "which has"),  # a letter 'a' is not the article 'a'
        ("a large hump", "which is"),
        ("an oval face", "which is"),
        ("used for baking", "which is"),
        ("associated with fishing rods", "which is"),
        ("positioned near intersections", "which is"),
        ("often found in coral reefs", "which"),
        ("has removable doors", "which"),
        ("provides natural, rich color", "which"),
    ],
)
def test_the_connector_is_chosen_by_the_phrases_first_words(phrase: str, expected: str) -> None:
    assert connector(phrase) == expected


def test_sentences_follow_the_design_template_with_prefix_and_suffix() -> None:
    assert sentences("dog", ["spotted fur", "a loud bark"]) == [
        "a photo of a dog, which has spotted fur",
        "a photo of a dog, which is a loud bark",
    ]
    framed = sentences("Alarm_Clock", ["round face"], prefix="clipart:", suffix="a household item")
    assert framed == ["clipart: a photo of a Alarm Clock, a household item, which has round face"]
    assert sentences("dog", [], prefix=" sketch: ", suffix="a type of pet,") == [
        "sketch: a photo of a dog, a type of pet."
    ]
    assert sentences("dog", []) == ["a photo of a dog."]


def test_a_class_without_phrases_is_refused_naming_the_class_and_the_file(tmp_path: Path) -> None:
    path = _phrases_file(tmp_path, {"cat": ["whiskers"], "Dogs": ["fur"]})
    with pytest.raises(AttributesError) as info:
        load_attributes(tmp_path, "toy", ["cat", "dog"], plain_template=False)
    assert "'dog'" in str(info.value)
    assert str(path) in str(info.value)
    assert "dogs" in str(info.value)  # the close key in the file, as a hint


def test_a_missing_attribute_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(AttributesError, match=r"pets\.json.*plain-template"):
        load_attributes(tmp_path, "pets", ["cat"], plain_template=False)
    with pytest.raises(AttributesError, match="attributes-dir is empty"):
        load_attributes("", "pets", ["cat"], plain_template=False)


def test_the_plain_template_fills_in_for_classes_without_phrases(tmp_path: Path) -> None:
    _phrases_file(tmp_path, {"cat": ["whiskers"]})
    attrs = load_attributes(tmp_path, "toy", ["cat", "dog"], plain_template=True)
    assert attrs == {"cat": ["whiskers"], "dog": []}
    assert sentences("dog", attrs["dog"]) == ["a photo of a dog."]
    assert load_attributes(tmp_path, "other", ["cat"], plain_template=True) == {"cat": []}


def test_class_names_match_across_case_underscores_and_spaces(tmp_path: Path) -> None:
    _phrases_file(tmp_path, {"The Eiffel Tower": ["iron lattice"], "alarm  clock": ["bell"]})
    attrs = load_attributes(tmp_path, "toy", ["The_Eiffel_Tower", "Alarm_Clock"], False)
    assert attrs == {"The_Eiffel_Tower": ["iron lattice"], "Alarm_Clock": ["bell"]}


def test_two_file_keys_equal_after_normalisation_are_refused(tmp_path: Path) -> None:
    _phrases_file(tmp_path, {"Alarm_Clock": ["bell"], "alarm clock": ["hands"]})
    with pytest.raises(AttributesError, match="same name after normalisation"):
        load_attributes(tmp_path, "toy", ["alarm clock"], False)


def test_phrases_that_are_not_strings_are_refused(tmp_path: Path) -> None:
    _phrases_file(tmp_path, {"cat": "whiskers"})
    with pytest.raises(AttributesError, match=r"'cat'.*list of non-empty strings"):
        load_attributes(tmp_path, "toy", ["cat"], False)


@pytest.mark.skipif(ATTRIBUTES is None, reason="the shared attribute files are not here")
def test_the_published_attribute_files_load_for_their_folder_style_class_names() -> None:
    assert ATTRIBUTES is not None
    attrs = load_attributes(ATTRIBUTES, "domainnet", ["The_Eiffel_Tower", "alarm_clock"], False)
    assert [len(v) for v in attrs.values()] == [10, 10]
    office = load_attributes(ATTRIBUTES, "officehome", ["alarm_clock"], False)
    assert len(office["alarm_clock"]) == 10


# ---------------------------------------------------------------- CLIP


def test_the_tiny_clip_is_seeded_frozen_and_uses_the_real_tokenizer(bundle: ClipBundle) -> None:
    again = build_clip(FedMVPConfig(), seed=0, device=CPU)
    other = build_clip(FedMVPConfig(), seed=1, device=CPU)
    first = bundle.model.visual.conv1.weight
    assert torch.equal(first, again.model.visual.conv1.weight)
    assert not torch.equal(first, other.model.visual.conv1.weight)
    assert bundle.fingerprint == again.fingerprint != other.fingerprint
    assert not any(p.requires_grad for p in bundle.model.parameters())
    assert not bundle.model.training
    tokens = bundle.tokenizer(["a photo of a dog"])
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == 49406  # CLIP's start-of-text token: the real vocabulary
    assert (bundle.spec.size, bundle.spec.mean) == (32, open_clip.OPENAI_DATASET_MEAN)


def test_a_checkpoint_path_loads_those_weights(bundle: ClipBundle, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(bundle.model.state_dict(), path)
    loaded = build_clip(FedMVPConfig(clip_pretrained=str(path)), seed=5, device=CPU)
    assert torch.equal(loaded.model.visual.proj, bundle.model.visual.proj)
    assert str(path) in loaded.fingerprint
    with pytest.raises(ClipWeightsError, match="no such checkpoint"):
        build_clip(FedMVPConfig(clip_pretrained=str(tmp_path / "none.pt")), 0, CPU)


def test_unavailable_openai_weights_fail_with_the_alternatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ClipWeightsError, match="'tiny' has no 'openai' weights"):
        build_clip(FedMVPConfig(clip_pretrained="openai"), 0, CPU)

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("Name or service not known")

    # open_clip's own download step, as it fails without network (fast here)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    cfg = FedMVPConfig(clip_model="ViT-B-16", clip_pretrained="openai")
    with pytest.raises(ClipWeightsError, match=r"ViT-B-16/openai.*/abs/path.*'random'"):
        build_clip(cfg, 0, CPU)
    with pytest.raises(ClipWeightsError, match="not an open_clip model"):
        build_clip(FedMVPConfig(clip_model="ViT-Q-99"), 0, CPU)


def test_the_activation_follows_the_key_and_keys_the_fingerprint(tmp_path: Path) -> None:
    gelu = build_clip(FedMVPConfig(), 0, CPU)
    quick = build_clip(FedMVPConfig(clip_activation="quick-gelu"), 0, CPU)
    assert (uses_quick_gelu(gelu.model), uses_quick_gelu(quick.model)) == (False, True)
    assert quick.quick_gelu and "quick_gelu" in quick.fingerprint
    assert gelu.fingerprint != quick.fingerprint  # no cached feature crosses activations
    # The same weights run with the other activation give other features.
    torch.save(gelu.model.state_dict(), tmp_path / "tiny.pt")
    loaded = build_clip(
        FedMVPConfig(clip_pretrained=str(tmp_path / "tiny.pt"), clip_activation="quick-gelu"),
        0,
        CPU,
    )
    tokens = gelu.tokenizer(["a photo of a dog"])
    assert not torch.allclose(gelu.model.encode_text(tokens), loaded.model.encode_text(tokens))


def test_auto_reads_the_tag_and_refuses_to_guess_for_a_checkpoint_path(tmp_path: Path) -> None:
    assert wants_quick_gelu(FedMVPConfig(clip_model="ViT-B-16", clip_pretrained="openai"))
    assert not wants_quick_gelu(FedMVPConfig(clip_model="ViT-B-16", clip_pretrained="random"))
    assert wants_quick_gelu(FedMVPConfig(clip_model="ViT-B-16-quickgelu"))
    path = str(tmp_path / "ViT-B-16.pt")
    with pytest.raises(ClipWeightsError, match=r"checkpoint file.*clip-activation = 'quick-gelu'"):
        wants_quick_gelu(FedMVPConfig(clip_model="ViT-B-16", clip_pretrained=path))
    explicit = FedMVPConfig(clip_model="ViT-B-16", clip_pretrained=path, clip_activation="gelu")
    assert not wants_quick_gelu(explicit)
    with pytest.raises(ConfigError, match=r"clip-activation = 'relu'.*auto, quick-gelu, gelu"):
        FedMVPConfig(clip_activation="relu")


@pytest.mark.integration
def test_vit_b_16_for_the_openai_tag_builds_quick_gelu_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The paper's backbone through open_clip's own tag path, its download replaced by a
    local checkpoint of random weights: the blocks must be QuickGELU, as the tag says."""
    path = tmp_path / "ViT-B-16-openai.pt"
    random_weights = open_clip.create_model("ViT-B-16").state_dict()
    torch.save({k: v.half() for k, v in random_weights.items()}, path)
    asked: list[str] = []

    def local_file(cfg: dict, *args: object, **kwargs: object) -> str:
        asked.append(str(cfg.get("hf_hub") or cfg.get("url")))
        return str(path)

    monkeypatch.setattr(open_clip.factory, "download_pretrained", local_file)
    bundle = build_clip(FedMVPConfig(clip_model="ViT-B-16", clip_pretrained="openai"), 0, CPU)
    assert asked and "openai" in asked[0]
    activations = {type(block.mlp.gelu) for block in bundle.model.visual.transformer.resblocks}
    assert activations == {QuickGELU}
    assert {type(b.mlp.gelu) for b in bundle.model.transformer.resblocks} == {QuickGELU}
    assert bundle.quick_gelu and "quick_gelu" in bundle.fingerprint
    assert torch.equal(
        bundle.model.visual.proj, random_weights["visual.proj"].half().float()
    )  # the local file's weights were loaded


CIFAR10_ARCHIVE = next(
    (p / "shared" / "datasets" / "cifar10-jpeg.tar.gz" for p in Path(__file__).resolve().parents
     if (p / "shared" / "datasets" / "cifar10-jpeg.tar.gz").is_file()),
    None,
)  # fmt: skip


def _real_jpeg() -> bytes:
    """The first JPEG of the shared CIFAR-10 archive, read in place (nothing extracted)."""
    assert CIFAR10_ARCHIVE is not None
    with tarfile.open(CIFAR10_ARCHIVE) as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".jpg"):
                handle = archive.extractfile(member)
                assert handle is not None
                return handle.read()
    raise AssertionError(f"no JPEG in {CIFAR10_ARCHIVE}")


@pytest.mark.skipif(CIFAR10_ARCHIVE is None, reason="the shared CIFAR-10 archive is not here")
def test_clip_images_are_pixel_equal_to_open_clips_own_transform(tmp_path: Path) -> None:
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16")
    spec = clip_image_spec(model)
    assert (spec.size, spec.resize_mode, spec.interpolation) == (224, "shortest", "bicubic")
    square = tmp_path / "cifar.jpg"
    square.write_bytes(_real_jpeg())
    # A wide image of the same photo, so that the short-side resize and the centre crop act.
    photo = Image.open(square).convert("RGB")
    canvas = Image.new("RGB", (3 * photo.width, photo.height), (10, 200, 30))
    canvas.paste(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0, 0))
    canvas.paste(photo, (photo.width, 0))
    wide = tmp_path / "wide.png"
    canvas.save(wide)
    files = ImageFiles([square, wide], [0, 1], spec)
    for index, path in enumerate((square, wide)):
        with Image.open(path) as image:
            expected = preprocess(image)
        assert expected.shape == (3, 224, 224)
        assert torch.equal(files[index][0], expected)
    # Squashing the wide image (the ViT methods' input) would give other pixels.
    squashed = ImageFiles([wide], [1], replace(spec, resize_mode="", interpolation=""))
    assert not torch.allclose(squashed[0][0], files[1][0])
    assert build_clip(FedMVPConfig(), 0, CPU).spec.resize_mode == "shortest"  # tiny too


# ---------------------------------------------------------------- the text bank and its cache


def _count_encodes(bundle: ClipBundle, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = bundle.model.encode_text

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(bundle.model, "encode_text", counting)
    return calls


def test_the_text_bank_holds_normalised_features_and_each_sentences_class(
    bank: TextBank, bundle: ClipBundle
) -> None:
    assert bank.features.shape == (5, bundle.text_dim)
    assert bank.class_index.tolist() == [0, 0, 0, 1, 1]
    assert bank.num_classes == 2
    assert torch.allclose(bank.features.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert bank.sentences[4] == "a photo of a dog, which is used for herding"
    direct = F.normalize(bundle.model.encode_text(bundle.tokenizer(bank.sentences)), dim=-1)
    assert torch.allclose(bank.features, direct, atol=1e-5)


def test_the_text_cache_is_reused_and_invalidated_when_a_sentence_changes(
    bundle: ClipBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_encodes(bundle, monkeypatch)
    _phrases_file(tmp_path / "attrs", TOY)
    attrs = load_attributes(tmp_path / "attrs", "toy", ["cat", "dog"], False)
    cache, cfg = tmp_path / "cache", FedMVPConfig()
    first = build_text_bank(bundle, ["cat", "dog"], attrs, cfg, cache)
    assert calls[0] == 1
    feature_store.cache_clear()  # a fresh process: only the disk remains
    second = build_text_bank(bundle, ["cat", "dog"], attrs, cfg, cache)
    assert calls[0] == 1  # read from the node's disk, not encoded
    assert torch.equal(first.features, second.features)
    build_text_bank(
        bundle,
        ["cat", "dog"],
        attrs,
        replace(cfg, templates="design", prompt_suffix="a pet"),
        cache,
    )
    assert calls[0] == 2  # other sentences: encoded again
    changed = {"cat": ["pointed ears", "a long tail", "often found outdoors"], "dog": TOY["dog"]}
    build_text_bank(bundle, ["cat", "dog"], changed, cfg, cache)
    assert calls[0] == 3  # one phrase changed: encoded again


def test_a_damaged_text_cache_file_is_recomputed(
    bundle: ClipBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_encodes(bundle, monkeypatch)
    attrs = {"cat": ["whiskers"]}
    build_text_bank(bundle, ["cat"], attrs, FedMVPConfig(), tmp_path)
    for path in tmp_path.glob("*.pt"):
        path.write_bytes(b"not a tensor")
    feature_store.cache_clear()
    again = build_text_bank(bundle, ["cat"], attrs, FedMVPConfig(), tmp_path)
    assert calls[0] == 2
    assert again.features.shape == (1, bundle.text_dim)


# ---------------------------------------------------------------- the PromptFormer


def _hooked_inputs(module: torch.nn.Module) -> tuple[list[torch.Tensor], Callable[[], None]]:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return seen, handle.remove


def test_the_promptformer_makes_m_tokens_and_projects_the_bank_once() -> None:
    torch.manual_seed(0)
    former = PromptFormer(text_dim=16, width=32, num_heads=4, num_prompts=4, adapter_rank=2)
    seen, remove = _hooked_inputs(former.proj)
    prompts = former(torch.randn(3, 16, 32), torch.randn(10, 16))
    remove()
    assert prompts.shape == (3, 4, 32)
    assert [tuple(x.shape) for x in seen] == [(10, 16)]  # once, the bank alone: no batch axis
    with pytest.raises(ValueError, match="num-prompts = 4 exceeds the 3 patches"):
        former(torch.randn(2, 3, 32), torch.randn(10, 16))


def test_the_promptformer_computes_the_designs_cross_attention_by_hand() -> None:
    torch.manual_seed(0)
    former = PromptFormer(text_dim=6, width=8, num_heads=2, num_prompts=2, adapter_rank=2)
    patches, bank = torch.randn(2, 4, 8), torch.randn(5, 6)
    a = former.proj(bank)
    att = former.attn
    q = att.q(att.q_norm(patches))  # queries: normalised patches
    k = att.k(att.k_norm(a))  # keys: normalised projection
    v = att.v(a)  # values: the projection as it is
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., s] @ k[:, s].t() / math.sqrt(4), dim=-1)
        heads.append(weights @ v[:, s])
    hidden = att.out(torch.cat(heads, dim=-1))  # no residual from the patches
    normed = F.layer_norm(hidden, (8,), former.ffn.norm.weight, former.ffn.norm.bias)
    up = former.ffn.fc1(normed)  # the feed-forward's own LayerNorm first
    fx = hidden + former.ffn.fc2(up[..., :32] * F.gelu(up[..., 32:]))
    expected = torch.stack([fx[:, 0:2].mean(1), fx[:, 2:4].mean(1)], dim=1)  # two bands
    assert torch.allclose(former(patches, bank), expected, atol=1e-5)


def test_adapters_change_nothing_while_off_and_decide_what_trains() -> None:
    torch.manual_seed(0)
    former = PromptFormer(text_dim=6, width=8, num_heads=2, num_prompts=2, adapter_rank=2)
    patches, bank = torch.randn(2, 4, 8), torch.randn(5, 6)
    before = former(patches, bank)
    with torch.no_grad():
        for adapter in former.adapter.values():
            adapter.up.normal_()
    assert torch.equal(former(patches, bank), before)  # off: not applied at all
    assert not any(p.requires_grad for p in former.adapter.parameters())
    assert all(p.requires_grad for p in former.attn.parameters())
    former.set_adapters(True)
    assert not torch.allclose(former(patches, bank), before)
    assert all(p.requires_grad for p in former.adapter.parameters())
    assert not any(p.requires_grad for p in former.attn.parameters())
    assert not any(p.requires_grad for p in former.ffn.parameters())
    assert all(p.requires_grad for p in former.proj.parameters())  # always trains


def test_the_promptformer_has_the_designs_size_at_vit_b16_widths() -> None:
    former = PromptFormer(text_dim=512, width=768)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in former.named_children()}
    # The released PromptFormer's 9,845,760 without the adapters (the paper: "about 9.85 M"),
    # its feed-forward's LayerNorm included; rank-8 adapters add 36,864.
    assert counts == {"proj": 393_984, "attn": 2_365_440, "ffn": 7_086_336, "adapter": 36_864}
    assert sum(counts.values()) - counts["adapter"] == 9_845_760


# ---------------------------------------------------------------- the prompted encoder


def test_prompts_follow_the_patches_without_positional_embedding(
    model: FedMVPModel, bank: TextBank
) -> None:
    visual = model.clip.visual
    images = _images(2)
    ln_pre_in, remove_ln = _hooked_inputs(visual.ln_pre)
    block_in, remove_block = _hooked_inputs(visual.transformer.resblocks[0])
    model.encode_image(images, bank)
    remove_ln()
    remove_block()
    patches = visual.conv1(images).flatten(2).transpose(1, 2)  # (2, 16, 64)
    pos = visual.positional_embedding
    tokens = ln_pre_in[0]
    assert tokens.shape == (2, 1 + 16 + 4, 64)
    assert torch.allclose(tokens[:, 0], (visual.class_embedding + pos[0]).expand(2, -1))
    assert torch.allclose(tokens[:, 1:17], patches + pos[1:], atol=1e-6)
    prompts = model.promptformer(patches + pos[1:], bank.features)  # E as queries, no pos
    assert torch.allclose(tokens[:, 17:], prompts, atol=1e-6)
    assert block_in[0].shape[-2:] == (21, 64)  # all 21 tokens enter the first block


def test_the_unprompted_stages_equal_open_clips_own_image_encoder(model: FedMVPModel) -> None:
    images = _images(3)
    reference = model.clip.encode_image(images, normalize=True)
    assert torch.allclose(model.frozen_features(images), reference, atol=1e-6)


def test_logits_are_the_scaled_mean_attribute_cosine_by_hand(model: FedMVPModel) -> None:
    dim = model.clip.text_projection.shape[1]
    t = torch.zeros(3, dim)
    t[0, 0], t[1, 1], t[2, 0], t[2, 1] = 1.0, 1.0, 0.6, 0.8
    bank = TextBank(t, torch.tensor([0, 0, 1]), 2, ["a", "b"], ["s0", "s1", "s2"])
    f = torch.zeros(2, dim)
    f[0, 0] = 1.0  # cos with t0, t1, t2: 1, 0, 0.6
    f[1, 1] = 1.0  # 0, 1, 0.8
    logits = model.logits_from_features(f, bank)
    assert torch.allclose(logits, torch.tensor([[50.0, 60.0], [50.0, 80.0]]))


def test_logits_of_images_use_the_prompted_feature(model: FedMVPModel, bank: TextBank) -> None:
    images = _images(2)
    f = model.encode_image(images, bank)
    cos = f @ bank.features.t()
    expected = 100 * torch.stack([cos[:, :3].mean(1), cos[:, 3:].mean(1)], dim=1)
    assert torch.allclose(model.logits(images, bank), expected, atol=1e-4)


def test_the_consistency_loss_compares_with_the_frozen_flipped_view(
    model: FedMVPModel, bank: TextBank
) -> None:
    images = _images(2)
    f = model.encode_image(images, bank)
    g = model.clip.encode_image(images.flip(-1), normalize=True)
    expected = (1 - (f * g).sum(-1)).mean()
    assert torch.allclose(model.consistency_loss(f, images), expected, atol=1e-6)
    assert float(model.consistency_loss(g, images)) == pytest.approx(0.0, abs=1e-6)
    assert float(model.consistency_loss(-g, images)) == pytest.approx(2.0, abs=1e-6)


def test_no_gradient_reaches_the_frozen_clip(model: FedMVPModel, bank: TextBank) -> None:
    images, labels = _images(2), torch.tensor([0, 1])
    f = model.encode_image(images, bank)
    loss = F.cross_entropy(model.logits_from_features(f, bank), labels)
    (loss + 10 * model.consistency_loss(f, images)).backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert model.promptformer.proj.weight.grad is not None
    assert model.promptformer.attn.q.weight.grad is not None
    assert not model.frozen_features(images).requires_grad


def test_adapters_are_used_at_evaluation_when_on(model: FedMVPModel, bank: TextBank) -> None:
    images, labels = _images(4), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        for adapter in model.promptformer.adapter.values():
            adapter.up.normal_(std=0.5)
    data = torch.utils.data.TensorDataset(images, labels)
    off = evaluate_local(model, data, bank, CPU)
    with torch.no_grad():
        logits_off = model.logits(images, bank)
    model.adapters_on = True
    on = evaluate_local(model, data, bank, CPU)
    with torch.no_grad():
        logits_on = model.logits(images, bank)
    assert not torch.allclose(logits_on, logits_off)
    assert on.loss == pytest.approx(float(F.cross_entropy(logits_on, labels)), rel=1e-5)
    assert off.loss == pytest.approx(float(F.cross_entropy(logits_off, labels)), rel=1e-5)
    assert (on.total, off.total) == (4, 4)


# ---------------------------------------------------------------- local training


def _run_config(**fedmvp: object) -> RunConfig:
    train = TrainConfig(batch_size=4, lr=0.01, local_epochs=1)
    return RunConfig(train=train, fedmvp=FedMVPConfig(**fedmvp))


def _toy_data(n: int = 10) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(_images(n, seed=3), torch.arange(n) % 2)


def test_training_steps_once_per_batch_and_is_seeded(model: FedMVPModel, bank: TextBank) -> None:
    start = model.trainable_arrays()
    result = train_local(model, _toy_data(), bank, _run_config(), CPU, seed=7, adapters_on=False)
    assert (result.steps, result.num_examples) == (3, 10)  # 10 examples in batches of 4
    assert model.promptformer.training and not model.clip.training  # CLIP stays in eval mode
    assert result.loss == pytest.approx(result.ce_loss + 10 * result.consistency_loss, rel=1e-5)
    after = model.trainable_arrays()
    model.load_trainable_arrays(start)
    train_local(model, _toy_data(), bank, _run_config(), CPU, seed=7, adapters_on=False)
    assert all(np.array_equal(after[k], v) for k, v in model.trainable_arrays().items())
    assert not np.array_equal(after["fedmvp.proj.weight"], start["fedmvp.proj.weight"])


def test_one_step_per_round_accumulates_the_batches(model: FedMVPModel, bank: TextBank) -> None:
    cfg = _run_config(step_every="round-mean")
    result = train_local(model, _toy_data(), bank, cfg, CPU, seed=0, adapters_on=False)
    assert result.steps == 1


def test_the_released_round_step_follows_the_last_batch_alone(
    model: FedMVPModel, bank: TextBank
) -> None:
    """step-every = "round": one SGD step on the loss of the round's last batch (10 examples
    in batches of 4: the last batch holds the 2 last of the seeded order), as released."""
    start = model.trainable_arrays()
    data = _toy_data(10)
    cfg = _run_config(step_every="round")
    cfg = replace(cfg, train=replace(cfg.train, momentum=0.0, weight_decay=0.0))
    result = train_local(model, data, bank, cfg, CPU, seed=5, adapters_on=False, lr=0.1)
    assert (result.steps, result.num_examples) == (1, 10)
    stepped = model.trainable_arrays()["fedmvp.proj.weight"]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))  # the loader's
    images, labels = (t[order[8:]] for t in data.tensors)
    model.load_trainable_arrays(start)
    model.zero_grad(set_to_none=True)
    f = model.encode_image(images, bank)
    ce = F.cross_entropy(model.logits_from_features(f, bank), labels)
    loss = ce + 10 * model.consistency_loss(f, images)
    loss.backward()
    grad = model.promptformer.proj.weight.grad.numpy()
    assert np.allclose(stepped, start["fedmvp.proj.weight"] - 0.1 * grad, atol=1e-5)
    assert result.loss == pytest.approx(loss.item(), rel=1e-5)  # that batch's, as logged


def test_the_round_mean_step_follows_the_mean_gradient_of_the_round(
    model: FedMVPModel, bank: TextBank
) -> None:
    start = model.trainable_arrays()
    data = _toy_data(8)
    cfg = _run_config(step_every="round-mean")
    cfg = replace(cfg, train=replace(cfg.train, momentum=0.0, weight_decay=0.0))
    train_local(model, data, bank, cfg, CPU, seed=0, adapters_on=False, lr=0.1)  # the round's lr
    stepped = model.trainable_arrays()["fedmvp.proj.weight"]
    model.load_trainable_arrays(start)
    model.zero_grad(set_to_none=True)
    images, labels = data.tensors
    f = model.encode_image(images, bank)
    loss = F.cross_entropy(model.logits_from_features(f, bank), labels)
    (loss + 10 * model.consistency_loss(f, images)).backward()
    grad = model.promptformer.proj.weight.grad.numpy()
    assert np.allclose(stepped, start["fedmvp.proj.weight"] - 0.1 * grad, atol=1e-5)


def test_adapters_switch_on_below_the_threshold_and_stay_on(
    model: FedMVPModel, bank: TextBank
) -> None:
    never = train_local(
        model, _toy_data(), bank, _run_config(adapter_threshold=0.0), CPU, 0, adapters_on=False
    )
    assert not never.adapters_on
    switched = train_local(
        model, _toy_data(), bank, _run_config(adapter_threshold=1e9), CPU, 0, adapters_on=False
    )
    assert switched.adapters_on and model.adapters_on
    before = model.trainable_arrays()
    kept = train_local(
        model, _toy_data(), bank, _run_config(adapter_threshold=0.0), CPU, 0, adapters_on=True
    )
    assert kept.adapters_on  # the switch persists
    after = model.trainable_arrays()
    assert np.array_equal(after["fedmvp.attn.q.weight"], before["fedmvp.attn.q.weight"])
    assert np.array_equal(after["fedmvp.ffn.fc1.weight"], before["fedmvp.ffn.fc1.weight"])
    assert not np.array_equal(after["fedmvp.adapter.q.up"], before["fedmvp.adapter.q.up"])
    assert not np.array_equal(after["fedmvp.proj.weight"], before["fedmvp.proj.weight"])


def test_precomputed_flipped_features_train_exactly_as_computing_them_per_step(
    model: FedMVPModel, bank: TextBank
) -> None:
    data, cfg = _toy_data(), _run_config()
    flipped = flipped_features(model, data, CPU, batch_size=3)
    images = data.tensors[0]
    assert flipped.shape == (10, model.clip.text_projection.shape[1])
    reference = model.clip.encode_image(images.flip(-1), normalize=True)
    assert torch.allclose(flipped, reference, atol=1e-5)
    start = model.trainable_arrays()
    per_step = train_local(model, data, bank, cfg, CPU, 0, adapters_on=False)
    trained = model.trainable_arrays()
    model.load_trainable_arrays(start)
    cached = train_local(model, data, bank, cfg, CPU, 0, adapters_on=False, flipped=flipped)
    assert cached.loss == pytest.approx(per_step.loss, rel=1e-5)
    for key, value in model.trainable_arrays().items():
        assert np.allclose(value, trained[key], atol=1e-6), key
    with pytest.raises(ValueError, match="4 features for 10 examples"):
        train_local(model, data, bank, cfg, CPU, 0, adapters_on=False, flipped=flipped[:4])


def test_an_empty_training_split_is_refused(model: FedMVPModel, bank: TextBank) -> None:
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0).long())
    with pytest.raises(ValueError, match="empty"):
        train_local(model, empty, bank, _run_config(), CPU, 0, adapters_on=False)


# ---------------------------------------------------------------- the wire format


def test_trainable_arrays_round_trip_under_stable_names(bundle: ClipBundle) -> None:
    source = FedMVPModel(bundle, FedMVPConfig(), seed=1)
    target = FedMVPModel(bundle, FedMVPConfig(), seed=2)
    arrays = source.trainable_arrays()
    assert {
        "fedmvp.proj.weight",
        "fedmvp.attn.q_norm.weight",
        "fedmvp.attn.k_norm.bias",
        "fedmvp.attn.v.weight",
        "fedmvp.ffn.norm.weight",
        "fedmvp.ffn.fc1.weight",
        "fedmvp.adapter.q.down",
        "fedmvp.adapter.v.up",
    } <= set(arrays)
    assert all(key.startswith("fedmvp.") for key in arrays)
    theirs = target.trainable_arrays()["fedmvp.proj.weight"]
    assert not np.array_equal(arrays["fedmvp.proj.weight"], theirs)
    target.load_trainable_arrays({**arrays, "other.key": np.zeros(1)})
    assert all(np.array_equal(arrays[k], v) for k, v in target.trainable_arrays().items())
    missing = {k: v for k, v in arrays.items() if k != "fedmvp.adapter.q.down"}
    with pytest.raises(KeyError, match=r"fedmvp\.adapter\.q\.down"):
        target.load_trainable_arrays(missing)
    with pytest.raises(ValueError, match=r"fedmvp.proj.bias: received shape \(3,\)"):
        target.load_trainable_arrays({**arrays, "fedmvp.proj.bias": np.zeros(3, np.float32)})
