"""The prototype round folds each reply as it arrives, through the real strategy and real
Flower messages: whatever order (and batches) the replies come in, the state, the
checkpoint and the refusals are the same to the bit, and no reply is kept."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from server_app.inprocess import InProcessGrid, set_task_identity
from strategies import PEPFedPT, PromptFedAvg, wire

NUM_CLASSES, DIM = 5, 6

toy = ClientApp()


def _data(partition: int, inflate: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A partition's class counts and float32 feature sums over many binades."""
    rng = np.random.default_rng(partition)
    counts = rng.integers(0, 9, size=NUM_CLASSES).astype(np.int64) * inflate
    counts[partition % NUM_CLASSES] += 1
    scale = 10.0 ** rng.uniform(-6, 6, size=(NUM_CLASSES, 1))
    sums = (rng.standard_normal((NUM_CLASSES, DIM)) * scale * counts[:, None]).astype(np.float32)
    return counts, sums


@toy.query()
def _query(msg: Message, context: Context) -> Message:
    config = context.node_config
    counts, sums = _data(int(config["partition-id"]), int(config.get("inflate", 1)))
    if config.get("nan"):
        sums[0, 0] = np.nan
    proto = {wire.PROTO_COUNT: Array(counts)}
    if not msg.content[wire.CONFIG].get(wire.CFG_COUNTS_ONLY, False):
        proto[wire.PROTO_SUM] = Array(sums)
    metrics = {
        wire.NUM_EXAMPLES: int(counts.sum()),
        wire.PARTITION_ID: int(config["partition-id"]),
        wire.HELD_OUT: int(config.get("held-out", 0)),
    }
    content = RecordDict({wire.PROTO: ArrayRecord(proto), wire.METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


class ShuffledGrid(InProcessGrid):
    """Replies come a random few per pull, in a random order (``seed`` None: all at once,
    in the order sent); ``late`` nodes are connected only once ``joined`` is set."""

    def __init__(self, nodes: dict, seed: int | None, late: Iterable[int] = ()) -> None:
        super().__init__(toy, nodes, {})
        self.rng = None if seed is None else random.Random(seed)
        self.late = set(late)
        self.joined = False
        self.most_held = 0  # replies handed out but not yet pulled

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.contexts if self.joined or n not in self.late]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ready = [i for i in message_ids if i in self._replies]
        if self.rng is not None and ready:
            self.rng.shuffle(ready)
            ready = ready[: self.rng.randint(1, len(ready))]
        return [self._replies.pop(i) for i in ready]


# Node ids unlike partition ids; 14 and 15 both say partition 4; 16 is held out; 17's
# sums hold a NaN (refused).
NODES = {
    10: {"partition-id": 0},
    11: {"partition-id": 1},
    12: {"partition-id": 2},
    13: {"partition-id": 3},
    15: {"partition-id": 4},
    14: {"partition-id": 4},
    16: {"partition-id": 5, "held-out": 1},
    17: {"partition-id": 6, "nan": 1},
    18: {"partition-id": 7},
}
# Late: 20 is partition 1 again (same counts: back under a new id), 21 claims partition 2
# with other counts (refused), 22 and 23 both bring new partition 8, 24 is held out, 25
# brings new partition 9.
LATE = {
    20: {"partition-id": 1},
    21: {"partition-id": 2, "inflate": 3},
    23: {"partition-id": 8},
    22: {"partition-id": 8},
    24: {"partition-id": 10, "held-out": 1},
    25: {"partition-id": 9},
}


def _initial() -> ArrayRecord:
    return ArrayRecord({wire.HEAD_WEIGHT: Array(np.zeros((NUM_CLASSES, DIM), np.float32))})


def _run(strategy: PromptFedAvg, seed: int | None) -> tuple[dict, dict, str, int]:
    """The prototype round, then late nodes join and are admitted; both states (as
    numpy), the checkpoint (as JSON) and the most replies the grid held at once."""
    set_task_identity()
    grid = ShuffledGrid({**NODES, **LATE}, seed, late=LATE)
    strategy.pull_batch = 3
    strategy.poll_seconds = (0.0, 0.0)
    first = strategy.prototype_round(grid, _initial(), server_round=0)
    grid.joined = True
    folded = strategy.admit_late_nodes(grid, first, server_round=1)
    arrays = [{k: v.numpy() for k, v in state.items()} for state in (first, folded)]
    return arrays[0], arrays[1], json.dumps(strategy.checkpoint()), len(grid._replies)


@pytest.mark.parametrize("method", [PEPFedPT, PromptFedAvg])  # sums and counts; counts only
def test_any_arrival_order_gives_the_same_state_and_checkpoint_to_the_bit(
    method: type[PromptFedAvg],
) -> None:
    expected = None
    for seed in (None, 0, 1, 2, 3):
        strategy = method(min_available_nodes=2)
        got = _run(strategy, seed)
        assert got[3] == 0  # every reply was pulled
        if expected is None:
            expected = got
            continue
        for before, after in zip(expected[:2], got[:2], strict=True):
            assert before.keys() == after.keys()
            for key in before:
                assert before[key].tobytes() == after[key].tobytes(), (seed, key)
        assert got[2] == expected[2], seed


def test_the_rounds_bookkeeping_follows_the_order_sent() -> None:
    strategy = PEPFedPT(min_available_nodes=2)
    first, folded, checkpoint, _ = _run(strategy, seed=5)
    state = json.loads(checkpoint)
    # Two nodes with partition 4: both count, the one sent later (15) holds the entry.
    assert state["partitions"]["4"]["node-id"] == 15
    assert strategy.held_out_nodes == {16, 24}
    # 17 refused for its NaN (twice: it is asked again with the late nodes), then 21 for
    # other counts than partition 2's: each phase's refusals in the order sent.
    assert [(r, n) for r, n, _ in strategy.dropped] == [(0, 17), (1, 17), (1, 21)]
    assert all("non-finite" in why for _, _, why in strategy.dropped[:2])
    assert "other proto.count" in strategy.dropped[2][2]
    # Partition 1 is back under node 20 and adds nothing; 22 and 23 both bring partition 8.
    assert state["partitions"]["1"]["node-id"] == 20
    assert state["partitions"]["8"]["node-id"] == 23
    assert list(strategy._node_counts) == [10, 11, 12, 13, 14, 15, 18, 20, 22, 23, 25]
    counted = {0: [10], 1: [11], 2: [12], 3: [13], 4: [14, 15], 7: [18]}
    late = {8: [22, 23], 9: [25]}
    for state_arrays, groups in ((first, counted), (folded, {**counted, **late})):
        parts = [_data(pid) for pid, nodes in groups.items() for _ in nodes]
        total = np.sum([c for c, _ in parts], axis=0)
        np.testing.assert_array_equal(state_arrays[wire.PROTO_COUNT], total)
        sums = np.stack([s.astype(np.float64) for _, s in parts])
        exact = np.array(
            [[math.fsum(sums[:, c, d]) for d in range(DIM)] for c in range(NUM_CLASSES)]
        )
        mean = np.where(total[:, None] > 0, exact / np.maximum(total, 1)[:, None], 0.0)
        if state_arrays is first:  # exactly the pooled sums, rounded once
            np.testing.assert_array_equal(state_arrays[wire.PROTO_MEAN], mean.astype(np.float32))
        else:  # the earlier means are float32: within its rounding
            np.testing.assert_allclose(state_arrays[wire.PROTO_MEAN], mean, rtol=1e-6)


def test_a_phase_that_consumes_its_replies_keeps_none_but_counts_their_bytes() -> None:
    set_task_identity()
    strategy = PEPFedPT(min_available_nodes=2)
    strategy.poll_seconds = (0.0, 0.0)
    grid = ShuffledGrid(NODES, seed=7)
    seen: list[int] = []
    messages = [
        Message(
            content=RecordDict({wire.CONFIG: _query_config()}),
            message_type="query",
            dst_node_id=node,
        )
        for node in NODES
    ]
    kept = strategy._exchange(
        grid, messages, 0, "query", lambda reply: seen.append(strategy._sender(reply)) is not None
    )
    assert kept == [] and sorted(seen) == sorted(NODES)
    nbytes = sum(_data(p["partition-id"])[1].nbytes + 8 * NUM_CLASSES for p in NODES.values())
    assert strategy.round_metrics[0]["query/bytes-up"] == nbytes
    assert all(entry["sent"] == 1 for entry in strategy.node_replies.values())


def _query_config() -> ConfigRecord:
    return ConfigRecord({wire.CFG_TASK: wire.TASK_PROTOTYPES, wire.CFG_SERVER_ROUND: 0})


def test_a_hook_written_for_the_old_lists_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match=r"Old.prototype_state must take \(self, arrays, tally\)"):

        class Old(PromptFedAvg):
            def prototype_state(self, arrays, sums, counts):  # type: ignore[no-untyped-def]  # an old hook's signature, untyped as a user wrote it; the base must refuse it
                return arrays

    with pytest.raises(TypeError, match=r"OldFold.fold_prototypes must take"):

        class OldFold(PromptFedAvg):
            def fold_prototypes(self, arrays, sums, counts):  # type: ignore[no-untyped-def]  # an old hook's signature, untyped as a user wrote it; the base must refuse it
                return arrays


def test_a_reply_to_no_message_sent_is_charged_to_its_source() -> None:
    set_task_identity()
    strategy = PromptFedAvg()
    grid = ShuffledGrid(NODES, seed=None)
    messages = [
        Message(
            content=RecordDict({wire.CONFIG: _query_config()}), message_type="query", dst_node_id=n
        )
        for n in (10, 11)
    ]
    grid.push_messages(messages)
    strategy._set_outgoing(messages)
    replies = list(grid.pull_messages([m.metadata.message_id for m in messages]))
    assert [strategy._sent_as(r) for r in replies] == [(0, 10), (1, 11)]
    stray = replies[0]
    stray.metadata.__dict__["_reply_to_message_id"] = "unknown"
    assert strategy._sent_as(stray) == (2, 10)  # its src_node_id, after every sent one
