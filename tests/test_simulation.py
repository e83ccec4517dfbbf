"""One real `flwr run .` in Flower's simulation engine, as the README runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(400)
def test_flwr_run_simulation_finishes_completed(tmp_path: Path) -> None:
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # A SuperLink of our own, never one that another run left behind.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
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
        _stop_superlink(home)


def _stop_superlink(home: Path) -> None:
    """The local SuperLink outlives `flwr run`; stop the one this test's FLWR_HOME started."""
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True
    )
    pids = [int(pid) for pid in found.stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
