"""``aggregate_train`` on many replies, through the real strategy and real Flower messages:
the streamed merge equals the stacked float64 formula, depends on the set of replies and
not on their arrival order, leaves bad replies out, and keeps its memory to a small
multiple of one state however many replies there are. The replies are
``server_app/synthetic_replies.py``'s (those ``bench/probes/aggregate.py`` times), with a
small width so that the tests run in seconds.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from helpers.reference import stacked_mean

from server_app.synthetic_replies import build, pep_strategy
from strategies import wire
from strategies.pep_fedpt import PEPFedPT
from strategies.validation import all_finite, array_view, record_arrays

DIM, NUM_CLASSES = 16, 10


def _aggregate(
    global_state: ArrayRecord, known: dict[int, list[int]], replies: list[Message]
) -> tuple[dict[str, np.ndarray], dict]:
    strategy = pep_strategy(global_state, known)
    state, metrics = strategy.aggregate_train(1, replies)
    assert state is not None and metrics is not None
    return record_arrays(state), dict(metrics)


def _reference(global_state: ArrayRecord, replies: list[Message]) -> dict[str, np.ndarray]:
    """The formula before streaming: every reply stacked in float64, key by key."""
    previous = record_arrays(global_state)
    updates = [record_arrays(msg.content[wire.ARRAYS]) for msg in replies]
    metrics = [msg.content[wire.METRICS] for msg in replies]
    sizes = [m[wire.NUM_EXAMPLES] for m in metrics]
    counts = [np.asarray(m[wire.CLASS_COUNTS]) for m in metrics]
    out = {}
    for key in updates[0]:
        weights = counts if wire.is_class_prompt(key) else sizes
        out[key] = stacked_mean([u[key] for u in updates], weights, previous[key])
    return out


def test_the_streamed_merge_equals_the_stacked_float64_mean_within_float32_rounding() -> None:
    global_state, known, replies = build(12, seed=1, dim=DIM, num_classes=NUM_CLASSES)
    state, metrics = _aggregate(global_state, known, replies)
    expected = _reference(global_state, replies)
    assert set(state) == set(expected) | {wire.PROTO_MEAN, wire.PROTO_COUNT}
    for key, value in expected.items():
        assert state[key].dtype == np.float32, key
        np.testing.assert_array_max_ulp(state[key], value, maxulp=1)
    sizes = [msg.content[wire.METRICS][wire.NUM_EXAMPLES] for msg in replies]
    losses = [msg.content[wire.METRICS][wire.TRAIN_LOSS] for msg in replies]
    assert metrics[wire.NUM_EXAMPLES] == sum(sizes)
    assert metrics[wire.TRAIN_LOSS] == pytest.approx(np.average(losses, weights=sizes))
    # the global-only keys pass through untouched
    np.testing.assert_array_equal(state[wire.PROTO_MEAN], global_state[wire.PROTO_MEAN].numpy())


def test_the_result_does_not_depend_on_the_order_the_replies_arrived_in() -> None:
    global_state, known, replies = build(12, seed=2, dim=DIM, num_classes=NUM_CLASSES)
    first, first_metrics = _aggregate(global_state, known, replies)
    rng = random.Random(0)
    for _ in range(3):
        shuffled = list(replies)
        rng.shuffle(shuffled)
        state, metrics = _aggregate(global_state, known, shuffled)
        assert metrics == first_metrics
        for key, value in first.items():
            np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_bad_replies_stay_out_of_the_running_sums() -> None:
    global_state, known, replies = build(8, seed=3, dim=DIM, num_classes=NUM_CLASSES)
    _, _, spoilt = build(8, seed=3, dim=DIM, num_classes=NUM_CLASSES)
    key = wire.class_prompt_key(4)
    arrays = spoilt[2].content[wire.ARRAYS]  # node 1002: a NaN in one class prompt
    value = arrays[key].numpy()
    value.flat[5] = np.nan
    arrays[key] = Array(value)
    metrics = spoilt[5].content[wire.METRICS]  # node 1005: counts it never reported
    metrics[wire.CLASS_COUNTS] = [2 * n for n in metrics[wire.CLASS_COUNTS]]
    metrics[wire.NUM_EXAMPLES] = 2 * metrics[wire.NUM_EXAMPLES]

    strategy = pep_strategy(global_state, known)
    state, metrics_out = strategy.aggregate_train(1, list(reversed(spoilt)))
    assert state is not None and metrics_out is not None
    assert [(node, why.split(" ")[0]) for _, node, why in strategy.dropped] == [
        (1002, key),
        (1005, wire.CLASS_COUNTS),
    ]
    assert "non-finite" in strategy.dropped[0][2]
    assert metrics_out["valid-replies"] == 6 and metrics_out["dropped-replies"] == 2
    good = [msg for k, msg in enumerate(replies) if k not in (2, 5)]
    expected, _ = _aggregate(global_state, known, good)
    for name, value in expected.items():
        np.testing.assert_array_equal(record_arrays(state)[name], value, err_msg=name)


def _peak_bytes(num_clients: int) -> tuple[int, int]:
    global_state, known, replies = build(num_clients, seed=4, dim=64, num_classes=20)
    strategy = pep_strategy(global_state, known)
    tracemalloc.start()
    tracemalloc.reset_peak()
    state, _ = strategy.aggregate_train(1, replies)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert state is not None
    trainable = record_arrays(replies[0].content[wire.ARRAYS])
    return peak, sum(value.nbytes for value in trainable.values())


def test_peak_memory_stays_a_small_multiple_of_one_state_however_many_replies() -> None:
    few, state_bytes = _peak_bytes(8)
    many, _ = _peak_bytes(48)
    # Stacking the 48 replies in float64 alone would take 96 states.
    assert many < 6 * state_bytes, (many, state_bytes)
    assert many < 1.5 * few, (many, few)


# ---------------------------------------------------------------- decoding and checks


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.zeros((0, 3), dtype=np.float16),
        np.array(3.5),
        np.arange(5, dtype=">i4"),
    ],
    ids=["float32", "fortran-order", "empty-float16", "0-d", "big-endian"],
)
def test_an_array_view_is_what_numpy_decodes_without_a_copy(value: np.ndarray) -> None:
    array = Array(value)
    view = array_view(array)
    decoded = array.numpy()
    assert (view.shape, view.dtype) == (decoded.shape, decoded.dtype)
    np.testing.assert_array_equal(view, decoded)
    assert not view.flags.writeable  # the reply's own bytes
    if value.size:
        assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))


def test_an_array_view_refuses_what_numpy_would_refuse() -> None:
    array = Array(np.arange(10, dtype=np.float32))
    cut = Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=array.data[:-8])
    with pytest.raises(ValueError, match="buffer is smaller"):
        array_view(cut)
    garbage = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=b"12345678901234")
    with pytest.raises(ValueError, match=r"not a \.npy payload"):
        array_view(garbage)
    other = Array(dtype="float32", shape=(2,), stype="torch", data=array.data)
    with pytest.raises(TypeError, match="'torch'"):
        array_view(other)


def test_all_finite_finds_nan_and_inf_anywhere_and_survives_an_overflowing_sum() -> None:
    value = np.ones(1000, dtype=np.float32)
    assert all_finite(value)
    for bad in (np.nan, np.inf, -np.inf):
        spoilt = value.copy()
        spoilt[617] = bad
        assert not all_finite(spoilt)
    huge = np.full(4, 3e38, dtype=np.float32)  # finite, but their float32 sum is inf
    assert all_finite(huge)
    assert all_finite(np.zeros((0, 3), dtype=np.float32))


def test_a_reply_whose_weights_are_refused_adds_to_no_sum_at_all() -> None:
    global_state, known, replies = build(6, seed=5, dim=DIM, num_classes=NUM_CLASSES)
    target = replies[3].content[wire.METRICS][wire.NUM_EXAMPLES]

    class WrongBiasWeight(PEPFedPT):
        """Weighs node 1003's head bias (the last key merged) by a wrong-length vector."""

        def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
            if key == wire.HEAD_BIAS and metrics[wire.NUM_EXAMPLES] == target:
                return np.ones(3)
            return super().merge_weight(key, metrics)

    strategy = WrongBiasWeight(min_train_nodes=2)
    strategy._global, strategy._node_counts = global_state, dict(known)
    state, _ = strategy.aggregate_train(1, replies)
    assert state is not None
    assert [node for _, node, _ in strategy.dropped] == [1003]
    assert "row weights have shape (3,)" in strategy.dropped[0][2]
    expected, _ = _aggregate(global_state, known, replies[:3] + replies[4:])
    for name, value in expected.items():  # the keys before the bias hold nothing of it
        np.testing.assert_array_equal(record_arrays(state)[name], value, err_msg=name)
