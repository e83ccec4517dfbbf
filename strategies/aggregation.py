"""Running sums of the replies: ``RunningMean`` (weighted means in float64) and ``ExactSum``
(an exact, order-independent sum). The prototype round's totals are in ``strategies.tally``,
the metric summaries in ``strategies.summaries``, the robust rules in ``strategies.robust``."""

from __future__ import annotations

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
