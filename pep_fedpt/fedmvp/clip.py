"""The frozen CLIP of FedMVP, built through open_clip.

Three weight sources (``fedmvp.clip-pretrained``): "openai" goes through open_clip's own
download path (it needs the network once, then open_clip's cache); an absolute path loads
that checkpoint; "random" initialises the model from ``seed``. ``fedmvp.clip-model = "tiny"``
is a small CLIP built with open_clip's own ``CLIP`` class (no registered config, so no global
state changes): a 32 px, patch-8 ViT of width 64 and a width-64 text tower with CLIP's real
vocabulary and 77-token context, for tests and the offline default. No CLIP weights can be
downloaded for it: its numbers mean nothing, only its shapes and code paths do.

The blocks run the activation the weights were trained with (``fedmvp.clip-activation``,
``wants_quick_gelu``): open_clip builds ``ViT-B-16`` with GELU even for the "openai" tag,
whose weights were trained with QuickGELU. The bundle's ``ImageSpec`` carries open_clip's
preprocessing config of the model, from which the loaders build open_clip's own transform.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import PreprocessCfg
from open_clip.transformer import QuickGELU

from pep_fedpt.config import CLIP_SOURCES, FedMVPConfig
from pep_fedpt.data import ImageSpec

TINY = "tiny"

# The small seeded CLIP: 16 patches of 8 px, 2 blocks on each side, CLIP's tokenizer.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

Tokenizer = Callable[[list[str]], torch.Tensor]


class ClipWeightsError(RuntimeError):
    """The configured CLIP weights cannot be had (offline, unknown tag, missing file)."""


@dataclass
class ClipBundle:
    """A frozen CLIP with what the rest of FedMVP needs to know about it."""

    model: open_clip.CLIP
    tokenizer: Tokenizer
    spec: ImageSpec  # input size and CLIP's normalisation, for the data loaders
    fingerprint: str  # model, weights source (+ seed), activation: keys every feature cache
    name: str
    quick_gelu: bool = False  # the blocks' activation: QuickGELU (OpenAI's weights) or GELU

    @property
    def text_dim(self) -> int:
        """Width of the (projected) text features t, 512 for ViT-B/16."""
        return int(self.model.text_projection.shape[1])

    @property
    def vision_width(self) -> int:
        """Token width of the visual transformer, 768 for ViT-B/16."""
        return int(self.model.visual.conv1.out_channels)

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device


def clip_fingerprint(cfg: FedMVPConfig, seed: int, quick_gelu: bool) -> str:
    """Changes whenever the frozen features (text or image) could change: the model, its
    weights and the activation they are run with."""
    source = cfg.clip_pretrained
    if source == "random":
        source = f"random:{seed}"
    elif os.path.isabs(source) and os.path.isfile(source):
        stat = os.stat(source)
        source = f"{source}:{stat.st_size}:{int(stat.st_mtime)}"
    activation = "quick_gelu" if quick_gelu else "gelu"
    return f"{cfg.clip_model}<{source}>{activation}|open_clip-{open_clip.__version__}"


def wants_quick_gelu(cfg: FedMVPConfig) -> bool:
    """Whether CLIP's blocks must use QuickGELU, from ``fedmvp.clip-activation``.

    "auto" follows open_clip's own record of how the weights were trained: the pretrained
    config of the tag (``quick_gelu`` of "openai" is True), else the model config (the
    ``-quickgelu`` names). A checkpoint file carries no such record: for a model whose
    config leaves it open, "auto" refuses to guess rather than silently pick GELU.
    """
    if cfg.clip_activation != "auto":
        return cfg.clip_activation == "quick-gelu"
    if cfg.clip_model == TINY:
        return False  # the tiny CLIP is this project's own: GELU, random or from a file
    model_cfg = open_clip.get_model_config(cfg.clip_model) or {}
    if model_cfg.get("quick_gelu", False):
        return True
    source = cfg.clip_pretrained
    if source == "random":
        return False
    if source == "openai" or not os.path.isabs(source):
        tag = open_clip.get_pretrained_cfg(cfg.clip_model, source)
        return bool(tag.get("quick_gelu", False))
    raise ClipWeightsError(
        f"fedmvp.clip-pretrained = {source!r} is a checkpoint file, and the activation its "
        f"weights were trained with cannot be read from it; set fedmvp.clip-activation = "
        "'quick-gelu' for OpenAI's CLIP weights (what 'openai' means) or 'gelu' for weights "
        f"trained with GELU (open_clip's default for {cfg.clip_model!r})"
    )


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    """Whether the built model's blocks run QuickGELU (read from its modules)."""
    return any(isinstance(m, QuickGELU) for m in model.modules())


def build_clip(cfg: FedMVPConfig, seed: int, device: torch.device | str) -> ClipBundle:
    """The frozen CLIP that ``cfg`` names, in eval mode, without gradients, on ``device``,
    with the activation its weights were trained with (``wants_quick_gelu``)."""
    name, source = cfg.clip_model, cfg.clip_pretrained
    if source not in CLIP_SOURCES and not os.path.isfile(source):
        raise ClipWeightsError(
            f"fedmvp.clip-pretrained = {source!r}: no such checkpoint file; use 'random', "
            "'openai' or the absolute path of an existing open_clip checkpoint"
        )
    quick_gelu = wants_quick_gelu(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # "random" weights are a function of the seed alone
        model = _tiny(source, quick_gelu) if name == TINY else _named(name, source, quick_gelu)
    if uses_quick_gelu(model) != quick_gelu:
        built, wanted = ("QuickGELU", "GELU") if not quick_gelu else ("GELU", "QuickGELU")
        raise ClipWeightsError(
            f"fedmvp.clip-model = {name!r} builds {built} blocks, but fedmvp.clip-activation "
            f"= {cfg.clip_activation!r} asks for {wanted}; use the model name without (or "
            "with) '-quickgelu', or clip-activation = 'auto'"
        )
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = (
        open_clip.SimpleTokenizer(context_length=77)
        if name == TINY
        else open_clip.get_tokenizer(name)
    )
    fingerprint = clip_fingerprint(cfg, seed, quick_gelu)
    return ClipBundle(model, tokenizer, clip_image_spec(model), fingerprint, name, quick_gelu)


def clip_image_spec(model: open_clip.CLIP) -> ImageSpec:
    """CLIP's own preprocessing as open_clip records it for the model (size, mean, std,
    resize mode, interpolation; open_clip's defaults where the model records none, as for
    the tiny CLIP): the data loaders build open_clip's eval transform from it."""
    recorded = getattr(model.visual, "preprocess_cfg", None) or {}
    merged = {**dataclasses.asdict(PreprocessCfg()), **recorded}
    size = int(model.visual.image_size[0])
    return ImageSpec(
        size=size,
        mean=tuple(merged.get("mean") or OPENAI_DATASET_MEAN),
        std=tuple(merged.get("std") or OPENAI_DATASET_STD),
        resize_mode=str(merged["resize_mode"]),
        interpolation=str(merged["interpolation"]),
    )


def _tiny(source: str, quick_gelu: bool) -> open_clip.CLIP:
    if source == "openai":
        raise ClipWeightsError(
            "fedmvp.clip-model = 'tiny' has no 'openai' weights; use clip-pretrained = "
            "'random' (or an absolute path to a tiny checkpoint), or an open_clip model "
            "name such as 'ViT-B-16' for the openai weights"
        )
    model = open_clip.CLIP(**TINY_CONFIG, quick_gelu=quick_gelu)
    if source != "random":
        open_clip.load_checkpoint(model, source)
    return model


def _named(name: str, source: str, quick_gelu: bool) -> open_clip.CLIP:
    if name not in open_clip.list_models():
        raise ClipWeightsError(
            f"fedmvp.clip-model = {name!r} is not an open_clip model; use 'tiny' or one of "
            f"open_clip.list_models(), e.g. 'ViT-B-16'"
        )
    pretrained = None if source == "random" else source
    try:
        model = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    except Exception as exc:
        if source != "openai":
            raise
        raise ClipWeightsError(
            f"CLIP weights {name}/openai could not be loaded ({exc}); without network access "
            "use fedmvp.clip-pretrained = '/abs/path/to/checkpoint' (a file open_clip can "
            "load), or 'random' / clip-model = 'tiny' for runs whose accuracy means nothing"
        ) from exc
    if not isinstance(model, open_clip.CLIP):
        raise ClipWeightsError(
            f"fedmvp.clip-model = {name!r} builds a {type(model).__name__}; FedMVP needs a "
            "CLIP with open_clip's own ViT image tower (e.g. 'ViT-B-16')"
        )
    return model
