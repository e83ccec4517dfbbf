"""The frozen CLIP of FedMVP, built through open_clip.

Three weight sources (``fedmvp.clip-pretrained``): "openai" goes through open_clip's own
download path (it needs the network once, then open_clip's cache); an absolute path loads
that checkpoint; "random" initialises the model from ``seed``. ``fedmvp.clip-model = "tiny"``
is a small CLIP built with open_clip's own ``CLIP`` class (no registered config, so no global
state changes): a 32 px, patch-8 ViT of width 64 and a width-64 text tower with CLIP's real
vocabulary and 77-token context, for tests and the offline default. No CLIP weights can be
downloaded for it: its numbers mean nothing, only its shapes and code paths do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from pep_fedpt.config import FedMVPConfig
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
    fingerprint: str  # model name + weights source (+ seed): keys the text-feature cache
    name: str

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


def clip_fingerprint(cfg: FedMVPConfig, seed: int) -> str:
    """Changes whenever the frozen features (text or image) could change."""
    source = cfg.clip_pretrained
    if source == "random":
        source = f"random:{seed}"
    elif os.path.isabs(source) and os.path.isfile(source):
        stat = os.stat(source)
        source = f"{source}:{stat.st_size}:{int(stat.st_mtime)}"
    return f"{cfg.clip_model}<{source}>open_clip-{open_clip.__version__}"


def build_clip(cfg: FedMVPConfig, seed: int, device: torch.device | str) -> ClipBundle:
    """The frozen CLIP that ``cfg`` names, in eval mode, without gradients, on ``device``."""
    name, source = cfg.clip_model, cfg.clip_pretrained
    if source not in ("random", "openai") and not os.path.isfile(source):
        raise ClipWeightsError(
            f"fedmvp.clip-pretrained = {source!r}: no such checkpoint file; use 'random', "
            "'openai' or the absolute path of an existing open_clip checkpoint"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # "random" weights are a function of the seed alone
        model = _tiny(source) if name == TINY else _named(name, source)
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = (
        open_clip.SimpleTokenizer(context_length=77)
        if name == TINY
        else open_clip.get_tokenizer(name)
    )
    size = int(model.visual.image_size[0])
    preprocess = getattr(model.visual, "preprocess_cfg", None) or {}
    spec = ImageSpec(
        size=size,
        mean=tuple(preprocess.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", OPENAI_DATASET_STD)),
    )
    return ClipBundle(model, tokenizer, spec, clip_fingerprint(cfg, seed), name)


def _tiny(source: str) -> open_clip.CLIP:
    if source == "openai":
        raise ClipWeightsError(
            "fedmvp.clip-model = 'tiny' has no 'openai' weights; use clip-pretrained = "
            "'random' (or an absolute path to a tiny checkpoint), or an open_clip model "
            "name such as 'ViT-B-16' for the openai weights"
        )
    model = open_clip.CLIP(**TINY_CONFIG)
    if source != "random":
        open_clip.load_checkpoint(model, source)
    return model


def _named(name: str, source: str) -> open_clip.CLIP:
    if name not in open_clip.list_models():
        raise ClipWeightsError(
            f"fedmvp.clip-model = {name!r} is not an open_clip model; use 'tiny' or one of "
            f"open_clip.list_models(), e.g. 'ViT-B-16'"
        )
    pretrained = None if source == "random" else source
    try:
        model = open_clip.create_model(name, pretrained=pretrained)
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
