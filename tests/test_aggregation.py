"""Aggregation math against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.reference import (
    fold_prototype_means,
    per_class_weighted_mean,
    prototype_means,
    stacked_mean,
    weighted_mean,
)

from strategies.aggregation import RunningMean, scratch_buffer
from strategies.summaries import accuracy_summary


def test_weighted_mean() -> None:
    out = weighted_mean([np.array([1.0, 0.0]), np.array([3.0, 4.0])], [1, 3])
    assert out.tolist() == pytest.approx([2.5, 3.0])
    assert out.dtype == np.float32


def test_weighted_mean_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        weighted_mean([np.zeros(2)], [0])
    with pytest.raises(ValueError, match="one weight per array"):
        weighted_mean([np.zeros(2)], [1, 2])


def test_per_class_mean_weights_each_class_by_its_counts_and_keeps_absent_classes() -> None:
    a = np.array([[1.0], [10.0], [5.0], [0.0]])
    b = np.array([[3.0], [20.0], [7.0], [0.0]])
    counts_a = np.array([2, 0, 1, 0])
    counts_b = np.array([2, 1, 0, 0])
    previous = np.array([[0.0], [0.0], [-1.0], [42.0]])
    out = per_class_weighted_mean([a, b], [counts_a, counts_b], previous)
    # class 0: (2·1 + 2·3)/4 = 2; class 1: only b holds it; class 2: only a; class 3: nobody
    assert out[:, 0].tolist() == pytest.approx([2.0, 20.0, 5.0, 42.0])


def test_per_class_mean_on_prompt_shaped_arrays() -> None:
    # (C, M, D) = (2, 1, 2)
    a = np.array([[[1.0, 1.0]], [[0.0, 2.0]]])
    b = np.array([[[3.0, 5.0]], [[4.0, 4.0]]])
    out = per_class_weighted_mean([a, b], [np.array([1, 3]), np.array([3, 1])], np.zeros((2, 1, 2)))
    assert out[0, 0].tolist() == pytest.approx([(1 + 9) / 4, (1 + 15) / 4])
    assert out[1, 0].tolist() == pytest.approx([(0 + 4) / 4, (6 + 4) / 4])


def test_prototype_means_are_pooled_sums_over_pooled_counts() -> None:
    sums = [np.array([[2.0, 4.0], [0.0, 0.0]]), np.array([[4.0, 2.0], [0.0, 0.0]])]
    counts = [np.array([2, 0]), np.array([1, 0])]
    means, total = prototype_means(sums, counts)
    assert means.tolist() == [[2.0, 2.0], [0.0, 0.0]]
    assert total.tolist() == [3, 0]


def test_prototype_means_sum_in_place_to_the_bits_of_the_stacked_sum_in_one_state_of_memory() -> (
    None
):
    """1,000 clients' float32 sums, as the prototype round receives them: the result is the
    former stack-everything-in-float64 formula's to the bit, and the peak traced memory is
    a fixed number of (C, D) float64-sized arrays, not one per client (docs/scale.md).

    The sum is exact now (``ExactSum``): a few 32-bit limbs per value and, while the sum
    is rounded to float64, work arrays of a few short rows more; so the bound is 16 such
    arrays (it was 6 for the plain float64 sum), still far from 1,000."""
    import tracemalloc

    rng = np.random.default_rng(0)
    num_classes, dim = 10, 96
    sums = [
        (rng.standard_normal((num_classes, dim)) * 10.0 ** rng.uniform(-2, 4)).astype(np.float32)
        for _ in range(1000)
    ]
    counts = [rng.integers(0, 5, size=num_classes) for _ in range(1000)]
    stacked = np.sum([np.asarray(s, dtype=np.float64) for s in sums], axis=0)
    stacked_count = np.sum([np.asarray(n, dtype=np.int64) for n in counts], axis=0)
    expected = np.zeros_like(stacked)
    held = stacked_count > 0
    expected[held] = stacked[held] / stacked_count[held, None]
    tracemalloc.start()
    means, total = prototype_means(sums, counts)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(means, expected.astype(np.float32))
    assert np.array_equal(total, stacked_count)
    one_state = num_classes * dim * 8
    assert peak < 16 * one_state  # stacking 1,000 clients would be 1,000 states (twice)


def test_prototype_means_refuse_unpaired_sums_and_counts() -> None:
    with pytest.raises(ValueError, match="2 sums and 1 counts"):
        prototype_means([np.zeros((2, 2)), np.zeros((2, 2))], [np.array([1, 1])])
    with pytest.raises(ValueError, match="0 sums and 0 counts"):
        prototype_means([], [])


def test_a_late_clients_sums_fold_into_the_earlier_prototypes_as_if_it_had_answered_first() -> None:
    # Earlier: class 0 mean [2, 2] over 3 examples, class 1 held by nobody.
    means, counts = np.array([[2.0, 2.0], [0.0, 0.0]]), np.array([3, 0])
    # Late: 1 example of class 0 at [6, 2], 2 of class 1 summing to [4, 8].
    late_sums, late_counts = [np.array([[6.0, 2.0], [4.0, 8.0]])], [np.array([1, 2])]
    folded, total = fold_prototype_means(means, counts, late_sums, late_counts)
    assert folded.tolist() == [[3.0, 2.0], [2.0, 4.0]]  # (6+6)/4, (6+2)/4; [4, 8]/2
    assert total.tolist() == [4, 2]


def test_accuracy_summary() -> None:
    summary = accuracy_summary(correct=[1, 3, 0], totals=[2, 4, 0])
    assert summary["global-accuracy"] == pytest.approx(4 / 6)
    assert summary["mean-client-accuracy"] == pytest.approx((0.5 + 0.75) / 2)
    assert summary["worst-client-accuracy"] == pytest.approx(0.5)
    assert summary["num-clients"] == 2


# ---------------------------------------------------------------- running (streamed) means


def test_a_running_mean_by_numbers_is_the_weighted_mean() -> None:
    running = RunningMean(np.zeros(2, dtype=np.float32))
    running.add(np.array([1.0, 0.0], dtype=np.float32), 1)
    running.add(np.array([3.0, 4.0], dtype=np.float32), 3)
    out = running.result()
    assert out.dtype == np.float32
    assert out.tolist() == [2.5, 3.0]  # (1·1 + 3·3)/4, (0 + 3·4)/4
    assert running.count == 2
    assert running.total_weight().tolist() == [4.0, 4.0]


def test_a_running_mean_by_rows_weighs_each_row_and_keeps_rows_nobody_weighed() -> None:
    previous = np.array([[0.0], [0.0], [-1.0], [42.0]], dtype=np.float32)
    running = RunningMean(previous)
    running.add(np.array([[1.0], [10.0], [5.0], [0.0]], dtype=np.float32), np.array([2, 0, 1, 0]))
    running.add(np.array([[3.0], [20.0], [7.0], [0.0]], dtype=np.float32), np.array([2, 1, 0, 0]))
    # class 0: (2·1 + 2·3)/4 = 2; class 1: only the second; class 2: only the first; 3: nobody
    assert running.result()[:, 0].tolist() == [2.0, 20.0, 5.0, 42.0]
    # momentum 0.5 on the rows with weight only: 0.5·previous + 0.5·mean
    assert running.result(momentum=0.5)[:, 0].tolist() == [1.0, 10.0, 2.0, 42.0]


def test_a_running_mean_equals_the_stacked_float64_mean_within_float32_rounding() -> None:
    rng = np.random.default_rng(3)
    previous = rng.standard_normal((7, 3, 5)).astype(np.float32)
    arrays = [rng.standard_normal((7, 3, 5)).astype(np.float32) for _ in range(9)]
    counts = [rng.integers(0, 4, size=7) * rng.integers(0, 2, size=7) for _ in range(9)]
    sizes = [int(rng.integers(1, 500)) for _ in range(9)]
    for weights in (counts, sizes):
        running = RunningMean(previous)
        for array, weight in zip(arrays, weights, strict=True):
            running.add(array, weight)
        np.testing.assert_array_max_ulp(running.result(), stacked_mean(arrays, weights, previous))


def test_a_running_mean_is_the_same_in_any_order_when_the_sums_are_exact() -> None:
    # Integers and power-of-two weights: every partial sum is exact in float64, so any
    # order gives the same bits (the strategies fix the order for the general case).
    rng = np.random.default_rng(4)
    arrays = [rng.integers(-50, 50, size=(6, 4)).astype(np.float32) for _ in range(8)]
    weights = [np.array([1, 2, 4, 0, 8, 16]) * (k + 1) for k in range(8)]
    results = []
    for order in (range(8), reversed(range(8)), rng.permutation(8)):
        running = RunningMean(np.zeros((6, 4), dtype=np.float32))
        for k in order:
            running.add(arrays[k], weights[k])
        results.append(running.result())
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    np.testing.assert_array_equal(results[0][3], np.zeros(4))  # nobody weighed row 3


def test_a_running_mean_reads_its_inputs_in_place_and_in_steps() -> None:
    # Read-only inputs (views of a reply's bytes) and rows longer than one step of
    # the shared scratch buffer: the same mean as the stacked formula.
    rng = np.random.default_rng(5)
    previous = np.zeros((2, 200_000), dtype=np.float32)
    arrays = [rng.standard_normal((2, 200_000)).astype(np.float32) for _ in range(3)]
    for array in arrays:
        array.flags.writeable = False
    by_rows, by_number = RunningMean(previous, scratch_buffer()), RunningMean(previous)
    for k, array in enumerate(arrays):
        by_rows.add(array, np.array([k + 1, 0]))
        by_number.add(array, k + 1)
    np.testing.assert_array_max_ulp(
        by_rows.result(), stacked_mean(arrays, [[1, 0], [2, 0], [3, 0]], previous)
    )
    np.testing.assert_array_max_ulp(by_number.result(), stacked_mean(arrays, [1, 2, 3], previous))


def test_a_running_mean_refuses_a_wrong_shape_or_weight_naming_it() -> None:
    running = RunningMean(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 2\)"):
        running.add(np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match=r"weight = -1\.0"):
        running.add(np.zeros((3, 2)), -1)
    with pytest.raises(ValueError, match="weight = nan"):
        running.add(np.zeros((3, 2)), float("nan"))
    with pytest.raises(ValueError, match=r"row weights have shape \(2,\), expected \(3,\)"):
        running.add(np.zeros((3, 2)), np.array([1, 2]))
    with pytest.raises(ValueError, match=r"finite and >= 0, got \[1.0, -2.0, 0.0\]"):
        running.add(np.zeros((3, 2)), np.array([1, -2, 0]))
    with pytest.raises(ValueError, match=r"momentum = 1\.0"):
        running.result(momentum=1.0)
    assert running.count == 0
