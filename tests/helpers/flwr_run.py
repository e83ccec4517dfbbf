"""A real `flwr run` from a test: its own FLWR_HOME and ports, and no SuperLink left behind.

``flwr run`` in the simulation engine starts a local SuperLink that outlives it; a test
gives it free ports (never one another run left behind) and stops it by its FLWR_HOME,
with the benchmarks' own helpers (``bench/local_flwr.py``).
"""

from __future__ import annotations

from pathlib import Path

from bench.local_flwr import BIN, flwr_env, free_port, stop_superlink

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["BIN", "ROOT", "flwr_env", "free_port", "stop_superlink"]
