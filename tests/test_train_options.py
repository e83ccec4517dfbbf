"""The optimiser keys (train.prompt-lr, head-lr, optimizer, lr-schedule, warmup-rounds) and
the validation split (data.val-fraction): values by hand, and through real in-process runs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from helpers.run_helpers import NODES, CrashMidRound, load_json, load_state, run_server

from client_app.app import app as client_app
from pep_fedpt import engine
from pep_fedpt.config import ConfigError, DataConfig, RunConfig, TrainConfig
from pep_fedpt.data.client_data import load_client_data
from pep_fedpt.data.registry import ImageSpec
from pep_fedpt.engine import build_optimizer
from pep_fedpt.methods import build_model
from pep_fedpt.models import create_backbone
from pep_fedpt.schedule import lr_factor
from server_app.checkpoint import load_checkpoint
from server_app.inprocess import InProcessGrid
from strategies.summaries import validation_summary
from strategies.validation import check_validation_counts


def _cfg(**flat: object) -> RunConfig:
    return RunConfig.from_flat({**RunConfig().to_flat(), **TINY_MODEL, **flat})


# ---------------------------------------------------------------------- the schedule
def test_a_constant_schedule_is_one_every_round_after_the_warm_up() -> None:
    assert [lr_factor(t, 5, "constant", 0) for t in range(1, 6)] == [1.0] * 5
    # W = 2: rounds 1 and 2 rise linearly (1/3, 2/3), the full rate from round 3
    got = [lr_factor(t, 5, "constant", 2) for t in range(1, 6)]
    assert got == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0])


def test_a_cosine_schedule_by_hand() -> None:
    # T = 5, W = 1: warm-up 1/2, then (1 + cos(pi (t - 2) / 4)) / 2 for t = 2..5
    got = [lr_factor(t, 5, "cosine", 1) for t in range(1, 6)]
    half_sqrt2 = math.sqrt(2) / 2
    assert got == pytest.approx(
        [0.5, 1.0, (1 + half_sqrt2) / 2, 0.5, (1 - half_sqrt2) / 2], abs=1e-12
    )
    # without warm-up it starts at the full rate; the last round still trains
    assert lr_factor(1, 4, "cosine", 0) == 1.0
    assert lr_factor(4, 4, "cosine", 0) == pytest.approx((1 + math.cos(3 * math.pi / 4)) / 2)
    # a round beyond num-server-rounds (a longer resumed run) stays at the end: zero
    assert lr_factor(9, 4, "cosine", 0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, 4, "cosine", 2) == lr_factor(1, 4, "cosine", 2)  # round 0 = round 1


def test_bad_optimiser_values_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"train\.optimizer = 'adam'.*sgd, adamw"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match=r"train\.lr-schedule = 'step'.*constant, cosine"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match=r"train\.warmup-rounds = -1"):
        TrainConfig(warmup_rounds=-1)
    with pytest.raises(ConfigError, match=r"train\.prompt-lr = -1"):
        TrainConfig(prompt_lr=-1.0)
    with pytest.raises(ConfigError, match=r"data\.val-fraction = 1\.0"):
        DataConfig(val_fraction=1.0)


# ---------------------------------------------------------------------- parameter groups
def _model(cfg: RunConfig) -> torch.nn.Module:
    return build_model(create_backbone(cfg.model, cfg.seed, cfg.data), cfg, 10)


def test_prompts_and_head_get_their_own_learning_rates() -> None:
    cfg = _cfg(**{"train.lr": 0.1, "train.prompt-lr": 2.0, "method": "sgpt"})
    model = _model(cfg)
    optimizer = build_optimizer(model, cfg.train, lr_scale=0.5)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert {name: g["lr"] for name, g in groups.items()} == {"prompts": 1.0, "head": 0.05}
    assert groups["prompts"]["momentum"] == 0.9 and groups["head"]["weight_decay"] == 1e-5
    # SGPT's keys are prompts; every trainable tensor is in exactly one group
    assert any(p is model.group_keys for p in groups["prompts"]["params"])
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_adamw_and_a_head_only_model_without_prompts() -> None:
    cfg = _cfg(**{"train.optimizer": "adamw", "train.head-lr": 0.003, "method": "head-only"})
    optimizer = build_optimizer(_model(cfg), cfg.train)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("head", 0.003)]


def test_the_defaults_step_exactly_as_one_plain_sgd_group() -> None:
    """Today's optimiser (one SGD over every trainable tensor at train.lr) is reproduced
    bit for bit by the two default groups."""
    cfg = _cfg()
    models = [_model(cfg), _model(cfg)]
    # a non-zero head, so that both groups move
    torch.nn.init.normal_(models[0].head.weight, generator=torch.Generator().manual_seed(1))
    models[1].load_state_dict(models[0].state_dict())
    plain = torch.optim.SGD(
        [p for p in models[0].parameters() if p.requires_grad],
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
    )
    grouped = build_optimizer(models[1], cfg.train)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3])
    for model, optimizer in zip(models, (plain, grouped), strict=True):
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(images, torch.ones(4, 1)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for (name, a), (_, b) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------- the round drives it
@pytest.fixture
def schedule_run(tiny_run_config: dict, tmp_path: Path) -> dict:
    """4 rounds of PEP-FedPT, AdamW, cosine with one warm-up round, its own prompt lr."""
    return {
        **tiny_run_config,
        "num-server-rounds": 4,
        "fed.fraction-train": 0.67,
        "train.optimizer": "adamw",
        "train.lr-schedule": "cosine",
        "train.warmup-rounds": 1,
        "train.prompt-lr": 0.05,
        "train.head-lr": 0.02,
    }


def test_every_client_trains_round_t_at_the_rate_of_round_t(
    schedule_run: dict, task_identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, float]] = []
    real = engine.build_optimizer

    def spy(model: torch.nn.Module, cfg: TrainConfig, lr_scale: float = 1.0):
        optimizer = real(model, cfg, lr_scale)
        seen.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        return optimizer

    monkeypatch.setattr(engine, "build_optimizer", spy)
    run_server(schedule_run)
    # 2 of 3 nodes train each round
    factors = [lr_factor(t, 4, "cosine", 1) for t in (1, 1, 2, 2, 3, 3, 4, 4)]
    assert seen == [
        pytest.approx({"prompts": 0.05 * f, "head": 0.02 * f}, rel=1e-12) for f in factors
    ]


@pytest.mark.integration
def test_a_run_resumed_mid_schedule_ends_as_an_uninterrupted_one(
    schedule_run: dict, tmp_path: Path, task_identity: None
) -> None:
    run_server({**schedule_run, "output-dir": str(tmp_path / "whole")})
    broken = tmp_path / "broken"
    flat = {**schedule_run, "output-dir": str(broken)}
    grid = InProcessGrid(client_app, NODES, flat)
    crash = CrashMidRound(crash_round=3, num_nodes=len(NODES))
    with pytest.raises(RuntimeError, match="killed mid-round"):
        run_server(flat, {node: crash for node in NODES}, grid=grid)
    assert load_checkpoint(broken).server_round == 2
    run_server({**schedule_run, "output-dir": "", "resume-from": str(broken)})
    expected, got = load_state(tmp_path / "whole"), load_state(broken)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    accuracy = [r.get("server/accuracy") for r in load_json(broken / "metrics.json")]
    whole = [r.get("server/accuracy") for r in load_json(tmp_path / "whole" / "metrics.json")]
    assert accuracy == whole


# ---------------------------------------------------------------------- validation split
SPEC = ImageSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _indices(subset: object) -> set[int]:
    return set(np.asarray(subset.indices).tolist())  # type: ignore[attr-defined]  # a torch Subset (indices), passed as whatever split holds it


def test_the_validation_split_comes_from_the_training_split_only() -> None:
    without = load_client_data(DataConfig(), SPEC, 0, 1, 4)
    data = load_client_data(DataConfig(val_fraction=0.25), SPEC, 0, 1, 4)
    train, val, test = _indices(data.train), _indices(data.val), _indices(data.test)
    assert val and not (train & val) and not (val & test) and not (train & test)
    # carved from the training split; the test split is untouched
    assert train | val == _indices(without.train)
    assert test == _indices(without.test)
    assert len(val) == pytest.approx(0.25 * len(without.train), abs=10)
    # the counts the census reports are those of what the client trains on
    assert int(data.train_counts.sum()) == len(train)
    assert len(without.val) == 0  # off by default


def test_the_validation_split_is_stable_under_the_seed() -> None:
    cfg = DataConfig(val_fraction=0.2)
    first = load_client_data(cfg, SPEC, 3, 0, 4)
    again = load_client_data(cfg, SPEC, 3, 0, 4)
    assert _indices(first.val) == _indices(again.val)
    other = load_client_data(cfg, SPEC, 4, 0, 4)
    assert _indices(other.val) != _indices(first.val)


def test_validation_counts_are_optional_but_checked() -> None:
    from flwr.app import MetricRecord

    ok = {"num-examples": 10, "correct": 4}
    assert check_validation_counts(MetricRecord(ok)) is None  # no validation split
    assert check_validation_counts(MetricRecord({**ok, **_val(5, 3)})) is None
    assert "together" in str(check_validation_counts(MetricRecord({**ok, "val-correct": 3})))
    impossible = check_validation_counts(MetricRecord({**ok, **_val(5, 6)}))
    assert impossible == "val-correct = 6 with val-num-examples = 5 is impossible"


def _val(total: int, correct: int) -> dict[str, int]:
    return {"val-num-examples": total, "val-correct": correct}


def test_validation_summary_by_hand() -> None:
    # clients: 3/4, 1/2 (training), none (no split), 2/2 (held out: left out)
    summary = validation_summary([3, 1, None, 2], [4, 2, None, 2], [False, False, False, True])
    assert summary == pytest.approx(
        {
            "val-global-accuracy": 4 / 6,
            "val-mean-client-accuracy": (0.75 + 0.5) / 2,
            "val-worst-client-accuracy": 0.5,
            "val-num-clients": 2.0,
        }
    )
    assert validation_summary([None], [None], [False]) == {}


def test_the_server_records_the_validation_mean_client_accuracy(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    run_server({**tiny_run_config, "data.val-fraction": 0.2})
    rows = load_json(tmp_path / "run" / "metrics.json")
    last = rows[-1]
    assert 0.0 <= last["evaluate/val-mean-client-accuracy"] <= 1.0
    assert last["evaluate/val-num-clients"] == len(NODES)
    # the run keeps its initial state, so its drift needs no rebuild of the model: the
    # trained prompt and head moved from it
    with np.load(tmp_path / "run" / "initial-state.npz") as data:
        initial = {key: data[key] for key in data.files}
    final = load_state(tmp_path / "run")
    for key in ("head.weight", "prompt.shared"):
        assert initial[key].shape == final[key].shape
        assert not np.array_equal(initial[key], final[key]), key
    # without a validation split, no validation metric
    run_server({**tiny_run_config, "output-dir": str(tmp_path / "plain")})
    assert not any("val-" in key for key in load_json(tmp_path / "plain" / "metrics.json")[-1])
