"""Robust aggregation rules: the coordinate-wise median and trimmed mean of the replies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.options import ROBUST_AGGREGATIONS


def robust_value(
    values: Sequence[np.ndarray],
    weights: Sequence[float | np.ndarray],
    previous: np.ndarray,
    how: str,
    trim_fraction: float = 0.1,
) -> np.ndarray:
    """Coordinate-wise ``median`` or ``trimmed-mean`` (Flower's ``trim_mean``: the
    ``trim_fraction`` largest and smallest values of each coordinate left out) of the
    replies' values, as float32. Unweighted: one enormous reply moves a coordinate no
    further than the next honest one. A number as weight: every reply counts (0 too, as
    FedAvg's n_k is never 0); one weight per row (per-class or per-group rows): a row's
    value comes from the replies that weigh it (> 0), and rows none weighs keep
    ``previous``. The result depends on the set of replies, not their order."""
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

    if how not in ROBUST_AGGREGATIONS[1:]:
        raise ValueError(f"how = {how!r}: use one of {', '.join(ROBUST_AGGREGATIONS[1:])}")

    def reduce(stack: np.ndarray) -> np.ndarray:
        if how == "median":
            return np.asarray(np.median(stack, axis=0))
        return trim_mean(stack, trim_fraction)

    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    rows = [np.asarray(w, dtype=np.float64) for w in weights]
    if all(w.ndim == 0 for w in rows):
        return reduce(stacked).astype(np.float32)
    result = np.array(previous, dtype=np.float64)
    held = np.stack([np.broadcast_to(w, (stacked.shape[1],)) for w in rows]) > 0
    for row in range(stacked.shape[1]):
        if held[:, row].any():
            result[row] = reduce(stacked[held[:, row], row])
    return result.astype(np.float32)
