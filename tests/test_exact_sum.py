"""The exact running sum and the prototype tally: ``math.fsum``'s bits in any order of
adds, exact float32/float64 inputs, clear refusals, and means that equal the former
float64 formula within float32 rounding."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from helpers.reference import fold_prototype_means, prototype_means

import strategies.aggregation as aggregation
from strategies.aggregation import ExactSum
from strategies.tally import PrototypeTally


def _fsum(terms: list[np.ndarray]) -> np.ndarray:
    """``math.fsum`` of each element's terms: the correctly rounded exact sum."""
    stacked = np.stack([np.asarray(t, dtype=np.float64).reshape(-1) for t in terms])
    return np.array([math.fsum(column) for column in stacked.T]).reshape(np.shape(terms[0]))


def _summed(terms: list[np.ndarray]) -> np.ndarray:
    total = ExactSum(np.shape(terms[0]))
    for term in terms:
        total.add(term)
    return total.result()


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.int64), b.view(np.int64))


def _wide_terms(rng: np.random.Generator, count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """Terms over ~240 binades with cancellation: x, later -x, and values far below."""
    terms = [
        rng.standard_normal(shape) * np.exp2(rng.integers(-120, 120, size=shape))
        for _ in range(count)
    ]
    terms += [-terms[0], terms[1] * 1e-30, -terms[2] * (1 + 2**-52)]
    return terms


def test_an_exact_sum_is_fsum_to_the_bit_in_every_order_of_adds() -> None:
    rng = np.random.default_rng(0)
    terms = _wide_terms(rng, 40, (7, 9))
    expected = _fsum(terms)
    assert _same_bits(_summed(terms), expected)
    shuffle = random.Random(1)
    for _ in range(5):
        order = list(terms)
        shuffle.shuffle(order)
        assert _same_bits(_summed(order), expected)


@pytest.mark.parametrize(
    "terms",
    [
        [1.0, 2.0**-53],  # a tie: to even (1.0)
        [1.0, 2.0**-53, 2.0**-200],  # just above the tie: up
        [1.0 + 2.0**-52, 2.0**-53],  # a tie: to even (up)
        [1.0, -(2.0**-54)],  # below the tie from above: 1.0
        [2.0**100, 1.0, -(2.0**100)],  # cancellation leaves the small term
        [5e-324, 5e-324, 5e-324],  # subnormals add exactly
        [1.7e308, -1.7e308, 3.0],  # a window of 1,000+ bits
        [-1.5, 0.25, -(2.0**-70)],  # negative results round as their magnitude
        [0.0, -0.0],
        [0.1] * 10,
    ],
)
def test_rounding_is_fsums_at_ties_cancellations_and_extremes(terms: list[float]) -> None:
    arrays = [np.array([t]) for t in terms]
    assert _summed(arrays)[0] == math.fsum(terms)


def test_float32_and_float16_values_are_taken_exactly() -> None:
    rng = np.random.default_rng(2)
    singles = [
        (rng.standard_normal(50) * 10.0 ** rng.uniform(-8, 8)).astype(np.float32) for _ in range(30)
    ]
    halves = [rng.standard_normal(50).astype(np.float16) for _ in range(5)]
    terms = [*singles, *halves]
    assert _same_bits(_summed(terms), _fsum(terms))


def test_carries_are_normalised_without_changing_the_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every limb full (2^32 - 1 in each piece), normalised every 3 adds."""
    monkeypatch.setattr(aggregation, "_NORMALISE_EVERY", 3)
    big = float((2**53 - 1) * 2**40)
    terms = [np.array([big, -big, big / 3, 1.0]) for _ in range(50)]
    terms.append(np.array([-big * 32, big * 50, 0.5, 2.0**-60]))
    expected = _fsum(terms)
    assert _same_bits(_summed(terms), expected)
    assert expected[0] == float((2**53 - 1) * 2**40 * (50 - 32))  # exact integers


def test_the_limbs_cover_only_the_exponents_seen() -> None:
    total = ExactSum((100, 64))
    rng = np.random.default_rng(3)
    for _ in range(20):
        total.add((rng.standard_normal((100, 64)) * 100).astype(np.float32))
    # float32 values of at most ~2^10 down to their lowest bits: a few 32-bit limbs,
    # not float64's 2,100-bit range (66 limbs).
    assert total.limbs <= 5


def test_reading_a_negative_sum_again_and_again_does_not_grow_it() -> None:
    total = ExactSum((3,))
    total.add(np.array([-1.0, -(2.0**40), 5.0]))
    limbs = total.limbs
    for _ in range(5):
        assert total.result().tolist() == [-1.0, -(2.0**40), 5.0]
    total.add(np.array([0.5, 0.0, -5.0]))
    assert total.result().tolist() == [-0.5, -(2.0**40), 0.0]
    assert total.limbs == limbs + 1  # 0.5's limb below; none added on top


def test_a_sum_beyond_float64_is_refused() -> None:
    total = ExactSum((1,))
    total.add(np.array([1.7e308]))
    total.add(np.array([1.7e308]))
    with pytest.raises(ValueError, match="exceeds the float64 range"):
        total.result()


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (np.array([1.0, np.nan]), "NaN or inf"),
        (np.array([np.inf, 1.0]), "NaN or inf"),
        (np.array([1, 2]), "dtype int64"),
        (np.array([1.0, 2.0, 3.0]), r"shape \(3,\), expected \(2,\)"),
    ],
)
def test_bad_values_are_refused_naming_what_is_wrong(values: np.ndarray, says: str) -> None:
    total = ExactSum((2,))
    with pytest.raises(ValueError, match=says):
        total.add(values)
    assert total.count == 0


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="no extended precision here")
def test_extended_precision_is_refused_as_not_exact() -> None:
    with pytest.raises(ValueError, match="float16, float32 or float64"):
        ExactSum((2,)).add(np.ones(2, dtype=np.longdouble))


# ---------------------------------------------------------------- the prototype tally


def _clients(seed: int, count: int, classes: int = 6, dim: int = 5) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    counts = [rng.integers(0, 40, size=classes) for _ in range(count)]
    for n in counts:
        n[0] = 0  # class 0 held by nobody
    sums = [
        (rng.standard_normal((classes, dim)) * n[:, None] * 10.0 ** rng.uniform(-3, 3)).astype(
            np.float32
        )
        for n in counts
    ]
    return sums, counts


def test_tally_means_are_the_exact_pooled_means_and_within_a_float32_ulp_of_the_old_formula() -> (
    None
):
    sums, counts = _clients(4, 300)
    tally = PrototypeTally(6, 5)
    for s, n in zip(sums, counts, strict=True):
        tally.add(s, n)
    means, total = tally.means()
    assert tally.clients == 300
    assert total.dtype == np.int64 and total.tolist() == np.sum(counts, axis=0).tolist()
    held = total > 0
    exact = np.zeros((6, 5))
    exact[held] = _fsum(sums)[held] / total[held, None]
    assert _same_bits(means.astype(np.float64), exact.astype(np.float32).astype(np.float64))
    assert means.dtype == np.float32 and not means[0].any()  # nobody holds class 0
    # The former formula: float64 sums in the order sent, then / counts, then float32.
    old = np.zeros((6, 5))
    old[held] = np.sum([np.asarray(s, np.float64) for s in sums], axis=0)[held] / total[held, None]
    np.testing.assert_array_max_ulp(means, old.astype(np.float32), maxulp=1)


def test_a_counts_only_tally_takes_no_sums_and_has_no_means() -> None:
    tally = PrototypeTally(3)
    tally.add(None, np.array([1, 0, 2]))
    tally.add(None, np.array([1, 1, 0], dtype=np.int32))
    assert tally.counts.tolist() == [2, 1, 2] and tally.clients == 2
    with pytest.raises(ValueError, match="counts-only tally takes no sums"):
        tally.add(np.zeros((3, 2), np.float32), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="has no sums to average"):
        tally.means()
    with pytest.raises(ValueError, match="needs each client's feature sums"):
        PrototypeTally(3, 2).add(None, np.array([1, 1, 1]))


@pytest.mark.parametrize(
    ("counts", "says"),
    [
        (np.array([1, 2]), "expected 3 integers"),
        (np.array([1.0, 2.0, 3.0]), "expected 3 integers"),
        (np.array([1, -2, 3]), "must be >= 0"),
    ],
)
def test_a_refused_add_changes_nothing(counts: np.ndarray, says: str) -> None:
    tally = PrototypeTally(3, 2)
    tally.add(np.ones((3, 2), np.float32), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match=says):
        tally.add(np.ones((3, 2), np.float32), counts)
    with pytest.raises(ValueError, match="NaN or inf"):
        tally.add(np.full((3, 2), np.nan, np.float32), np.array([1, 1, 1]))
    assert tally.clients == 1 and tally.counts.tolist() == [1, 1, 1]
    assert tally.means()[0].tolist() == [[1.0, 1.0]] * 3


def test_earlier_means_fold_exactly_even_with_counts_beyond_2_to_the_29() -> None:
    tally = PrototypeTally(2, 1)
    mu = np.array([[1.5], [np.float32(0.1)]], dtype=np.float32)
    n = np.array([2**40 + 3, 7])
    tally.add_means(mu, n)
    tally.add(np.array([[1.5], [0.0]], np.float32), np.array([1, 0]))
    means, total = tally.means()
    assert total.tolist() == [2**40 + 4, 7]
    assert means[0, 0] == 1.5  # (1.5 (2^40 + 3) + 1.5) / (2^40 + 4), exactly
    assert means[1, 0] == np.float32(0.1)
    assert tally.clients == 1  # an earlier result is not a client


def test_folding_refuses_means_that_are_not_float32_values() -> None:
    tally = PrototypeTally(1, 1)
    with pytest.raises(ValueError, match="not float32 values"):
        tally.add_means(np.array([[0.1]]), np.array([3]))
    with pytest.raises(ValueError, match="counts-only tally takes no means"):
        PrototypeTally(1).add_means(np.zeros((1, 1), np.float32), np.array([1]))


def test_folding_late_clients_equals_pooling_everyone_within_float32_rounding() -> None:
    sums, counts = _clients(5, 60)
    early, early_counts = prototype_means(sums[:40], counts[:40])
    folded, total = fold_prototype_means(early, early_counts, sums[40:], counts[40:])
    pooled, pooled_total = prototype_means(sums, counts)
    assert total.tolist() == pooled_total.tolist()
    # The one rounding folding adds: the earlier means' float32 rounding (half an ulp of
    # each), weighted by the earlier share of the counts; then the result's own.
    share = np.divide(early_counts, total, out=np.zeros(len(total)), where=total > 0)
    bound = np.abs(early) * 2.0**-24 * share[:, None] + np.spacing(np.abs(pooled))
    assert (np.abs(folded.astype(np.float64) - pooled) <= bound).all()


def test_prototype_means_do_not_depend_on_the_clients_order() -> None:
    sums, counts = _clients(6, 50)
    first = prototype_means(sums, counts)
    pairs = list(zip(sums, counts, strict=True))
    random.Random(0).shuffle(pairs)
    again = prototype_means([s for s, _ in pairs], [n for _, n in pairs])
    assert _same_bits(first[0].astype(np.float64), again[0].astype(np.float64))
    assert first[1].tolist() == again[1].tolist()


def test_float64_sums_from_a_node_are_rounded_to_float32_so_a_reply_costs_at_most_9_limbs() -> None:
    # 2^1000 and 2^-1000 side by side would need about 63 limbs as float64; a node could send
    # that to make every later add slow and the sum large. As float32 they are inf and 0.
    tally = PrototypeTally(2, 2)
    sums = np.array([[1.0 + 2.0**-40, 2.0**-1000], [3.0, -0.5]], dtype=np.float64)
    tally.add(sums, np.array([1, 1]))
    tally.add(sums.astype(np.float32), np.array([1, 1]))
    means, _ = tally.means()
    assert means.tolist() == sums.astype(np.float32).tolist()  # both adds: the same float32s
    assert tally._sums is not None and tally._sums.limbs <= 9
    with pytest.raises(ValueError, match="NaN or inf"):
        tally.add(np.full((2, 2), 1e39), np.array([1, 1]))
    assert tally.clients == 2  # the refused add changed nothing


def test_a_prototype_reply_beyond_float32s_range_is_dropped_with_the_value_named() -> None:
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from strategies import wire
    from strategies.validation import check_prototype_reply

    def reply(sums: np.ndarray) -> RecordDict:
        proto = ArrayRecord({wire.PROTO_SUM: Array(sums), wire.PROTO_COUNT: Array(np.array([2]))})
        return RecordDict({wire.PROTO: proto, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 2})})

    assert check_prototype_reply(reply(np.array([[1e30, -2.0]])), 1, 2) is None
    reason = check_prototype_reply(reply(np.array([[1e39, -2.0]])), 1, 2)
    assert reason == "proto.sum holds 1e+39, beyond float32's range (3.4e38)"
