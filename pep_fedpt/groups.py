"""SGPT's prompt selection as pure functions: which group a sample's prompts come from.

Every group g has a key k_g (D,). A sample's query is the frozen prompt-free [CLS]
feature z(x) (the same z(x) PEP-FedPT caches); as in SGPT's code it is passed through a
ReLU before the cosine. At test time a sample takes the prompts of the group whose key is
nearest (top-1). While training, SGPT's code balances the groups: given how often each
group has been selected so far (N_g, over all clients and rounds), the distance 1 − cos
is scaled by N_g / Σ N + ε, so that rarely chosen groups win; with no history yet it is
the nearest key. The key loss pulls the chosen key toward the queries that chose it. The
selection itself has no gradient: only the key loss moves keys.
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


# SGPT's code: the floor under a group's selection frequency in the balanced distance.
BALANCE_EPS = 5e-4


@torch.no_grad()
def select_groups(
    query: torch.Tensor, keys: torch.Tensor, selected: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) group indices (ties: the lowest).

    ``selected`` None: g(x) = argmax_g cos(ReLU(z(x)), k_g), the nearest key (test time).
    ``selected`` (G,) counts N_g so far: argmin_g (1 − cos) · (N_g / Σ N + ε), SGPT's
    balanced training-time selection; the nearest key while Σ N = 0.
    """
    scores = match_scores(query, keys)
    if selected is None or float(selected.sum()) <= 0:
        return scores.argmax(dim=-1)
    frequency = selected.to(scores.device, torch.float64) / selected.double().sum()
    return ((1.0 - scores.double()) * (frequency + BALANCE_EPS)).argmin(dim=-1)


@torch.no_grad()
def group_weights(
    query: torch.Tensor, keys: torch.Tensor, selected: torch.Tensor | None = None
) -> torch.Tensor:
    """One-hot (B, G) weights e_{g(x)}: the prompt bank's mix picks one group per sample."""
    return F.one_hot(select_groups(query, keys, selected), keys.shape[0]).float()


def key_loss(
    query: torch.Tensor, keys: torch.Tensor, selected: torch.Tensor | None = None
) -> torch.Tensor:
    """mean_x (1 − cos(ReLU(z(x)), k_{g(x)})): pulls each chosen key toward its queries.

    g(x) as in ``select_groups``. SGPT's code adds −mean cos (weight 1); the constant 1
    changes no gradient and keeps the loss in [0, 2]. Differentiable in ``keys`` only
    (z(x) is a frozen feature).
    """
    chosen = select_groups(query, keys.detach(), selected)
    scores = match_scores(query, keys)
    return (1.0 - scores.gather(1, chosen.unsqueeze(1))).mean()


@torch.no_grad()
def group_counts(
    query: torch.Tensor, keys: torch.Tensor, selected: torch.Tensor | None = None
) -> np.ndarray:
    """n_{k,g}: how many of the queries select each group, (G,) int64 summing to B."""
    chosen = select_groups(query, keys, selected).cpu()
    return torch.bincount(chosen, minlength=keys.shape[0]).numpy().astype(np.int64)
