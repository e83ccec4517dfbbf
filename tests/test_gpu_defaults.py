"""GPU defaults decided on the CPU: ``train.precision = "auto"`` and the DataLoader settings
for CUDA (pure functions of the device's facts), and the persistent loader's batches, which
must be those of a fresh loader per epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import torch
from torch.utils.data import DataLoader, TensorDataset

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.engine import (
    Batches,
    LoaderOptions,
    autocast,
    grad_scaler,
    loader_options,
    resolve_precision,
    shuffle_order,
    training_precision,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("requested", "device_type", "bf16", "expected"),
    [
        ("auto", "cuda", True, "bf16"),  # Ampere and later
        ("auto", "cuda", False, "fp32"),  # V100, T4: no bf16, fp16 only when asked for
        ("auto", "cpu", True, "fp32"),  # a CPU with bf16 instructions still trains in fp32
        ("auto", "cpu", False, "fp32"),
        ("auto", "meta", False, "fp32"),
        ("fp32", "cuda", True, "fp32"),  # an explicit choice is kept, on every device
        ("bf16", "cpu", False, "bf16"),
        ("fp16", "cuda", True, "fp16"),
    ],
)
def test_precision_auto_is_bf16_only_on_a_cuda_device_with_bf16(
    requested: str, device_type: str, bf16: bool, expected: str
) -> None:
    assert resolve_precision(requested, device_type, bf16) == expected


def test_auto_is_the_default_and_trains_in_fp32_on_the_cpu() -> None:
    assert RunConfig().train.precision == "auto"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"]["train"]["precision"] == "auto"
    cpu = torch.device("cpu")
    assert training_precision("auto", cpu) == "fp32"
    with autocast(cpu, "auto"):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == torch.float32
    assert not grad_scaler(cpu, "auto").is_enabled()


def test_a_bad_precision_is_refused_naming_it_and_what_is_accepted() -> None:
    flat = RunConfig().to_flat() | {"train.precision": "tf32"}
    with pytest.raises(ConfigError, match=r"train.precision = 'tf32'.*auto, fp32, bf16, fp16"):
        RunConfig.from_flat(flat)


@pytest.mark.parametrize(
    ("device_type", "workers", "expected"),
    [
        ("cuda", 0, LoaderOptions(pin_memory=True, non_blocking=True, persistent_workers=False)),
        ("cuda", 4, LoaderOptions(pin_memory=True, non_blocking=True, persistent_workers=True)),
        ("cpu", 0, LoaderOptions(pin_memory=False, non_blocking=False, persistent_workers=False)),
        ("cpu", 4, LoaderOptions(pin_memory=False, non_blocking=False, persistent_workers=False)),
        ("meta", 2, LoaderOptions(pin_memory=False, non_blocking=False, persistent_workers=False)),
    ],
)
def test_loader_options_pin_and_keep_workers_only_on_cuda(
    device_type: str, workers: int, expected: LoaderOptions
) -> None:
    assert loader_options(device_type, workers) == expected


@pytest.mark.parametrize(("size", "seed"), [(1, 0), (37, 5), (200, 1_000_003)])
def test_shuffle_order_is_the_order_of_a_fresh_seeded_loader(size: int, seed: int) -> None:
    loader = DataLoader(
        list(range(size)), batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    assert shuffle_order(size, seed) == [int(i) for batch in loader for i in batch]


def test_a_persistent_loader_yields_every_epoch_what_a_fresh_one_does() -> None:
    """The CUDA path (one loader, its worker kept across epochs) against the CPU path (a
    fresh loader per epoch): the same batches, epoch by epoch, and one worker pool."""
    images = torch.arange(23 * 3 * 2 * 2, dtype=torch.float32).reshape(23, 3, 2, 2)
    dataset = TensorDataset(images, torch.arange(23))
    cpu = torch.device("cpu")
    fresh = Batches(dataset, 5, True, cpu, num_workers=1)
    kept = Batches(dataset, 5, True, cpu, num_workers=1)
    assert not fresh.options.persistent_workers
    kept.options = LoaderOptions(pin_memory=False, non_blocking=False, persistent_workers=True)
    for seed in (3, 4, 3):
        want = list(fresh.epoch(seed))
        got = list(kept.epoch(seed))
        assert [p.tolist() for _, _, p in got] == [p.tolist() for _, _, p in want]
        for (a, la, _), (b, lb, _) in zip(got, want, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert kept._persistent is not None and kept._persistent.persistent_workers


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_asks_the_cuda_device_whether_it_has_bf16(
    supported: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA branch without a GPU: torch's answer is replaced, the question is real."""
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert training_precision("auto", torch.device("cuda")) == expected
    assert asked == [False]  # emulated bf16 (pre-Ampere) is no reason to pick it
    assert training_precision("fp16", torch.device("cuda")) == "fp16" and asked == [False]
