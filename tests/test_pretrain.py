"""``model.pretrained = "local:<classes>"``: a backbone pre-trained here, once per host."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pep_fedpt.pretrain as pretrain
from pep_fedpt.config import ConfigError, DataConfig, ModelConfig
from pep_fedpt.data.client_data import client_pool
from pep_fedpt.models import backbone_fingerprint, create_backbone, image_spec

TINY = ModelConfig(
    pretrained="local:0-1",
    img_size=16,
    patch_size=4,
    embed_dim=64,
    depth=2,
    num_heads=2,
    pretrain_epochs=1,
)


def test_parse_local_classes() -> None:
    assert pretrain.parse_local_classes("local:0-4") == (0, 1, 2, 3, 4)
    assert pretrain.parse_local_classes("local:0,2,5-6") == (0, 2, 5, 6)
    for bad in ("local:", "local:a-b", "local:-3"):
        with pytest.raises(ConfigError, match="'local:0-4' or 'local:0,2,5'"):
            pretrain.parse_local_classes(bad)


def test_local_backbone_is_trained_once_on_the_pool_and_then_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    data = DataConfig()
    seen: dict[str, int] = {}
    original = pretrain.train_classifier

    def spy(model, images, labels, **kwargs):
        seen["images"] = len(images)
        seen["labels"] = sorted(set(labels.tolist()))
        return original(model, images, labels, **kwargs)

    monkeypatch.setattr(pretrain, "train_classifier", spy)
    trained = create_backbone(TINY, seed=0, data=data)
    path = pretrain.local_backbone_path(TINY, data)
    assert path.is_file() and path.with_suffix(".json").is_file()

    # Trained on classes 0 and 1 of the client pool only, never on the central test split.
    dataset, pool = client_pool(data, image_spec(trained))
    expected = int(np.isin(np.asarray(dataset.targets)[pool], [0, 1]).sum())
    assert seen == {"images": expected, "labels": [0, 1]}

    random_init = create_backbone(dataclasses.replace(TINY, pretrained="random"), seed=0)
    assert not torch.equal(trained.blocks[0].attn.qkv.weight, random_init.blocks[0].attn.qkv.weight)

    # A second process loads the cached weights: no training, identical features.
    monkeypatch.setattr(pretrain, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    again = create_backbone(TINY, seed=0, data=data)
    for (name, a), (_, b) in zip(
        trained.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert str(path) in backbone_fingerprint(TINY, 0, data)

    # Other classes are other weights, in another file.
    other = dataclasses.replace(TINY, pretrained="local:2-3")
    assert pretrain.local_backbone_path(other, data) != path


def test_classes_beyond_the_data_set_fail_clearly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"has classes 0\.\.9"):
        create_backbone(dataclasses.replace(TINY, pretrained="local:8-12"), 0, DataConfig())


def test_one_backbone_for_every_run_seed_and_subsample(tmp_path: Path) -> None:
    data = DataConfig()
    path = pretrain.local_backbone_path(TINY, data)
    # The run seed is not an argument at all; the subsample of the federated part is not
    # part of the key either, nor is the time cap (it does not shape a finished recipe),
    # while the pre-training seed, the steps and the steps a cap stopped it at are.
    assert pretrain.local_backbone_path(TINY, dataclasses.replace(data, subsample=0.5)) == path
    assert pretrain.local_backbone_path(dataclasses.replace(TINY, pretrain_seed=1), data) != path
    capped = dataclasses.replace(TINY, pretrain_minutes=5.0)
    assert pretrain.local_backbone_path(capped, data) == path
    assert pretrain.local_backbone_path(dataclasses.replace(TINY, pretrain_steps=7), data) != path
    assert pretrain.local_backbone_path(TINY, data, steps_done=3) != path


def test_pretraining_sees_the_full_pool_under_subsample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    full = DataConfig()
    half = dataclasses.replace(full, subsample=0.5)
    seen: dict[str, int] = {}

    def count(model, images, labels, **kwargs):
        seen["images"] = len(images)
        return 0.0, 1.0

    monkeypatch.setattr(pretrain, "train_classifier", count)
    trained = create_backbone(TINY, seed=3, data=half)
    dataset, pool = client_pool(full, image_spec(trained))
    _, half_pool = client_pool(half, image_spec(trained))
    assert len(half_pool) < len(pool)
    assert seen["images"] == int(np.isin(np.asarray(dataset.targets)[pool], [0, 1]).sum())


def test_warmup_cosine_schedule_by_hand() -> None:
    # total 20 steps: warm-up 2 steps (1/2, 2/2), then cosine over the remaining 18.
    assert pretrain.warmup_cosine(0, 20) == pytest.approx(0.5)
    assert pretrain.warmup_cosine(1, 20) == pytest.approx(1.0)
    assert pretrain.warmup_cosine(2, 20) == pytest.approx(1.0)
    assert pretrain.warmup_cosine(11, 20) == pytest.approx(0.5)  # halfway: (1 + cos(pi/2))/2
    assert pretrain.warmup_cosine(20, 20) == pytest.approx(0.0)


def test_the_steps_are_the_recipes_and_a_time_cap_only_stops_them_early() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    images, labels = torch.randn(64, 3, 8, 8), torch.randint(0, 2, (64,))
    # 64 images in batches of 16: 4 steps per epoch. 6 steps = 1.5 epochs, whatever epochs.
    _, epochs = pretrain.train_classifier(
        model, images, labels, epochs=50, steps=6, seed=0, batch_size=16
    )
    assert epochs == pytest.approx(6 / 4)
    # A cap of ~0 s stops the 200-step schedule after its first step.
    _, epochs = pretrain.train_classifier(
        model, images, labels, epochs=50, seed=0, batch_size=16, max_seconds=1e-9
    )
    assert epochs == pytest.approx(1 / 4)
    _, epochs = pretrain.train_classifier(model, images, labels, epochs=2, seed=0, batch_size=16)
    assert epochs == pytest.approx(2.0)


def test_a_pretraining_the_cap_stops_is_another_backbone_said_loudly_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    data = DataConfig()
    capped = dataclasses.replace(TINY, pretrain_minutes=0.5)
    # Classes 0-1 of digits' pool, batches of 64: the recipe is 1 epoch of `planned` steps;
    # the cap (played here) stops it after half of them.
    original = pretrain.train_classifier
    planned: list[int] = []

    def half(model, images, labels, **kwargs):  # type: ignore[no-untyped-def]  # a stand-in for train_classifier, passing its arguments through untouched
        planned.append(kwargs["steps"])
        original(model, images, labels, **{**kwargs, "steps": kwargs["steps"] // 2})
        return 0.9, (kwargs["steps"] // 2) / math.ceil(len(images) / 64)

    monkeypatch.setattr(pretrain, "train_classifier", half)
    create_backbone(capped, seed=0, data=data)
    done = planned[0] // 2
    stopped = pretrain.local_backbone_path(capped, data, steps_done=done)
    assert stopped.is_file() and not pretrain.local_backbone_path(capped, data).is_file()
    assert pretrain.local_backbone_in_use(capped, data) == stopped
    line = (
        "pep-fedpt: WARNING: the local:0-1 backbone is NOT its recipe's: model.pretrain-minutes "
        f"= 0.5 stopped pre-training after {done} of {planned[0]} steps, so the weights depend "
        f"on this machine's speed. For results that a command reproduces, set "
        f"model.pretrain-steps = {done} (these weights' count) or model.pretrain-minutes = 0"
    )
    captured = capsys.readouterr()
    assert line in captured.out and line in captured.err

    # The next run with that cap reuses those weights, and says so again; without the cap
    # the recipe's weights are another file, still to be trained.
    monkeypatch.setattr(pretrain, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    create_backbone(capped, seed=0, data=data)
    assert line in capsys.readouterr().out
    assert pretrain.local_backbone_in_use(TINY, data) == pretrain.local_backbone_path(TINY, data)
    record = pretrain.backbone_record(capped, data)
    assert record is not None and record["steps-done"] == done


def test_a_narrow_pretraining_of_a_100_class_data_set_names_its_classes_and_how_to_widen() -> None:
    names = ["apple", "aquarium_fish", "baby", "bear", "beaver"]
    assert pretrain.narrow_pretraining_note("local:0-4", names, 100) == (
        "pep-fedpt: model.pretrained = 'local:0-4' pre-trains the backbone on 5 of 100 classes "
        "(apple, aquarium_fish, baby, bear, beaver); to widen it, e.g. model.pretrained = "
        "'local:0-49' (50 classes: about 10x the images, so 10x the time of each pre-training "
        "epoch); docs/datasets.md"
    )
    assert pretrain.narrow_pretraining_note("local:0-4", names, 10) is None  # CIFAR-10: half
    assert pretrain.narrow_pretraining_note("local:0-9", [str(c) for c in range(10)], 100) is None

    class Base:
        classes = ("apple", "aquarium_fish", "baby")

    class Wrapped:
        base = Base()

    assert pretrain.class_names(Wrapped(), (0, 2)) == ["apple", "baby"]
    assert pretrain.class_names(object(), (0, 2)) == ["0", "2"]


def test_every_run_records_the_steps_its_backbone_was_pretrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from pep_fedpt.config import RunConfig
    from server_app.results import RunRecorder

    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(model=dataclasses.replace(TINY, pretrain_steps=2))
    create_backbone(cfg.model, seed=0, data=cfg.data)
    recorder = RunRecorder(tmp_path / "run", cfg)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (recorded["model.pretrain-steps-done"], recorded["model.pretrain-steps-planned"]) == (
        2,
        2,
    )
    recorder.write_summary()
    model_line = next(
        line
        for line in (tmp_path / "run" / "summary.md").read_text().splitlines()
        if line.startswith("- model: ")
    )
    assert ", pre-trained 2 steps, train accuracy " in model_line
    assert "stopped" not in model_line
