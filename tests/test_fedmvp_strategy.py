"""FedMVP's server (strategies/fedmvp.py) against recorded replies, through the real
strategy and an in-process grid of scripted numpy ClientApps (no torch, no CLIP).

The scripted clients reply with arrays known in advance, so the new global state can be
checked against the (weighted) mean computed here by hand, and they record the adapter
switch each message carried.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server_app.inprocess import InProcessGrid
from strategies import FedMVP, wire

NUM_CLASSES = 6
# Partition p holds classes 2p and 2p+1 (disjoint, as base->new gives them), 4 shots each;
# partition 2 holds twice as many shots, so that n_k weights differ from equal ones.
SHOTS = {0: 4, 1: 4, 2: 8}
KEYS = {"fedmvp.proj.weight": (3, 2), "fedmvp.adapter.q.a": (2, 1)}


def counts_of(pid: int) -> np.ndarray:
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    counts[2 * pid : 2 * pid + 2] = SHOTS[pid]
    return counts


def trained(pid: int, server_round: int) -> dict[str, np.ndarray]:
    """What partition ``pid`` replies with in ``server_round``: fixed, distinct numbers."""
    return {
        key: np.full(shape, 10.0 * pid + server_round, dtype=np.float32)
        + np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        for key, shape in KEYS.items()
    }


def initial() -> ArrayRecord:
    return ArrayRecord({k: Array(np.zeros(s, dtype=np.float32)) for k, s in KEYS.items()})


def scripted_app(seen: list[tuple[str, int, int]]) -> ClientApp:
    """Partition 1 switches its adapters on in round 1; the others never do."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        counts = counts_of(pid)
        content = RecordDict(
            {
                wire.PROTO: ArrayRecord({wire.PROTO_COUNT: Array(counts)}),
                wire.METRICS: MetricRecord(
                    {wire.NUM_EXAMPLES: int(counts.sum()), wire.PARTITION_ID: pid}
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        config = msg.content[wire.CONFIG]
        server_round = int(config[wire.CFG_SERVER_ROUND])
        switch = int(config[wire.ADAPTERS_ON])
        seen.append(("train", pid, switch))
        counts = counts_of(pid)
        metrics = {
            wire.NUM_EXAMPLES: int(counts.sum()),
            wire.CLASS_COUNTS: counts.tolist(),
            wire.TRAIN_LOSS: 1.0,
            wire.PARTITION_ID: pid,
            wire.ADAPTERS_ON: 1 if pid == 1 else switch,
        }
        sent = next(iter(msg.content[wire.ARRAYS].values())).numpy().dtype
        arrays = ArrayRecord(  # replies in the type the state came in, as FedMVP's client
            {k: Array(v.astype(sent)) for k, v in trained(pid, server_round).items()}
        )
        content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        seen.append(("evaluate", pid, int(msg.content[wire.CONFIG][wire.ADAPTERS_ON])))
        metrics = {wire.NUM_EXAMPLES: 10, wire.CORRECT: 5 + pid, wire.PARTITION_ID: pid}
        return Message(content=RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)

    return app


# Node ids unlike the partition ids, so that a mix-up would show.
NODES = {20 + pid: {"partition-id": pid, "num-partitions": 3} for pid in SHOTS}


def run(
    aggregation: str = "equal",
    rounds: int = 1,
    tamper: dict | None = None,
    strategy: FedMVP | None = None,
    start_round: int = 1,
    arrays: ArrayRecord | None = None,
    seen: list | None = None,
) -> tuple[FedMVP, ArrayRecord, list[tuple[str, int, int]]]:
    seen = [] if seen is None else seen
    grid = InProcessGrid(scripted_app(seen), NODES, {}, tamper)
    strategy = strategy or FedMVP(
        num_classes=NUM_CLASSES, aggregation=aggregation, min_train_nodes=2
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays or initial(),
        num_rounds=rounds,
        start_round=start_round,
    )
    return strategy, result.arrays, seen


def by_hand(weights: dict[int, float], server_round: int) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    return {
        key: sum(
            w * trained(pid, server_round)[key].astype(np.float64) for pid, w in weights.items()
        )
        / total
        for key in KEYS
    }


@pytest.mark.parametrize(
    ("aggregation", "weights"),
    [("equal", {0: 1.0, 1: 1.0, 2: 1.0}), ("num-examples", {0: 8.0, 1: 8.0, 2: 16.0})],
)
def test_the_average_is_the_mean_of_the_replies_by_hand(
    aggregation: str, weights: dict[int, float], task_identity
) -> None:
    _, state, _ = run(aggregation)
    for key, expected in by_hand(weights, 1).items():
        np.testing.assert_allclose(state[key].numpy(), expected, rtol=1e-6)
    # The prototype round's result: the global class counts (FedMVP has no head to size them by).
    assert state[wire.PROTO_COUNT].numpy().tolist() == [4, 4, 4, 4, 8, 8]


def test_the_adapter_switch_travels_per_partition_and_is_checkpointed(task_identity) -> None:
    strategy, _, seen = run(rounds=2)
    # Round 1: every switch off; partition 1 reports it on, so round 1's evaluation and
    # round 2's training and evaluation carry it on for partition 1 only.
    first_train, first_eval, second_train, second_eval = (
        sorted(seen[i : i + 3]) for i in range(0, 12, 3)
    )
    assert first_train == [("train", 0, 0), ("train", 1, 0), ("train", 2, 0)]
    for phase in (first_eval, second_train, second_eval):
        assert [(pid, on) for _, pid, on in phase] == [(0, 0), (1, 1), (2, 0)]
    assert strategy.adapters_on == {0: False, 1: True, 2: False}
    assert strategy.round_metrics[2]["train/adapters-on"] == 1.0

    saved = json.loads(json.dumps(strategy.checkpoint()))  # as the checkpoint file holds it
    fresh = FedMVP(num_classes=NUM_CLASSES)
    fresh.restore(saved)
    assert fresh.adapters_on == strategy.adapters_on
    assert fresh.node_partitions == {20: 0, 21: 1, 22: 2}
    assert fresh.switch_for(21) and not fresh.switch_for(20)


def test_a_resumed_strategy_sends_the_same_switches_as_an_uninterrupted_one(
    task_identity,
) -> None:
    _, whole_state, whole = run(rounds=3)
    first, state, _ = run(rounds=1)
    resumed = FedMVP(num_classes=NUM_CLASSES, min_train_nodes=2)
    resumed.restore(json.loads(json.dumps(first.checkpoint())))
    seen: list = []
    _, end_state, _ = run(strategy=resumed, start_round=2, rounds=3, arrays=state, seen=seen)
    assert seen == whole[6:]
    for key in KEYS:
        np.testing.assert_array_equal(end_state[key].numpy(), whole_state[key].numpy())


def _malformed(change):
    def tamper(reply: Message) -> Message:
        if reply.metadata.message_type == "train" and reply.has_content():
            change(reply.content)
        return reply

    return tamper


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c[wire.METRICS].__setitem__(wire.ADAPTERS_ON, 2), "adapters-on = 2"),
        (lambda c: c[wire.METRICS].pop(wire.ADAPTERS_ON), "adapters-on = None"),
        (lambda c: c[wire.METRICS].__setitem__(wire.PARTITION_ID, 0), "holds partition 2"),
        (
            lambda c: c[wire.ARRAYS].__setitem__(
                "fedmvp.proj.weight", Array(np.full((3, 2), np.nan, dtype=np.float32))
            ),
            "non-finite",
        ),
        (lambda c: c[wire.ARRAYS].pop("fedmvp.adapter.q.a"), "missing ['fedmvp.adapter.q.a']"),
    ],
)
def test_a_malformed_reply_is_dropped_with_a_log_line(
    change, reason: str, task_identity, caplog
) -> None:
    strategy, state, _ = run(tamper={22: _malformed(change)})
    assert [(r, n) for r, n, _ in strategy.dropped] == [(1, 22)]
    assert reason in strategy.dropped[0][2]
    assert any("dropped reply from node 22" in rec.getMessage() for rec in caplog.records)
    # The mean of the two valid replies only; partition 2's switch was never recorded.
    for key, expected in by_hand({0: 1.0, 1: 1.0}, 1).items():
        np.testing.assert_allclose(state[key].numpy(), expected, rtol=1e-6)
    assert 2 not in strategy.adapters_on


def test_below_min_train_nodes_the_state_and_switches_stay(task_identity) -> None:
    def fail(reply: Message) -> Message:
        return _malformed(lambda c: c[wire.METRICS].__setitem__(wire.ADAPTERS_ON, 5))(reply)

    strategy, state, _ = run(tamper={20: fail, 22: fail})
    for key in KEYS:
        np.testing.assert_array_equal(state[key].numpy(), np.zeros(KEYS[key]))
    assert strategy.adapters_on == {}


def test_bad_constructor_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="aggregation = 'mean'"):
        FedMVP(num_classes=3, aggregation="mean")
    with pytest.raises(ValueError, match="num_classes = 0"):
        FedMVP(num_classes=0)


def test_bytes_are_counted_per_round(task_identity) -> None:
    strategy, _, _ = run()
    per_message = sum(int(np.prod(s)) * 4 for s in KEYS.values())
    assert strategy.round_metrics[1]["train/bytes-down"] == 3 * per_message
    assert strategy.round_metrics[1]["train/bytes-up"] == 3 * per_message
    assert strategy.round_metrics[1]["evaluate/bytes-up"] == 0


def test_float16_messages_carry_half_the_bytes_and_the_state_stays_float32(
    task_identity,
) -> None:
    seen: list = []
    half = FedMVP(num_classes=NUM_CLASSES, wire_dtype="float16", min_train_nodes=2)
    strategy, state, _ = run(strategy=half, seen=seen)
    per_message = sum(int(np.prod(s)) * 2 for s in KEYS.values())
    assert strategy.round_metrics[1]["train/bytes-down"] == 3 * per_message
    assert strategy.round_metrics[1]["evaluate/bytes-down"] == 3 * per_message
    for key, expected in by_hand({0: 1.0, 1: 1.0, 2: 1.0}, 1).items():
        assert state[key].numpy().dtype == np.float32
        np.testing.assert_allclose(state[key].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="wire_dtype = 'bfloat16'"):
        FedMVP(num_classes=3, wire_dtype="bfloat16")
