"""Pure aggregation math: weighted means, per-class means, prototypes, accuracy summaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.options import ROBUST_AGGREGATIONS

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
        self._weight: np.ndarray = np.zeros(rows, dtype=np.float64)
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
        return np.asarray(mean, dtype=np.float32)

    def total_weight(self) -> np.ndarray:
        """Σ_k w_k per row (float64)."""
        return np.array(self._weight, dtype=np.float64)


# ---------------------------------------------------------------- exact sums
# Float dtypes an ``ExactSum`` takes exactly (each value is m * 2^e, |m| < 2^53).
EXACT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
# Bits per limb. A limb is an int64 that holds its 32 bits plus signed carries.
_LIMB_BITS = 32
_LIMB_MASK = (1 << _LIMB_BITS) - 1
# Each add puts |q| < 2^32 into a limb; after this many adds limbs are normalised, so that
# |limb| < 2^52 always and float64 arithmetic on limbs stays exact (see ``_add_chunk``).
_NORMALISE_EVERY = 1 << 19
# Elements per step of the conversion to float64: its work arrays (limbs + 3 rows and some
# twenty vectors) are this long, a small fraction of the limbs for a (100, 768) sum.
_RESULT_CHUNK = 256


class ExactSum:
    """An exact, order-independent running sum of float arrays of one shape.

    Why: the prototype round sums every node's per-class feature sums as the replies
    arrive. A float64 sum depends on the order of its terms, so the prototype round used
    to hold every reply until all had come, to sum them in the order sent (3.1 GB for
    10,000 nodes of 100 x 768 sums). An exact sum is the same whatever the order, so
    each reply is added on arrival and dropped.

    How: a fixed-point "superaccumulator". Limb row i holds, per element, an int64 whose
    weight is 2^(32 (low + i)); the rows span only the exponents seen so far and grow on
    demand. Adding x splits it exactly (float64 scaling by powers of two and truncation)
    into 32-bit pieces, one per limb from its highest bit down, in O(elements) array
    operations per limb; carries are normalised every ``_NORMALISE_EVERY`` adds.

    ``result()`` is the exact sum rounded once to float64 (round half to even), so it
    equals ``math.fsum`` of each element's terms, whatever order they were added in;
    only a sum below 2^-1022 (subnormal) may be rounded twice and so lie within 1 ulp.
    Inputs must be finite float16, float32 or float64 arrays (anything else is refused
    with a ValueError: e.g. float128 would not be exact).

    Memory: limbs x elements x 8 bytes (3 to 5 limbs for float32 feature sums; float64's
    whole range would take 66), two float64 vectors of up to ``chunk`` elements for the
    adds, and short work rows while ``result()`` rounds.
    """

    def __init__(self, shape: tuple[int, ...], chunk: int = _CHUNK) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self._chunk = max(1, min(chunk, max(self.size, 1)))
        self._limbs: np.ndarray = np.zeros((0, self.size), dtype=np.int64)
        self._low = 0  # absolute index of limb row 0
        self._since_normalised = 0
        self._work: tuple[np.ndarray, np.ndarray] | None = None
        self.count = 0

    @property
    def limbs(self) -> int:
        """Limb rows held: memory is limbs x elements x 8 bytes."""
        return int(self._limbs.shape[0])

    def check(self, values: np.ndarray) -> np.ndarray:
        """The values as an array, or ValueError naming the shape, dtype or non-finite
        values that an exact sum cannot take."""
        x = np.asarray(values)
        if x.shape != self.shape:
            raise ValueError(f"values have shape {x.shape}, expected {self.shape}")
        if x.dtype not in EXACT_DTYPES:
            raise ValueError(
                f"values have dtype {x.dtype}; an exact sum takes float16, float32 or float64"
            )
        if x.size:
            with np.errstate(over="ignore", invalid="ignore"):
                total = np.add.reduce(x, axis=None, dtype=np.float64)
            if not np.isfinite(total) and not np.isfinite(x).all():
                raise ValueError("values hold NaN or inf; an exact sum takes finite values only")
        return x

    def add(self, values: np.ndarray) -> None:
        """Add the values exactly (``check`` first; nothing is added if it fails)."""
        self.add_checked(self.check(values))

    def add_checked(self, x: np.ndarray) -> None:
        """``add`` of values that ``check`` returned."""
        flat = x.reshape(-1)
        for start in range(0, flat.size, self._chunk):
            self._add_chunk(flat[start : start + self._chunk], start)
        self.count += 1
        self._since_normalised += 1
        if self._since_normalised >= _NORMALISE_EVERY:
            self._normalise()

    def _scratch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if self._work is None:
            self._work = (np.empty(self._chunk), np.empty(self._chunk))
        rest, piece = self._work
        return rest[:size], piece[:size]

    def _add_chunk(self, part: np.ndarray, start: int) -> None:
        rest, piece = self._scratch(part.size)
        np.copyto(rest, part)  # float16/32 -> float64: exact
        top = max(float(rest.max()), -float(rest.min()))
        if top == 0.0:
            return
        # |x| < 2^e: its highest bit lies in limb floor((e - 1) / 32).
        limb = (int(np.frexp(top)[1]) - 1) // _LIMB_BITS
        columns = slice(start, start + part.size)
        while True:
            # rest < 2^(32 (limb + 1)) here, so piece = trunc(rest / 2^(32 limb)) has
            # |piece| < 2^32; scaling by a power of two and truncating are exact (a scaled
            # value below 2^-1022 truncates to 0 whatever its rounding), and so is
            # rest - piece * 2^(32 limb): the bits of rest below the limb.
            exponent = _LIMB_BITS * limb
            if -1022 <= exponent <= 1022:  # both powers of two are normal floats
                np.multiply(rest, 2.0**-exponent, out=piece)  # faster than ldexp
            else:
                np.ldexp(rest, -exponent, out=piece)
            np.trunc(piece, out=piece)
            row = self._row(limb)[columns]
            # int64 + float64 in float64: exact while |row| + |piece| < 2^53.
            np.add(row, piece, out=row, casting="unsafe")
            if -1022 <= exponent <= 1022:
                np.multiply(piece, 2.0**exponent, out=piece)
            else:
                np.ldexp(piece, exponent, out=piece)
            np.subtract(rest, piece, out=rest)
            if not rest.any():
                return
            limb -= 1

    def _row(self, limb: int) -> np.ndarray:
        """Limb row ``limb`` (absolute index), growing the rows to hold it."""
        rows = self._limbs.shape[0]
        if rows == 0:
            self._limbs = np.zeros((1, self.size), dtype=np.int64)
            self._low = limb
        elif limb < self._low or limb >= self._low + rows:
            low = min(self._low, limb)
            high = max(self._low + rows, limb + 1)
            grown = np.zeros((high - low, self.size), dtype=np.int64)
            grown[self._low - low : self._low - low + rows] = self._limbs
            self._limbs, self._low = grown, low
        row: np.ndarray = self._limbs[limb - self._low]
        return row

    def _normalise(self) -> None:
        """Every limb but the top into [0, 2^32), carries upward (value unchanged); a top
        limb outside [-2^32, 2^32) carries into a new row."""
        self._since_normalised = 0
        limbs = self._limbs
        for i in range(limbs.shape[0] - 1):
            carry = limbs[i] >> _LIMB_BITS
            limbs[i] &= _LIMB_MASK
            limbs[i + 1] += carry
        if (
            limbs.shape[0]
            and ((limbs[-1] >= 1 << _LIMB_BITS) | (limbs[-1] < -(1 << _LIMB_BITS))).any()
        ):
            carry = limbs[-1] >> _LIMB_BITS
            top = self._row(self._low + limbs.shape[0])
            self._limbs[-2] &= _LIMB_MASK
            top += carry

    def result(self) -> np.ndarray:
        """The exact sum rounded once to float64 (as ``math.fsum``), in the values' shape;
        0 where nothing was added. ValueError if a sum overflows float64."""
        self._normalise()
        self._work = None  # the adds' scratch; allocated again by a later add
        out = np.zeros(self.size, dtype=np.float64)
        if self._limbs.shape[0]:
            for start in range(0, self.size, _RESULT_CHUNK):
                stop = min(start + _RESULT_CHUNK, self.size)
                out[start:stop] = _rounded(self._limbs[:, start:stop], self._low)
        if not np.isfinite(out).all():
            raise ValueError("an exact sum exceeds the float64 range")
        return out.reshape(self.shape)


def _rounded(limbs: np.ndarray, low: int) -> np.ndarray:
    """Σ_i limbs[i] 2^(32 (low + i)) per column, rounded once to float64 (half to even).

    Two zero rows below and one above make room to borrow and carry; the magnitude's
    three highest non-zero 32-bit digits and a sticky bit for every digit below decide
    the 53-bit mantissa and its rounding.
    """
    rows, width = limbs.shape
    work = np.zeros((rows + 3, width), dtype=np.int64)
    work[2 : rows + 2] = limbs
    _carry(work)
    negative = work[-1] < 0  # every row below the top is in [0, 2^32)
    if negative.any():
        work[:, negative] = -work[:, negative]
        _carry(work)
    nonzero = work != 0
    held = nonzero.any(axis=0)
    top = work.shape[0] - 1 - np.argmax(nonzero[::-1], axis=0)  # highest non-zero digit
    top = np.where(held, top, 2)
    cols = np.arange(width)
    d2 = work[top, cols].astype(np.uint64)
    d1 = work[top - 1, cols].astype(np.uint64)
    d0 = work[top - 2, cols].astype(np.uint64)
    below = np.logical_or.accumulate(nonzero, axis=0)[np.maximum(top - 3, 0), cols] & (top >= 3)
    bits = np.frexp(d2.astype(np.float64))[1].astype(np.uint64)  # bit length of d2: 1..32
    bits = np.where(held, bits, np.uint64(1))
    # The 64 highest bits of d2 d1 d0 (32 + bits + 32 bits long), and whether any is lost.
    word = ((d2 << np.uint64(32)) | d1) << (np.uint64(32) - bits)
    word |= d0 >> bits
    lost = (d0 & ((np.uint64(1) << bits) - np.uint64(1))) != 0
    mantissa = word >> np.uint64(11)
    half = (word >> np.uint64(10)) & np.uint64(1)
    sticky = ((word & np.uint64(0x3FF)) != 0) | lost | below
    mantissa += half & (sticky | ((mantissa & np.uint64(1)) == 1)).astype(np.uint64)
    # d0's unit is 2^(32 (low - 2 + top - 2)); the mantissa's is bits + 11 above it.
    exponent = _LIMB_BITS * (low - 4 + top) + bits.astype(np.int64) + 11
    with np.errstate(over="ignore"):
        value: np.ndarray = np.ldexp(mantissa.astype(np.float64), exponent.astype(np.int32))
    value[negative] = -value[negative]
    value[~held] = 0.0
    return value


def _carry(work: np.ndarray) -> None:
    """Every row but the top into [0, 2^32), carries upward (value unchanged)."""
    for i in range(work.shape[0] - 1):
        carry = work[i] >> _LIMB_BITS
        work[i] &= _LIMB_MASK
        work[i + 1] += carry


# Counts up to this times a float32 mean are exact in float64 (24 + 29 = 53 bits).
_EXACT_COUNT = 1 << 29


class PrototypeTally:
    """The prototype round's running totals: Σ_k S_{k,c} (exact, ``ExactSum``), Σ_k n_{k,c}
    (int64) and the number of clients added.

    Replies are added as they arrive and never kept; as the sum is exact, ``means()`` has
    the same bits whatever order they came in. ``dim`` None: a counts-only round (no sums).
    """

    def __init__(self, num_classes: int, dim: int | None = None) -> None:
        if num_classes < 1 or (dim is not None and dim < 1):
            raise ValueError(f"num_classes = {num_classes} and dim = {dim} must be >= 1")
        self.num_classes = int(num_classes)
        self.dim = None if dim is None else int(dim)
        self._sums = None if dim is None else ExactSum((self.num_classes, int(dim)))
        self._counts = np.zeros(self.num_classes, dtype=np.int64)
        self.clients = 0

    @property
    def counts(self) -> np.ndarray:
        """Σ_k n_{k,c} (int64, a copy)."""
        return np.array(self._counts, dtype=np.int64)

    def _checked_counts(self, counts: np.ndarray) -> np.ndarray:
        n = np.asarray(counts)
        if n.shape != (self.num_classes,) or not np.issubdtype(n.dtype, np.integer):
            raise ValueError(
                f"counts of dtype {n.dtype} and shape {n.shape}: expected "
                f"{self.num_classes} integers"
            )
        if (n < 0).any():
            raise ValueError(f"counts must be >= 0, got {n.tolist()}")
        return n.astype(np.int64)

    def add(self, sums: np.ndarray | None, counts: np.ndarray) -> None:
        """One client's feature sums (C, D) (None for a counts-only tally; float64 sums are
        rounded to float32 first) and counts (C,): all checked first, so that a refused one
        (ValueError) changes nothing."""
        n = self._checked_counts(counts)
        if (sums is None) != (self._sums is None):
            raise ValueError(
                "a counts-only tally takes no sums"
                if self._sums is None
                else "this tally needs each client's feature sums"
            )
        if self._sums is not None:
            values = np.asarray(sums)
            if values.dtype == np.float64:
                # Rounded to float32 (the prototypes' dtype) so that the work and memory a
                # reply costs stay bounded whatever a node sends: a float32 value spans at
                # most 9 limbs, a float64 one up to 66.
                with np.errstate(over="ignore"):
                    values = values.astype(np.float32)
            self._sums.add_checked(self._sums.check(values))
        self._counts += n
        self.clients += 1

    def add_total(self, sums: np.ndarray | None, counts: np.ndarray, clients: int) -> None:
        """The totals of ``clients`` clients at once (a secure aggregation's result, which
        no client's own values reach): sums (C, D) float64 kept as they are, counts (C,)."""
        n = self._checked_counts(counts)
        if clients < 1:
            raise ValueError(f"clients = {clients} must be >= 1")
        if (sums is None) != (self._sums is None):
            raise ValueError(
                "a counts-only tally takes no sums"
                if self._sums is None
                else "this tally needs the clients' feature sums"
            )
        if self._sums is not None:
            self._sums.add_checked(self._sums.check(np.asarray(sums, dtype=np.float64)))
        self._counts += n
        self.clients += clients

    def add_means(self, means: np.ndarray, counts: np.ndarray) -> None:
        """An earlier result: μ_c n_c for each class, exactly (μ float32 values: the
        state's; counts split below 2^29 so that every product is exact). Not a client."""
        if self._sums is None:
            raise ValueError("a counts-only tally takes no means")
        n = self._checked_counts(counts)
        mu = np.asarray(means)
        if mu.shape != (self.num_classes, self.dim):
            raise ValueError(
                f"means have shape {mu.shape}, expected {(self.num_classes, self.dim)}"
            )
        if mu.dtype not in EXACT_DTYPES:
            raise ValueError(f"means have dtype {mu.dtype}; expected float32 values")
        with np.errstate(over="ignore", invalid="ignore"):
            single = mu.astype(np.float32)
        if mu.dtype == np.float64 and not np.array_equal(single, mu):
            raise ValueError(
                "means are not float32 values: mean x count would not be exact in float64"
            )
        if (n >= _EXACT_COUNT * _EXACT_COUNT).any():
            raise ValueError(f"counts must be < 2^58 to fold exactly, got {int(n.max())}")
        mu64 = single.astype(np.float64)
        self._sums.check(mu64)
        high, low = n // _EXACT_COUNT, n % _EXACT_COUNT
        self._sums.add_checked(mu64 * low[:, None])
        if high.any():
            self._sums.add_checked(mu64 * (high * _EXACT_COUNT)[:, None].astype(np.float64))
        self._counts += n

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """μ_c = Σ_k S_{k,c} / Σ_k n_{k,c} as float32 (0 where no client holds c), and
        Σ_k n_{k,c} as int64."""
        if self._sums is None:
            raise ValueError("a counts-only tally has no sums to average")
        total = self._sums.result()
        means = np.zeros_like(total)
        held = self._counts > 0
        means[held] = total[held] / self._counts[held, None]
        return means.astype(np.float32), self.counts


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


def ccmp_summary(
    prior_correct: Sequence[int | None],
    uniform_correct: Sequence[int | None],
    totals: Sequence[int],
    held_out: Sequence[bool],
) -> dict[str, float]:
    """The CCMP-as-classifier accuracies (PEP-FedPT's zero-training diagnostic) of the
    clients that reported them (None: not reported): per prior (``prior``: the client's
    own, ``uniform``), ``ccmp-<prior>-accuracy`` (pooled) and
    ``ccmp-<prior>-mean-client-accuracy`` over the training clients, and the same with a
    ``held-out-`` prefix over the held-out ones; {} if none reported them."""
    if not len(prior_correct) == len(uniform_correct) == len(totals) == len(held_out):
        raise ValueError(
            f"need one of each per client: {len(prior_correct)} prior counts, "
            f"{len(uniform_correct)} uniform counts, {len(totals)} totals, "
            f"{len(held_out)} held-out flags"
        )
    summary: dict[str, float] = {}
    for name, correct in (("prior", prior_correct), ("uniform", uniform_correct)):
        for flag, prefix in ((False, ""), (True, "held-out-")):
            pairs = [
                (int(c), int(n))
                for c, n, h in zip(correct, totals, held_out, strict=True)
                if h == flag and c is not None and n > 0
            ]
            if not pairs:
                continue
            part = accuracy_summary([c for c, _ in pairs], [n for _, n in pairs])
            summary[f"{prefix}ccmp-{name}-accuracy"] = part["global-accuracy"]
            summary[f"{prefix}ccmp-{name}-mean-client-accuracy"] = part["mean-client-accuracy"]
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


# ---------------------------------------------------------------- robust aggregation


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
