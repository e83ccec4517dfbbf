"""Real `flwr run .` in Flower's simulation engine, as the README runs it: it finishes, and
the same seed gives the same run (fresh, and resumed) though node ids differ every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pep_fedpt.local_flwr import flwr_env, run_to_end, stop_superlink

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


@pytest.mark.timeout(400)
def test_flwr_run_simulation_finishes_completed(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    env = flwr_env(home)
    overrides = (
        f"num-server-rounds=1 output-dir='{out}' model.pretrained='random' model.depth=2 "
        "model.embed-dim=64 model.num-heads=2 model.img-size=16"
    )
    try:
        run = run_to_end(
            ROOT, "-c", overrides, "--federation-config", "num-supernodes=2", env=env, timeout=300
        )
        log = run.log
        assert run.returncode == 0 and run.completed, log
        assert "pep-fedpt summary" in log
        rows = json.loads((out / "metrics.json").read_text())
        assert [r["round"] for r in rows] == [0, 1]
        assert rows[1]["evaluate/num-clients"] == 2
    finally:
        stop_superlink(home)


@pytest.mark.timeout(400)
def test_a_client_side_adaptive_dp_run_completes_in_the_simulation_engine(tmp_path: Path) -> None:
    """dp.* from the command line: each node's ClientApp clips and reports its norm bit
    (Flower's client-side adaptive wrapper refuses a reply without one), the bound moves,
    and every round states its epsilon."""
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    overrides = (
        f"num-server-rounds=2 output-dir='{out}' dp.mode='client-adaptive' "
        "dp.noise-multiplier=0.1 dp.clipped-count-stddev=0.1 dp.clipping-norm=1e-4"
    )
    try:
        flwr_run(home, overrides, supernodes=2)
        rows = json.loads((out / "metrics.json").read_text())
        bounds = [row["dp/clipping-norm"] for row in rows[1:]]
        # Every update is larger than 1e-4: all clipped, so the bound grows (exp(0.2 x 0.5)
        # a round; the count noise of std 0.1 cannot turn 2 clipped of 2 below one half).
        assert bounds[0] == 1e-4 and bounds[1] > bounds[0]
        assert 0 < rows[1]["dp/epsilon"] < rows[2]["dp/epsilon"]
    finally:
        stop_superlink(home)


TINY = (
    "model.pretrained='random' model.depth=2 model.embed-dim=64 model.num-heads=2 model.img-size=16"
)


def flwr_run(home: Path, overrides: str, supernodes: int) -> str:
    """One `flwr run .` to its end; its log (fails the test unless it exited 0)."""
    run = run_to_end(
        ROOT,
        "-c",
        f"{TINY} {overrides}",
        "--federation-config",
        f"num-supernodes={supernodes}",
        env=flwr_env(home),
        timeout=300,
    )
    assert run.returncode == 0, run.log
    return run.log


@pytest.mark.timeout(1200)
def test_the_same_seed_trains_the_same_clients_in_every_run_and_after_a_resume(
    tmp_path: Path,
) -> None:
    # Half of 4 clients train each round: which half is the seed's choice alone, although
    # the simulation gives the SuperNodes new random node ids in every run.
    home = tmp_path / "flwr-home"
    sampled = (
        "fed.fraction-train=0.5 fed.fraction-evaluate=0.5 "
        "fed.min-train-nodes=2 fed.min-evaluate-nodes=2"
    )
    try:
        for name in ("first", "second"):
            flwr_run(home, f"num-server-rounds=3 {sampled} output-dir='{tmp_path / name}'", 4)
        stopped = tmp_path / "stopped"
        flwr_run(home, f"num-server-rounds=1 {sampled} output-dir='{stopped}'", 4)
        flwr_run(home, f"num-server-rounds=3 {sampled} output-dir='' resume-from='{stopped}'", 4)
    finally:
        stop_superlink(home)
    state = (tmp_path / "first" / "state.npz").read_bytes()
    assert (tmp_path / "second" / "state.npz").read_bytes() == state
    assert (stopped / "state.npz").read_bytes() == state
    rows = {
        name: json.loads((tmp_path / name / "metrics.json").read_text())
        for name in ("first", "second", "stopped")
    }
    evaluated = {
        name: [row.get("evaluate/client-partition-ids") for row in runs]
        for name, runs in rows.items()
    }
    assert evaluated["second"] == evaluated["first"]
    assert evaluated["stopped"] == evaluated["first"]
