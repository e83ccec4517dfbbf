"""Comparison folders as bench/compare.py and the ServerApp leave them, without Flower.

``FakeRuns`` plays ``bench.compare.execute`` (the one ``flwr run``): it writes the files a
completed or failed run leaves, so that ``compare.compare`` runs its real selection,
copying and reporting on them. ``write_run`` writes one final run by hand. The report
tests (tests/test_compare.py) and the collect and tables tests share them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench import compare
from bench.compare import COMPLETED, Outcome, RunSpec
from pep_fedpt.config import RunConfig

FAILED = "failed (flwr run exited 1, no run id)"


def rounds(acc: list[float], down: float, census_up: float = 240.0) -> list[dict]:
    """Round 0 (the prototype round's bytes) and one row per round with mean-client
    accuracy ``acc[i]``."""
    rows: list[dict] = [
        {"round": 0.0, "server/accuracy": 0.1, "bytes-down": 0, "bytes-up": census_up}
    ]
    for r, a in enumerate(acc, start=1):
        rows.append(
            {
                "round": float(r),
                "evaluate/global-accuracy": a + 0.1,
                "evaluate/mean-client-accuracy": a,
                "evaluate/worst-client-accuracy": a - 0.3,
                "server/accuracy": a + 0.05,
                "evaluate/client-accuracies": [a, a],
                "bytes-down": down,
                "bytes-up": 1000.0,
            }
        )
    return rows


def val_rounds(val: float, test: float) -> list[dict]:
    """``rounds`` of one round with test accuracy ``test`` and validation score ``val``."""
    rows = rounds([test], 10.0)
    rows[-1]["evaluate/val-mean-client-accuracy"] = val
    return rows


def write_states(run_dir: Path, change: float) -> None:
    """The two state files of a run whose shared prompt moved by ``change`` (relative)
    and whose class prompt moved by ``3 * change``; the head by ``change`` (absolute)."""
    initial = {
        "prompt.shared": np.ones((2, 2), np.float32),  # norm 2
        "prompt.class.1": np.ones((1, 4), np.float32),  # norm 2
        "head.weight": np.zeros((2, 2), np.float32),
        "head.bias": np.zeros(2, np.float32),
        "proto.count": np.array([3, 4]),  # not trainable: no drift
    }
    final = {
        **initial,
        "prompt.shared": np.full((2, 2), 1 + change, np.float32),
        "prompt.class.1": np.full((1, 4), 1 + 3 * change, np.float32),
        "head.weight": np.array([[change, 0.0], [0.0, 0.0]], np.float32),
    }
    np.savez(run_dir / "initial-state.npz", **initial)
    np.savez(run_dir / "state.npz", **final)


class FakeRuns:
    """Plays ``compare.execute``: writes the files a completed (or failed) run leaves, with
    the validation score ``scores[(method, flat[key])]`` (None: the run fails).

    With ``states``, a completed run also leaves its two state files (its drift grows with
    the score) and its run config; ``log`` gives the text of every run's log."""

    def __init__(
        self,
        scores: Mapping[tuple[str, Any], float | None],
        key: str = "train.lr",
        states: bool = False,
        log: Callable[[RunSpec], str] = lambda spec: "log\n",
    ) -> None:
        self.scores = scores
        self.key = key
        self.states = states
        self.log = log
        self.executed: list[str] = []

    def __call__(self, spec: RunSpec, flat: dict, federation: str) -> Outcome:
        self.executed.append(spec.name)
        score = self.scores[(spec.method, flat[self.key])]
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        rows = val_rounds(score or 0.0, 0.5 + spec.seed / 10)
        (spec.run_dir / "metrics.json").write_text(json.dumps(rows))
        spec.log_path.write_text(self.log(spec))
        if self.states and score is not None:
            write_states(spec.run_dir, score / 10)
            spec.config_path.write_text(compare.config_toml(flat))
            resolved = {**RunConfig().to_flat(), **flat}  # as the ServerApp writes it
            (spec.run_dir / "config.json").write_text(json.dumps(resolved))
        status = COMPLETED if score is not None else FAILED
        record = {"status": status, "run-id": "9", "wall-s": 2.0, "log": str(spec.log_path),
                  "config": flat}  # fmt: skip
        spec.status_path.write_text(json.dumps(record))
        return compare.load_outcome(spec)


def write_run(out: Path, name: str, rows: list[dict], wall: float) -> None:
    """A completed final run as bench/compare.py and the ServerApp leave it: a shared
    prompt moved by 10%, a class prompt by 50%, the head by 0.5."""
    run = out / "runs" / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(rows))
    initial = {
        "prompt.shared": np.ones((2, 2), np.float32),  # norm 2
        "prompt.class.1": np.ones((1, 4), np.float32),  # norm 2
        "head.weight": np.zeros((2, 2), np.float32),
        "head.bias": np.zeros(2, np.float32),
        "proto.count": np.array([3, 4]),  # not trainable: no drift
    }
    final = {
        **initial,
        "prompt.shared": np.full((2, 2), 1.1, np.float32),  # change 0.2: 10%
        "prompt.class.1": np.full((1, 4), 1.5, np.float32),  # change 1.0: 50%
        "head.weight": np.array([[0.3, 0.0], [0.0, 0.4]], np.float32),  # change 0.5
    }
    np.savez(run / "initial-state.npz", **initial)
    np.savez(run / "state.npz", **final)
    record = {"status": COMPLETED, "run-id": "7", "wall-s": wall, "log": f"/x/runs/{name}.log"}
    (out / "runs" / f"{name}.json").write_text(json.dumps(record))


def round_row(acc: float, global_acc: float) -> dict:
    """Round 1 of a run: mean client ``acc``, global ``global_acc``, 1 KiB each way."""
    return {
        "round": 1.0,
        "evaluate/global-accuracy": global_acc,
        "evaluate/mean-client-accuracy": acc,
        "evaluate/worst-client-accuracy": acc - 0.2,
        "server/accuracy": acc + 0.05,
        "bytes-down": 1024,
        "bytes-up": 1024,
    }


def long_log(spec: RunSpec) -> str:
    """A log far over bench.collect's limit for the first final run of pep-fedpt, a short
    one for every other run."""
    if spec.name == "pep-fedpt-s1":
        return "".join(f"line {i}: {'x' * 60}\n" for i in range(2000))
    return f"{spec.name}: log\n"


def fake_benchmark(out: Path, monkeypatch: Any) -> Path:
    """``out`` laid out as the benchmark of issue 11, in small: ``alpha-0.1`` and
    ``alpha-0.5`` (pep-fedpt and local, a two-point lr grid on seed 0, final runs on seeds
    0 and 1; one grid run fails) and ``ablation-tau`` (a sweep of prompt.tau for pep-fedpt
    on seed 0). Every completed run leaves its state files; returns ``out``."""
    from bench.grid import parse_grid

    grid = parse_grid("train.lr=0.01,0.05")
    base = {"data.val-fraction": 0.1}
    for alpha, bonus in (("0.1", 0.0), ("0.5", 0.1)):
        scores = {
            ("pep-fedpt", 0.01): 0.4 + bonus, ("pep-fedpt", 0.05): 0.6 + bonus,
            ("local", 0.01): None, ("local", 0.05): 0.5 + bonus,
        }  # fmt: skip
        monkeypatch.setattr(compare, "execute", FakeRuns(scores, states=True, log=long_log))
        folder = out / f"alpha-{alpha}"
        compare.compare(["pep-fedpt", "local"], [0, 1], folder, base, "", grid)
    scores = {("pep-fedpt", 0.3): 0.55, ("pep-fedpt", 1.0): 0.35}
    monkeypatch.setattr(compare, "execute", FakeRuns(scores, key="prompt.tau", states=True))
    sweep = parse_grid("prompt.tau=0.3,1.0", "--sweep")
    ablation = {**base, "train.lr": 0.05}
    compare.compare(["pep-fedpt"], [0], out / "ablation-tau", ablation, "", sweep=sweep)
    return out
