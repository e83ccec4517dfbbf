"""Communicated bytes: the pure counter against hand-computed sizes, and the per-round
columns of real in-process runs (FedAvg-VPT-deep, local-only)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from helpers.run_helpers import load_json, load_state, recorder, run_server

from strategies import wire
from strategies.traffic import content_nbytes, record_nbytes


def test_record_nbytes_is_the_sum_of_the_arrays_nbytes() -> None:
    record = ArrayRecord(
        {
            "a": Array(np.zeros((3, 2), dtype=np.float32)),  # 6 x 4
            "b": Array(np.arange(5, dtype=np.int64)),  # 5 x 8
            "c": Array(np.zeros((0, 7), dtype=np.float64)),  # empty
        }
    )
    assert record_nbytes(record) == 24 + 40
    assert record_nbytes(ArrayRecord()) == 0


def test_content_nbytes_counts_only_array_records() -> None:
    content = RecordDict(
        {
            "x": ArrayRecord({"w": Array(np.ones(4, dtype=np.float16))}),  # 8
            "y": ArrayRecord({"v": Array(np.ones((2, 2), dtype=np.float32))}),  # 16
            "config": ConfigRecord({"note": "not counted" * 10}),
            "metrics": MetricRecord({"num-examples": 3}),
        }
    )
    assert content_nbytes(content) == 24


def _sent_bytes(state: dict[str, np.ndarray]) -> int:
    """What one train or evaluate message carries: the trainable (not global-only) keys."""
    return sum(v.nbytes for k, v in state.items() if k not in wire.GLOBAL_ONLY_KEYS)


def test_bytes_per_round_of_fedavg_vpt_deep(tiny_run_config: dict, task_identity) -> None:
    flat = {**tiny_run_config, "method": "fedavg-vpt-deep"}
    trains: list[Message] = []
    grid = run_server(flat, tamper={n: recorder(trains) for n in (10, 11, 12)})
    out = Path(tiny_run_config["output-dir"])
    rows = load_json(out / "metrics.json")
    state = load_state(out)
    sampled = sum(1 for kind, _ in grid.sent if kind == MessageType.TRAIN)
    assert sampled == 3
    per_message = _sent_bytes(state)
    assert per_message > 0
    first = rows[1]
    assert first["train/bytes-down"] == sampled * per_message
    assert first["train/bytes-up"] == sum(record_nbytes(m.content[wire.ARRAYS]) for m in trains)
    assert first["train/bytes-up"] == sampled * per_message  # replies have the same keys
    assert first["evaluate/bytes-down"] == 3 * per_message
    assert first["evaluate/bytes-up"] == 0  # metrics only
    assert first["bytes-down"] == first["train/bytes-down"] + first["evaluate/bytes-down"]
    assert first["bytes-up"] == first["train/bytes-up"]
    # The census runs before round 1 and counts in round 0: 3 nodes x C int64 counts up.
    assert rows[0]["query/bytes-down"] == 0
    assert rows[0]["bytes-up"] == 3 * 10 * 8
    with (out / "metrics.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert {"bytes-down", "bytes-up", "train/bytes-down"} <= set(header)


@pytest.mark.integration
def test_local_only_sends_the_state_only_to_nodes_without_their_own(
    tiny_run_config: dict, task_identity
) -> None:
    flat = {**tiny_run_config, "method": "local", "num-server-rounds": 2}
    run_server(flat)
    out = Path(tiny_run_config["output-dir"])
    rows = load_json(out / "metrics.json")
    per_message = _sent_bytes(load_state(out))
    # Round 1: every node gets the initial state to train from, then evaluates its own.
    assert rows[1]["train/bytes-down"] == 3 * per_message
    assert rows[1]["evaluate/bytes-down"] == 0
    # Round 2: every node holds its own state; only metrics and its own uploads remain.
    assert rows[2]["bytes-down"] == 0
    assert rows[2]["train/bytes-up"] == 3 * per_message
