"""PEPFedPT inside Flower's own round loop and its DP wrappers, fixed and adaptive clipping.

A Flower user starts the strategy with Flower's unmodified ``Strategy.start``, or wraps it
in ``DifferentialPrivacyServerSideFixedClipping`` / ``...ClientSideFixedClipping`` or
``...ServerSideAdaptiveClipping`` / ``...ClientSideAdaptiveClipping`` (whose ``start`` is
Flower's, and which clip each reply against the ArrayRecord that loop carries and add
noise to every array of the aggregate; the adaptive ones also move the clipping norm
every round by how many replies it clipped). The prototype round and late-node admission
run from ``configure_train``, the loop carries the trainable arrays only, and the
prototypes stay the strategy's (``server_arrays``). Real ServerApp-side strategy, real
ClientApps (the client-side runs with Flower's ``fixedclipping_mod`` or
``adaptiveclipping_mod`` on their train handler), real prototypes, in one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import Mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_NORM_BIT
from helpers.run_helpers import NODES

from client_app import app as client_module
from pep_fedpt.config import RunConfig
from pep_fedpt.methods.registry import method_for
from server_app.app import build_strategy
from server_app.inprocess import InProcessGrid
from strategies import dp, wire
from strategies.pep_fedpt import PEPFedPT
from strategies.privacy_ledger import PrivacyLedger, largest_share, unaccountable

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
    # The arrays Flower's loop carried after each round (0: the initial ones), the
    # wrapper's clipping norm then (adaptive wrappers), and every train reply as its node
    # sent it (arrays and metrics copied before any wrapper clipped them), in round order.
    carried: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    norms: dict[int, float] = field(default_factory=dict)
    replies: list[tuple[dict[str, np.ndarray], dict]] = field(default_factory=list)


def _dp_client_app(mod: Mod = fixedclipping_mod) -> ClientApp:
    """This project's ClientApp handlers, with one of Flower's clipping mods on train only."""
    app = ClientApp()
    app.query()(client_module.prototypes)
    app.train(mods=[mod])(client_module.train)
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
    rounds: int = ROUNDS,
) -> Run:
    strategy = build_strategy(RunConfig.from_flat(flat))
    assert isinstance(strategy, PEPFedPT)
    replies: list[tuple[dict[str, np.ndarray], dict]] = []

    def keep(reply: Message) -> Message:
        if reply.metadata.message_type == MessageType.TRAIN and reply.has_content():
            arrays = {k: v.numpy().copy() for k, v in reply.content[wire.ARRAYS].items()}
            replies.append((arrays, dict(reply.content[wire.METRICS])))
        return reply

    grid = InProcessGrid(client_app, NODES, flat, {node: keep for node in NODES})
    evaluated: dict[int, dict[str, np.ndarray]] = {}
    carried: dict[int, dict[str, np.ndarray]] = {}
    norms: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        carried[server_round] = {k: v.numpy().copy() for k, v in arrays.items()}
        if hasattr(outer, "clipping_norm"):
            norms[server_round] = float(outer.clipping_norm)
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
        num_rounds=rounds,
        timeout=60.0,
        evaluate_fn=evaluate_fn,
    )
    arrays = {k: v.numpy() for k, v in result.arrays.items()}
    return Run(
        arrays,
        strategy,
        grid,
        evaluated,
        dict(result.train_metrics_clientapp),
        carried,
        norms,
        replies,
    )


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


@pytest.mark.integration
def test_under_flowers_own_loop_each_round_reports_the_epsilon_of_its_weights(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    """A Flower user's ServerApp (Flower's start, Flower's wrapper) gets ε in every round's
    train metrics, from the replies' own weights, as ``dp.mode`` runs report it."""

    def noisy(strategy: PEPFedPT) -> Strategy:
        return DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=2.0, clipping_norm=1e6, num_sampled_clients=len(NODES)
        )

    run = _run(flat, initial, noisy, _dp_client_app())
    ledger = PrivacyLedger(1e-5, len(NODES))
    for server_round in range(1, ROUNDS + 1):
        metrics = run.train_metrics[server_round]
        replies = [MetricRecord(m) for _, m in run.replies[(server_round - 1) * len(NODES) :]][
            : len(NODES)
        ]
        keys = [key for key in initial if not run.strategy.server_only(key)]
        share = largest_share(replies, keys, run.strategy.merge_weight)
        assert 1 / len(NODES) < share <= 1  # unequal nodes: more than the equal share
        assert metrics["dp-largest-share"] == pytest.approx(share)
        assert metrics["dp-update-noise-multiplier"] == pytest.approx(2.0 / (len(NODES) * share))
        ledger.compose(2.0 / (len(NODES) * share), len(NODES))
        assert metrics["dp-epsilon"] == pytest.approx(ledger.epsilon())


def test_flowers_own_adaptive_wrappers_get_no_epsilon_and_say_why() -> None:
    strategy = PEPFedPT()
    flowers = DifferentialPrivacyServerSideAdaptiveClipping(strategy, 0.0, 3)
    assert "noises for the next round's bound" in str(unaccountable(flowers))
    ours = dp.ServerSideAdaptiveClipping(strategy, 0.0, 3)
    assert unaccountable(ours) is None


# Flower's adaptive-clipping defaults (Andrew et al.'s), named so the hand values read.
CLIP_NORM_LR = 0.2
TARGET_QUANTILE = 0.5


def _adaptive(
    server_side: bool, initial_norm: float, settling: bool = False
) -> Callable[[PEPFedPT], Strategy]:
    kind: type[Strategy]
    if settling:  # this project's subclasses: the bound moves towards the target quantile
        kind = dp.ServerSideAdaptiveClipping if server_side else dp.ClientSideAdaptiveClipping
    else:
        kind = (
            DifferentialPrivacyServerSideAdaptiveClipping
            if server_side
            else DifferentialPrivacyClientSideAdaptiveClipping
        )

    def wrap(strategy: PEPFedPT) -> Strategy:
        return kind(
            strategy,
            noise_multiplier=0.0,
            num_sampled_clients=len(NODES),
            initial_clipping_norm=initial_norm,
            target_clipped_quantile=TARGET_QUANTILE,
            clip_norm_lr=CLIP_NORM_LR,
        )

    return wrap


def _flower_rule(norm: float, clipped: int, replies: int) -> float:
    """Flower 1.42's update of the clipping norm after a round in which ``clipped`` of
    ``replies`` updates were clipped (its count noise is 0 when noise_multiplier is 0)."""
    return norm * math.exp(-CLIP_NORM_LR * (clipped / replies - TARGET_QUANTILE))


def _rounds_of(run: Run) -> list[list[tuple[dict[str, np.ndarray], dict]]]:
    """The train replies of each round (every node trains every round here)."""
    n = len(NODES)
    assert len(run.replies) == n * (len(run.carried) - 1)
    return [run.replies[i : i + n] for i in range(0, len(run.replies), n)]


def _update_norm(reply: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((reply[k] - sent[k]).astype(np.float64) ** 2)) for k in sent))


@pytest.mark.integration
def test_both_adaptive_clipping_wrappers_equal_the_plain_run_without_noise(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    plain = _run(flat, initial)
    server_side = _run(flat, initial, _adaptive(True, 1e6))
    _assert_same_run(server_side, plain)

    client_side = _run(flat, initial, _adaptive(False, 1e6), _dp_client_app(adaptiveclipping_mod))
    _assert_same_run(client_side, plain)
    # adaptiveclipping_mod added each reply's norm bit (1: clipped) to its metrics: none was.
    assert [m[KEY_NORM_BIT] for _, m in client_side.replies] == [0] * (ROUNDS * len(NODES))
    # Like fixedclipping_mod it takes one ArrayRecord: the prototypes went apart, once.
    kinds = [kind for kind, _ in client_side.grid.sent]
    assert kinds[: kinds.index("train")] == ["query"] * (2 * len(NODES))
    assert kinds.count("query") == 2 * len(NODES)

    # No update was clipped, so by Flower's rule C <- C exp(-lr (clipped/n - q)) the bound
    # grows by exp(0.2 * 0.5) every round, away from the target quantile.
    for run in (server_side, client_side):
        assert run.norms == pytest.approx(
            {t: 1e6 * math.exp(0.1 * t) for t in range(ROUNDS + 1)}, rel=1e-12
        )


@pytest.mark.integration
def test_the_adaptive_norm_moves_by_flowers_rule_from_the_clipped_counts(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    """A bound between the round-1 update norms clips one reply of three; every later
    round's bound follows from that round's count (server side: the replies' update norms
    against the carried arrays; client side: the norm bits the mod added)."""
    probe = _run(flat, initial, rounds=1)
    first = sorted(_update_norm(arrays, initial) for arrays, _ in probe.replies)
    assert first[0] < first[1] < first[2]
    start = first[1] * (1 + 1e-6)  # above two of the round-1 norms, below the largest

    server_side = _run(flat, initial, _adaptive(True, start))
    client_side = _run(flat, initial, _adaptive(False, start), _dp_client_app(adaptiveclipping_mod))
    by_hand = start * math.exp(-0.2 * (1 / 3 - 0.5))  # one clipped of three
    for run in (server_side, client_side):
        assert run.norms[0] == start
        assert run.norms[1] == pytest.approx(by_hand, rel=1e-12)

    for t, replies in enumerate(_rounds_of(server_side), start=1):
        sent = server_side.carried[t - 1]
        clipped = sum(
            _update_norm(arrays, sent) > server_side.norms[t - 1] for arrays, _ in replies
        )
        assert server_side.norms[t] == pytest.approx(
            _flower_rule(server_side.norms[t - 1], clipped, len(NODES)), rel=1e-12
        )
    bits = [[int(m[KEY_NORM_BIT]) for _, m in replies] for replies in _rounds_of(client_side)]
    assert sum(bits[0]) == 1
    for t, round_bits in enumerate(bits, start=1):
        assert client_side.norms[t] == pytest.approx(
            _flower_rule(client_side.norms[t - 1], sum(round_bits), len(NODES)), rel=1e-12
        )


@pytest.mark.integration
def test_this_projects_adaptive_wrappers_move_the_bound_towards_the_target(
    flat: dict, initial: dict[str, np.ndarray], task_identity: None
) -> None:
    """The same start as above (nothing clipped): the bound shrinks by exp(-0.2 * 0.5) a
    round instead of growing, and the run is still the plain one (no bound bites)."""
    plain = _run(flat, initial)
    server_side = _run(flat, initial, _adaptive(True, 1e6, settling=True))
    client_side = _run(
        flat, initial, _adaptive(False, 1e6, settling=True), _dp_client_app(adaptiveclipping_mod)
    )
    for run in (server_side, client_side):
        _assert_same_run(run, plain)
        assert run.norms == pytest.approx(
            {t: 1e6 * math.exp(-0.1 * t) for t in range(ROUNDS + 1)}, rel=1e-12
        )


def test_the_projects_rule_settles_at_the_target_quantile_where_flowers_runs_off() -> None:
    """Nine fixed update norms 1..9 and a target of half clipped, from a bound above them
    all: this project's rule ends between the 4th and 6th norm; Flower's grows for ever."""
    norms = np.arange(1.0, 10.0)
    ends = {}
    for kind in (dp.ServerSideAdaptiveClipping, DifferentialPrivacyServerSideAdaptiveClipping):
        wrapper = kind(
            FedAvg(),
            noise_multiplier=0.0,
            num_sampled_clients=9,
            initial_clipping_norm=100.0,
            target_clipped_quantile=0.5,
            clip_norm_lr=0.2,
        )
        path = []
        for _ in range(300):
            wrapper._geometric_update(float(np.mean(norms > wrapper.clipping_norm)))
            path.append(wrapper.clipping_norm)
        ends[kind] = path
    settled = ends[dp.ServerSideAdaptiveClipping][-50:]
    assert min(settled) >= 4.0 and max(settled) <= 6.0
    assert ends[DifferentialPrivacyServerSideAdaptiveClipping][-1] == pytest.approx(
        100.0 * math.exp(0.1 * 300), rel=1e-9
    )


def test_secure_aggregation_is_refused_under_flowers_start(flat: dict, task_identity: None) -> None:
    cfg = RunConfig.from_flat({**flat, "fed.secure-aggregation": "secaggplus"})
    strategy = build_strategy(cfg)
    grid = InProcessGrid(client_module.app, NODES, flat)
    initial = ArrayRecord({wire.HEAD_WEIGHT: Array(np.zeros((10, 4), np.float32))})
    with pytest.raises(RuntimeError, match=r"PromptFedAvg\.start's round loop"):
        Strategy.start(strategy, grid=grid, initial_arrays=initial, num_rounds=1)
    assert grid.sent == []  # refused before anything went out
