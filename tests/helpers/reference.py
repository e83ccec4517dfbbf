"""Reference formulas the streamed aggregation is checked against.

The batch-shaped means (one call over every client's array) are the formulas the tests
state; the strategies stream replies through ``RunningMean`` and ``PrototypeTally``
instead, so these live here, next to the tests that use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.aggregation import RunningMean
from strategies.tally import PrototypeTally


def stacked_mean(arrays: list[np.ndarray], weights: list, previous: np.ndarray) -> np.ndarray:
    """The batch formula the running mean replaced: every array stacked in float64.

    ``weights``: per array a number (every row alike) or one weight per row; rows whose
    weights add up to 0 keep ``previous``.
    """
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])  # (K, C, ...)
    w = np.stack([np.broadcast_to(np.asarray(x, np.float64), (len(previous),)) for x in weights])
    extra = (1,) * (stacked.ndim - 2)
    totals = w.sum(axis=0)
    summed = (w.reshape(*w.shape, *extra) * stacked).sum(axis=0)
    out = np.asarray(previous, dtype=np.float64).copy()
    held = totals > 0
    out[held] = summed[held] / totals[held].reshape(-1, *extra)
    return out.astype(np.float32)


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ_k w_k θ_k / Σ_k w_k, summed in float64 and returned as float32."""
    w = np.asarray(weights, dtype=np.float64)
    if len(arrays) != len(w) or len(w) == 0:
        raise ValueError(f"need one weight per array, got {len(arrays)} arrays, {len(w)} weights")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    running = RunningMean(np.zeros(np.shape(arrays[0]), dtype=np.float32))
    for array, weight in zip(arrays, w, strict=True):
        running.add(array, float(weight))
    return running.result()


def per_class_weighted_mean(
    arrays: Sequence[np.ndarray],
    class_counts: Sequence[np.ndarray],
    previous: np.ndarray,
) -> np.ndarray:
    """Row c = Σ_k n_{k,c} P_{k,c} / Σ_k n_{k,c}; rows no client holds keep ``previous``.

    arrays: K arrays of shape (C, ...); class_counts: K arrays of shape (C,).
    Plain FedAvg would dilute class c's update by every client that never saw class c.
    """
    if len(arrays) != len(class_counts):
        raise ValueError(f"need counts per array, got {len(arrays)} arrays, {len(class_counts)}")
    running = RunningMean(previous)
    for array, counts in zip(arrays, class_counts, strict=True):
        running.add(array, np.asarray(counts, dtype=np.float64))
    return running.result()


def group_weighted_mean(
    arrays: Sequence[np.ndarray],
    group_counts: Sequence[np.ndarray],
    previous: np.ndarray,
    momentum: float = 0.0,
) -> np.ndarray:
    """SGPT's group rows: m · previous + (1 − m) · the per-group mean by n_{k,g}.

    Row g of the mean is Σ_k n_{k,g} P_{k,g} / Σ_k n_{k,g} (``per_class_weighted_mean``
    with groups as classes), so a group no sampled client selected keeps ``previous``
    whatever m is. m = 0 is the plain group-weighted mean.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum = {momentum!r} must be in [0, 1)")
    running = RunningMean(previous)
    for array, counts in zip(arrays, group_counts, strict=True):
        running.add(array, np.asarray(counts, dtype=np.float64))
    return running.result(momentum)


def prototype_means(
    sums: Sequence[np.ndarray], counts: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """μ_c = Σ_k S_{k,c} / Σ_k n_{k,c} (0 where no client holds c), and Σ_k n_{k,c}.

    A plain sum of sums and counts, so it could run under secure aggregation. Summed
    exactly (``PrototypeTally``), so the bits do not depend on the clients' order, and in
    a fixed few (C, D) arrays whatever their number (docs/scale.md).
    """
    if len(sums) == 0 or len(sums) != len(counts):
        raise ValueError(f"{len(sums)} sums and {len(counts)} counts: one of each per client")
    shape = np.shape(sums[0])
    if len(shape) != 2:
        raise ValueError(f"sums have shape {shape}, expected (classes, dim)")
    tally = PrototypeTally(shape[0], shape[1])
    for client_sum, client_count in zip(sums, counts, strict=True):
        tally.add(client_sum, client_count)
    return tally.means()


def fold_prototype_means(
    means: np.ndarray,
    counts: np.ndarray,
    sums: Sequence[np.ndarray],
    new_counts: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """``prototype_means`` with more clients' sums and counts added to an earlier result.

    The earlier sums are μ_c · n_c (exact up to μ's float32 rounding), so the result is
    the pooled mean over every client, as if all had answered the first time.
    """
    if len(sums) != len(new_counts):
        raise ValueError(f"{len(sums)} sums and {len(new_counts)} counts: one of each per client")
    mu = np.asarray(means)
    if mu.ndim != 2:
        raise ValueError(f"means have shape {mu.shape}, expected (classes, dim)")
    tally = PrototypeTally(mu.shape[0], mu.shape[1])
    tally.add_means(mu, np.asarray(counts))
    for client_sum, client_count in zip(sums, new_counts, strict=True):
        tally.add(client_sum, client_count)
    return tally.means()
