"""Every tensor a round touches is on the model's device: a round in which the model's
device is "meta" and a guard refuses any op that mixes devices.

Without a GPU, a tensor left on the CPU (z(x) from the node's cache, the prototypes, the
log prior, a label batch) while the model is elsewhere goes unnoticed: everything is on
the CPU. torch's "meta" device plays the accelerator here: it has shapes but no values,
and ``pick_device`` is made to return it, so the client, the server and the engine place
their tensors as they would on CUDA. Meta alone does not catch every mix (a CPU @ meta
matmul or an index by a CPU tensor runs), so ``SameDevice``, a ``TorchFunctionMode``,
checks the tensor arguments of every torch call and refuses a call with tensors on two
devices, as CUDA does (0-dim CPU tensors are allowed, as CUDA allows them as scalars).
Reading a value out of a meta tensor (``.item()``, ``int()``, a copy to the CPU) gives
zeros: the test checks placement, not numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

import pep_fedpt.methods.common as common
import server_app.app as server_module
from client_app.app import app as client_app
from pep_fedpt.methods import client_for
from pep_fedpt.models import cached_backbone
from server_app.app import app as server_app
from server_app.inprocess import InProcessGrid

META = torch.device("meta")
READOUTS = {"item", "__int__", "__float__", "__bool__", "__index__", "tolist"}
# Calls that move or compare tensors across devices by design (nn.Module.to uses the last).
TRANSFERS = {"to", "cpu", "copy_", "cuda", "numpy", "_has_compatible_shallow_copy_type"}


# A whole in-process round per case: seconds each on 2 cores.
pytestmark = pytest.mark.integration


class MixedDevices(AssertionError):
    """A torch call got tensors on two devices."""


def _zero_of(tensor: torch.Tensor, name: str) -> Any:
    if name == "__float__":
        return 0.0
    if name == "__bool__":
        return False
    if name == "tolist":
        return torch.zeros(tensor.shape, dtype=tensor.dtype).tolist()
    return 0


class SameDevice(TorchFunctionMode):
    """Refuses a torch call whose tensor arguments sit on two devices; gives zeros for a
    value read out of a meta tensor (``calls``: how many calls it checked)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        self.calls += 1
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if first is not None and first.is_meta:
            if name in READOUTS:
                return _zero_of(first, name)
            if name == "numpy" or (name in ("cpu", "to") and _to_cpu(name, args, kwargs)):
                return torch.zeros(first.shape, dtype=_dtype(args, kwargs, first))
        if name not in TRANSFERS:
            tensors = [
                t
                for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu")
            ]
            devices = {t.device.type for t in tensors}
            if len(devices) > 1:
                shapes = [(t.device.type, tuple(t.shape)) for t in tensors]
                raise MixedDevices(f"{name or func}: tensors on {sorted(devices)}: {shapes}")
        return func(*args, **kwargs)


def _to_cpu(name: str, args: tuple, kwargs: dict) -> bool:
    if name == "cpu":
        return True
    target = kwargs.get("device")
    for arg in args[1:]:
        if isinstance(arg, (str, torch.device)):
            target = arg
    return target is not None and torch.device(target).type == "cpu"


def _dtype(args: tuple, kwargs: dict, tensor: torch.Tensor) -> torch.dtype:
    for arg in (*args[1:], kwargs.get("dtype")):
        if isinstance(arg, torch.dtype):
            return arg
    return tensor.dtype


def test_the_guard_catches_what_meta_alone_lets_through() -> None:
    on_meta, on_cpu = torch.ones(3, 4, device=META), torch.ones(4, 2)
    assert (on_meta @ on_cpu).device == META  # torch itself runs this
    with SameDevice(), pytest.raises(MixedDevices, match=r"on \['cpu', 'meta'\]"):
        on_meta @ on_cpu
    with SameDevice():
        assert (on_meta @ on_cpu.to(META)).shape == (3, 2)
        assert on_meta.sum().item() == 0 and on_meta.cpu().device.type == "cpu"
        assert (on_meta * torch.tensor(2.0)).device == META  # a CPU scalar is allowed


def test_a_cpu_tensor_left_beside_a_model_elsewhere_is_caught() -> None:
    """The bug this file is for: z(x) (or prototypes) from the CPU cache, not moved."""
    query, prototypes = torch.ones(5, 8), torch.ones(3, 8, device=META)
    with SameDevice(), pytest.raises(MixedDevices):
        torch.nn.functional.normalize(query, dim=-1) @ prototypes.T


def _no_error(reply: Message) -> Message:
    """A ClientApp that raised (a mixed-device call in it) fails the test, not the round."""
    if reply.has_error():
        raise AssertionError(reply.error.reason)
    return reply


@pytest.mark.parametrize("method", ["pep-fedpt", "sgpt"])
def test_a_round_on_another_device_keeps_every_tensor_on_it(
    tiny_run_config: dict, task_identity: None, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    monkeypatch.setattr(common, "pick_device", lambda: META)
    monkeypatch.setattr(server_module, "pick_device", lambda: META)
    client_for.cache_clear()
    cached_backbone.cache_clear()
    flat = {**tiny_run_config, "method": method, "num-server-rounds": 1}
    grid = InProcessGrid(
        client_app,
        {100 + i: {"partition-id": i, "num-partitions": 2} for i in range(2)},
        flat,
        tamper={100 + i: _no_error for i in range(2)},
    )
    guard = SameDevice()
    try:
        with guard:
            server_app(
                grid,
                Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat),
            )
    finally:
        client_for.cache_clear()
        cached_backbone.cache_clear()
    assert guard.calls > 1000  # the round really ran under the guard
    assert {"query", "train", "evaluate"} <= {kind for kind, _ in grid.sent}
    assert (Path(flat["output-dir"]) / "metrics.json").is_file()
