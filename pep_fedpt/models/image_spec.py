"""The input images a timm backbone expects: size and normalisation."""

from __future__ import annotations

from timm.data import resolve_data_config
from timm.models.vision_transformer import VisionTransformer

from pep_fedpt.data import ImageSpec


def image_spec(backbone: VisionTransformer) -> ImageSpec:
    """Normalisation from the backbone's pretrained config (timm), size from the model.

    The model's own input size wins over its pretrained config's, so that a ViT built with
    ``img_size=32`` gets 32 px inputs and a 224 px ViT-B/16 gets 224 px.
    """
    data_cfg = resolve_data_config({}, model=backbone)
    size = int(backbone.patch_embed.img_size[0])
    return ImageSpec(size=size, mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]))
