"""``train.precision``: one real round (ServerApp, strategy and ClientApps in one process)
in bf16 and fp16 autocast on the CPU against fp32, and the wire stays float32."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

from client_app.app import app as client_app
from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.engine import autocast, grad_scaler
from pep_fedpt.methods import client_for
from server_app.app import app as server_app
from server_app.inprocess import InProcessGrid

# The update of a round in bf16 against fp32: bf16 keeps 8 bits of mantissa (relative
# rounding 2^-8 = 0.4%) in every matmul of the forward and backward passes; over a tiny
# ViT's round of SGD the update differs by a few percent, not by its size.
UPDATE_TOLERANCE = 0.15  # ||delta_bf16 - delta_fp32|| / ||delta_fp32||, per array
ACCURACY_TOLERANCE = 0.10


# A whole in-process round per case: seconds each on 2 cores.
pytestmark = pytest.mark.integration


class RecordingGrid(InProcessGrid):
    """Keeps every array that crosses the wire, both ways (dtype and values)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # InProcessGrid's arguments pass through as object
        self.arrays: list[tuple[str, str, int, dict[str, np.ndarray]]] = []
        self.output = Path()

    def _keep(self, direction: str, message: Message) -> None:
        if message.has_error():
            raise AssertionError(message.error.reason)
        arrays = {
            f"{name}/{key}": value.numpy()
            for name, record in message.content.array_records.items()
            for key, value in record.items()
        }
        kind, node = message.metadata.message_type, message.metadata.dst_node_id
        self.arrays.append((direction, kind, node, arrays))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            self._keep("out", message)
        self._sent_to = getattr(self, "_sent_to", {})
        ids = list(super().push_messages(messages))
        for message_id, message in zip(ids, messages, strict=True):
            self._sent_to[message_id] = message.metadata.dst_node_id
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        for reply in replies:
            node = self._sent_to[reply.metadata.reply_to_message_id]
            reply.metadata.__dict__["_dst_node_id"] = node
            self._keep("back", reply)
        return replies


def one_round(flat: dict, precision: str) -> RecordingGrid:
    client_for.cache_clear()
    flat = {**flat, "train.precision": precision, "seed": 5}
    grid = RecordingGrid(
        client_app, {100 + i: {"partition-id": i, "num-partitions": 2} for i in range(2)}, flat
    )
    server_app(
        grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat)
    )
    return grid


def train_updates(grid: RecordingGrid) -> dict[int, dict[str, np.ndarray]]:
    """Per node: its train reply minus the arrays the server sent it."""
    sent = {n: a for d, kind, n, a in grid.arrays if d == "out" and kind == MessageType.TRAIN}
    back = [(n, a) for d, kind, n, a in grid.arrays if d == "back" and kind == MessageType.TRAIN]
    assert back, "no train reply"
    updates = {n: {k: a[k] - sent[n][k] for k in a if k in sent[n]} for n, a in back}
    assert all(updates.values()), "a train reply shares no array with its message"
    return updates


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RecordingGrid]:
    from conftest import TINY_MODEL

    from server_app.inprocess import set_task_identity

    set_task_identity()
    tmp = tmp_path_factory.mktemp("precision")
    results = {}
    for precision in ("fp32", "bf16", "fp16"):
        flat = RunConfig().to_flat()
        flat.update(TINY_MODEL)
        flat.update(
            {
                "num-server-rounds": 1,
                "output-dir": str(tmp / precision),
                "cache-dir": str(tmp / "features"),
            }
        )
        results[precision] = one_round(flat, precision)
        results[precision].output = tmp / precision
    client_for.cache_clear()
    return results


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_array_on_the_wire_is_float32_whatever_the_precision(
    rounds: dict[str, RecordingGrid], precision: str
) -> None:
    grid = rounds[precision]
    assert {d for d, *_ in grid.arrays} == {"out", "back"}
    for direction, kind, node, arrays in grid.arrays:
        for name, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating):
                assert value.dtype == np.float32, (direction, kind, node, name, value.dtype)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_round_stays_within_tolerance_of_fp32(
    rounds: dict[str, RecordingGrid], precision: str
) -> None:
    reference, mixed = train_updates(rounds["fp32"]), train_updates(rounds[precision])
    assert reference.keys() == mixed.keys()
    for node, arrays in reference.items():
        for name, delta in arrays.items():
            scale = float(np.linalg.norm(delta))
            if scale == 0.0:  # a tensor this method does not train
                assert np.linalg.norm(mixed[node][name]) == 0.0
                continue
            gap = float(np.linalg.norm(mixed[node][name] - delta)) / scale
            assert gap < UPDATE_TOLERANCE, (precision, node, name, gap)
            assert np.all(np.isfinite(mixed[node][name]))
    # ... and not bit-identical: autocast really ran in the lower precision.
    assert any(
        not np.array_equal(mixed[n][k], reference[n][k]) for n in reference for k in reference[n]
    )


def test_a_bf16_round_scores_within_tolerance_of_fp32(
    rounds: dict[str, RecordingGrid],
) -> None:
    def final(precision: str) -> dict[str, float]:
        rows = json.loads((rounds[precision].output / "metrics.json").read_text())
        return rows[-1]

    reference, mixed = final("fp32"), final("bf16")
    for key in ("server/accuracy", "evaluate/global-accuracy"):
        assert abs(mixed[key] - reference[key]) <= ACCURACY_TOLERANCE, (key, mixed, reference)


def test_autocast_runs_bf16_on_the_cpu_and_refuses_an_unknown_precision() -> None:
    layer = torch.nn.Linear(4, 3)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
    assert grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    assert not grad_scaler(torch.device("cpu"), "bf16").is_enabled()
    with pytest.raises(ValueError, match=r"precision = 'fp8'.*fp32, bf16, fp16"):
        autocast(torch.device("cpu"), "fp8")
    with pytest.raises(ConfigError, match=r"train.precision = 'half'.*fp32, bf16, fp16"):
        RunConfig.from_flat({"train.precision": "half"})
