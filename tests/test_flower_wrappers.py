"""PEPFedPT inside Flower's own round loop and its DP fixed-clipping wrappers.

A Flower user starts the strategy with Flower's unmodified ``Strategy.start``, or wraps it
in ``DifferentialPrivacyServerSideFixedClipping`` / ``...ClientSideFixedClipping`` (whose
``start`` is Flower's, and which clip each reply against the ArrayRecord that loop carries
and add noise to every array of the aggregate). The prototype round and late-node
admission run from ``configure_train``, the loop carries the trainable arrays only, and
the prototypes stay the strategy's (``server_arrays``). Real ServerApp-side strategy, real
ClientApps (the client-side run with Flower's ``fixedclipping_mod`` on its train handler),
real prototypes, in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from helpers.run_helpers import NODES

from client_app import app as client_module
from pep_fedpt.config import RunConfig
from pep_fedpt.methods.registry import method_for
from server_app.app import build_strategy
from server_app.inprocess import InProcessGrid
from strategies import wire
from strategies.pep_fedpt import PEPFedPT

ROUNDS = 3


@dataclass
class Run:
    """What a run leaves: the loop's final arrays, the strategy, the grid, and the whole
    state each round's central evaluation saw."""

    arrays: dict[str, np.ndarray]
    strategy: PEPFedPT
    grid: InProcessGrid
    evaluated: dict[int, dict[str, np.ndarray]]
    train_metrics: dict[int, MetricRecord]


def _dp_client_app() -> ClientApp:
    """This project's ClientApp handlers, with Flower's clipping mod on train only."""
    app = ClientApp()
    app.query()(client_module.prototypes)
    app.train(mods=[fixedclipping_mod])(client_module.train)
    app.evaluate()(client_module.evaluate)
    return app


@pytest.fixture
def flat(tiny_run_config: dict) -> dict:
    return dict(tiny_run_config, **{"num-server-rounds": ROUNDS})


@pytest.fixture
def initial(flat: dict) -> dict[str, np.ndarray]:
    cfg = RunConfig.from_flat(flat)
    return method_for(cfg).build_server(cfg, torch.device("cpu")).initial_arrays()


def _run(
    flat: dict,
    initial: dict[str, np.ndarray],
    wrap: Callable[[PEPFedPT], Strategy] | None = None,
    client_app: ClientApp = client_module.app,
) -> Run:
    strategy = build_strategy(RunConfig.from_flat(flat))
    assert isinstance(strategy, PEPFedPT)
    grid = InProcessGrid(client_app, NODES, flat)
    evaluated: dict[int, dict[str, np.ndarray]] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        if server_round > 0:  # round 0 comes before configure_train ran the prototype round
            whole = strategy.global_state(arrays)
            evaluated[server_round] = {k: v.numpy() for k, v in whole.items()}
        return MetricRecord({})

    outer = strategy if wrap is None else wrap(strategy)
    # Flower's own loop, never PromptFedAvg.start: what a Flower user's ServerApp runs.
    result = Strategy.start(
        outer,
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=ROUNDS,
        timeout=60.0,
        evaluate_fn=evaluate_fn,
    )
    arrays = {k: v.numpy() for k, v in result.arrays.items()}
    return Run(arrays, strategy, grid, evaluated, dict(result.train_metrics_clientapp))


def _server_side(strategy: PEPFedPT) -> Strategy:
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=0.0, clipping_norm=1e6, num_sampled_clients=len(NODES)
    )


def _client_side(strategy: PEPFedPT) -> Strategy:
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, noise_multiplier=0.0, clipping_norm=1e6, num_sampled_clients=len(NODES)
    )


def _assert_same_run(wrapped: Run, plain: Run) -> None:
    """The wrapped run's state equals the plain one's: the prototypes and everything the
    strategy decided exactly; the trained arrays to float32 rounding, because a clip that
    does not bite still rebuilds each reply as sent + (reply - sent)."""
    assert (
        set(wrapped.arrays)
        == set(plain.arrays)
        == set(
            wrapped.strategy.trainable_state(
                ArrayRecord({k: Array(v) for k, v in wrapped.arrays.items()})
            )
        )
    )
    for key, value in plain.arrays.items():
        np.testing.assert_allclose(wrapped.arrays[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    for key in (wire.PROTO_MEAN, wire.PROTO_COUNT):
        np.testing.assert_array_equal(
            wrapped.strategy.server_arrays[key].numpy(), plain.strategy.server_arrays[key].numpy()
        )
    for run in (wrapped, plain):
        assert run.strategy.dropped == []
        assert run.strategy.updated_rounds == list(range(1, ROUNDS + 1))
        assert run.strategy.proto_version() == 1  # one prototype round, no late nodes
        # Central evaluation sees the whole state, prototypes included, in every round.
        assert sorted(run.evaluated) == list(range(1, ROUNDS + 1))
        for state in run.evaluated.values():
            np.testing.assert_array_equal(
                state[wire.PROTO_MEAN], run.strategy.server_arrays[wire.PROTO_MEAN].numpy()
            )
    assert wrapped.strategy.partitions == plain.strategy.partitions
    for server_round, metrics in plain.train_metrics.items():
        assert wrapped.train_metrics[server_round][wire.NUM_EXAMPLES] == metrics[wire.NUM_EXAMPLES]
        assert wrapped.train_metrics[server_round][wire.TRAIN_LOSS] == pytest.approx(
            metrics[wire.TRAIN_LOSS], rel=1e-4
        )


@pytest.mark.integration
def test_flowers_own_start_runs_the_prototype_round_and_carries_trainable_arrays_only(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    plain = _run(flat, initial)

    kinds = [kind for kind, _ in plain.grid.sent]
    assert kinds[: len(NODES)] == ["query"] * len(NODES)  # the prototype round, first
    assert kinds.count("query") == len(NODES)  # once: nothing asks again
    assert kinds.count("train") == ROUNDS * len(NODES)
    assert set(plain.arrays) == set(initial)  # no server-made array in Flower's loop
    assert {wire.PROTO_MEAN, wire.PROTO_COUNT} <= set(plain.strategy.server_arrays)
    assert plain.strategy.updated_rounds == list(range(1, ROUNDS + 1))
    # The prototypes are the feature-sum means the nodes reported: one row per class held.
    counts = plain.strategy.server_arrays[wire.PROTO_COUNT].numpy()
    means = plain.strategy.server_arrays[wire.PROTO_MEAN].numpy()
    assert counts.sum() > 0 and np.isfinite(means).all()
    assert np.abs(means[counts > 0]).sum(axis=1).min() > 0


@pytest.mark.integration
def test_both_fixed_clipping_wrappers_equal_the_plain_run_without_noise(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    plain = _run(flat, initial)
    _assert_same_run(_run(flat, initial, _server_side), plain)

    client_side = _run(flat, initial, _client_side, _dp_client_app())
    _assert_same_run(client_side, plain)
    # fixedclipping_mod takes one ArrayRecord per train message: the prototypes went to
    # each node once, in a query of their own, before its first train message.
    kinds = [kind for kind, _ in client_side.grid.sent]
    first_train = kinds.index("train")
    assert kinds[:first_train] == ["query"] * (2 * len(NODES))
    assert kinds.count("query") == 2 * len(NODES)


@pytest.mark.integration
def test_a_clipping_bound_that_bites_changes_the_state(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    """The wrappers really are in the loop: a tiny bound keeps the state near the start."""

    def tight(strategy: PEPFedPT) -> Strategy:
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=0.0, clipping_norm=1e-6, num_sampled_clients=len(NODES)
        )

    clipped = _run(flat, initial, tight)
    moved = sum(float(np.linalg.norm(clipped.arrays[k] - initial[k])) ** 2 for k in initial) ** 0.5
    assert 0 < moved <= ROUNDS * 1e-6 * 1.01


def test_secure_aggregation_is_refused_under_flowers_start(flat: dict, task_identity: None) -> None:
    cfg = RunConfig.from_flat({**flat, "fed.secure-aggregation": "secaggplus"})
    strategy = build_strategy(cfg)
    grid = InProcessGrid(client_module.app, NODES, flat)
    initial = ArrayRecord({wire.HEAD_WEIGHT: Array(np.zeros((10, 4), np.float32))})
    with pytest.raises(RuntimeError, match=r"PromptFedAvg\.start's round loop"):
        Strategy.start(strategy, grid=grid, initial_arrays=initial, num_rounds=1)
    assert grid.sent == []  # refused before anything went out
