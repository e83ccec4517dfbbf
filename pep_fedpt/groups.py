"""SGPT's prompt selection as pure functions: which group a sample's prompts come from.

Every group g has a key k_g (D,). A sample's query is the frozen prompt-free [CLS]
feature z(x) (the same z(x) PEP-FedPT caches); as in SGPT's code it is passed through a
ReLU before the cosine. The sample takes the prompts of the group whose key is nearest
(top-1), at training and at test time alike, and the key loss pulls that key toward the
queries that chose it. The selection itself has no gradient: only the key loss moves keys.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def orthonormal_keys(
    num_groups: int, dim: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(G, D) keys with orthonormal rows (G <= D), as SGPT initialises them (Gram-Schmidt)."""
    if not 1 <= num_groups <= dim:
        raise ValueError(f"{num_groups} groups need 1 <= G <= embedding width {dim}")
    gaussian = torch.randn(dim, num_groups, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q: (D, G), orthonormal columns
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique: the sign of r's diagonal
    return q.T.contiguous().float()


def match_scores(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """cos(ReLU(z(x)), k_g): (B, D) queries and (G, D) keys -> (B, G).

    A query or key of zeros (F.normalize leaves it zero) scores 0 against everything.
    """
    return F.normalize(F.relu(query.float()), dim=-1) @ F.normalize(keys.float(), dim=-1).T


@torch.no_grad()
def select_groups(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """g(x) = argmax_g cos(ReLU(z(x)), k_g): (B,) group indices (ties: the lowest)."""
    return match_scores(query, keys).argmax(dim=-1)


@torch.no_grad()
def group_weights(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """One-hot (B, G) weights e_{g(x)}: the prompt bank's mix picks one group per sample."""
    return F.one_hot(select_groups(query, keys), keys.shape[0]).float()


def key_loss(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """mean_x (1 − cos(ReLU(z(x)), k_{g(x)})): pulls each chosen key toward its queries.

    SGPT's code adds −mean cos (weight 1); the constant 1 changes no gradient and keeps the
    loss in [0, 2]. Differentiable in ``keys`` only (z(x) is a frozen feature).
    """
    scores = match_scores(query, keys)
    chosen = scores.gather(1, scores.detach().argmax(dim=-1, keepdim=True))
    return (1.0 - chosen).mean()


@torch.no_grad()
def group_counts(query: torch.Tensor, keys: torch.Tensor) -> np.ndarray:
    """n_{k,g}: how many of the queries select each group, (G,) int64 summing to B."""
    chosen = select_groups(query, keys).cpu()
    return torch.bincount(chosen, minlength=keys.shape[0]).numpy().astype(np.int64)
