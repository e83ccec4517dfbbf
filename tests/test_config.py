"""Run config: pyproject defaults are the reference design's; bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from pep_fedpt.config import ConfigError, RunConfig, parse_block_spec
from pep_fedpt.data import ImageSpec, load_dataset
from pep_fedpt.methods.registry import method_for

ROOT = Path(__file__).resolve().parents[1]


def fused(*overrides: str) -> RunConfig:
    flat = get_fused_config_from_dir(ROOT, parse_config_args(list(overrides) or None))
    return RunConfig.from_flat(flat)


def test_pyproject_defaults_are_the_design_defaults() -> None:
    cfg = fused()
    assert cfg == RunConfig()  # pyproject and the dataclasses agree, key for key
    p = cfg.prompt
    assert (p.shared_length, p.class_length, p.ccmp_blocks) == (10, 1, "2-L")
    assert (p.tau, p.prior_smoothing, p.train_weights) == (0.1, 1.0, "soft")
    assert cfg.fed.class_prompt_aggregation == "per-class"


def test_command_line_overrides_reach_the_typed_config() -> None:
    cfg = fused("prompt.tau=0.5 fed.class-prompt-aggregation='fedavg' num-server-rounds=7")
    assert cfg.prompt.tau == 0.5
    assert cfg.fed.class_prompt_aggregation == "fedavg"
    assert cfg.fed.num_rounds == 7


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"fed.class-prompt-aggregation": "median"}, "use one of: per-class, fedavg"),
        ({"prompt.train-weights": "hard"}, "use one of: soft, onehot"),
        ({"prompt.mixing-prior": "global"}, "use one of: client, uniform"),
        ({"prompt.tau": 0.0}, "prompt.tau = 0.0 must be a finite number > 0"),
        ({"prompt.tau": "x"}, "expected float"),
        ({"data.partitioner": "shards"}, "use one of: dirichlet, pathological, iid, domain"),
        ({"output-dir": "runs/x"}, "must be an absolute path"),
        ({"model.pretrained": "imagenet"}, "'random', 'hub'"),
        ({"prompt.lenght": 3}, "unknown run-config key 'prompt.lenght'"),
        ({"fed.generator-lr": -1.0}, "fed.generator-lr = -1.0 must be a finite number > 0"),
        ({"prompt.descriptor-dim": 0}, "prompt.descriptor-dim = 0 must be >= 1"),
    ],
)
def test_bad_values_name_the_value_and_the_accepted_ones(flat: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_flat(flat)


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"method": "fedsgd"}, "method = 'fedsgd' is not accepted; use one of: pep-fedpt"),
        (
            {"method": "sgpt", "prompt.mixing-prior": "uniform"},
            "prompt.mixing-prior = 'uniform' changes PEP-FedPT only; method = 'sgpt' accepts "
            "'client'",
        ),
        (
            {"method": "fedavg-vpt-deep", "prompt.test-prior-correction": True},
            "method = 'fedavg-vpt-deep' accepts False (for the log prior at test on "
            "FedAvg-VPT-deep: method = 'fedavg-vpt-prior')",
        ),
    ],
)
def test_values_a_method_cannot_run_name_the_method(flat: dict, message: str) -> None:
    """Checked against the registration (its facts), not by the method-blind config."""
    cfg = RunConfig.from_flat(flat)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        method_for(cfg)


def test_unknown_dataset_lists_the_known_ones() -> None:
    cfg = RunConfig.from_flat({"data.dataset": "imagenet-9000"})
    with pytest.raises(ConfigError, match=r"'imagenet-9000' is not known; use one of: .*digits"):
        load_dataset(cfg.data, ImageSpec(16, (0.5,) * 3, (0.5,) * 3))


def test_block_spec() -> None:
    assert parse_block_spec("2-L", 4) == (1, 2, 3)
    assert parse_block_spec("1,3", 4) == (0, 2)
    assert parse_block_spec("", 4) == ()
    with pytest.raises(ConfigError, match=r"outside blocks 1\.\.4"):
        parse_block_spec("2-9", 4)
    with pytest.raises(ConfigError, match="not a block number"):
        parse_block_spec("two", 4)


def test_flat_round_trip() -> None:
    cfg = fused("data.alpha=0.1 seed=3")
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
