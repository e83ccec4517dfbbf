"""Whole in-process runs of the real ServerApp against 3 real ClientApps, and their results.

Shared by the fault and resume tests: every run writes to its own ``output-dir`` and the
tests read back what a user would read (``state.npz``, ``metrics.json``, ``dropped.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from client_app.app import app as client_app
from server_app.app import app as server_app
from server_app.inprocess import InProcessGrid, Scalar

# Three nodes with ids unlike their partition ids, so that a mix-up would show. They hold
# 3 of 8 partitions: small local data sets keep each run to seconds on 2 CPU cores.
NODES: dict[int, dict[str, Scalar]] = {
    10 + p: {"partition-id": p, "num-partitions": 8} for p in range(3)
}

Tamper = Callable[[Message], Message]


def run_server(
    flat: Mapping[str, Scalar],
    tamper: Mapping[int, Tamper] | None = None,
    nodes: Mapping[int, Mapping[str, Scalar]] = NODES,
    grid: InProcessGrid | None = None,
) -> InProcessGrid:
    """Run the ServerApp to its end (or its exception); return the grid.

    ``grid``: reuse the nodes (and their ``context.state``) of an earlier run, as when only
    the server process restarts, with ``tamper`` replacing its tampering; by default every
    node starts fresh.
    """
    if grid is None:
        grid = InProcessGrid(client_app, nodes, flat, tamper)
    else:
        grid.tamper = dict(tamper or {})
        grid.sent = []
        for context in grid.contexts.values():
            context.run_config = dict(flat)
    context = Context(
        run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=dict(flat)
    )
    server_app(grid, context)
    return grid


def on(message_type: str, fn: Tamper) -> Tamper:
    """A tamper that applies ``fn`` only to content replies of one message type."""

    def tamper(reply: Message) -> Message:
        if reply.metadata.message_type == message_type and reply.has_content():
            return fn(reply)
        return reply

    return tamper


def recorder(store: list[Message], message_type: str = MessageType.TRAIN) -> Tamper:
    """A tamper that keeps every reply of one type and changes nothing."""

    def keep(reply: Message) -> Message:
        store.append(reply)
        return reply

    return on(message_type, keep)


def load_state(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "state.npz") as data:
        return {key: data[key] for key in data.files}


def load_json(path: Path) -> list[dict]:
    return json.loads(path.read_text())


class CrashMidRound:
    """Plays a ServerApp process that dies in round ``crash_round``, after one node trained.

    Rounds are told apart by the evaluate replies seen so far (every node evaluates in each
    round that evaluates: every ``evaluate_every``-th, so one must fall before the crash
    round); raising from the grid is what a killed server looks like to the strategy.
    """

    def __init__(self, crash_round: int, num_nodes: int, evaluate_every: int = 1) -> None:
        evaluated = [t for t in range(1, crash_round) if t % evaluate_every == 0]
        if evaluate_every > 1 and not evaluated:
            raise ValueError(f"no round before {crash_round} evaluates: rounds look alike")
        self.evaluates_before = num_nodes * len(evaluated)
        self.evaluated = 0
        self.trained = 0

    def __call__(self, reply: Message) -> Message:
        kind = reply.metadata.message_type
        if kind == MessageType.EVALUATE:
            self.evaluated += 1
        elif kind == MessageType.TRAIN and self.evaluated == self.evaluates_before:
            self.trained += 1
            if self.trained == 2:
                raise RuntimeError("server process killed mid-round")
        return reply


def dp_rows_whole_and_resumed(
    flat: Mapping[str, Scalar], out: Path, crash: Tamper
) -> dict[str, list[tuple[float, float, float]]]:
    """Run ``flat`` uninterrupted into ``out/whole``; run it again into ``out/broken`` with
    ``crash`` on every node (which must kill it: RuntimeError "killed mid-round"), resume
    that from its checkpoint, and assert both end in the same state. Returns each run's
    (``dp/clipping-norm``, ``dp/noise-std``, ``dp/epsilon``) per round after round 0."""
    run_server({**flat, "output-dir": str(out / "whole")})
    with pytest.raises(RuntimeError, match="killed mid-round"):
        run_server({**flat, "output-dir": str(out / "broken")}, {node: crash for node in NODES})
    np.random.seed(12345)  # whatever the process drew since, the checkpoint decides
    run_server({**flat, "output-dir": "", "resume-from": str(out / "broken")})
    expected, got = load_state(out / "whole"), load_state(out / "broken")
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    return {
        name: [
            (r["dp/clipping-norm"], r["dp/noise-std"], r["dp/epsilon"])
            for r in load_json(out / name / "metrics.json")[1:]
        ]
        for name in ("whole", "broken")
    }
