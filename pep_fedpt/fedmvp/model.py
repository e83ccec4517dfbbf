"""FedMVP's model: the frozen CLIP image tower prompted by the PromptFormer, attribute logits
and the consistency loss.

open_clip's ``VisionTransformer.forward`` runs embed -> ln_pre -> blocks -> pool -> proj in
one go; here it is split into named stages (as timm's ``forward_features`` is) so that the
m prompt tokens can be appended between them: after conv1, the class token and the
positional embedding, before ln_pre, with no positional embedding of their own:
[cls; E; P]. Nothing in open_clip is patched; its modules are called one by one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from pep_fedpt.config import FedMVPConfig
from pep_fedpt.fedmvp.clip import ClipBundle
from pep_fedpt.fedmvp.promptformer import PromptFormer
from pep_fedpt.fedmvp.text_bank import TextBank

WIRE_PREFIX = "fedmvp."


class FedMVPModel(nn.Module):
    """Frozen CLIP + trainable PromptFormer (initialised from ``seed``)."""

    def __init__(self, bundle: ClipBundle, cfg: FedMVPConfig, seed: int = 0) -> None:
        super().__init__()
        visual = bundle.model.visual
        _check_visual(visual, bundle.name)
        self.clip: open_clip.CLIP = bundle.model
        self.logit_scale = float(cfg.logit_scale)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.promptformer = PromptFormer(
                bundle.text_dim,
                bundle.vision_width,
                num_heads=cfg.num_heads,
                num_prompts=cfg.num_prompts,
                adapter_rank=cfg.adapter_rank,
            )
        self.promptformer.to(bundle.device)
        self.clip.eval().requires_grad_(False)

    # ------------------------------------------------------------------ the adapter switch
    @property
    def adapters_on(self) -> bool:
        return self.promptformer.adapters_on

    @adapters_on.setter
    def adapters_on(self, on: bool) -> None:
        self.promptformer.set_adapters(on)

    def train(self, mode: bool = True) -> FedMVPModel:
        """Only the PromptFormer changes mode: the CLIP stays frozen in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    # ------------------------------------------------------------------ encoder stages
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, width): conv1 patches, class token in front, positional embedding."""
        visual = self.clip.visual
        x = visual.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_pre, every frozen block, ln_post of [CLS], projection; L2-normalised."""
        visual = self.clip.visual
        x = visual.transformer(visual.ln_pre(tokens))
        pooled = visual.ln_post(x[:, 0])
        return F.normalize(pooled @ visual.proj, dim=-1)

    def encode_image(self, images: torch.Tensor, bank: TextBank) -> torch.Tensor:
        """f(x): the prompted image feature, from [cls; E; P] with P = PromptFormer(E, A)."""
        tokens = self.embed(images)
        prompts = self.promptformer(tokens[:, 1:], bank.prompt_context.to(tokens.dtype))
        return self.encode_tokens(torch.cat([tokens, prompts.to(tokens.dtype)], dim=1))

    @torch.no_grad()
    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        """g(x): the un-prompted frozen CLIP image feature (no gradient ever)."""
        return self.encode_tokens(self.embed(images))

    # ------------------------------------------------------------------ logits and losses
    def logits_from_features(self, features: torch.Tensor, bank: TextBank) -> torch.Tensor:
        """scale x mean over each class's sentences of cos(f(x), t): (B, C).

        One (B, S) cosine matrix, summed per class with ``index_add_``: memory grows with
        batch x sentences, never batch x classes x attributes x width.
        """
        cosine = features.float() @ bank.features.float().t()
        sums = cosine.new_zeros(cosine.shape[0], bank.num_classes)
        sums = sums.index_add(1, bank.class_index, cosine)
        return self.logit_scale * sums / bank.counts.to(sums)

    def logits(self, images: torch.Tensor, bank: TextBank) -> torch.Tensor:
        return self.logits_from_features(self.encode_image(images, bank), bank)

    def consistency_loss(
        self, features: torch.Tensor, images: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean of 1 - cos(f(x), g(x')), x' the horizontally flipped view.

        ``target``: g(x') computed earlier (it never changes: the flip is deterministic and
        g is frozen); None computes it here.
        """
        if target is None:
            target = self.frozen_features(images.flip(-1))
        return (1.0 - (features * target.to(features.dtype)).sum(dim=-1)).mean()

    # ------------------------------------------------------------------ the wire format
    def trainable_arrays(self) -> dict[str, np.ndarray]:
        """Every PromptFormer tensor (adapters included, on or off) under ``fedmvp.<name>``."""
        return {
            WIRE_PREFIX + name: param.detach().float().cpu().numpy().copy()
            for name, param in self.promptformer.named_parameters()
        }

    def load_trainable_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy received arrays in; a missing, unknown ``fedmvp.`` key or a shape is an error.

        Keys without the ``fedmvp.`` prefix are not this model's and are ignored.
        """
        params = dict(self.promptformer.named_parameters())
        expected = {WIRE_PREFIX + name for name in params}
        received = {key for key in arrays if key.startswith(WIRE_PREFIX)}
        if received != expected:
            raise KeyError(
                f"FedMVP state: missing {sorted(expected - received)}, "
                f"unknown {sorted(received - expected)}"
            )
        with torch.no_grad():
            for name, param in params.items():
                value = np.asarray(arrays[WIRE_PREFIX + name])
                if value.shape != tuple(param.shape):
                    raise ValueError(
                        f"{WIRE_PREFIX + name}: received shape {value.shape}, model has "
                        f"{tuple(param.shape)}"
                    )
                param.copy_(torch.from_numpy(value).to(param.device, param.dtype))


def _check_visual(visual: nn.Module, name: str) -> None:
    """The staged forward assumes open_clip's own ViT with a [CLS] token readout."""
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"CLIP {name!r} has a {type(visual).__name__} image tower; FedMVP needs "
            "open_clip's VisionTransformer (a ViT CLIP such as 'ViT-B-16')"
        )
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
        raise ValueError(
            f"CLIP {name!r} does not read out a projected [CLS] token (pool_type="
            f"{visual.pool_type!r}); FedMVP needs a CLIP-style ViT such as 'ViT-B-16'"
        )
