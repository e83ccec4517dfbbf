"""A real `flwr run` from a test: its own FLWR_HOME and ports, and no SuperLink left behind.

``flwr run`` in the simulation engine starts a local SuperLink that outlives it; a test
gives it free ports (never one another run left behind) and stops it by its FLWR_HOME.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # this environment's flwr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_env(home: Path) -> dict[str, str]:
    """The environment of a ``flwr run`` whose local SuperLink lives in ``home`` on free
    ports, with this environment's ``flwr`` first on PATH."""
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def stop_superlink(home: Path) -> None:
    """Stop the local SuperLink that a ``flwr run`` in ``home`` started (SIGTERM, then
    SIGKILL after 10 s)."""
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True, check=False
    )
    pids = {int(pid) for pid in found.stdout.split()}
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
