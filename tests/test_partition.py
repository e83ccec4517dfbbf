"""Partitioners (flwr-datasets): class proportions, domains, seeds; held-out partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.data import SPEC, fake_domainnet

from pep_fedpt.config import ConfigError, DataConfig
from pep_fedpt.data import load_client_data, partition_indices
from pep_fedpt.data.client_data import subset_targets
from pep_fedpt.data.partition import held_out_partitions

# 10 classes x 10 examples, class c at indices 10c..10c+9
TARGETS = np.repeat(np.arange(10), 10)


def parts(num: int, seed: int = 0, **kwargs: object) -> list[list[int]]:
    cfg = DataConfig(**kwargs)  # type: ignore[arg-type]  # the test's overrides pass through as object; DataConfig checks each
    return [p.tolist() for p in partition_indices(TARGETS, num, cfg, seed)]


def test_pathological_one_class_each_is_exact() -> None:
    """s = 1, first-deterministic: partition i holds exactly class i."""
    got = parts(10, partitioner="pathological", classes_per_client=1)
    assert [sorted(p) for p in got] == [list(range(10 * c, 10 * c + 10)) for c in range(10)]


@pytest.mark.parametrize("mode", ["first-deterministic", "deterministic", "random"])
def test_pathological_s_classes_per_client(mode: str) -> None:
    got = parts(5, partitioner="pathological", classes_per_client=3, class_assignment=mode)
    for p in got:
        assert len(np.unique(TARGETS[p])) <= 3
    everything = [i for p in got for i in p]
    assert len(everything) == len(set(everything))  # disjoint (unassigned classes are dropped)
    if mode == "deterministic":  # partition i holds classes i, i+1, i+2
        assert [sorted(set(TARGETS[p].tolist())) for p in got] == [
            [i, i + 1, i + 2] for i in range(5)
        ]
    with pytest.raises(ConfigError, match=r"classes-per-client = 11 exceeds the 10"):
        parts(5, partitioner="pathological", classes_per_client=11)


def test_seed_reproduces_every_partitioner() -> None:
    for kwargs in (
        {"partitioner": "dirichlet", "alpha": 0.3, "min_partition_size": 2},
        {"partitioner": "pathological", "classes_per_client": 2, "class_assignment": "random"},
    ):
        assert parts(5, 7, **kwargs) == parts(5, 7, **kwargs)
        assert parts(5, 7, **kwargs) != parts(5, 8, **kwargs)


def test_dirichlet_alpha_controls_label_skew() -> None:
    """Small alpha: clients hold fewer classes than under large alpha (or IID)."""

    def mean_classes_held(**kwargs: object) -> float:
        return float(np.mean([len(np.unique(TARGETS[p])) for p in parts(5, 0, **kwargs)]))

    skewed = mean_classes_held(partitioner="dirichlet", alpha=0.1, min_partition_size=2)
    mild = mean_classes_held(partitioner="dirichlet", alpha=100.0, min_partition_size=2)
    iid = mean_classes_held(partitioner="iid")  # 20 random examples of 10 classes each
    assert skewed + 2 < 8 <= min(mild, iid)


def test_iid_control_is_balanced() -> None:
    """Balanced and shuffled (flwr's IidPartitioner alone cuts contiguous shards)."""
    got = parts(4, partitioner="iid")
    assert all(len(np.unique(TARGETS[p])) >= 8 for p in got)
    assert [len(p) for p in got] == [25] * 4
    assert sorted(i for p in got for i in p) == list(range(100))


def test_domain_partitioner() -> None:
    targets = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    domains = np.array([1] * 6 + [0] * 6)  # domain 0 lies at indices 6..11
    cfg = DataConfig(partitioner="domain")
    one_each = partition_indices(targets, 2, cfg, 0, domains=domains)
    assert [p.tolist() for p in one_each] == [list(range(6, 12)), list(range(6))]
    two_each = partition_indices(targets, 4, cfg, 0, domains=domains)
    assert [len(p) for p in two_each] == [3, 3, 3, 3]
    assert sorted(np.concatenate(two_each[:2]).tolist()) == list(range(6, 12))
    assert sorted(np.concatenate(two_each[2:]).tolist()) == list(range(6))
    with pytest.raises(ConfigError, match=r"num-partitions = 3 is not a multiple of the 2"):
        partition_indices(targets, 3, cfg, 0, domains=domains)
    with pytest.raises(ConfigError, match=r"needs a data set whose examples carry a domain"):
        partition_indices(targets, 2, cfg, 0)


def test_domainnet_one_client_per_domain(tmp_path: Path) -> None:
    fake_domainnet(tmp_path)
    cfg = DataConfig(
        dataset="domainnet-10",
        data_dir=str(tmp_path),
        domains="clipart,sketch",
        partitioner="domain",
        test_fraction=0.5,
    )
    for k in range(2):
        data = load_client_data(cfg, SPEC, 0, k, 2)
        domains = data.train.dataset.domains
        assert set(domains[data.train.indices].tolist()) == {k}
        assert set(domains[data.test.indices].tolist()) == {k}
        # 2 bird + 2 zebra per domain: one of each to train, one of each to test
        assert data.train_counts.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        assert sorted(subset_targets(data.test).tolist()) == [0, 9]


def test_local_test_split_keeps_class_proportions() -> None:
    cfg = DataConfig(partitioner="pathological", classes_per_client=2, test_fraction=0.25)
    data = load_client_data(cfg, SPEC, 0, 1, 5)
    train = np.bincount(subset_targets(data.train), minlength=10)
    test = np.bincount(subset_targets(data.test), minlength=10)
    assert (train > 0).sum() == 2 and np.array_equal(train > 0, test > 0)
    held = train > 0
    ratio = test[held] / (train[held] + test[held])
    assert np.allclose(ratio, 0.25, atol=0.02)


def test_held_out_partitions() -> None:
    assert held_out_partitions(10, 0.0, 0) == frozenset()
    chosen = held_out_partitions(10, 0.2, 0)
    assert len(chosen) == 2 and chosen <= set(range(10))
    assert held_out_partitions(10, 0.2, 0) == chosen  # the seed fixes it
    assert len({held_out_partitions(10, 0.2, s) for s in range(10)}) > 1
    assert len(held_out_partitions(100, 0.2, 3)) == 20
    with pytest.raises(ConfigError, match=r"holds out 2 of 2 clients"):
        held_out_partitions(2, 0.9, 0)


def test_client_knows_it_is_held_out() -> None:
    cfg = DataConfig(held_out_fraction=0.5)
    flags = [load_client_data(cfg, SPEC, 3, k, 4).held_out for k in range(4)]
    assert {k for k, f in enumerate(flags) if f} == held_out_partitions(4, 0.5, 3)
    assert sum(flags) == 2


def test_stratified_subsample_by_hand() -> None:
    from pep_fedpt.data.partition import stratified_subsample

    kept = stratified_subsample(np.arange(100), TARGETS, 0.3, seed=0)
    labels = TARGETS[kept]
    assert np.bincount(labels).tolist() == [3] * 10  # round(10 * 0.3) of every class
    assert np.array_equal(kept, stratified_subsample(np.arange(100), TARGETS, 0.3, seed=0))
    # A class never vanishes: at least one example stays.
    assert np.bincount(TARGETS[stratified_subsample(np.arange(100), TARGETS, 0.01, 0)]).min() == 1


def test_central_split_and_subsample_do_not_depend_on_the_run_seed() -> None:
    from pep_fedpt.data import load_central_data
    from pep_fedpt.data.client_data import client_pool

    cfg = DataConfig(subsample=0.5)
    central = subset_targets(load_central_data(cfg, SPEC).test)
    full_central = subset_targets(load_central_data(DataConfig(), SPEC).test)
    assert abs(len(central) - len(full_central) / 2) <= 10  # per-class rounding
    _, pool = client_pool(cfg, SPEC)
    # Client partitions (which do use the run seed) cover the same subsampled pool.
    for seed in (0, 1):
        covered = np.concatenate(
            [
                np.concatenate(
                    [
                        np.asarray(load_client_data(cfg, SPEC, seed, p, 3).train.indices),
                        np.asarray(load_client_data(cfg, SPEC, seed, p, 3).test.indices),
                    ]
                )
                for p in range(3)
            ]
        )
        assert np.array_equal(np.sort(covered), pool)
    with pytest.raises(ConfigError, match=r"data.subsample = 0.0 must be in \(0, 1\]"):
        DataConfig(subsample=0.0)


def test_every_partitioner_is_one_frozen_record_registered_once() -> None:
    import dataclasses

    from pep_fedpt.partitioners import PARTITIONERS, UnknownPartitioner, get_partitioner

    fields = {f.name for f in dataclasses.fields(DataConfig)}
    assert list(PARTITIONERS) == ["dirichlet", "pathological", "iid", "domain"]
    for name, record in PARTITIONERS.items():
        assert record.name == name and get_partitioner(name) is record
        assert set(record.reads) <= fields, (name, record.reads)
        assert callable(record.split_function())
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.name = "other"  # type: ignore[misc]  # assigning a frozen field is the point
    assert [n for n, r in PARTITIONERS.items() if r.needs_domains] == ["domain"]
    with pytest.raises(UnknownPartitioner) as refused:
        get_partitioner("shards")
    assert str(refused.value) == (
        "data.partitioner = 'shards' is not accepted; use one of: "
        "dirichlet, pathological, iid, domain"
    )


def test_each_partitioner_describes_itself_with_the_keys_it_reads() -> None:
    from pep_fedpt.partitioners import get_partitioner

    cfg = DataConfig(alpha=0.25, classes_per_client=3, class_assignment="random")
    assert get_partitioner("dirichlet").describe(cfg) == "dirichlet, alpha 0.25"
    assert get_partitioner("pathological").describe(cfg) == (
        "pathological, 3 classes per client (random)"
    )
    assert get_partitioner("iid").describe(cfg) == "iid"
    assert get_partitioner("domain").describe(cfg) == "domain"
