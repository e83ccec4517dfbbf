"""The node-local disk cache of z(x): a fresh client (a fresh ClientApp process in
deployment) loads z(x) from disk without running the backbone; another key misses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client_app.app import app as client_app
from pep_fedpt.config import RunConfig
from pep_fedpt.feature_cache import (
    FeatureStore,
    cache_file_name,
    default_cache_dir,
    examples_digest,
    feature_store,
    resolve_cache_dir,
)
from pep_fedpt.methods import PEPFedPTClient, client_for
from server_app.inprocess import incoming_message
from strategies import wire


def fresh_process() -> None:
    """Forget every in-memory cache of z(x) and clients, as a new process would."""
    client_for.cache_clear()
    feature_store.cache_clear()


class ForwardCounter:
    """Counts real forward passes through the frozen backbone (a hook, not a mock)."""

    def __init__(self, client: PEPFedPTClient) -> None:
        self.calls = 0
        self._handle = client.backbone.blocks[0].register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def cfg(tiny_run_config: dict) -> RunConfig:
    return RunConfig.from_flat(tiny_run_config)


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    fresh_process()
    yield
    fresh_process()


def test_a_fresh_client_loads_z_from_disk_without_running_the_backbone(
    cfg: RunConfig, tmp_path: Path
) -> None:
    first = PEPFedPTClient(cfg, 0, 8, tmp_path)
    counter = ForwardCounter(first)
    try:
        computed = {split: first.features(split) for split in ("train", "test")}
        assert counter.calls > 0
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == sorted(cache_file_name(first.features_key(s)) for s in computed)

        fresh_process()
        counter.calls = 0
        second = PEPFedPTClient(cfg, 0, 8, tmp_path)
        assert second.features_store is not first.features_store
        for split, expected in computed.items():
            assert torch.equal(second.features(split), expected)
        assert counter.calls == 0
        assert (second.features_store.loaded, second.features_store.computed) == (2, 0)
    finally:
        counter.close()


@pytest.mark.parametrize("change", [{"seed": 1}, {"model.depth": 2}, {"data.alpha": 5.0}], ids=str)
def test_a_changed_key_misses(tiny_run_config: dict, tmp_path: Path, change: dict) -> None:
    base = PEPFedPTClient(RunConfig.from_flat(tiny_run_config), 0, 8, tmp_path)
    base.features("train")
    fresh_process()
    other = PEPFedPTClient(RunConfig.from_flat({**tiny_run_config, **change}), 0, 8, tmp_path)
    assert other.features_key("train") != base.features_key("train")
    counter = ForwardCounter(other)
    try:
        other.features("train")
        assert counter.calls > 0
        assert other.features_store.computed == 1
        assert len(list(tmp_path.iterdir())) == 2
    finally:
        counter.close()


def test_other_partitions_and_splits_miss(cfg: RunConfig, tmp_path: Path) -> None:
    keys = {
        PEPFedPTClient(cfg, p, n, tmp_path).features_key(s)
        for p, n in ((0, 8), (1, 8), (0, 4))
        for s in ("train", "test")
    }
    assert len(keys) == 6


def test_store_writes_atomically_and_survives_a_damaged_file(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).reshape(3, 2)

    FeatureStore(tmp_path).get("k", compute)
    assert [p.name for p in tmp_path.iterdir()] == [cache_file_name("k")]  # no temp left
    assert torch.equal(FeatureStore(tmp_path).get("k", compute), compute())
    assert len(calls) == 2  # once by the first store, once by the comparison above

    (tmp_path / cache_file_name("k")).write_bytes(b"truncated")
    store = FeatureStore(tmp_path)
    assert torch.equal(store.get("k", compute), compute())
    assert store.computed == 1
    assert FeatureStore(tmp_path).get("k", compute).shape == (3, 2)  # rewritten, loads again


def test_store_refuses_a_file_that_holds_another_key(tmp_path: Path) -> None:
    FeatureStore(tmp_path).get("a", lambda: torch.ones(2, 2))
    (tmp_path / cache_file_name("a")).rename(tmp_path / cache_file_name("b"))
    store = FeatureStore(tmp_path)
    assert torch.equal(store.get("b", lambda: torch.zeros(2, 2)), torch.zeros(2, 2))
    assert store.computed == 1


def test_resolve_cache_dir_node_config_wins(tmp_path: Path) -> None:
    node, run = tmp_path / "node", tmp_path / "run"
    assert resolve_cache_dir(str(run), str(node)) == node
    assert resolve_cache_dir(str(run), None) == run
    assert resolve_cache_dir(str(run), "") == run
    assert resolve_cache_dir("", None) == default_cache_dir()
    with pytest.raises(ValueError, match="absolute"):
        resolve_cache_dir("", "relative/dir")


def _query() -> Message:
    config = ConfigRecord({wire.CFG_TASK: wire.TASK_PROTOTYPES, wire.CFG_SERVER_ROUND: 0})
    return incoming_message(RecordDict({wire.CONFIG: config}), MessageType.QUERY)


def test_client_app_uses_the_node_cache_dir_and_a_new_process_reuses_it(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    node_dir, run_dir = tmp_path / "node", tmp_path / "run-level"
    run_config = {**tiny_run_config, "cache-dir": str(run_dir)}
    node_config = {"partition-id": 2, "num-partitions": 8, "cache-dir": str(node_dir)}

    def ask() -> Message:
        context = Context(
            run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config
        )
        return client_app(_query(), context)

    first = ask()
    assert len(list(node_dir.iterdir())) == 1
    assert not run_dir.exists()

    fresh_process()
    client = client_for(RunConfig.from_flat(run_config), 2, 8, node_dir)
    counter = ForwardCounter(client)
    try:
        second = ask()
        assert counter.calls == 0
    finally:
        counter.close()
    assert torch.equal(
        torch.as_tensor(second.content[wire.PROTO][wire.PROTO_SUM].numpy()),
        torch.as_tensor(first.content[wire.PROTO][wire.PROTO_SUM].numpy()),
    )


def test_examples_digest_sees_order_membership_and_labels() -> None:
    idx, labels = np.array([3, 1, 2]), np.array([0, 1, 1])
    base = examples_digest(idx, labels)
    assert examples_digest(idx.copy(), labels.copy()) == base
    assert examples_digest(idx[::-1], labels[::-1]) != base
    assert examples_digest(np.array([3, 1, 4]), labels) != base
    assert examples_digest(idx, np.array([0, 1, 2])) != base
