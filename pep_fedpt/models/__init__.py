"""Backbones, their image spec and the prompted ViT."""

from pep_fedpt.models.backbone import backbone_fingerprint, cached_backbone, create_backbone
from pep_fedpt.models.image_spec import image_spec
from pep_fedpt.models.prompted_vit import PromptedViT, vpt_init_bound

__all__ = [
    "PromptedViT",
    "backbone_fingerprint",
    "cached_backbone",
    "create_backbone",
    "image_spec",
    "vpt_init_bound",
]
