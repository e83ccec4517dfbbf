"""Pure aggregation math: weighted means, per-class means, prototypes, accuracy summaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_mean(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ_k w_k θ_k / Σ_k w_k, computed in float64 and returned as float32."""
    w = np.asarray(weights, dtype=np.float64)
    if len(arrays) != len(w) or len(w) == 0:
        raise ValueError(f"need one weight per array, got {len(arrays)} arrays, {len(w)} weights")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {w.tolist()}")
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    return np.tensordot(w / w.sum(), stacked, axes=1).astype(np.float32)


def per_class_weighted_mean(
    arrays: Sequence[np.ndarray],
    class_counts: Sequence[np.ndarray],
    previous: np.ndarray,
) -> np.ndarray:
    """Row c = Σ_k n_{k,c} P_{k,c} / Σ_k n_{k,c}; rows no client holds keep ``previous``.

    arrays: K arrays of shape (C, ...); class_counts: K arrays of shape (C,).
    Plain FedAvg would dilute class c's update by every client that never saw class c.
    """
    counts = np.stack([np.asarray(n, dtype=np.float64) for n in class_counts])  # (K, C)
    stacked = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])  # (K, C, ...)
    totals = counts.sum(axis=0)  # (C,)
    extra = (1,) * (stacked.ndim - 2)
    summed = (counts.reshape(*counts.shape, *extra) * stacked).sum(axis=0)
    held = totals > 0
    out = np.asarray(previous, dtype=np.float64).copy()
    out[held] = summed[held] / totals[held].reshape(-1, *extra)
    return out.astype(np.float32)


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
    mean = per_class_weighted_mean(arrays, group_counts, previous).astype(np.float64)
    old = np.asarray(previous, dtype=np.float64)
    return (momentum * old + (1.0 - momentum) * mean).astype(np.float32)


def prototype_means(
    sums: Sequence[np.ndarray], counts: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """μ_c = Σ_k S_{k,c} / Σ_k n_{k,c} (0 where no client holds c), and Σ_k n_{k,c}.

    A plain sum of sums and counts, so it could run under secure aggregation.
    """
    total_sum = np.sum([np.asarray(s, dtype=np.float64) for s in sums], axis=0)
    total_count = np.sum([np.asarray(n, dtype=np.int64) for n in counts], axis=0)
    means = np.zeros_like(total_sum)
    held = total_count > 0
    means[held] = total_sum[held] / total_count[held, None]
    return means.astype(np.float32), total_count.astype(np.int64)


def accuracy_summary(correct: Sequence[int], totals: Sequence[int]) -> dict[str, float]:
    """Global (pooled) accuracy, mean and worst client accuracy over clients with data."""
    pairs = [(int(c), int(n)) for c, n in zip(correct, totals, strict=True) if n > 0]
    if not pairs:
        raise ValueError("no client reported any test example")
    per_client = [c / n for c, n in pairs]
    return {
        "global-accuracy": sum(c for c, _ in pairs) / sum(n for _, n in pairs),
        "mean-client-accuracy": float(np.mean(per_client)),
        "worst-client-accuracy": float(min(per_client)),
        "num-clients": float(len(pairs)),
    }


HELD_OUT_NAMES = {
    "global-accuracy": "held-out-accuracy",
    "mean-client-accuracy": "held-out-mean-client-accuracy",
    "worst-client-accuracy": "held-out-worst-client-accuracy",
    "num-clients": "held-out-num-clients",
}


def evaluation_summary(
    correct: Sequence[int], totals: Sequence[int], held_out: Sequence[bool]
) -> dict[str, float]:
    """``accuracy_summary`` of the training clients, and apart that of the held-out ones.

    Held-out clients never train, so pooling them with the others would hide the
    generalisation gap the held-out numbers exist to show.
    """
    if not len(correct) == len(totals) == len(held_out):
        raise ValueError(
            f"need one flag per client: {len(correct)} correct, {len(totals)} totals, "
            f"{len(held_out)} held-out flags"
        )
    summary: dict[str, float] = {}
    for flag in (False, True):
        group = [(c, n) for c, n, h in zip(correct, totals, held_out, strict=True) if h == flag]
        if not any(n > 0 for _, n in group):
            continue
        part = accuracy_summary([c for c, _ in group], [n for _, n in group])
        summary.update({HELD_OUT_NAMES[k]: v for k, v in part.items()} if flag else part)
    if not summary:
        raise ValueError("no client reported any test example")
    return summary


def validation_summary(
    correct: Sequence[int | None], totals: Sequence[int | None], held_out: Sequence[bool]
) -> dict[str, float]:
    """``val-global-accuracy``, ``val-mean-client-accuracy`` and ``val-worst-client-accuracy``
    over the training clients that scored a validation split (None: no split); {} if none.

    Only training clients count: the selection they serve picks what trains best on the
    clients that train, and held-out clients keep their own, test-only, numbers.
    """
    if not len(correct) == len(totals) == len(held_out):
        raise ValueError(
            f"need one flag per client: {len(correct)} correct, {len(totals)} totals, "
            f"{len(held_out)} held-out flags"
        )
    pairs = [
        (int(c), int(n))
        for c, n, h in zip(correct, totals, held_out, strict=True)
        if not h and c is not None and n is not None and n > 0
    ]
    if not pairs:
        return {}
    part = accuracy_summary([c for c, _ in pairs], [n for _, n in pairs])
    return {f"val-{key}": value for key, value in part.items()}
