"""Reference formulas the streamed aggregation is checked against."""

from __future__ import annotations

import numpy as np


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
