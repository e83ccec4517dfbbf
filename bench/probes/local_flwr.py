"""One benchmark's own local Flower: a FLWR_HOME, free ports, and its SuperLink stopped.

``bench/probes/scale.py`` and ``bench/probes/sim_overhead.py`` start ``flwr run .`` in a
home of their own so that neither meets another checkout's SuperLink (on the default
ports) nor leaves its own behind: ``flwr run`` starts a local SuperLink that outlives it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from bench.compare import stop_processes

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
    """Stop the local SuperLink that a ``flwr run`` in ``home`` started."""
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True, check=False
    )
    stop_processes({int(pid) for pid in found.stdout.split()})
