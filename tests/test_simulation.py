"""One real `flwr run .` in Flower's simulation engine, as the README runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers.flwr_run import BIN, ROOT, flwr_env, stop_superlink

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
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                ".",
                "--stream",
                "-c",
                overrides,
                "--federation-config",
                "num-supernodes=2",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        log = run.stdout + run.stderr
        assert run.returncode == 0, log
        run_id = next(w for w in log.split() if w.isdigit() and len(w) > 6)
        listing = subprocess.run(
            [str(BIN / "flwr"), "ls", "--run-id", run_id, "--format", "json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = json.loads(listing.stdout)["runs"][0]["status"]
        assert status == "finished:completed", log
        assert "pep-fedpt summary" in log
        rows = json.loads((out / "metrics.json").read_text())
        assert [r["round"] for r in rows] == [0, 1]
        assert rows[1]["evaluate/num-clients"] == 2
    finally:
        stop_superlink(home)
