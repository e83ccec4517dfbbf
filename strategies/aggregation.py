"""Pure aggregation math: weighted means, per-class means, prototypes, accuracy summaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Elements per step of ``RunningMean.add``: the float64 product of one step (1 MiB at
# most) stays in the cache between the multiply and the add.
_CHUNK = 1 << 17


def scratch_buffer(size: int = _CHUNK) -> np.ndarray:
    """A float64 work array for ``RunningMean``s of arrays of up to ``size`` elements (any
    size for the default: ``add`` works in steps of at most that many)."""
    return np.empty(min(max(size, 1), _CHUNK), dtype=np.float64)


class RunningMean:
    """Σ_k w_k x_k / Σ_k w_k, row by row, one reply at a time (a running sum).

    ``add(x, w)`` takes a number w (FedAvg's n_k: every row weighs w) or one weight per
    row, i.e. along the first axis (PEP-FedPT's n_{k,c}, SGPT's n_{k,g}). Rows whose
    weights add up to 0 keep ``previous``. Sums are kept in float64, one array of the
    state's shape, so memory does not grow with the number of replies; the result is
    float32. The sum is exact up to float64 rounding, so the result depends on the order
    of the replies only below float32 rounding (callers that need bit-identical results
    add in a fixed order: the strategies add by node id).
    """

    def __init__(self, previous: np.ndarray, scratch: np.ndarray | None = None) -> None:
        self.previous = np.asarray(previous)
        self.shape = self.previous.shape
        self._sum = np.zeros(self.shape, dtype=np.float64)
        rows = self.shape[0] if self.shape else 1
        self._weight = np.zeros(rows, dtype=np.float64)
        # Where w·x is formed before it is added; running means that are never used at
        # the same time may share one (``scratch_buffer``).
        size = min(max(self._sum.size, 1), _CHUNK)
        if scratch is None or scratch.dtype != np.float64 or scratch.size < size:
            scratch = scratch_buffer(size)
        self._buffer = scratch.reshape(-1)
        self.count = 0

    def check(self, value: np.ndarray, weight: float | np.ndarray) -> np.ndarray:
        """Raise ValueError unless ``add(value, weight)`` would succeed; the weight as
        float64. Callers that add several arrays of one reply check them all first, so
        that a refused one leaves every sum as it was."""
        shape = np.shape(value)
        if shape != self.shape:
            raise ValueError(f"value has shape {shape}, expected {self.shape}")
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim == 0:
            if not (np.isfinite(w) and w >= 0):
                raise ValueError(f"weight = {float(w)!r} must be a finite number >= 0")
            return w
        if w.shape != self._weight.shape or not self.shape:
            raise ValueError(
                f"row weights have shape {w.shape}, expected ({self._weight.size},) "
                f"for values of shape {self.shape}"
            )
        # NaN fails ">= 0"; then a finite sum of non-negative numbers rules out inf.
        if not ((w >= 0).all() and np.isfinite(w.sum())):
            raise ValueError(f"row weights must be finite and >= 0, got {w.tolist()}")
        return w

    def add(self, value: np.ndarray, weight: float | np.ndarray) -> None:
        """Add w·x to the sum (x of the state's shape, any float dtype, never copied)."""
        self.add_checked(value, self.check(value, weight))

    def add_checked(self, value: np.ndarray, w: np.ndarray) -> None:
        """``add`` with a weight that ``check(value, weight)`` returned."""
        x = np.asarray(value)
        if w.ndim == 0:
            self._add_scaled(x, float(w))
        else:
            self._add_row_scaled(x, w)
        self._weight += w
        self.count += 1

    def _add_scaled(self, x: np.ndarray, w: float) -> None:
        self._add_scaled_into(x.reshape(-1), w, self._sum.reshape(-1))

    def _add_scaled_into(self, flat: np.ndarray, w: float, total: np.ndarray) -> None:
        for start in range(0, flat.size, _CHUNK):
            part = flat[start : start + _CHUNK]
            product = self._buffer[: part.size]
            np.copyto(product, part)  # float32 -> float64: exact
            np.multiply(product, w, out=product)
            np.add(total[start : start + _CHUNK], product, out=total[start : start + _CHUNK])

    def _add_row_scaled(self, x: np.ndarray, w: np.ndarray) -> None:
        if x.size == 0:
            return
        rows = x.reshape(self.shape[0], -1)
        total = self._sum.reshape(rows.shape)
        if rows.shape[1] > _CHUNK:  # long rows: one row at a time, in steps
            for row in np.flatnonzero(w):
                self._add_scaled_into(rows[row], float(w[row]), total[row])
            return
        step = max(_CHUNK // max(rows.shape[1], 1), 1)
        for first in range(0, rows.shape[0], step):
            part = rows[first : first + step]
            product = self._buffer[: part.size].reshape(part.shape)
            np.copyto(product, part)
            np.multiply(product, w[first : first + step, None], out=product)
            np.add(total[first : first + step], product, out=total[first : first + step])

    def result(self, momentum: float = 0.0) -> np.ndarray:
        """The mean as float32: m · previous + (1 − m) · mean on rows with weight, and
        ``previous`` on rows without (m = 0: the plain mean)."""
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum = {momentum!r} must be in [0, 1)")
        held = self._weight > 0
        if not held.any():
            return np.array(self.previous, dtype=np.float32)
        extra = (1,) * (len(self.shape) - 1)
        weight = self._weight.reshape(-1, *extra) if self.shape else self._weight[0]
        if held.all():
            mean = self._sum / weight
        else:  # rows nobody weighed: previous (never divided by their zero weight)
            mean = np.array(self.previous, dtype=np.float64)
            np.divide(self._sum, weight, out=mean, where=held.reshape(-1, *extra))
        if momentum:
            previous = np.asarray(self.previous, dtype=np.float64)
            mixed = momentum * previous + (1.0 - momentum) * mean
            mean = mixed if held.all() else np.where(held.reshape(-1, *extra), mixed, previous)
        return mean.astype(np.float32)

    def total_weight(self) -> np.ndarray:
        """Σ_k w_k per row (float64)."""
        return self._weight.copy()


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

    A plain sum of sums and counts, so it could run under secure aggregation. Summed in
    place, one client after the other (the order and bits of a sum over the stacked
    clients), so memory is one float64 (C, D) array, not one per client: the prototype
    round asks every connected node, and 10,000 nodes of 100 x 768 sums stacked in
    float64 would take 6 GB (docs/scale.md).
    """
    if len(sums) == 0 or len(sums) != len(counts):
        raise ValueError(f"{len(sums)} sums and {len(counts)} counts: one of each per client")
    total_sum = np.array(sums[0], dtype=np.float64)
    total_count = np.array(counts[0], dtype=np.int64)
    for client_sum, client_count in zip(sums[1:], counts[1:], strict=True):
        total_sum += client_sum
        total_count += client_count
    means = np.zeros_like(total_sum)
    held = total_count > 0
    means[held] = total_sum[held] / total_count[held, None]
    return means.astype(np.float32), total_count.astype(np.int64)


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
    earlier = np.asarray(means, dtype=np.float64) * np.asarray(counts, dtype=np.int64)[:, None]
    return prototype_means([earlier, *sums], [np.asarray(counts), *new_counts])


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
