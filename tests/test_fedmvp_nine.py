"""The paper's one base->new federation over the CoOp sets (data.dataset = "coop-nine"):
the joint loader, the released chunks set by set, Base/New per set and their averages, and
Local as the mean over the sets of their clients' mean. Fake CoOp trees; tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.data import SPEC
from helpers.run_helpers import load_json, run_server
from test_fedmvp_coop_datasets import fake_coop

from pep_fedpt.config import ConfigError, DataConfig, RunConfig
from pep_fedpt.data import load_dataset
from pep_fedpt.data.base_new import harmonic_mean, joint_base_new_split, published_clients
from pep_fedpt.data.coop import COOP_SETS, NINE


def _root(tmp_path: Path, members: tuple[str, ...] = ("caltech101", "dtd")) -> Path:
    root = tmp_path / "coop"
    for name in members:
        fake_coop(root / COOP_SETS[name].folder, name)
    return root


def test_the_joint_loader_offsets_labels_set_by_set(tmp_path: Path) -> None:
    root = _root(tmp_path)
    cfg = DataConfig(dataset="coop-nine", data_dir=str(root), domains="dtd,caltech101")
    splits = load_dataset(cfg, SPEC)
    assert splits.classes == ["face", "leopard", "face", "leopard"]  # caltech101, then dtd
    assert splits.train.targets.tolist() == [0, 0, 1, 2, 2, 3]
    assert splits.train.domains.tolist() == [0, 0, 0, 1, 1, 1]  # each example's set
    assert splits.test is not None and splits.test.targets.tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match=r"\['pacs'\] are not CoOp sets of coop-nine"):
        load_dataset(DataConfig(dataset="coop-nine", data_dir=str(root), domains="pacs"), SPEC)


def test_the_nine_sets_give_thirty_clients_of_their_own_classes() -> None:
    sizes = (100, 102, 100, 101, 37, 101, 47, 196, 397)  # the nine sets' classes, in order
    starts = np.cumsum((0, *sizes[:-1]))
    groups = [tuple(range(s, s + n)) for s, n in zip(starts, sizes, strict=True)]
    targets = np.concatenate([np.asarray(g) for g in groups])
    split = joint_base_new_split(
        groups, NINE, np.arange(len(targets)), targets, np.arange(0), np.zeros(0, np.int64),
        num_partitions=30, classes_per_client=20, shots=8, seed=0,
    )  # fmt: skip
    assert len(split.client_classes) == 30
    assert split.client_members == tuple(
        m for m, n in enumerate(sizes) for _ in range(published_clients(-(-n // 2), 20))
    )
    for member, own in zip(split.client_members, split.client_classes, strict=True):
        assert set(own) <= set(groups[member][: -(-sizes[member] // 2)])  # its set's base
    assert len(split.base) == sum(-(-n // 2) for n in sizes)  # every base class trained
    assert sorted(c for own in split.client_classes for c in own) == sorted(split.base)
    with pytest.raises(ConfigError, match=r"give 30 clients over these sets \(caltech101 2,"):
        joint_base_new_split(
            groups, NINE, np.arange(len(targets)), targets, np.arange(0),
            np.zeros(0, np.int64), 9, 20, 8, 0,
        )  # fmt: skip


@pytest.mark.integration
def test_one_round_of_the_joint_federation(tmp_path: Path, task_identity) -> None:
    """Caltech101 and DTD (fake, 2 classes each: 1 base class, 1 client per set): Base and
    New per set with its own bank and template, their averages, Local over the sets."""
    root = _root(tmp_path)
    attrs = tmp_path / "attrs"
    attrs.mkdir()
    for name in ("caltech101", "dtd"):
        (attrs / f"{name}.json").write_text(
            json.dumps({"face": ["two eyes"], "leopard": ["spots"]})
        )
    flat = RunConfig().to_flat()
    flat.update(
        {
            "method": "fedmvp",
            "num-server-rounds": 1,
            "output-dir": str(tmp_path / "run"),
            "cache-dir": str(tmp_path / "features"),
            "data.dataset": "coop-nine",
            "data.data-dir": str(root),
            "data.domains": "caltech101,dtd",
            "fedmvp.attributes-dir": str(attrs),
            "fedmvp.shots": 2,
            "train.batch-size": 2,
        }
    )
    nodes = {10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)}
    run_server(flat, nodes=nodes)
    row = load_json(tmp_path / "run" / "metrics.json")[1]
    for kind in ("base", "new"):
        per_set = [row[f"server/{kind}-{name}-accuracy"] for name in ("caltech101", "dtd")]
        assert row[f"server/{kind}-accuracy"] == pytest.approx(np.mean(per_set))
    clients = row["evaluate/client-accuracies"]  # one client per set: the sets' means
    assert row["evaluate/mean-member-accuracy"] == pytest.approx(np.mean(clients))
    assert row["server/local-accuracy"] == row["evaluate/mean-member-accuracy"]
    assert row["server/hm"] == pytest.approx(
        harmonic_mean(
            row["server/local-accuracy"], row["server/base-accuracy"], row["server/new-accuracy"]
        )
    )


def test_the_nine_set_conf_runs_thirty_clients() -> None:
    import re

    from flwr.common.config import get_fused_config_from_dir, parse_config_args

    root = Path(__file__).resolve().parents[1]
    path = root / "conf" / "fedmvp-nine.toml"
    cfg = RunConfig.from_flat(get_fused_config_from_dir(root, parse_config_args([str(path)])))
    assert (cfg.data.dataset, cfg.fedmvp.protocol, cfg.fedmvp.classes_per_client) == (
        "coop-nine",
        "base-new",
        20,
    )
    match = re.search(r'"num-supernodes=(\d+) ', path.read_text())
    assert match and int(match[1]) == 30 == cfg.fed.min_train_nodes == cfg.fed.min_available_nodes
