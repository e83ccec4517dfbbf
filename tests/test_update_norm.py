"""The magnitude defence: a train reply whose update ‖reply − sent‖₂ is out of bounds is
refused, and a run in which no round changed the state fails loudly.

Through the real ServerApp and ClientApps (in-process): ten nodes, one of which sends its
honest update scaled by 10^6 (finite values, so every earlier check passes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message, MessageType
from flwr.app.error import Error
from helpers.run_helpers import load_json, load_state, on, run_server

from client_app.app import app as client_app
from pep_fedpt.config import ROBUST_AGGREGATIONS as config_aggregations
from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.methods.registry import method_for
from server_app.app import RunUnchangedError
from server_app.inprocess import InProcessGrid
from strategies import wire
from strategies.options import ROBUST_AGGREGATIONS
from strategies.robust import robust_value
from strategies.sgpt import SGPT
from strategies.validation import check_update_norm, norm_bound, update_norm

NODES = {20 + p: {"partition-id": p, "num-partitions": 10} for p in range(10)}
HOSTILE = 29


class ScalingGrid(InProcessGrid):
    """Node HOSTILE's train replies carry its honest update times ``factor``: the arrays
    it was sent plus ``factor`` × (what it trained − what it was sent)."""

    def __init__(self, flat: dict, factor: float) -> None:
        super().__init__(client_app, NODES, flat)
        self.factor = factor
        self.sent_to_hostile: dict[str, np.ndarray] = {}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            if msg.metadata.dst_node_id == HOSTILE and msg.metadata.message_type == "train":
                arrays = msg.content[wire.ARRAYS]
                self.sent_to_hostile = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}
        return super().push_messages(messages)

    def scale(self, reply: Message) -> Message:
        arrays = reply.content[wire.ARRAYS]
        for key in list(arrays):
            sent = self.sent_to_hostile[key]
            trained = arrays[key].numpy().astype(np.float64)
            arrays[key] = Array((sent + self.factor * (trained - sent)).astype(np.float32))
        return reply


def _error(reply: Message) -> Message:
    return Message(error=Error(code=0, reason="sits this round out"), metadata=reply.metadata)


def _run(flat: dict, out: Path, hostile: str, **changes: object) -> ScalingGrid:
    config = {**flat, "output-dir": str(out), **changes}
    grid = ScalingGrid(config, 1e6)
    tamper = grid.scale if hostile == "scaled" else _error
    run_server(config, {HOSTILE: on(MessageType.TRAIN, tamper)}, grid=grid)
    return grid


@pytest.mark.integration
def test_one_client_with_updates_a_million_times_larger_leaves_the_nine_others_result(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    _run(tiny_run_config, tmp_path / "hostile", "scaled")
    _run(tiny_run_config, tmp_path / "nine", "error")

    # The hostile node's reply is refused, so the state is the nine
    # honest nodes' aggregate to the bit (the node's error replies drop it just the same).
    hostile, nine = load_state(tmp_path / "hostile"), load_state(tmp_path / "nine")
    assert sorted(hostile) == sorted(nine)
    for key, value in nine.items():
        np.testing.assert_array_equal(hostile[key], value, err_msg=key)
    dropped = load_json(tmp_path / "hostile" / "dropped.json")
    assert [(d["round"], d["node"]) for d in dropped] == [(1, HOSTILE)]
    for entry in dropped:
        assert entry["reason"].startswith("update norm ")
        assert "fed.update-norm-factor = 100 x the round's median update norm" in entry["reason"]
        norm, bound = (float(w) for w in entry["reason"].split()[2:7:4])
        assert norm > 1e5 * bound / 100  # 10^6 x an honest norm against 100 x the median
    row = load_json(tmp_path / "hostile" / "metrics.json")[-1]
    assert (row["train/valid-replies"], row["train/dropped-replies"]) == (9, 1)
    assert 0 < row["train/median-update-norm"] < 1e4


@pytest.mark.integration
def test_without_the_bounds_the_same_client_carries_the_state_away(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    """The counter-check: with both bounds off, the scaled update is averaged in."""
    off = {"fed.max-update-norm": 0.0, "fed.update-norm-factor": 0.0}
    _run(tiny_run_config, tmp_path / "hostile", "scaled", **off)
    _run(tiny_run_config, tmp_path / "nine", "error", **off)
    hostile, nine = load_state(tmp_path / "hostile"), load_state(tmp_path / "nine")
    moved = max(float(np.abs(hostile[k] - nine[k]).max()) for k in nine if k.startswith("head"))
    assert moved > 100.0
    assert load_json(tmp_path / "hostile" / "dropped.json") == []


def test_a_run_in_which_every_reply_is_refused_fails_and_says_so(
    tiny_run_config: dict, tmp_path: Path, task_identity: None, caplog: pytest.LogCaptureFixture
) -> None:
    # A bound no honest update meets, as in issue 18's train.lr = 1e20 run (updates ~1e29
    # against the default 1e4): every reply of the run's one round is refused.
    flat = {**tiny_run_config, "fed.max-update-norm": 1e-9}
    with caplog.at_level(logging.ERROR, logger="flwr"), pytest.raises(RunUnchangedError):
        run_server(flat)

    out = Path(flat["output-dir"])
    dropped = load_json(out / "dropped.json")
    assert [(d["round"], d["node"]) for d in dropped] == [(1, 10), (1, 11), (1, 12)]
    assert all("fed.max-update-norm = 1e-09)" in d["reason"] for d in dropped), dropped[0]
    line = (
        "NO ROUND CHANGED THE GLOBAL STATE: train messages went out in 1 round(s) and every "
        "round kept the state it started with (3 replies refused, the reasons in "
        "dropped.json); the results are those of the initial state"
    )
    assert f"pep-fedpt: {line}" in [r.getMessage() for r in caplog.records]
    assert f"**RUN FAILED: {line}**" in (out / "summary.md").read_text().splitlines()


# ---------------------------------------------------------------- the bound, by hand
def test_the_update_norm_is_the_l2_norm_of_the_difference_over_every_shared_key() -> None:
    sent = {"a": np.zeros(2, np.float32), "b": np.ones((2, 2), np.float32)}
    reply = {"a": np.array([3.0, 0.0], np.float32), "b": np.full((2, 2), 3.0, np.float32)}
    # sqrt(3^2 + 4 x 2^2) = sqrt(25) = 5
    assert update_norm(reply, sent) == 5.0
    assert update_norm({"a": reply["a"]}, sent) == 3.0


@pytest.mark.parametrize(
    ("norms", "max_norm", "factor", "bound", "says"),
    [
        # median_low of (1, 2, 3, 1000) is 2: 10 x 2 = 20
        ([1.0, 2.0, 3.0, 1000.0], 0.0, 10.0, 20.0, "fed.update-norm-factor = 10 x"),
        # two replies: the lower one (1) is the median, not the mean of 1 and 10^6
        ([1.0, 1e6], 1e4, 100.0, 100.0, "median update norm 1 of 2 replies"),
        ([1e3, 2e3, 3e3], 1e4, 100.0, 1e4, "fed.max-update-norm = 10000"),
        ([0.0, 0.0, 5.0], 0.0, 10.0, math.inf, ""),  # the median did not move: no scale
        ([1.0, 2.0], 0.0, 0.0, math.inf, ""),
    ],
)
def test_the_bound_is_the_smaller_of_the_absolute_one_and_factor_times_the_median(
    norms: list[float], max_norm: float, factor: float, bound: float, says: str
) -> None:
    got, why = norm_bound(norms, max_norm, factor)
    assert got == bound
    assert says in why


def test_a_refusal_names_the_norm_and_the_bound() -> None:
    bound, why = norm_bound([1.0, 2.0, 2.5e6], 1e4, 100.0)
    assert check_update_norm(200.0, bound, why) is None
    assert check_update_norm(2.5e6, bound, why) == (
        "update norm 2.5e+06 exceeds the bound 200 (fed.update-norm-factor = 100 x the "
        "round's median update norm 2 of 3 replies)"
    )


# ---------------------------------------------------------------- robust aggregation
@pytest.mark.integration
def test_with_the_median_a_million_fold_update_moves_the_state_as_little_as_an_honest_one(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    """fed.aggregation = 'median' with both norm bounds off: the scaled update is in the
    aggregate, and the state ends within a few honest updates of the nine's mean (0.094
    against the nine's own move of 0.041 when measured: the unweighted median of non-IID
    clients is not their weighted mean, with or without the hostile one), where the mean
    puts it over 100 away (the test above)."""
    off = {"fed.max-update-norm": 0.0, "fed.update-norm-factor": 0.0}
    median = {**off, "fed.aggregation": "median"}
    _run(tiny_run_config, tmp_path / "median", "scaled", **median)
    _run(tiny_run_config, tmp_path / "median-nine", "error", **median)
    _run(tiny_run_config, tmp_path / "nine", "error", **off)
    states = {name: load_state(tmp_path / name) for name in ("median", "median-nine", "nine")}
    with np.load(tmp_path / "nine" / "initial-state.npz") as data:
        initial = {key: data[key] for key in data.files}
    trained = [k for k in initial if k.startswith(("head", "prompt"))]

    def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        return math.sqrt(sum(float(np.sum((a[k] - b[k]) ** 2)) for k in trained))

    moved = distance(states["nine"], initial)
    apart = distance(states["median"], states["nine"])
    assert 0 < apart < 10 * moved, (apart, moved)
    # The gap is the median's (of the nine alone too), not the hostile client's.
    without = distance(states["median-nine"], states["nine"])
    assert abs(apart - without) < moved, (apart, without, moved)
    assert load_json(tmp_path / "median" / "dropped.json") == []


def test_the_median_and_trimmed_mean_by_hand() -> None:
    values = [np.array([1.0, 10.0]), np.array([2.0, 20.0]), np.array([1e6, -1e6])]
    # One number per reply: every coordinate over all three.
    np.testing.assert_array_equal(
        robust_value(values, [5, 5, 5], np.zeros(2), "median"), [2.0, 10.0]
    )
    # 3 replies, 0.34 of each end: int(1.02) = 1 left out at each end, the middle one kept.
    np.testing.assert_array_equal(
        robust_value(values, [5, 5, 5], np.zeros(2), "trimmed-mean", 0.34), [2.0, 10.0]
    )
    # One weight per row: row 0 from the replies that weigh it (all three), row 1 from the
    # second alone; a row no reply weighs keeps its previous value.
    rows = [np.array([1.0, 0.0]), np.array([1.0, 3.0]), np.array([1.0, 0.0])]
    np.testing.assert_array_equal(
        robust_value(values, rows, np.array([7.0, 8.0]), "median"), [2.0, 20.0]
    )
    nobody = [np.zeros(2), np.array([1.0, 0.0]), np.zeros(2)]
    np.testing.assert_array_equal(
        robust_value(values, nobody, np.array([7.0, 8.0]), "median"), [2.0, 8.0]
    )


def test_a_method_that_makes_its_own_state_refuses_the_median() -> None:
    with pytest.raises(ValueError, match=r"SGPT makes its new state in its own merge_result"):
        SGPT(reply_aggregation="median")
    flat = {"method": "sgpt", "fed.aggregation": "median"}
    with pytest.raises(ConfigError, match=r"method = 'sgpt' makes its new state itself"):
        method_for(RunConfig.from_flat(flat))
    with pytest.raises(ConfigError, match=r"fed.aggregation = 'mode' is not accepted; use one"):
        RunConfig.from_flat({"fed.aggregation": "mode"})
    assert config_aggregations == ROBUST_AGGREGATIONS
