"""Nodes whose class counts the prototype round never verified cannot carry the aggregate.

Two ways to get there, both through the real ServerApp, strategy and ClientApps: a
SuperNode that connects after the prototype round, and one whose prototype-round reply was
dropped. Each is asked for its counts (and feature sums) before its first train message;
a train reply whose counts differ from those is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message, MessageType
from helpers.run_helpers import NODES, load_state, on, recorder, run_server

from client_app.app import app as client_app
from server_app.inprocess import InProcessGrid
from strategies import wire

LATE = 13  # joins after the prototype round
NUM_CLASSES = 10  # digits


class LateJoinGrid(InProcessGrid):
    """Node ``LATE`` is connected only once the first train message has gone out."""

    def get_node_ids(self) -> Iterable[int]:
        trained = any(kind == MessageType.TRAIN for kind, _ in self.sent)
        return [node for node in self.contexts if node != LATE or trained]


def _inflate(factor: int):
    def fn(reply: Message) -> Message:
        metrics = reply.content[wire.METRICS]
        counts = [int(n) * factor for n in metrics[wire.CLASS_COUNTS]]
        metrics[wire.CLASS_COUNTS] = counts
        metrics[wire.NUM_EXAMPLES] = sum(counts)
        return reply

    return fn


@pytest.fixture
def flat(tiny_run_config: dict) -> dict:
    return dict(tiny_run_config, **{"num-server-rounds": 2})


def _dropped(flat: dict) -> list[dict]:
    return json.loads((Path(flat["output-dir"]) / "dropped.json").read_text())


@pytest.mark.integration
def test_a_node_that_connects_late_is_asked_for_its_counts_and_cannot_inflate_them(
    flat: dict, task_identity: None
) -> None:
    queries: list[Message] = []
    nodes = {**NODES, LATE: {"partition-id": 3, "num-partitions": 8}}
    tamper = {node: recorder(queries, MessageType.QUERY) for node in NODES}

    def late(reply: Message) -> Message:
        recorder(queries, MessageType.QUERY)(reply)
        return on(MessageType.TRAIN, _inflate(10**5))(reply)

    tamper[LATE] = late
    grid = LateJoinGrid(client_app, nodes, flat, tamper)
    run_server(flat, tamper, grid=grid)

    sent = grid.sent
    first_train = sent.index(("train", LATE))
    assert ("query", LATE) in sent[:first_train]  # asked before its first train message
    # Its counts and feature sums are folded in: the prototypes pool all four nodes.
    sums = sum(q.content[wire.PROTO][wire.PROTO_SUM].numpy().astype(np.float64) for q in queries)
    counts = sum(q.content[wire.PROTO][wire.PROTO_COUNT].numpy() for q in queries)
    assert len(queries) == 4
    state = load_state(Path(flat["output-dir"]))
    np.testing.assert_array_equal(state[wire.PROTO_COUNT], counts)
    expected = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    np.testing.assert_allclose(state[wire.PROTO_MEAN], expected, rtol=1e-5, atol=1e-6)
    # ... and its inflated train reply is refused.
    refused = [d for d in _dropped(flat) if d["node"] == LATE]
    assert refused and all("differ from the counts" in d["reason"] for d in refused)


@pytest.mark.integration
def test_a_node_whose_prototype_reply_was_dropped_is_asked_again_and_cannot_inflate(
    flat: dict, task_identity: None
) -> None:
    bad = 12
    first_query = [True]

    def fail_first_query_then_inflate(reply: Message) -> Message:
        if reply.metadata.message_type == MessageType.QUERY and first_query[0]:
            first_query[0] = False
            proto = reply.content[wire.PROTO]
            sums = proto[wire.PROTO_SUM].numpy().copy()
            sums.flat[0] = np.nan  # refused by the prototype round's checks
            proto[wire.PROTO_SUM] = Array(sums)
            return reply
        return on(MessageType.TRAIN, _inflate(100))(reply)

    grid = run_server(flat, {bad: fail_first_query_then_inflate})

    queries = [i for i, entry in enumerate(grid.sent) if entry == ("query", bad)]
    assert len(queries) == 2  # the prototype round, then again before round 1
    assert queries[1] < grid.sent.index(("train", bad))
    refused = [d for d in _dropped(flat) if d["node"] == bad]
    assert refused[0]["round"] == 0 and "non-finite" in refused[0]["reason"]
    assert [d["round"] for d in refused[1:]] == [1, 2]
    assert all("differ from the counts" in d["reason"] for d in refused[1:])


class RestartGrid(InProcessGrid):
    """Node 12 comes back as node 22 (same partition) once round 1 has trained."""

    def get_node_ids(self) -> Iterable[int]:
        trained = any(kind == MessageType.TRAIN for kind, _ in self.sent)
        gone = 12 if trained else 22
        return [node for node in self.contexts if node != gone]


@pytest.mark.integration
def test_a_node_back_under_a_new_id_repeats_its_partitions_counts_and_adds_nothing(
    flat: dict, task_identity: None
) -> None:
    queries: list[Message] = []
    nodes = {**NODES, 22: dict(NODES[12])}
    tamper = {node: recorder(queries, MessageType.QUERY) for node in nodes}
    grid = RestartGrid(client_app, nodes, flat, tamper)
    run_server(flat, tamper, grid=grid)

    sent = grid.sent
    assert ("query", 22) in sent[: sent.index(("train", 22))]
    first_round = [q for q in queries if q.metadata.src_node_id != 22]
    counts = sum(q.content[wire.PROTO][wire.PROTO_COUNT].numpy() for q in first_round)
    state = load_state(Path(flat["output-dir"]))
    np.testing.assert_array_equal(state[wire.PROTO_COUNT], counts)  # not counted twice
    assert not [d for d in _dropped(flat) if d["node"] == 22]
