"""The training round under SecAgg+: the shared prompt and head n_k-weighted and the class
prompts n_{k,c}-weighted from masked totals, as the plain round computes them.

The strategies run whole (``start``: prototype round, then training) against a small
ClientApp whose nodes "train" to hand-written arrays and answer the plain messages and
``query.secagg`` alike; the integration test runs the project's own ClientApp.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app import secagg as client_secagg
from server_app.inprocess import InProcessGrid
from strategies import SGPT, PEPFedPT, PromptFedAvg, wire
from strategies.secagg import ACTION, TASK_TRAIN, VECTOR_RECORD, SecAggParams, secure_update

SHARED, CLASS = wire.SHARED_PROMPT, wire.class_prompt_key(0)
# Node id -> (class counts, loss, trained arrays).
NODES = {
    31: (
        [2, 0],
        1.0,
        {
            SHARED: [[1.0, 2.0]],
            CLASS: [[[1.0, 1.0]], [[5.0, 5.0]]],
            wire.HEAD_WEIGHT: [[1.0, 0.0], [0.0, 1.0]],
            wire.HEAD_BIAS: [1.0, 1.0],
        },
    ),
    32: (
        [1, 3],
        2.0,
        {
            SHARED: [[4.0, -1.0]],
            CLASS: [[[4.0, -2.0]], [[1.0, 3.0]]],
            wire.HEAD_WEIGHT: [[0.0, 0.0], [2.0, 2.0]],
            wire.HEAD_BIAS: [0.0, 4.0],
        },
    ),
    33: (  # only where a test drops it
        [1, 1],
        9.0,
        {
            SHARED: [[100.0, 100.0]],
            CLASS: [[[100.0, 100.0]], [[100.0, 100.0]]],
            wire.HEAD_WEIGHT: [[100.0, 100.0], [100.0, 100.0]],
            wire.HEAD_BIAS: [100.0, 100.0],
        },
    ),
}
# Nodes 31 and 32, by hand: n = 2, 4; shared (2 [1, 2] + 4 [4, -1]) / 6; class row 0 by
# counts 2, 1; row 1 by 0, 3 (node 31's [5, 5] weighs nothing); head and bias by n.
EXPECTED = {
    SHARED: [[3.0, 0.0]],
    CLASS: [[[2.0, 0.0]], [[1.0, 3.0]]],
    wire.HEAD_WEIGHT: [[1 / 3, 0.0], [4 / 3, 5 / 3]],
    wire.HEAD_BIAS: [1 / 3, 3.0],
}
PARAMS = SecAggParams(
    threshold=2, clipping_range=16.0, bits=30, max_count=1000, update_clipping_range=8.0
)
# Each weighted sum element is off by less than 2 nodes x one step (2 x 8 / 2^30) x
# max_count; the smallest divisor is n_{k,c} = 3.
TOLERANCE = 2 * (16.0 / 2**30) * PARAMS.max_count / 3


@pytest.fixture(autouse=True)
def _identity(task_identity: None) -> None:
    """Messages built outside a run need Flower's task identity."""


app = ClientApp()


def _trained(node: int) -> tuple[dict[str, np.ndarray], dict]:
    counts, loss, arrays = NODES[node]
    metrics = {wire.NUM_EXAMPLES: sum(counts), wire.CLASS_COUNTS: counts, wire.TRAIN_LOSS: loss}
    return {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}, metrics


@app.query()
def plain_query(msg: Message, context: Context) -> Message:
    counts = np.array(NODES[context.node_id][0], dtype=np.int64)
    proto = {wire.PROTO_COUNT: Array(counts), wire.PROTO_SUM: Array(np.ones((2, 2), np.float32))}
    metrics = MetricRecord({wire.NUM_EXAMPLES: int(counts.sum())})
    return Message(
        RecordDict({wire.PROTO: ArrayRecord(proto), wire.METRICS: metrics}), reply_to=msg
    )


@app.train()
def plain_train(msg: Message, context: Context) -> Message:
    arrays, metrics = _trained(context.node_id)
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(
        RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord(metrics)}), reply_to=msg
    )


def _vector(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray]:
    config = msg.content[wire.CONFIG]
    if config[wire.CFG_TASK] == TASK_TRAIN:
        assert wire.ARRAYS in msg.content  # the train message's state came along
        arrays, metrics = _trained(context.node_id)
        sent = {key: array.numpy() for key, array in msg.content[wire.ARRAYS].items()}
        return secure_update(config, arrays, metrics, sent)
    counts = np.array(NODES[context.node_id][0], dtype=np.int64)
    return counts, np.ones(4) / float(config["sum-scale"])


@app.query(ACTION)
def secure(msg: Message, context: Context) -> Message:
    return client_secagg.answer(msg, context, _vector)


class SpyGrid(InProcessGrid):
    """Keeps every reply the strategy pulls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pulled: list[Message] = []

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        self.pulled.extend(replies)
        return replies


def _initial() -> ArrayRecord:
    zeros = {
        SHARED: np.zeros((1, 2)),
        CLASS: np.zeros((2, 1, 2)),
        wire.HEAD_WEIGHT: np.zeros((2, 2)),
        wire.HEAD_BIAS: np.zeros(2),
    }
    return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in zeros.items()})


def _run(strategy: PromptFedAvg, nodes: Iterable[int], tamper=None) -> dict[str, np.ndarray]:
    grid = SpyGrid(app, {n: {} for n in nodes}, {}, tamper)
    # timeout: how long a stage waits for a node that never answers
    result = strategy.start(grid, _initial(), num_rounds=1, timeout=0.2)
    strategy.grid = grid  # type: ignore[attr-defined]  # the test's own attribute: the grid, for what it pulled
    return {key: result.arrays[key].numpy() for key in result.arrays}


def _secure(**kwargs) -> PEPFedPT:
    return PEPFedPT(secure_aggregation="secaggplus", secagg=PARAMS, fraction_evaluate=0.0, **kwargs)


def test_a_secure_training_round_gives_the_plain_rounds_weighted_means() -> None:
    plain = _run(PEPFedPT(fraction_evaluate=0.0), [31, 32])
    strategy = _secure()
    secure = _run(strategy, [31, 32])
    for key, expected in EXPECTED.items():
        np.testing.assert_allclose(plain[key], expected, rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(secure[key], expected, atol=TOLERANCE, err_msg=key)
        assert secure[key].dtype == np.float32
    metrics = strategy.round_metrics[1]
    assert metrics["train/num-examples"] == 6
    assert metrics["train/valid-replies"] == 2
    assert metrics["train/train-loss"] == pytest.approx(10 / 6, abs=1e-5)


def test_no_training_reply_the_strategy_pulls_holds_a_nodes_arrays_or_counts() -> None:
    strategy = _secure()
    _run(strategy, [31, 32])
    pulled = strategy.grid.pulled  # type: ignore[attr-defined]  # set by _run above
    assert len(pulled) == 16  # two rounds (prototypes, training) x 4 stages x 2 nodes
    for reply in pulled:
        assert reply.metadata.message_type.endswith(ACTION)  # no plain train reply
        assert set(reply.content.array_records) <= {VECTOR_RECORD}
        assert not reply.content.metric_records


def test_a_node_lost_mid_training_leaves_the_others_weighted_means() -> None:
    vectors = 0

    def vanish(reply: Message) -> Message | None:
        """Node 33 takes part in the prototype round, then in training shares its keys
        but never sends its masked vector."""
        nonlocal vectors
        if VECTOR_RECORD in reply.content.array_records:
            vectors += 1
            return None if vectors == 2 else reply
        return reply

    strategy = _secure()
    secure = _run(strategy, [31, 32, 33], {33: vanish})
    for key, expected in EXPECTED.items():
        np.testing.assert_allclose(secure[key], expected, atol=TOLERANCE, err_msg=key)
    assert [(r, node) for r, node, _ in strategy.dropped] == [(1, 33)]


def test_too_few_nodes_left_keep_the_previous_state(caplog: pytest.LogCaptureFixture) -> None:
    vectors = 0

    def vanish(reply: Message) -> Message | None:
        nonlocal vectors
        if VECTOR_RECORD in reply.content.array_records:
            vectors += 1
            return None if vectors == 2 else reply
        return reply

    strategy = _secure()
    secure = _run(strategy, [31, 32], {32: vanish})
    np.testing.assert_array_equal(secure[SHARED], np.zeros((1, 2)))
    assert "fewer than the threshold 2; no sum is revealed; the global state stays" in caplog.text
    assert strategy.round_metrics[1]["train/valid-replies"] == 0


def test_a_method_that_needs_single_replies_refuses_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="not available for SGPT: its aggregate_train, "):
        SGPT(secure_aggregation="secaggplus", secagg=PARAMS)


@pytest.mark.integration
def test_the_project_clientapp_trains_securely_to_the_plain_rounds_state(
    tiny_run_config: dict,
) -> None:
    from helpers.run_helpers import NODES as PROJECT_NODES

    from client_app.app import app as project_app
    from pep_fedpt.config import RunConfig
    from pep_fedpt.methods.registry import method_for

    cfg = RunConfig.from_flat(tiny_run_config)
    start = method_for(cfg).build_server(cfg, torch.device("cpu")).initial_arrays()

    def run(strategy: PromptFedAvg) -> dict[str, np.ndarray]:
        grid = InProcessGrid(project_app, PROJECT_NODES, tiny_run_config)
        initial = ArrayRecord({k: Array(v) for k, v in start.items()})
        result = strategy.start(grid, initial, num_rounds=1)
        return {key: result.arrays[key].numpy() for key in result.arrays}

    plain = run(PEPFedPT(seed=0))
    # Prototype round: feature values within 64; training: updates within 1; the tiny
    # partitions hold fewer than 400 examples.
    params = SecAggParams(
        threshold=2, clipping_range=64.0, bits=30, max_count=400, update_clipping_range=1.0
    )
    secure = run(PEPFedPT(seed=0, secure_aggregation="secaggplus", secagg=params))
    assert set(secure) == set(plain)
    np.testing.assert_array_equal(secure[wire.PROTO_COUNT], plain[wire.PROTO_COUNT])
    # Measured on this run: the class prompts off by 2.5e-7 where one round changed them
    # by 1.1e-5 to 1.6e-5; the shared prompt and head by 1e-8 against 4e-5 to 6e-2.
    for key in plain:
        error = float(np.abs(secure[key].astype(np.float64) - plain[key]).max())
        if key in start:  # trained: quantisation well below the round's own change
            change = float(np.abs(plain[key] - start[key]).max())
            assert error <= 0.05 * change, (key, error, change)
        else:  # the prototypes: quantised once, then fixed
            assert error <= 1e-4, (key, error)


def test_the_run_config_keys_build_a_secure_strategy_and_refuse_bad_values() -> None:
    from pep_fedpt.config import SECURE_AGGREGATIONS, ConfigError, RunConfig
    from pep_fedpt.methods.registry import method_for
    from strategies.options import SECURE_AGGREGATIONS as MODES

    assert SECURE_AGGREGATIONS == MODES  # the config's copy (it imports no flwr)

    flat = RunConfig().to_flat()
    flat.update({"fed.secure-aggregation": "secaggplus", "fed.secagg-threshold": 3})
    cfg = RunConfig.from_flat(flat)
    strategy = method_for(cfg).build_strategy(cfg)
    assert strategy.secagg == SecAggParams(threshold=3, bits=30, max_count=10_000)
    with pytest.raises(ConfigError, match=r"fed.secagg-\*: secagg bits = 31 is not accepted"):
        RunConfig.from_flat(dict(flat, **{"fed.secagg-bits": 31}))
    with pytest.raises(ConfigError, match=r"fed\.secure-aggregation = .on. is not accepted"):
        RunConfig.from_flat(dict(flat, **{"fed.secure-aggregation": "on"}))


@pytest.mark.integration
def test_a_whole_secure_run_of_the_server_app_completes(tiny_run_config: dict) -> None:
    import json
    from pathlib import Path

    from helpers.run_helpers import load_state, run_server

    flat = dict(tiny_run_config, **{"num-server-rounds": 2})
    flat.update({"fed.secure-aggregation": "secaggplus", "fed.secagg-max-count": 400})
    grid = run_server(flat)
    kinds = {kind for kind, _ in grid.sent}
    assert kinds == {"query.secagg", "evaluate"}  # no plain query or train message
    state = load_state(Path(flat["output-dir"]))
    assert int(state[wire.PROTO_COUNT].sum()) > 0
    metrics = json.loads((Path(flat["output-dir"]) / "metrics.json").read_text())
    assert [row["train/valid-replies"] for row in metrics if "train/valid-replies" in row] == [
        3,
        3,
    ]


def test_under_client_side_dp_the_pulled_replies_still_hold_masked_vectors_only() -> None:
    """The norm bits travel masked too: the server learns how many nodes were clipped
    (both here: a bound of 1e-3 against updates of norm > 1), and nothing per node."""
    from strategies.dp import dp_wrapper

    strategy = _secure()
    grid = SpyGrid(app, {n: {} for n in (31, 32)}, {})

    def wrap(sampled: int) -> Any:
        return dp_wrapper(
            strategy,
            "client-adaptive",
            noise_multiplier=0.0,
            clipping_norm=1e-3,
            num_sampled_clients=sampled,
            clipped_count_stddev=0.0,
        )

    ends = list(strategy.rounds(grid, _initial(), num_rounds=1, timeout=0.2, dp=wrap))
    assert len(grid.pulled) == 16
    for reply in grid.pulled:
        assert reply.metadata.message_type.endswith(ACTION)
        assert set(reply.content.array_records) <= {VECTOR_RECORD}
        assert not reply.content.metric_records
    # Both clipped: f = 1 against the target 0.5 grows the bound by exp(0.2 * 0.5).
    assert ends[-1].metrics["dp/clipping-norm"] == 1e-3
    assert ends[-1].checkpoint["dp"]["clipping-norm"] == pytest.approx(1e-3 * np.exp(0.1))
