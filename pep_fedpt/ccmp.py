"""The Class-Contextualized Mixed Prompt (CCMP) as pure functions.

Under label shift every client shares p(x|y) and differs only in its prior π_k(y), so
its posterior over classes is the global likelihood (here: cosine similarity to the
global class prototypes, tempered by τ) times its own prior. The mixed prompt is the
posterior mean of the class prompts: the MMSE estimate of the ideal class prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_prior(class_counts: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """π(c) = (n_c + ε) / (n + C ε): never zero, so log π stays finite."""
    counts = class_counts.to(torch.float64)
    num_classes = counts.numel()
    return ((counts + smoothing) / (counts.sum() + num_classes * smoothing)).to(torch.float32)


def mixing_logits(
    query: torch.Tensor,
    prototypes: torch.Tensor,
    log_prior: torch.Tensor,
    tau: float = 0.1,
) -> torch.Tensor:
    """cos(z(x), μ_c) / τ + log π(c), the logits of the mixing weights.

    query: (B, D) prompt-free features z(x); prototypes: (C, D); log_prior: (C,).
    A zero prototype (a class nobody holds) has cosine 0, not NaN.
    """
    cos = F.normalize(query.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T
    return cos / tau + log_prior.float()


def mixing_weights(
    query: torch.Tensor,
    prototypes: torch.Tensor,
    log_prior: torch.Tensor,
    tau: float = 0.1,
) -> torch.Tensor:
    """w_c(x) = softmax_c(cos(z(x), μ_c) / τ + log π(c)) (shapes as ``mixing_logits``)."""
    return torch.softmax(mixing_logits(query, prototypes, log_prior, tau), dim=-1)


def ccmp_correct(
    query: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    log_prior: torch.Tensor,
    tau: float = 0.1,
) -> int:
    """How many of ``labels`` (B,) the mixing weights get right used directly as a
    classifier: argmax over c of the mixing logits (on a tie the lower class).

    No training is involved, so it says how much the prototypes and the prior alone
    carry, and what the class prompts can add on top. τ does not change the argmax under
    a uniform prior; with a prior it sets how strongly the prior pulls.
    """
    if query.shape[0] != labels.shape[0]:
        raise ValueError(f"{query.shape[0]} features but {labels.shape[0]} labels")
    if query.shape[0] == 0:
        return 0
    predicted = mixing_logits(query, prototypes, log_prior, tau).argmax(dim=-1)
    return int((predicted.cpu() == labels.cpu().long()).sum())


def mix_prompts(weights: torch.Tensor, class_prompts: torch.Tensor) -> torch.Tensor:
    """P̂^(l)(x) = Σ_c w_c(x) P_c^(l) for every CCMP block at once.

    weights: (B, C); class_prompts: (L, C, M, D) -> (L, B, M, D).
    """
    return torch.einsum("bc,lcmd->lbmd", weights.to(class_prompts.dtype), class_prompts)
