"""Checks on one client's reply. Each returns None when the reply is usable, else why not.

A reply that fails any check is dropped whole: the global state never sees any part of it.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, MetricRecordValues, RecordDict
from flwr.common.constant import SType

from strategies import wire
from strategies.aggregation import EXACT_DTYPES

# Typed views of a reply whose check passed: the check saw each record and value of the
# type named, so these only tell the type checker (no cost, nothing checked again).


def reply_metrics(content: RecordDict) -> MetricRecord:
    """The ``metrics`` record of a checked reply."""
    return cast(MetricRecord, content[wire.METRICS])


def reply_arrays(content: RecordDict) -> ArrayRecord:
    """The ``arrays`` record of a checked train reply."""
    return cast(ArrayRecord, content[wire.ARRAYS])


def number(value: MetricRecordValues) -> float:
    """A scalar metric of a checked reply (an int or a float) as a float."""
    return float(cast(float, value))


def integer(value: MetricRecordValues) -> int:
    """A scalar metric of a checked reply (an int, or a float such as 0.0) as an int."""
    return int(cast(float, value))


def optional_count(metrics: MetricRecord, key: str) -> int | None:
    """A count a checked reply may carry (``check_evaluate_reply``: an int), or None."""
    return cast("int | None", metrics.get(key))


# Far above any real partition; a count beyond it is a corrupt or hostile reply.
MAX_EXAMPLES_PER_CLIENT = 10**9


def check_arrays(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    dtypes: tuple[np.dtype, ...] | None = None,
) -> str | None:
    """Exactly the expected keys, each with the expected shape, float (one of ``dtypes``
    if given: the strategy's ``fed.wire-dtype``), all finite."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        return f"keys differ from the global state (missing {missing}, unexpected {extra})"
    for key, shape in expected.items():
        value = arrays[key]
        if tuple(value.shape) != tuple(shape):
            return f"{key} has shape {tuple(value.shape)}, expected {tuple(shape)}"
        if value.dtype.kind != "f":
            return f"{key} has dtype {value.dtype}, expected a float type"
        if dtypes is not None and value.dtype not in dtypes:
            return (
                f"{key} has dtype {value.dtype}, but the wire dtype (fed.wire-dtype) accepts "
                f"{', '.join(str(d) for d in dtypes)}"
            )
        if not all_finite(value):
            return f"{key} holds non-finite values (NaN or inf)"
    return None


def all_finite(value: np.ndarray) -> bool:
    """Whether every element is finite, in one read of the array and without a copy.

    A sum of floats is non-finite when any term is (NaN and ±inf propagate through
    addition), so a finite sum settles it; a non-finite one (or one that overflowed) is
    confirmed element by element.
    """
    if value.size == 0:
        return True
    # Half floats summed in float32: their own sum overflows past 65504.
    wide = np.float32 if value.dtype.kind == "f" and value.dtype.itemsize < 4 else None
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(value, axis=None, dtype=wide)
    if np.isfinite(total):
        return True
    return bool(np.isfinite(value).all())


def check_class_counts(counts: object, num_examples: object, num_classes: int) -> str | None:
    """C non-negative integers that add up to num-examples, which is a positive int."""
    if not isinstance(num_examples, int) or isinstance(num_examples, bool):
        return f"{wire.NUM_EXAMPLES} = {num_examples!r} is not an integer"
    if not 0 < num_examples <= MAX_EXAMPLES_PER_CLIENT:
        return f"{wire.NUM_EXAMPLES} = {num_examples} is outside 1..{MAX_EXAMPLES_PER_CLIENT}"
    return _check_counts(wire.CLASS_COUNTS, counts, num_examples, num_classes)


def check_group_counts(counts: object, num_examples: object, num_groups: int) -> str | None:
    """SGPT: G non-negative integers that add up to num-examples (each example selects
    exactly one group), so that no node can claim more weight for a group than it has data.
    """
    if counts is None:
        return f"reply lacks {wire.GROUP_COUNTS} (SGPT's per-group example counts)"
    if not isinstance(num_examples, int) or isinstance(num_examples, bool):
        return f"{wire.NUM_EXAMPLES} = {num_examples!r} is not an integer"
    return _check_counts(wire.GROUP_COUNTS, counts, num_examples, num_groups)


def _check_counts(name: str, counts: object, total: int, size: int) -> str | None:
    """``size`` non-negative integers (so finite) that add up to ``total``."""
    values = np.asarray(counts)
    if values.shape != (size,):
        return f"{name} has shape {values.shape}, expected ({size},)"
    if not np.issubdtype(values.dtype, np.integer) or np.any(values < 0):
        return f"{name} must be {size} non-negative integers, got {values.tolist()}"
    if int(values.sum()) != total:
        return f"{name} add up to {int(values.sum())}, not {total} ({wire.NUM_EXAMPLES})"
    return None


def check_known_counts(counts: object, known: list[int] | None) -> str | None:
    """Train counts must equal the n_{k,c} the node sent in the prototype round.

    A node's data does not change within a run; counts that self-consistently claim more
    examples would otherwise let one node outweigh all others. ``known`` None: the node's
    counts were never verified (it missed the prototype round), so its reply is refused.
    """
    if known is None:
        return (
            "this node's class counts were never verified (no valid prototype-round reply); "
            "it is asked for them before it may train"
        )
    if np.asarray(counts).tolist() != list(known):
        return (
            f"{wire.CLASS_COUNTS} differ from the counts this node reported in the "
            f"prototype round (sum {int(np.asarray(counts).sum())} vs {sum(known)})"
        )
    return None


def array_view(array: Array) -> np.ndarray:
    """What ``array.numpy()`` returns, as a read-only view of the array's bytes (no copy).

    The .npy header Flower wrote is parsed by numpy's own (safe, never unpickling) header
    reader, once per distinct header: every reply of a round repeats the same few.
    """
    if array.stype != SType.NUMPY:
        raise TypeError(f"unsupported serialization type {array.stype!r} (expected numpy)")
    data = array.data
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise ValueError("not a .npy payload (no numpy magic string)")
    major, size_bytes = data[6], 2 if data[6] == 1 else 4
    start = 8 + size_bytes
    header_end = start + int.from_bytes(data[8:start], "little")
    if major not in (1, 2) or len(data) < header_end:
        return array.numpy()  # version 3 (structured dtypes) or cut short: numpy decides
    shape, fortran_order, dtype = _npy_header(bytes(data[:header_end]))
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_end)
    return flat.reshape(shape, order="F" if fortran_order else "C")


@functools.lru_cache(maxsize=4096)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of a .npy header (magic, length and header bytes)."""
    stream = io.BytesIO(prefix)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects; refused")
    return tuple(shape), bool(fortran_order), dtype


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of a record as a read-only view (``array_view``)."""
    return {key: array_view(array) for key, array in record.items()}


def check_train_reply(
    content: RecordDict,
    expected: Mapping[str, tuple[int, ...]],
    num_classes: int,
    decoded: dict[str, np.ndarray] | None = None,
    dtypes: tuple[np.dtype, ...] | None = None,
) -> str | None:
    """A train reply: trainable arrays as in the global state, and consistent counts.

    ``decoded``, if given, receives the reply's arrays (views, decoded once here) so that
    the caller merges what was checked without decoding it again; ``dtypes``, if given,
    the float dtypes the arrays may have.
    """
    arrays = content.get(wire.ARRAYS)
    metrics = content.get(wire.METRICS)
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        return f"reply needs an ArrayRecord {wire.ARRAYS!r} and a MetricRecord {wire.METRICS!r}"
    values = record_arrays(arrays)
    if decoded is not None:
        decoded.update(values)
    reason = check_arrays(values, expected, dtypes)
    if reason:
        return reason
    loss = metrics.get(wire.TRAIN_LOSS, 0.0)
    if not isinstance(loss, int | float) or not np.isfinite(loss):
        return f"{wire.TRAIN_LOSS} = {loss!r} is not a finite number"
    return check_class_counts(
        metrics.get(wire.CLASS_COUNTS), metrics.get(wire.NUM_EXAMPLES), num_classes
    )


def check_prototype_reply(content: RecordDict, num_classes: int, dim: int | None) -> str | None:
    """A prototype reply: per-class feature sums (C, D) and counts (C,), optional flags.

    ``dim = None``: a counts-only prototype-round reply, which carries no sums.
    """
    proto = content.get(wire.PROTO)
    metrics = content.get(wire.METRICS)
    if not isinstance(proto, ArrayRecord) or not isinstance(metrics, MetricRecord):
        return f"reply needs an ArrayRecord {wire.PROTO!r} and a MetricRecord {wire.METRICS!r}"
    partition_id, held_out = metrics.get(wire.PARTITION_ID, 0), metrics.get(wire.HELD_OUT, 0)
    if not isinstance(partition_id, int) or isinstance(partition_id, bool) or partition_id < 0:
        return f"{wire.PARTITION_ID} = {partition_id!r} is not a non-negative integer"
    if held_out not in (0, 1) or isinstance(held_out, float):
        return f"{wire.HELD_OUT} = {held_out!r} is neither 0 nor 1"
    arrays = record_arrays(proto)
    counts = arrays.pop(wire.PROTO_COUNT, None)
    reason = check_arrays(arrays, {} if dim is None else {wire.PROTO_SUM: (num_classes, dim)})
    if reason:
        return reason
    sums = arrays.get(wire.PROTO_SUM)
    if sums is not None and sums.dtype not in EXACT_DTYPES:
        # The server sums them exactly (strategies.aggregation.ExactSum) from these only.
        return f"{wire.PROTO_SUM} has dtype {sums.dtype}, expected float16, float32 or float64"
    if sums is not None and sums.dtype == np.float64 and sums.size:
        # The server rounds float64 sums to float32 (PrototypeTally.add): beyond it, inf.
        largest = float(np.abs(sums).max())
        if largest > float(np.finfo(np.float32).max):
            return f"{wire.PROTO_SUM} holds {largest:g}, beyond float32's range (3.4e38)"
    return check_class_counts(counts, metrics.get(wire.NUM_EXAMPLES), num_classes)


def check_evaluate_reply(content: RecordDict) -> str | None:
    """An evaluate reply: 0 <= correct <= num-examples, both integers."""
    metrics = content.get(wire.METRICS)
    if not isinstance(metrics, MetricRecord):
        return f"reply needs a MetricRecord {wire.METRICS!r}"
    total, correct = metrics.get(wire.NUM_EXAMPLES), metrics.get(wire.CORRECT)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (total, correct)):
        return f"{wire.NUM_EXAMPLES} and {wire.CORRECT} must be integers"
    assert isinstance(total, int) and isinstance(correct, int)
    if not 0 <= correct <= total <= MAX_EXAMPLES_PER_CLIENT:
        return f"{wire.CORRECT} = {correct} with {wire.NUM_EXAMPLES} = {total} is impossible"
    return check_validation_counts(metrics) or check_ccmp_counts(metrics)


def check_validation_counts(metrics: MetricRecord) -> str | None:
    """The optional validation counts of an evaluate reply: both absent (no validation
    split), or two integers with 0 <= val-correct <= val-num-examples."""
    present = [key in metrics for key in (wire.VAL_NUM_EXAMPLES, wire.VAL_CORRECT)]
    if not any(present):
        return None
    if not all(present):
        return f"{wire.VAL_NUM_EXAMPLES} and {wire.VAL_CORRECT} come together or not at all"
    total, correct = metrics[wire.VAL_NUM_EXAMPLES], metrics[wire.VAL_CORRECT]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (total, correct)):
        return f"{wire.VAL_NUM_EXAMPLES} and {wire.VAL_CORRECT} must be integers"
    assert isinstance(total, int) and isinstance(correct, int)
    if not 0 <= correct <= total <= MAX_EXAMPLES_PER_CLIENT:
        return (
            f"{wire.VAL_CORRECT} = {correct} with {wire.VAL_NUM_EXAMPLES} = {total} is impossible"
        )
    return None


def update_norm(arrays: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> float:
    """‖reply − sent‖₂ over every key the two share, in float64: how far one client moved
    the state it was sent (keys it was not sent are left out)."""
    total = 0.0
    for key, value in arrays.items():
        reference = sent.get(key)
        if reference is None or np.shape(reference) != np.shape(value):
            continue
        diff = np.subtract(value, reference, dtype=np.float64).reshape(-1)
        # Not np.dot: OpenBLAS threads its dot, and on a busy machine its threads wait on
        # each other (7.6 ms for 76,800 values on a loaded 2-core machine, 12 µs in one
        # thread); einsum's own loop never calls BLAS.
        total += float(np.einsum("i,i->", diff, diff))
    return math.sqrt(total)


def norm_bound(norms: Sequence[float], max_norm: float, factor: float) -> tuple[float, str]:
    """The largest update norm a round accepts, and in words where that bound comes from.

    ``max_norm`` (0: none) bounds every update; ``factor`` (0: none) × the round's median
    update norm bounds it relative to the others. The median is the lower one of an even
    count (``statistics.median_low``): with two replies, one enormous update cannot lift
    the bound to half of itself.
    """
    bound, why = math.inf, ""
    if max_norm > 0:
        bound, why = max_norm, f"fed.max-update-norm = {max_norm:g}"
    median = sorted(norms)[(len(norms) - 1) // 2] if norms else 0.0
    if factor > 0 and median > 0:  # a round whose median client did not move: no scale
        relative = factor * median
        if relative < bound:
            bound = relative
            why = (
                f"fed.update-norm-factor = {factor:g} x the round's median update norm "
                f"{median:.4g} of {len(norms)} replies"
            )
    return bound, why


def check_update_norm(norm: float, bound: float, why: str) -> str | None:
    """An update no larger than the round's bound (``norm_bound``)."""
    if norm <= bound:
        return None
    return f"update norm {norm:.4g} exceeds the bound {bound:.4g} ({why})"


def check_ccmp_counts(metrics: MetricRecord) -> str | None:
    """The optional CCMP-as-classifier counts of an evaluate reply (PEP-FedPT): both absent,
    or two integers, each between 0 and num-examples (they count the same test examples)."""
    keys = (wire.CCMP_PRIOR_CORRECT, wire.CCMP_UNIFORM_CORRECT)
    present = [key in metrics for key in keys]
    if not any(present):
        return None
    if not all(present):
        return f"{keys[0]} and {keys[1]} come together or not at all"
    total = metrics[wire.NUM_EXAMPLES]
    for key in keys:
        value = metrics[key]
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{key} must be an integer, got {value!r}"
        assert isinstance(total, int)
        if not 0 <= value <= total:
            return f"{key} = {value} with {wire.NUM_EXAMPLES} = {total} is impossible"
    return None
