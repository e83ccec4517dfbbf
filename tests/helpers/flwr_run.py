"""A real `flwr run` from a test: its own FLWR_HOME and ports, and no SuperLink left behind.

``flwr run`` in the simulation engine starts a local SuperLink that outlives it; a test
gives it free ports (never one another run left behind) and stops it by its FLWR_HOME.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.compare import stop_processes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_env(home: Path) -> dict[str, str]:
    """The environment of a `flwr` command with FLWR_HOME ``home`` and a SuperLink of its own."""
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # A SuperLink of our own, never one that another run left behind.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def stop_superlink(home: Path) -> None:
    """The local SuperLink outlives `flwr run`; stop the one that FLWR_HOME ``home`` started."""
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True
    )
    stop_processes({int(pid) for pid in found.stdout.split()})
