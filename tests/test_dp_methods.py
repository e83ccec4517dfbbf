"""Every method's strategy under Flower's DP wrappers: it runs, or it is refused at once.

Flower's wrappers clip each train reply against the arrays their loop carries and add
noise to every array of the aggregate (strategies/dp.py). The FedAvg-VPT family
(``PromptFedAvg``), SGPT (server side) and FedMVP fit that, and run here under one
wrapper each, with noise 0 and a bound that never bites, to the plain run's state within
float32 rounding. LocalOnly (never aggregates), pFedPG (per-node generated prompts, a
server-side generator) and SGPT under a client-side wrapper (two ArrayRecords per train
message) are refused by ``configure_train`` before anything is sent, in one line naming
the method, the wrapper and why. Real strategies and ClientApps, in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import Mod
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from helpers.run_helpers import NODES

from client_app import app as client_module
from pep_fedpt.config import RunConfig
from pep_fedpt.methods.registry import method_for
from server_app.app import build_strategy
from server_app.inprocess import InProcessGrid, Scalar
from strategies import wire
from strategies.base import PromptFedAvg

ROUNDS = 2
# FedMVP's small run (tests/test_fedmvp_apps.py): two clients of digits' base classes.
TWO: dict[int, dict[str, Scalar]] = {
    10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)
}
Wrap = Callable[[PromptFedAvg], Strategy]


def _client_app(mod: Mod | None) -> ClientApp:
    """This project's ClientApp handlers, with one of Flower's clipping mods on train."""
    if mod is None:
        return client_module.app
    app = ClientApp()
    app.query()(client_module.prototypes)
    app.train(mods=[mod])(client_module.train)
    app.evaluate()(client_module.evaluate)
    return app


def _initial(flat: Mapping[str, Scalar]) -> ArrayRecord:
    cfg = RunConfig.from_flat(dict(flat))
    arrays = method_for(cfg).build_server(cfg, torch.device("cpu")).initial_arrays()
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _run(
    flat: Mapping[str, Scalar],
    nodes: Mapping[int, Mapping[str, Scalar]],
    wrap: Wrap | None = None,
    mod: Mod | None = None,
) -> tuple[dict[str, np.ndarray], PromptFedAvg, InProcessGrid]:
    """ROUNDS rounds under Flower's own start: the final arrays, the strategy, the grid."""
    strategy = build_strategy(RunConfig.from_flat(dict(flat)))
    grid = InProcessGrid(_client_app(mod), nodes, flat)
    outer = strategy if wrap is None else wrap(strategy)
    result = Strategy.start(
        outer, grid=grid, initial_arrays=_initial(flat), num_rounds=ROUNDS, timeout=60.0
    )
    return {k: v.numpy() for k, v in result.arrays.items()}, strategy, grid


def _assert_same_state(
    wrapped: tuple[dict[str, np.ndarray], PromptFedAvg, InProcessGrid],
    plain: tuple[dict[str, np.ndarray], PromptFedAvg, InProcessGrid],
) -> None:
    """The wrapped run ends where the plain one does: the trained arrays to float32
    rounding (an unclipped reply is rebuilt as sent + (reply - sent)), the server arrays
    and what the strategy decided exactly."""
    arrays, strategy, _ = wrapped
    assert set(arrays) == set(plain[0])
    for key, value in plain[0].items():
        np.testing.assert_allclose(arrays[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    assert set(strategy.server_arrays) == set(plain[1].server_arrays)
    for key in plain[1].server_arrays:
        np.testing.assert_array_equal(
            strategy.server_arrays[key].numpy(), plain[1].server_arrays[key].numpy()
        )
    for run in (strategy, plain[1]):
        assert run.dropped == []
        assert run.updated_rounds == list(range(1, ROUNDS + 1))


def _server_fixed(strategy: Strategy) -> Strategy:
    return DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=0.0, clipping_norm=1e6, num_sampled_clients=len(NODES)
    )


def _server_adaptive(strategy: PromptFedAvg) -> Strategy:
    return DifferentialPrivacyServerSideAdaptiveClipping(
        strategy, noise_multiplier=0.0, num_sampled_clients=len(NODES), initial_clipping_norm=1e6
    )


def _client_fixed(strategy: PromptFedAvg) -> Strategy:
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, noise_multiplier=0.0, clipping_norm=1e6, num_sampled_clients=len(NODES)
    )


def _client_adaptive(strategy: PromptFedAvg) -> Strategy:
    return DifferentialPrivacyClientSideAdaptiveClipping(
        strategy, noise_multiplier=0.0, num_sampled_clients=len(NODES), initial_clipping_norm=1e6
    )


@pytest.fixture
def flat(tiny_run_config: dict) -> dict:
    return dict(tiny_run_config, **{"num-server-rounds": ROUNDS})


@pytest.mark.integration
def test_fedavg_vpt_runs_under_client_side_adaptive_clipping(
    flat: dict, task_identity: None
) -> None:
    """PromptFedAvg, the server of the whole FedAvg-VPT family (shallow, deep, FedProx,
    head-only, prior): its train messages carry one ArrayRecord, so the mod takes them."""
    flat = {**flat, "method": "fedavg-vpt-deep"}
    plain = _run(flat, NODES)
    assert type(plain[1]) is PromptFedAvg
    wrapped = _run(flat, NODES, _client_adaptive, adaptiveclipping_mod)
    _assert_same_state(wrapped, plain)
    # counts-only prototypes stay on the server: no query beyond the prototype round
    kinds = [kind for kind, _ in wrapped[2].sent]
    assert kinds.count("query") == len(NODES)
    assert kinds.count("train") == ROUNDS * len(NODES)


@pytest.mark.integration
def test_fedmvp_runs_under_client_side_fixed_clipping(tmp_path: Path, task_identity: None) -> None:
    config = RunConfig().to_flat()
    config.update(
        {
            "method": "fedmvp",
            "num-server-rounds": ROUNDS,
            "output-dir": str(tmp_path / "run"),
            "cache-dir": str(tmp_path / "features"),
            "fedmvp.classes-per-client": 2,
            "fedmvp.shots": 4,
            "train.batch-size": 8,
        }
    )

    def client_fixed(strategy: PromptFedAvg) -> Strategy:
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=0.0, clipping_norm=1e6, num_sampled_clients=len(TWO)
        )

    plain = _run(config, TWO)
    wrapped = _run(config, TWO, client_fixed, fixedclipping_mod)
    _assert_same_state(wrapped, plain)
    assert all(key.startswith(wire.FEDMVP_PREFIX) for key in wrapped[0])


def _refused(flat: Mapping[str, Scalar], wrap: Wrap, mod: Mod | None, match: str) -> None:
    """The first configure_train refuses, in one line, before any message is sent."""
    strategy = build_strategy(RunConfig.from_flat(dict(flat)))
    grid = InProcessGrid(_client_app(mod), NODES, flat)
    with pytest.raises(RuntimeError, match=match) as refusal:
        Strategy.start(wrap(strategy), grid=grid, initial_arrays=_initial(flat), num_rounds=1)
    assert "\n" not in str(refusal.value)
    assert grid.sent == []


@pytest.mark.parametrize(
    ("wrap", "mod"),
    [
        (_server_fixed, None),
        (_server_adaptive, None),
        (_client_fixed, fixedclipping_mod),
        (_client_adaptive, adaptiveclipping_mod),
    ],
)
def test_local_only_is_refused_under_every_wrapper(
    flat: dict, wrap: Wrap, mod: Mod | None, task_identity: None
) -> None:
    name = wrap(PromptFedAvg()).__class__.__name__
    _refused(
        {**flat, "method": "local"},
        wrap,
        mod,
        rf"^LocalOnly cannot run under {name}: local-only never aggregates",
    )


@pytest.mark.parametrize("wrap", [_server_fixed, _client_adaptive])
def test_pfedpg_is_refused_under_a_wrapper(flat: dict, wrap: Wrap, task_identity: None) -> None:
    _refused(
        {**flat, "method": "pfedpg"},
        wrap,
        None,
        r"^PFedPG cannot run under DifferentialPrivacy\w+: each node trains the prompt "
        r"generated for it",
    )


@pytest.mark.integration
@pytest.mark.parametrize("wrap", [_server_adaptive, _client_fixed])
def test_sgpt_runs_under_a_dp_wrapper_as_without(
    flat: dict, wrap: Wrap, task_identity: None
) -> None:
    """Server side: group.count is a server array, counted, never noised or clipped.
    Client side: it rides in the train config when a bound is there (the mods take one
    ArrayRecord); the project's own ClientApp clips, with no mod added by the user."""
    flat = {**flat, "method": "sgpt", "prompt.num-groups": 4}
    plain = _run(flat, NODES)
    wrapped = _run(flat, NODES, wrap)
    _assert_same_state(wrapped, plain)
    counts = wrapped[1].server_arrays[wire.GROUP_COUNT].numpy()
    assert counts.dtype == np.int64 and counts.sum() > 0


class _LoggingWrapper(DifferentialPrivacyServerSideAdaptiveClipping):
    """A user's subclass of a Flower wrapper, with its own configure_train."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, config, grid)


class _Passthrough(Strategy):
    """A wrapper of the user's own between Flower's DP wrapper and the strategy."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        pass


@pytest.mark.parametrize(
    ("wrap", "name"),
    [
        (
            lambda s: _LoggingWrapper(s, noise_multiplier=0.0, num_sampled_clients=3),
            "_LoggingWrapper",
        ),
        (
            lambda s: _server_fixed(_Passthrough(s)),
            "DifferentialPrivacyServerSideFixedClipping",
        ),
    ],
)
def test_a_wrapper_subclass_or_one_in_between_is_found_too(
    flat: dict, wrap: Wrap, name: str, task_identity: None
) -> None:
    _refused({**flat, "method": "local"}, wrap, None, rf"^LocalOnly cannot run under {name}: ")
