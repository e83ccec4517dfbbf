"""``fed.evaluate-every``: clients and server evaluate every k-th round, round 0 and always
the last; every round is still recorded (its checkpoint is what a resume reads). The
resumed-run case is in tests/test_resume.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.run_helpers import NODES, load_json, load_state, run_server

from pep_fedpt.config import ConfigError, RunConfig
from server_app.checkpoint import config_differences
from strategies.base import evaluation_round


@pytest.mark.parametrize(
    ("every", "rounds", "evaluated"),
    [
        (1, 4, [0, 1, 2, 3, 4]),
        (2, 5, [0, 2, 4, 5]),  # the last round always
        (3, 6, [0, 3, 6]),
        (10, 4, [0, 4]),  # more than the run's rounds: the initial state and the end
    ],
)
def test_evaluation_rounds(every: int, rounds: int, evaluated: list[int]) -> None:
    assert [t for t in range(rounds + 1) if evaluation_round(t, every, rounds)] == evaluated


def test_a_resumed_run_may_evaluate_more_or_less_often() -> None:
    saved = RunConfig().to_flat()
    assert config_differences(saved, saved | {"fed.evaluate-every": 10}) == []


def test_evaluate_every_below_one_is_refused_naming_the_value() -> None:
    flat = RunConfig().to_flat() | {"fed.evaluate-every": 0}
    with pytest.raises(ConfigError, match=r"fed.evaluate-every = 0 must be >= 1"):
        RunConfig.from_flat(flat)
    with pytest.raises(ValueError, match="every = 0"):
        evaluation_round(1, 0, 4)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fedavg-vpt-deep", "fedmvp"])
def test_a_run_evaluates_only_in_its_evaluation_rounds(
    method: str, tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    """Three rounds, every second evaluated: rounds 0, 2 and 3 carry the clients' and the
    server's accuracies, round 1 only its training; no evaluate message goes out in it."""
    flat = dict(tiny_run_config, **{"num-server-rounds": 3, "fed.evaluate-every": 2})
    flat["method"] = method
    nodes = NODES
    if method == "fedmvp":  # two clients of two of digits' five base classes each
        flat.update({"fedmvp.classes-per-client": 2, "fedmvp.shots": 4, "train.batch-size": 8})
        nodes = {10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)}
    grid = run_server(flat, nodes=nodes)
    rows = load_json(tmp_path / "run" / "metrics.json")
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    server_key = "server/accuracy" if method != "fedmvp" else "server/base-accuracy"
    assert [int(r["round"]) for r in rows if server_key in r] == [0, 2, 3]
    assert [int(r["round"]) for r in rows if "evaluate/mean-client-accuracy" in r] == [2, 3]
    assert all("train/train-loss" in r for r in rows[1:])
    evaluated = [kind for kind, _ in grid.sent].count("evaluate")
    assert evaluated == 2 * len({node for kind, node in grid.sent if kind == "evaluate"})


@pytest.mark.integration
def test_training_does_not_depend_on_evaluate_every(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    """2 of 3 nodes sampled per round for training and for evaluation from one seeded
    stream: a round that does not evaluate still draws its evaluation sample, so the same
    nodes train in every round and the final state is the same, bit for bit."""
    states, trained = {}, {}
    for every in (1, 2):
        out = tmp_path / f"every-{every}"
        flat = dict(tiny_run_config, **{"num-server-rounds": 3, "fed.evaluate-every": every})
        flat.update({"output-dir": str(out), "fed.fraction-train": 0.67})
        flat.update({"fed.fraction-evaluate": 0.67, "fed.min-evaluate-nodes": 1})
        grid = run_server(flat)
        trained[every] = [node for kind, node in grid.sent if kind == "train"]
        states[every] = load_state(out)
    assert trained[1] == trained[2]
    assert sorted(states[1]) == sorted(states[2])
    for key, value in states[1].items():
        np.testing.assert_array_equal(states[2][key], value, err_msg=key)
