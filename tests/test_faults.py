"""Faulty clients through the real strategy and ServerApp: refused, logged, harmless.

One node among three sends garbage in round 1; the final global state must equal the
aggregate of the two valid replies, computed here by hand, and the refusal must be logged
(and written to dropped.json) with the node and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message, MessageType, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.common import Metadata
from helpers.run_helpers import load_json, load_state, on, recorder, run_server

from pep_fedpt.config import RunConfig
from pep_fedpt.methods import initial_arrays
from pep_fedpt.models import cached_backbone
from server_app.app import RunUnchangedError
from strategies import wire
from strategies.validation import (
    MAX_EXAMPLES_PER_CLIENT,
    check_arrays,
    check_class_counts,
    check_evaluate_reply,
    check_known_counts,
)

BAD = 12  # the faulty node
NUM_CLASSES = 10  # digits


def _set_array(key: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[Message], Message]:
    def fn(reply: Message) -> Message:
        arrays = reply.content[wire.ARRAYS]
        arrays[key] = Array(value(arrays[key].numpy()))
        return reply

    return fn


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[3] = np.nan
    return a


def _with_inf(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flat[0] = -np.inf
    return a


def _del_array(key: str) -> Callable[[Message], Message]:
    def fn(reply: Message) -> Message:
        del reply.content[wire.ARRAYS][key]
        return reply

    return fn


def _add_array(key: str) -> Callable[[Message], Message]:
    def fn(reply: Message) -> Message:
        reply.content[wire.ARRAYS][key] = Array(np.zeros(3, dtype=np.float32))
        return reply

    return fn


def _rename_array(old: str, new: str) -> Callable[[Message], Message]:
    def fn(reply: Message) -> Message:
        arrays = reply.content[wire.ARRAYS]
        arrays[new] = arrays[old]
        del arrays[old]
        return reply

    return fn


def _garbage_bytes(reply: Message) -> Message:
    reply.content[wire.ARRAYS][wire.HEAD_BIAS] = Array(
        dtype="float32", shape=(NUM_CLASSES,), stype="numpy.ndarray", data=b"\x00garbage"
    )
    return reply


def _metrics(**changes: object) -> Callable[[Message], Message]:
    """Replace metrics; a value that is a callable gets the old metrics and returns the new."""

    def fn(reply: Message) -> Message:
        metrics = reply.content[wire.METRICS]
        for name, value in changes.items():
            key = name.replace("_", "-")
            metrics[key] = value(metrics) if callable(value) else value
        return reply

    return fn


def _del_metric(key: str) -> Callable[[Message], Message]:
    def fn(reply: Message) -> Message:
        del reply.content[wire.METRICS][key]
        return reply

    return fn


def _drop_metrics_record(reply: Message) -> Message:
    del reply.content[wire.METRICS]
    return reply


def _error(reply: Message) -> Message:
    return Message(error=Error(code=0, reason="ClientApp crashed"), metadata=reply.metadata)


def _negative_count(m: MetricRecord) -> list[int]:
    counts = list(m[wire.CLASS_COUNTS])
    counts[0] -= counts[0] + 1  # -1, and one more example on the next class to keep the sum
    counts[1] += int(m[wire.CLASS_COUNTS][0]) + 1
    return counts


def _scaled_counts(m: MetricRecord) -> list[int]:
    return [int(n) * 1000 for n in m[wire.CLASS_COUNTS]]


def _plus_one(m: MetricRecord) -> list[int]:
    return [int(n) + (i == 0) for i, n in enumerate(m[wire.CLASS_COUNTS])]


FAULTS: dict[str, tuple[Callable[[Message], Message], str]] = {
    "nan": (_set_array(wire.SHARED_PROMPT, _with_nan), "non-finite"),
    "inf": (_set_array(wire.HEAD_WEIGHT, _with_inf), "non-finite"),
    "wrong-shape": (_set_array(wire.HEAD_BIAS, lambda a: np.zeros(a.size + 1, a.dtype)), "shape"),
    "transposed": (_set_array(wire.HEAD_WEIGHT, lambda a: np.ascontiguousarray(a.T)), "shape"),
    "int-dtype": (_set_array(wire.HEAD_BIAS, lambda a: a.astype(np.int64)), "dtype"),
    "missing-key": (_del_array(wire.HEAD_BIAS), "missing ['head.bias']"),
    "extra-key": (_add_array("prompt.sneaky"), "unexpected ['prompt.sneaky']"),
    "renamed-key": (_rename_array(wire.SHARED_PROMPT, "prompt.shard"), "keys differ"),
    "garbage-bytes": (_garbage_bytes, "malformed reply"),
    "no-metrics": (_drop_metrics_record, "MetricRecord"),
    "no-num-examples": (_del_metric(wire.NUM_EXAMPLES), "not an integer"),
    "float-num-examples": (_metrics(num_examples=lambda m: m[wire.NUM_EXAMPLES] + 0.5), "integer"),
    "zero-num-examples": (_metrics(num_examples=0), "outside"),
    "negative-num-examples": (_metrics(num_examples=-5), "outside"),
    "absurd-num-examples": (_metrics(num_examples=10**12), "outside"),
    "negative-class-count": (_metrics(class_counts=_negative_count), "non-negative"),
    "counts-do-not-add-up": (_metrics(class_counts=_plus_one), "add up to"),
    "short-class-counts": (
        _metrics(class_counts=lambda m: list(m[wire.CLASS_COUNTS])[:-1]),
        "shape",
    ),
    "float-class-counts": (
        _metrics(class_counts=lambda m: [float(n) for n in m[wire.CLASS_COUNTS]]),
        "integers",
    ),
    # Consistent with itself, but 1000x what the node reported in the prototype round.
    "inflated-counts": (
        _metrics(
            class_counts=_scaled_counts,
            num_examples=lambda m: sum(m[wire.CLASS_COUNTS]),  # already scaled
        ),
        "prototype round",
    ),
    "nan-loss": (_metrics(train_loss=float("nan")), "train-loss"),
    "error-reply": (_error, "error reply"),
}


def _expected_state(
    flat: dict, replies: list[Message], previous: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The aggregate of ``replies``, computed here with plain numpy, not the strategy's code."""
    arrays = [
        {k: v.numpy().astype(np.float64) for k, v in r.content[wire.ARRAYS].items()}
        for r in replies
    ]
    sizes = np.array(
        [r.content[wire.METRICS][wire.NUM_EXAMPLES] for r in replies], dtype=np.float64
    )
    counts = np.array(
        [list(r.content[wire.METRICS][wire.CLASS_COUNTS]) for r in replies], dtype=np.float64
    )
    out = {}
    for key in arrays[0]:
        if wire.is_class_prompt(key):
            rows = previous[key].astype(np.float64).copy()
            for c in range(rows.shape[0]):
                if counts[:, c].sum() > 0:
                    rows[c] = sum(n * a[key][c] for n, a in zip(counts[:, c], arrays, strict=True))
                    rows[c] /= counts[:, c].sum()
            out[key] = rows
        else:
            out[key] = sum(n * a[key] for n, a in zip(sizes, arrays, strict=True)) / sizes.sum()
    return out


def _initial(flat: dict) -> dict[str, np.ndarray]:
    cfg = RunConfig.from_flat(flat)
    return initial_arrays(cfg, cached_backbone(cfg.model, cfg.seed, "cpu"), NUM_CLASSES)


@pytest.fixture
def flat(tiny_run_config: dict, tmp_path: Path) -> dict:
    config = dict(tiny_run_config)
    config["cache-dir"] = str(tmp_path / "features")
    return config


# One fault of each kind runs in the unit tier (a whole in-process round each, ~1.4 s);
# every other one runs in the integration tier, which CI and scripts/test.sh also run.
UNIT_FAULTS = {"nan", "wrong-shape", "missing-key", "garbage-bytes", "inflated-counts"}
UNIT_FAULTS |= {"error-reply"}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(fault, marks=() if fault in UNIT_FAULTS else pytest.mark.integration)
        for fault in sorted(FAULTS)
    ],
)
def test_faulty_train_reply_is_refused_and_leaves_the_aggregate_of_the_others(
    fault: str, flat: dict, task_identity: None, caplog: pytest.LogCaptureFixture
) -> None:
    tamper_fn, reason = FAULTS[fault]
    good: list[Message] = []
    tamper = {10: recorder(good), 11: recorder(good), BAD: on(MessageType.TRAIN, tamper_fn)}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_server(flat, tamper)

    out = Path(flat["output-dir"])
    state = load_state(out)
    expected = _expected_state(flat, good, _initial(flat))
    assert sorted(k for k in state if k not in wire.GLOBAL_ONLY_KEYS) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-7, err_msg=key)

    dropped = load_json(out / "dropped.json")
    assert [(d["round"], d["node"]) for d in dropped] == [(1, BAD)]
    assert reason in dropped[0]["reason"]
    lines = [r.getMessage() for r in caplog.records if "dropped reply" in r.getMessage()]
    assert lines == [f"round 1: dropped reply from node {BAD}: {dropped[0]['reason']}"]
    row = load_json(out / "metrics.json")[-1]
    assert (row["train/valid-replies"], row["train/dropped-replies"]) == (2, 1)


def test_below_min_train_nodes_the_global_state_stays_as_it_was(
    flat: dict, task_identity: None, caplog: pytest.LogCaptureFixture
) -> None:
    flat.update({"fed.min-train-nodes": 2, "num-server-rounds": 1})
    nan = on(MessageType.TRAIN, FAULTS["nan"][0])
    # Its only round kept the state: the run ends with an error that says so.
    with caplog.at_level(logging.WARNING, logger="flwr"), pytest.raises(RunUnchangedError):
        run_server(flat, {11: nan, 12: on(MessageType.TRAIN, _error)})

    out = Path(flat["output-dir"])
    state = load_state(out)
    for key, value in _initial(flat).items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "round 1: 1 valid replies, fewer than min-train-nodes = 2; the global state stays as it was"
        in messages
    )
    assert {d["node"] for d in load_json(out / "dropped.json")} == {11, 12}


def test_faulty_prototype_reply_is_refused(
    flat: dict, task_identity: None, caplog: pytest.LogCaptureFixture
) -> None:
    good: list[Message] = []

    def nan_sums(reply: Message) -> Message:
        proto = reply.content[wire.PROTO]
        proto[wire.PROTO_SUM] = Array(_with_nan(proto[wire.PROTO_SUM].numpy()))
        return reply

    tamper = {
        10: recorder(good, MessageType.QUERY),
        11: recorder(good, MessageType.QUERY),
        BAD: on(MessageType.QUERY, nan_sums),
    }
    with caplog.at_level(logging.WARNING, logger="flwr"):
        grid = run_server(flat, tamper)

    sums = sum(r.content[wire.PROTO][wire.PROTO_SUM].numpy().astype(np.float64) for r in good)
    counts = sum(r.content[wire.PROTO][wire.PROTO_COUNT].numpy() for r in good)
    expected = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    state = load_state(Path(flat["output-dir"]))
    np.testing.assert_allclose(state[wire.PROTO_MEAN], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(state[wire.PROTO_COUNT], counts)
    assert any(f"dropped reply from node {BAD}: " in r.getMessage() for r in caplog.records)
    # The node never sent valid counts: it is asked again before round 1 (and refused
    # again), and never gets a train message.
    assert ("query", BAD) in grid.sent
    assert ("train", BAD) not in grid.sent


def test_faulty_evaluate_reply_is_left_out_of_the_accuracy(flat: dict, task_identity: None) -> None:
    impossible = _metrics(correct=lambda m: int(m[wire.NUM_EXAMPLES]) + 1)
    run_server(flat, {BAD: on(MessageType.EVALUATE, impossible)})
    out = Path(flat["output-dir"])
    row = load_json(out / "metrics.json")[-1]
    assert row["evaluate/num-clients"] == 2
    assert [(d["node"], "impossible" in d["reason"]) for d in load_json(out / "dropped.json")] == [
        (BAD, True)
    ]


# ---------------------------------------------------------------- the checks, one by one
def _f32(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        ({"a": _f32(2, 3)}, None),
        ({"a": _f32(2, 3).astype(np.float16)}, None),
        ({}, "missing ['a']"),
        ({"a": _f32(2, 3), "b": _f32(1)}, "unexpected ['b']"),
        ({"a": _f32(3, 2)}, "shape (3, 2), expected (2, 3)"),
        ({"a": np.zeros((2, 3), dtype=np.int32)}, "dtype int32"),
        ({"a": np.zeros((2, 3), dtype=np.complex64)}, "dtype complex64"),
        ({"a": np.full((2, 3), np.nan, dtype=np.float32)}, "non-finite"),
        ({"a": np.full((2, 3), np.inf, dtype=np.float32)}, "non-finite"),
    ],
)
def test_check_arrays(arrays: dict, says: str | None) -> None:
    reason = check_arrays(arrays, {"a": (2, 3)})
    assert reason is None if says is None else says in reason


@pytest.mark.parametrize(
    ("counts", "total", "says"),
    [
        ([2, 0, 3], 5, None),
        (np.array([2, 0, 3], dtype=np.int32), 5, None),
        ([2, 0, 3], 5.0, "not an integer"),
        ([2, 0, 3], True, "not an integer"),
        ([2, 0, 3], None, "not an integer"),
        ([0, 0, 0], 0, "outside 1.."),
        ([2, 0, 3], -5, "outside 1.."),
        ([2, 0, 3], MAX_EXAMPLES_PER_CLIENT + 1, "outside 1.."),
        ([2, 3], 5, "shape (2,)"),
        (None, 5, "shape ()"),
        ([2.0, 0.0, 3.0], 5, "non-negative integers"),
        ([6, -1, 0], 5, "non-negative integers"),
        ([2, 0, 4], 5, "add up to 6, not 5"),
    ],
)
def test_check_class_counts(counts: object, total: object, says: str | None) -> None:
    reason = check_class_counts(counts, total, 3)
    assert reason is None if says is None else says in reason


def test_check_known_counts() -> None:
    # A node that joined after the prototype round (or whose reply there was dropped) has
    # no verified counts: its train reply is refused, whatever it claims.
    assert "never verified" in check_known_counts([1, 2], None)
    assert check_known_counts([1, 2], [1, 2]) is None
    assert "sum 3000 vs 3" in check_known_counts([1000, 2000], [1, 2])
    assert "prototype round" in check_known_counts([2, 1], [1, 2])


@pytest.mark.parametrize(
    ("correct", "total", "ok"),
    [(3, 5, True), (0, 0, True), (6, 5, False), (-1, 5, False), (3.0, 5, False)],
)
def test_check_evaluate_reply(correct: object, total: object, ok: bool) -> None:
    content = RecordDict(
        {wire.METRICS: MetricRecord({wire.CORRECT: correct, wire.NUM_EXAMPLES: total})}
    )
    assert (check_evaluate_reply(content) is None) is ok


class ErrorsInRound:
    """One node's error reply to its train message of one round (every node evaluates
    every round, so its own evaluate replies tell the rounds apart)."""

    def __init__(self, server_round: int) -> None:
        self.evaluates_before = server_round - 1
        self.evaluated = 0

    def __call__(self, reply: Message) -> Message:
        kind = reply.metadata.message_type
        if kind == MessageType.EVALUATE:
            self.evaluated += 1
        elif kind == MessageType.TRAIN and self.evaluated == self.evaluates_before:
            return _error(reply)
        return reply


@pytest.mark.integration
def test_a_round_below_min_train_nodes_keeps_the_previous_rounds_state(
    flat: dict, tmp_path: Path, task_identity: None
) -> None:
    one_round = dict(flat, **{"output-dir": str(tmp_path / "one")})
    run_server(one_round)
    two_rounds = dict(flat, **{"output-dir": str(tmp_path / "two"), "num-server-rounds": 2})
    run_server(two_rounds, {11: ErrorsInRound(2), 12: ErrorsInRound(2)})

    after_one, after_two = load_state(tmp_path / "one"), load_state(tmp_path / "two")
    assert sorted(after_two) == sorted(after_one)
    for key, value in after_one.items():
        np.testing.assert_array_equal(after_two[key], value, err_msg=key)
    assert [(d["round"], d["node"]) for d in load_json(tmp_path / "two" / "dropped.json")] == [
        (2, 11),
        (2, 12),
    ]


def _superlink_says_unavailable(reply: Message) -> Message:
    """What the SuperLink sends for a dead node: an error from the SuperLink (node 1)."""
    meta = reply.metadata
    return Message(
        error=Error(code=5, reason="Error: Node Unavailable"),
        metadata=Metadata(
            run_id=meta.run_id,
            message_id="",
            src_node_id=1,
            dst_node_id=1,
            reply_to_message_id=meta.reply_to_message_id,
            group_id=meta.group_id,
            created_at=meta.created_at,
            ttl=meta.ttl,
            message_type=meta.message_type,
        ),
    )


def test_an_error_the_superlink_sends_for_a_dead_node_is_charged_to_that_node(
    flat: dict, task_identity: None
) -> None:
    run_server(flat, {BAD: on(MessageType.TRAIN, _superlink_says_unavailable)})
    dropped = load_json(Path(flat["output-dir"]) / "dropped.json")
    assert [(d["round"], d["node"]) for d in dropped] == [(1, BAD)]
    assert "Node Unavailable" in dropped[0]["reason"]
