"""PromptFormer: turns an image's patch embeddings and the attribute-text bank into m visual
prompt tokens (the design's module, about 9.85 M parameters at ViT-B/16 widths).

1. the bank A (S, text_dim) is projected to the vision width ONCE per forward (not per
   image: the keys and values are shared by the whole batch);
2. one cross-attention: queries = LayerNorm_q(patches), keys = LayerNorm_k(proj(A)), values
   = proj(A) without normalisation; no residual from the patches: H = attention output;
3. F = H + FFN(H), FFN a LayerNorm, then a GEGLU width -> 8*width (two halves) -> width;
4. F (B, N, width) pooled into m tokens: the mean over m consecutive bands of patches.

Low-rank adapters (rank r) run beside the query, key and value projections (LoRA: q = W_q x
+ U_q D_q x, D random, U zero at the start). ``adapters_on`` decides both whether they are
applied and what trains: off, the cross-attention and FFN train and the adapters are not
used; on, only the adapters train (the attention and FFN are frozen). The projection always
trains.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LowRank(nn.Module):
    """x -> up(down(x)), rank ``rank``; zero at the start (``up`` is zero)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, dim))
        self.up = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down.t()) @ self.up.t()


class CrossAttention(nn.Module):
    """Separate LayerNorms on queries and keys; values from the un-normalised input."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"PromptFormer width {width} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_norm = nn.LayerNorm(width)
        self.k_norm = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)


class GEGLU(nn.Module):
    """LayerNorm, then width -> 8*width, split in two halves a, b -> a * gelu(b) -> width
    (the released feed-forward: its own pre-norm, so F = H + FFN(LN(H)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 8 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(self.norm(x)).chunk(2, dim=-1)
        return self.fc2(a * F.gelu(b))


class PromptFormer(nn.Module):
    """(patches (B, N, width), bank (S, text_dim)) -> prompts (B, num_prompts, width)."""

    def __init__(
        self,
        text_dim: int,
        width: int,
        num_heads: int = 4,
        num_prompts: int = 4,
        adapter_rank: int = 8,
    ) -> None:
        super().__init__()
        self.num_prompts = num_prompts
        self.proj = nn.Linear(text_dim, width)
        self.attn = CrossAttention(width, num_heads)
        self.ffn = GEGLU(width)
        self.adapter = nn.ModuleDict({name: LowRank(width, adapter_rank) for name in "qkv"})
        self.adapters_on = False
        self.set_adapters(False)

    def set_adapters(self, on: bool) -> None:
        """Apply the adapters (or not) and train them alone (or the attention and FFN)."""
        self.adapters_on = bool(on)
        self.proj.requires_grad_(True)
        self.attn.requires_grad_(not self.adapters_on)
        self.ffn.requires_grad_(not self.adapters_on)
        self.adapter.requires_grad_(self.adapters_on)

    def keys_values(self, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (S, width) of the bank: its projection, computed once per call."""
        projected = self.proj(bank)
        k_in, v_in = self.attn.k_norm(projected), projected
        keys, values = self.attn.k(k_in), self.attn.v(v_in)
        if self.adapters_on:
            keys = keys + self.adapter["k"](k_in)
            values = values + self.adapter["v"](v_in)
        return keys, values

    def forward(self, patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        batch, num_patches, width = patches.shape
        if self.num_prompts > num_patches:
            raise ValueError(
                f"fedmvp.num-prompts = {self.num_prompts} exceeds the {num_patches} patches "
                "they are pooled from"
            )
        keys, values = self.keys_values(bank)
        q_in = self.attn.q_norm(patches)
        queries = self.attn.q(q_in)
        if self.adapters_on:
            queries = queries + self.adapter["q"](q_in)
        heads = self.attn.num_heads
        q = queries.view(batch, num_patches, heads, -1).transpose(1, 2)  # (B, h, N, d)
        k = keys.view(1, -1, heads, width // heads).transpose(1, 2).expand(batch, -1, -1, -1)
        v = values.view(1, -1, heads, width // heads).transpose(1, 2).expand(batch, -1, -1, -1)
        mixed = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        hidden = self.attn.out(mixed.transpose(1, 2).reshape(batch, num_patches, width))
        hidden = hidden + self.ffn(hidden)
        # m consecutive bands of patches, each averaged into one prompt token
        return F.adaptive_avg_pool1d(hidden.transpose(1, 2), self.num_prompts).transpose(1, 2)
