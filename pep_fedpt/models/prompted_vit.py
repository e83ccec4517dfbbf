"""A frozen timm ViT with a shared prompt (VPT-shallow) and CCMP class prompts (VPT-deep).

Token layout: ``[prefix (CLS, registers), shared prompt P^S, mixed prompt P̂, patches]``.
P^S enters at the input and is carried through every block. Before each CCMP block the
mixed-prompt slot is filled with that block's P̂^(l)(x): inserted at the first CCMP block,
overwritten at the later ones, so the token count stays that of VPT-deep.

With ``num_prompt_sets = 1`` and weights of one, the same module is plain VPT-deep; with
no CCMP blocks and no shared prompt it is a linear probe. The baselines reuse it that way.
With ``keyed = True`` the prompt sets are SGPT's groups: each has a trainable key (rows of
``group_keys``), and the weights are one-hot on the group whose key matches z(x) best
(``pep_fedpt.groups``), so the same mixing path inserts the chosen group's prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.models.vision_transformer import VisionTransformer, global_pool_nlc
from torch import nn

from pep_fedpt.ccmp import mix_prompts
from pep_fedpt.config import ConfigError
from pep_fedpt.groups import orthonormal_keys

# Poolings that read either the [CLS] token or the image patch tokens alone, so that they
# mean the same with prompts inserted; "map" (attention pooling) and "" (none) do not.
POOLINGS = ("token", "avg", "avgmax", "max")


def check_pooling(backbone: VisionTransformer, name: str = "") -> str:
    """The backbone's ``global_pool``, if z(x) and the prompted classifier can share it."""
    pool = getattr(backbone, "global_pool", "token")
    what = f"model.name = {name!r}" if name else f"this {type(backbone).__name__}"
    if pool not in POOLINGS:
        raise ConfigError(
            f"{what} pools its features with global_pool = {pool!r}; z(x) and the prompted "
            f"classifier need one of {list(POOLINGS)} (the [CLS] token, or a pooling of the "
            "image patch tokens); build it with global_pool='token'"
        )
    if pool != "token" and getattr(backbone, "pool_include_prefix", False):
        raise ConfigError(
            f"{what} pools the prefix tokens with the patches (pool_include_prefix); z(x) "
            "and the prompted classifier need the patch tokens alone: build it with "
            "pool_include_prefix=False or global_pool='token'"
        )
    return pool


def pooled_feature(backbone: VisionTransformer, tokens: torch.Tensor, skip: int) -> torch.Tensor:
    """The one feature both z(x) and the classifier read, from the final normed tokens.

    The backbone's own pooling (timm's ``global_pool_nlc``) over the [CLS] token, or over
    the image patch tokens after the first ``skip`` (prefix and prompt tokens), then its
    ``fc_norm``: without prompts this is exactly ``forward_head(pre_logits=True)``.
    """
    pooled = global_pool_nlc(tokens, pool_type=backbone.global_pool, num_prefix_tokens=skip)
    return backbone.fc_norm(pooled)


def vpt_init_bound(patch_size: int, embed_dim: int) -> float:
    """VPT's uniform init bound sqrt(6 / (3 p² + D))."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + embed_dim))


class PromptedViT(nn.Module):
    """Prompts and head around a frozen backbone; only the prompts and head train."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        *,
        shared_length: int = 10,
        class_length: int = 1,
        ccmp_blocks: Sequence[int] = (),
        num_prompt_sets: int | None = None,
        keyed: bool = False,
        head_init: str = "zeros",
    ) -> None:
        super().__init__()
        check_pooling(backbone)
        self.backbone = backbone.requires_grad_(False).eval()
        dim = backbone.embed_dim
        depth = len(backbone.blocks)
        if any(not 0 <= b < depth for b in ccmp_blocks):
            raise ValueError(f"CCMP blocks {list(ccmp_blocks)} fall outside 0..{depth - 1}")
        self.num_classes = num_classes
        self.ccmp_blocks = tuple(sorted(ccmp_blocks))
        self.shared_length = shared_length
        self.class_length = class_length if self.ccmp_blocks else 0
        sets = num_classes if num_prompt_sets is None else num_prompt_sets
        # One prompt set per class (CCMP), or explicit sets (1: VPT-deep's prompt per block).
        self.class_conditioned = num_prompt_sets is None
        self.num_prompt_sets = sets
        patch = backbone.patch_embed.patch_size[0]
        bound = vpt_init_bound(patch, dim)

        self.shared_prompt = nn.Parameter(torch.empty(shared_length, dim).uniform_(-bound, bound))
        self.class_prompts = nn.Parameter(
            torch.empty(len(self.ccmp_blocks), sets, self.class_length, dim).uniform_(-bound, bound)
        )
        # SGPT: one key per prompt set (group), matched against z(x); None for the others.
        self.group_keys: nn.Parameter | None = None
        if keyed:
            if num_prompt_sets is None or not self.ccmp_blocks or not self.class_length:
                raise ValueError("keyed prompt sets need num_prompt_sets and prompted blocks")
            self.group_keys = nn.Parameter(orthonormal_keys(sets, dim))
        self.head = nn.Linear(dim, num_classes)
        if head_init == "zeros":
            nn.init.zeros_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True) -> PromptedViT:
        """The frozen backbone stays in eval mode (no dropout, fixed norms)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def query_features(self, images: torch.Tensor) -> torch.Tensor:
        """z(x): the backbone's pooled feature without prompts (the final normed [CLS] for
        ``global_pool = "token"``), by the same ``pooled_feature`` as the classifier's."""
        tokens = self.backbone.forward_features(images)
        return pooled_feature(self.backbone, tokens, self.backbone.num_prefix_tokens)

    def forward_features(self, images: torch.Tensor, mix_weights: torch.Tensor) -> torch.Tensor:
        """The prompted feature, pooled as z(x) is (``pooled_feature``: the normed [CLS]
        for ``global_pool = "token"``; prompts never pooled). mix_weights: (B, sets)."""
        bb = self.backbone
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(images))))
        batch, prefix = x.shape[0], bb.num_prefix_tokens
        if self.shared_length:
            shared = self.shared_prompt.to(x.dtype).expand(batch, -1, -1)
            x = torch.cat([x[:, :prefix], shared, x[:, prefix:]], dim=1)
        slot = prefix + self.shared_length
        mixed = mix_prompts(mix_weights, self.class_prompts) if self.class_length else None
        position = {block: i for i, block in enumerate(self.ccmp_blocks)}
        for index, block in enumerate(bb.blocks):
            if mixed is not None and index in position:
                i = position[index]
                rest = slot if i == 0 else slot + self.class_length
                x = torch.cat([x[:, :slot], mixed[i].to(x.dtype), x[:, rest:]], dim=1)
            x = block(x)
        inserted = self.class_length if mixed is not None else 0
        return pooled_feature(bb, bb.norm(x), slot + inserted)

    def forward(self, images: torch.Tensor, mix_weights: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images, mix_weights))
