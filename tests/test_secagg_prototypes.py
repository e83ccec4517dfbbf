"""The prototype round under SecAgg+ (``secure_aggregation="secaggplus"``): the strategy
builds the same prototype state from totals alone, and never holds one node's counts or
sums.

The fast tests run the real strategies against a small ClientApp whose nodes hold
hand-written statistics and answer both the plain prototype QUERY and ``query.secagg``
through ``client_app/secagg.py``; the integration test runs the project's own ClientApp.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from conftest import TINY_MODEL
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from helpers.run_helpers import NODES

from client_app import secagg as client_secagg
from client_app.app import app as project_app
from server_app.inprocess import InProcessGrid
from strategies import PEPFedPT, PromptFedAvg, wire
from strategies.secagg import ACTION, MASKED, SUM_SCALE, VECTOR_RECORD, SecAggParams
from strategies.tally import PrototypeTally

C, D = 3, 2
# Node id -> (partition id, held out, class counts, per-class feature sums (C, D)).
STATS = {
    21: (0, False, [2, 0, 1], [[1.0, -2.0], [0.0, 0.0], [0.5, 0.5]]),
    22: (1, False, [1, 3, 0], [[3.0, 0.0], [-1.5, 3.0], [0.0, 0.0]]),
    23: (2, False, [0, 1, 4], [[0.0, 0.0], [0.25, -0.5], [2.0, 6.0]]),
    24: (3, True, [5, 5, 5], [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]),  # held out
}
PARAMS = SecAggParams(threshold=2, clipping_range=8.0, bits=24, max_count=100)
# μ_c = Σ_k S_{k,c} / Σ_k n_{k,c} over the three training nodes, by hand.
COUNTS = [3, 4, 5]
MEANS = [[4.0 / 3, -2.0 / 3], [-1.25 / 4, 2.5 / 4], [2.5 / 5, 6.5 / 5]]


@pytest.fixture(autouse=True)
def _identity(task_identity: None) -> None:
    """Messages built outside a run need Flower's task identity."""


app = ClientApp()


def _stats(context: Context) -> tuple[int, bool, np.ndarray, np.ndarray]:
    pid, held_out, counts, sums = STATS[context.node_id]
    return pid, held_out, np.array(counts, dtype=np.int64), np.array(sums, dtype=np.float32)


@app.query()
def plain(msg: Message, context: Context) -> Message:
    pid, held_out, counts, sums = _stats(context)
    proto = {wire.PROTO_COUNT: Array(counts)}
    if not msg.content[wire.CONFIG].get(wire.CFG_COUNTS_ONLY, False):
        proto[wire.PROTO_SUM] = Array(sums)
    metrics = {wire.NUM_EXAMPLES: int(counts.sum()), wire.PARTITION_ID: pid}
    metrics[wire.HELD_OUT] = int(held_out)
    content = RecordDict({wire.PROTO: ArrayRecord(proto), wire.METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def _vector(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray]:
    config = msg.content[wire.CONFIG]
    _, _, counts, sums = _stats(context)
    if config.get(wire.CFG_COUNTS_ONLY, False):
        return counts, np.zeros(0)
    return counts, sums.astype(np.float64) / float(config[SUM_SCALE])


def _facts(config: ConfigRecord, context: Context) -> dict[str, int]:
    pid, held_out, _, _ = _stats(context)
    return {wire.PARTITION_ID: pid, wire.HELD_OUT: int(held_out)}


@app.query(ACTION)
def secure(msg: Message, context: Context) -> Message:
    return client_secagg.answer(msg, context, _vector, _facts)


class SpyGrid(InProcessGrid):
    """Keeps every reply the strategy pulls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pulled: list[Message] = []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.pulled.extend(replies)
        return replies


def _initial(classes: int = C, dim: int = D) -> ArrayRecord:
    return ArrayRecord(
        {
            wire.HEAD_WEIGHT: Array(np.zeros((classes, dim), np.float32)),
            wire.HEAD_BIAS: Array(np.zeros(classes, np.float32)),
        }
    )


def _round(
    strategy: PromptFedAvg, grid: InProcessGrid, initial: ArrayRecord | None = None
) -> dict[str, np.ndarray]:
    state = strategy.prototype_round(grid, initial or _initial(), server_round=0)
    return {key: state[key].numpy() for key in state}


def _secure(cls: type[PromptFedAvg] = PEPFedPT, params: SecAggParams = PARAMS) -> PromptFedAvg:
    return cls(secure_aggregation="secaggplus", secagg=params)


def test_the_secure_prototype_round_builds_the_plain_rounds_prototypes() -> None:
    plain_state = _round(PEPFedPT(), InProcessGrid(app, {n: {} for n in STATS}, {}))
    strategy = _secure()
    secure_state = _round(strategy, InProcessGrid(app, {n: {} for n in STATS}, {}))
    np.testing.assert_array_equal(plain_state[wire.PROTO_COUNT], COUNTS)
    np.testing.assert_array_equal(secure_state[wire.PROTO_COUNT], COUNTS)
    assert secure_state[wire.PROTO_COUNT].dtype == np.int64
    np.testing.assert_allclose(plain_state[wire.PROTO_MEAN], MEANS, rtol=1e-6)
    # Each node's sum element is off by less than one step (2 x 8 / 2^24) x max_count; the
    # mean of class c divides three such errors by Σ n_c >= 3.
    tolerance = 3 * PARAMS.step * PARAMS.max_count / 3
    np.testing.assert_allclose(secure_state[wire.PROTO_MEAN], MEANS, atol=tolerance)
    assert strategy.held_out_nodes == {24}
    assert sorted(strategy.partitions) == [0, 1, 2, 3]
    assert strategy.partitions[3] == {"node-id": 24, "held-out": True, "class-counts": []}


def test_a_counts_only_secure_round_gives_the_exact_global_counts() -> None:
    state = _round(_secure(PromptFedAvg), InProcessGrid(app, {n: {} for n in STATS}, {}))
    np.testing.assert_array_equal(state[wire.PROTO_COUNT], COUNTS)
    assert wire.PROTO_MEAN not in state


def test_no_reply_the_strategy_pulls_holds_a_nodes_counts_or_sums() -> None:
    grid = SpyGrid(app, {n: {} for n in STATS}, {})
    strategy = _secure()
    _round(strategy, grid)
    assert grid.pulled  # four stages of replies
    vectors = 0
    for reply in grid.pulled:
        assert reply.metadata.message_type.endswith(ACTION)  # never a plain prototype reply
        content = reply.content
        assert wire.PROTO not in content
        for name, record in content.array_records.items():
            assert name == VECTOR_RECORD and list(record) == [MASKED]
            value = record[MASKED].numpy()
            _, _, counts, _ = STATS[reply.metadata.src_node_id]
            # Plain counts are below 10 and scaled sums below 1 step x 2^24: masked values
            # are spread over [0, 2^62).
            assert (value[:C] != np.array(counts)).all() and value.max() > 2**40
            vectors += 1
        for record in content.metric_records.values():
            assert set(record) <= {wire.PARTITION_ID, wire.HELD_OUT}
    assert vectors == 3  # the held-out node never sends one
    # The contributors may train, with no counts of theirs on record.
    assert strategy._node_counts == {21: [], 22: [], 23: []}


def test_a_node_lost_mid_protocol_leaves_the_others_prototypes() -> None:
    def vanish(reply: Message) -> Message | None:
        """Node 22 shares its keys, then never sends its masked vector."""
        return None if VECTOR_RECORD in reply.content.array_records else reply

    grid = InProcessGrid(app, {n: {} for n in STATS}, {}, {22: vanish})
    strategy = _secure()
    strategy.timeout = 0.2  # how long a stage waits for a node that never answers
    state = _round(strategy, grid)
    # Without node 22: counts [2, 1, 5], sums [[1, -2], [0.25, -0.5], [2.5, 6.5]].
    np.testing.assert_array_equal(state[wire.PROTO_COUNT], [2, 1, 5])
    expected = [[0.5, -1.0], [0.25, -0.5], [0.5, 1.3]]
    np.testing.assert_allclose(state[wire.PROTO_MEAN], expected, atol=3 * PARAMS.step * 100)
    assert [node for _, node, _ in strategy.dropped] == [22]


@pytest.mark.integration
def test_the_project_clientapp_gives_the_same_prototypes_securely(tiny_run_config: dict) -> None:
    initial = _initial(10, TINY_MODEL["model.embed-dim"])  # digits, the tiny ViT's width
    plain_grid = InProcessGrid(project_app, NODES, tiny_run_config)
    plain_state = _round(PEPFedPT(), plain_grid, initial)
    params = SecAggParams(threshold=2, clipping_range=64.0, bits=24, max_count=10_000)
    secure_grid = InProcessGrid(project_app, NODES, tiny_run_config)
    secure_state = _round(_secure(params=params), secure_grid, initial)
    np.testing.assert_array_equal(secure_state[wire.PROTO_COUNT], plain_state[wire.PROTO_COUNT])
    counts = plain_state[wire.PROTO_COUNT].astype(np.float64)
    # Per element: 3 nodes' rounding, each below one step x max_count, over Σ n_c.
    bound = 3 * params.step * params.max_count / np.maximum(counts, 1)[:, None]
    error = np.abs(secure_state[wire.PROTO_MEAN] - plain_state[wire.PROTO_MEAN])
    assert (error <= bound + 1e-6).all(), float(error.max())
    assert float(np.abs(plain_state[wire.PROTO_MEAN]).max()) < params.clipping_range


def test_a_tally_takes_a_secure_total_as_that_many_clients() -> None:
    tally = PrototypeTally(2, 1)
    tally.add_total(np.array([[6.0], [-1.5]]), np.array([4, 1]), clients=3)
    means, counts = tally.means()
    np.testing.assert_array_equal(means, [[1.5], [-1.5]])
    np.testing.assert_array_equal(counts, [4, 1])
    assert tally.clients == 3
    with pytest.raises(ValueError, match="clients = 0 must be >= 1"):
        tally.add_total(np.zeros((2, 1)), np.array([0, 0]), clients=0)
    with pytest.raises(ValueError, match="a counts-only tally takes no sums"):
        PrototypeTally(2).add_total(np.zeros((2, 1)), np.array([1, 1]), clients=1)


def test_late_nodes_are_never_asked_in_plain_under_secure_aggregation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = InProcessGrid(app, {n: {} for n in STATS}, {})
    strategy = _secure()
    state = strategy.prototype_round(grid, _initial(), server_round=0)
    grid.contexts[25] = Context(1, 25, {}, RecordDict(), {})  # joins after the round
    assert strategy.admit_late_nodes(grid, state, server_round=1) is state
    assert ("query", 25) not in grid.sent and ("query.secagg", 25) not in grid.sent
    assert "1 node(s) outside the secure prototype round stay out of training" in caplog.text
    with pytest.raises(RuntimeError, match="a plain prototype query under secure_aggregation"):
        strategy._ask_for_prototypes(grid, state, [25], 1, lambda answer: None)


def test_a_late_node_joins_training_at_the_next_secure_prototype_refresh() -> None:
    grid = InProcessGrid(app, {n: {} for n in (21, 22, 24)}, {})
    strategy = PEPFedPT(
        secure_aggregation="secaggplus", secagg=PARAMS, prototype_refresh_every=2, seed=0
    )
    strategy.min_available_nodes = strategy.min_train_nodes = 1
    state = strategy.prototype_round(grid, _initial(), server_round=0)
    np.testing.assert_array_equal(state[wire.PROTO_COUNT].numpy(), [3, 3, 1])  # 21 + 22
    grid.contexts[23] = Context(1, 23, {}, RecordDict(), {})  # connects after round 0

    # Round 1: no refresh due; the late node is asked nothing and is not sampled.
    assert not strategy.refreshes_prototypes(1)
    assert strategy.admit_late_nodes(grid, state, server_round=1) is state
    assert strategy._sample(grid, 1.0, 1, exclude=strategy.held_out_nodes, verified_only=True) == [
        21,
        22,
    ]
    # Round 3 (prototype_refresh_every = 2: rounds 3, 5, ...) opens with a secure prototype
    # round over every connected node: node 23's statistics join the totals (still never
    # seen alone), and it may train from then on.
    assert not strategy.refreshes_prototypes(2) and strategy.refreshes_prototypes(3)
    refreshed = strategy.prototype_round(grid, state, server_round=3)
    np.testing.assert_array_equal(refreshed[wire.PROTO_COUNT].numpy(), COUNTS)
    np.testing.assert_allclose(refreshed[wire.PROTO_MEAN].numpy(), MEANS, atol=1e-4)
    assert {kind for kind, node in grid.sent if node == 23} == {f"query.{ACTION}"}
    assert strategy._sample(grid, 1.0, 1, exclude=strategy.held_out_nodes, verified_only=True) == [
        21,
        22,
        23,
    ]
    assert strategy.held_out_nodes == {24}
