"""Pre-training a person can follow: an estimate first, progress per epoch, and a loud
warning when the backbone ends near chance."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import re
import threading
import time
from pathlib import Path

import pytest
import torch

import pep_fedpt.pretrain as pretrain
from pep_fedpt.config import DataConfig, ModelConfig
from pep_fedpt.models import create_backbone

TINY = ModelConfig(
    pretrained="local:0-1",
    img_size=16,
    patch_size=4,
    embed_dim=64,
    depth=2,
    num_heads=2,
    pretrain_epochs=2,
)


def small_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    return model, torch.randn(64, 3, 8, 8), torch.randint(0, 2, (64,))


def test_a_plain_stream_gets_an_estimate_then_one_line_per_epoch() -> None:
    model, images, labels = small_problem()
    stream = io.StringIO()  # not a terminal: plain lines, no bar
    progress = pretrain.PretrainProgress(len(images), stream)
    pretrain.train_classifier(
        model, images, labels, epochs=3, seed=0, batch_size=16, probe_steps=2, progress=progress
    )
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"pep-fedpt: pre-training estimate: \d+ s for 3 epochs of 64 images \(\d+ ms per step\)",
        lines[0],
    ), lines[0]
    assert len(lines) == 4
    for epoch, line in enumerate(lines[1:], start=1):
        assert re.fullmatch(
            rf"pep-fedpt: pre-training epoch {epoch}/3: \d+ images/s, accuracy [01]\.\d{{3}}, "
            r"\d+ s elapsed, ETA \d+ s",
            line,
        ), line
    assert lines[-1].endswith("ETA 0 s")


def test_a_long_estimate_says_how_to_cap_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pretrain, "LONG_PRETRAINING", 0.0)
    model, images, labels = small_problem()
    stream = io.StringIO()
    pretrain.train_classifier(
        model,
        images,
        labels,
        epochs=2,
        seed=0,
        batch_size=16,
        progress=pretrain.PretrainProgress(len(images), stream),
    )
    first = stream.getvalue().splitlines()[0]
    assert "That is long: lower model.pretrain-steps or model.pretrain-epochs" in first
    assert "data.subsample does not shrink pre-training" in first
    # With a cap the estimate is the recipe's whole schedule, and says the cap cuts it.
    stream = io.StringIO()
    pretrain.train_classifier(
        model,
        images,
        labels,
        epochs=50,
        seed=0,
        batch_size=16,
        max_seconds=1e-9,
        probe_steps=1,
        progress=pretrain.PretrainProgress(len(images), stream),
    )
    first = stream.getvalue().splitlines()[0]
    assert "for 50 epochs of 64 images" in first
    assert (
        "; model.pretrain-minutes = 1.66667e-11 will stop it after about 0 steps, and those "
        "weights are not the recipe's"
    ) in first
    assert "That is long" not in first


@pytest.mark.integration
def test_pretraining_a_backbone_shows_its_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    create_backbone(TINY, seed=0, data=DataConfig())
    out = capsys.readouterr().out
    assert "pep-fedpt: pre-training vit_tiny_patch16_224" in out
    assert "pep-fedpt: pre-training estimate: " in out
    assert (
        "pep-fedpt: pre-training epoch 1/2: " in out and "pep-fedpt: pre-training epoch 2/2" in out
    )
    assert "pep-fedpt: pre-trained backbone ready" in out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("accuracy", "epochs_done", "expected"),
    [
        (
            0.24,
            0.3,
            "It stopped after 0.3 of 2 epochs at model.pretrain-minutes = 0.5: give it more",
        ),
        (0.24, 2.0, "It ran all 2 epochs: raise model.pretrain-epochs"),
        (0.31, 2.0, None),  # 5 classes: chance 0.2, near chance below 0.3
    ],
)
def test_a_backbone_that_ends_near_chance_is_warned_about_loudly(
    accuracy: float,
    epochs_done: float,
    expected: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrain, "train_classifier", lambda *a, **k: (accuracy, epochs_done))
    cfg = dataclasses.replace(TINY, pretrained="local:0-4", pretrain_minutes=0.5)
    create_backbone(cfg, seed=0, data=DataConfig())
    captured = capsys.readouterr()
    info = json.loads(
        pretrain.local_backbone_in_use(cfg, DataConfig()).with_suffix(".json").read_text()
    )
    if expected is None:
        assert "WARNING" not in captured.out + captured.err and "warning" not in info
        return
    for stream in (captured.out, captured.err):
        assert "!" * 78 in stream
        assert (
            f"pep-fedpt: WARNING: the pre-trained backbone ends at training accuracy "
            f"{accuracy:.3f} on 5 classes (chance 0.200)"
        ) in stream
        assert expected in stream
    assert expected in info["warning"]


def test_a_process_waiting_for_another_ones_pretraining_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "backbone.pth"
    entered = threading.Event()

    def wait_for_lock() -> None:
        with pretrain._file_lock(path):
            entered.set()

    with open(path.with_suffix(".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process, pre-training
        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        out = ""
        deadline = time.monotonic() + 10
        while "waiting for it" not in out and time.monotonic() < deadline:
            time.sleep(0.05)
            out += capsys.readouterr().out
        assert not entered.is_set()
        fcntl.flock(held, fcntl.LOCK_UN)
    waiter.join(timeout=10)
    assert entered.is_set()
    assert (
        "pep-fedpt: another process on this host is pre-training backbone.pth; waiting for it"
        in out
    )
