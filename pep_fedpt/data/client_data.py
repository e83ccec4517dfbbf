"""What one client (or the server) sees of a data set, built the same way in every process.

Every process derives the same split from (data config, seed, num-partitions), so no
index list ever travels over the network.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Subset

from pep_fedpt.config import DataConfig
from pep_fedpt.data.partition import (
    class_counts,
    held_out_partitions,
    partition_indices,
    stratified_split,
    stratified_subsample,
)
from pep_fedpt.data.registry import (
    DatasetSplits,
    ImageSpec,
    LabeledDataset,
    as_dataset,
    load_dataset,
)

# The validation carve's seed is the test split's plus this: another, fixed permutation.
VAL_SEED_OFFSET = 7_919


@dataclass
class ClientData:
    """A client's local train, validation and test splits (same class proportions) and its
    train counts. ``val`` is empty unless ``data.val-fraction`` > 0."""

    partition_id: int
    train: Subset
    test: Subset
    num_classes: int
    train_counts: np.ndarray  # n_{k,c}
    cache_key: str  # identifies the exact examples, for the z(x) cache
    held_out: bool = False  # never trains; evaluated with the global state only
    val: Subset | None = None

    def split(self, name: str) -> Subset:
        """The ``"train"``, ``"val"`` or ``"test"`` split."""
        split = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if split is None:
            raise ValueError(f"split {name!r}: use one of train, val, test")
        return split


@dataclass
class CentralData:
    """The data set's central test split, evaluated by the server with the global prior."""

    test: Subset
    num_classes: int
    classes: list[str]

    @property
    def source(self) -> LabeledDataset:
        """The data set the test split's indices refer to."""
        return subset_source(self.test)

    @property
    def indices(self) -> np.ndarray:
        """The test split's indices into ``source`` (int64)."""
        return np.asarray(self.test.indices, dtype=np.int64)


@functools.lru_cache(maxsize=2)
def _splits(cfg: DataConfig, spec: ImageSpec) -> tuple[DatasetSplits, np.ndarray, np.ndarray]:
    """The loaded data set, the client pool's indices and the central test indices.

    Both come from ``data.split-seed``, not the run seed: every seed of a comparison is
    scored on the same central examples, and a ``local:`` backbone's pool never overlaps
    any run's central test split.
    """
    splits = load_dataset(cfg, spec)
    everything = np.arange(len(splits.train))
    if splits.test is not None:
        pool, central = everything, np.arange(len(splits.test))
        central_targets = np.asarray(splits.test.targets)
    else:
        pool, central = stratified_split(
            everything, splits.train.targets, cfg.central_test_fraction, cfg.split_seed
        )
        central_targets = np.asarray(splits.train.targets)
    if cfg.subsample < 1.0:
        pool = stratified_subsample(pool, splits.train.targets, cfg.subsample, cfg.split_seed)
        central = stratified_subsample(central, central_targets, cfg.subsample, cfg.split_seed)
    return splits, pool, central


PARTITIONS_FORMAT = "part1"  # bump when the stored layout of the partitions changes


def partition_cache_dir(cache_dir: Path) -> Path:
    """Where a node keeps its partitionings: beside its z(x) cache folder
    (``~/.cache/pep-fedpt/features-partitions`` by default), so that folder holds z(x)
    and decoded images only."""
    return cache_dir.with_name(cache_dir.name + "-partitions")


@functools.lru_cache(maxsize=2)
def _partitions(
    cfg: DataConfig,
    spec: ImageSpec,
    seed: int,
    num_partitions: int,
    cache_dir: Path | None = None,
) -> list[np.ndarray]:
    """Every partition's indices; with ``cache_dir``, from the node's disk cache there.

    Drawing them imports flwr-datasets and HuggingFace ``datasets`` (most of a cold
    process's data loading); the result depends only on the labels (and domains) of the
    pool, the data config, the seed, the number of partitions and the flwr-datasets
    version, so a node computes it once. A damaged file is recomputed (``TensorStore``).
    """
    splits, pool, _ = _splits(cfg, spec)
    domains = getattr(splits.train, "domains", None)
    targets = splits.train.targets[pool]
    pool_domains = None if domains is None else domains[pool]

    def compute() -> torch.Tensor:
        local = partition_indices(targets, num_partitions, cfg, seed, domains=pool_domains)
        sizes = [len(p) for p in local]
        flat = [np.asarray(sizes, dtype=np.int64), *(np.asarray(p, np.int64) for p in local)]
        return torch.from_numpy(np.concatenate(flat))

    if cache_dir is None:
        packed = compute()
    else:
        from pep_fedpt.feature_cache import TensorStore

        digest = hashlib.sha256(np.asarray(targets, np.int64).tobytes())
        if pool_domains is not None:
            digest.update(np.asarray(pool_domains, np.int64).tobytes())
        key = (
            f"{cfg!r}:{seed}:{num_partitions}:{digest.hexdigest()[:16]}:"
            f"flwr-datasets-{version('flwr-datasets')}"
        )
        store = TensorStore(cache_dir, PARTITIONS_FORMAT, torch.int64, keep_in_memory=False)
        packed = store.get(key, compute)
    values = packed.numpy()
    sizes, rest = values[:num_partitions], values[num_partitions:]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [pool[rest[a:b]] for a, b in itertools.pairwise(bounds)]


def client_pool(cfg: DataConfig, spec: ImageSpec) -> tuple[LabeledDataset, np.ndarray]:
    """The data set clients draw from and the indices of its client pool (no central test)."""
    splits, pool, _ = _splits(cfg, spec)
    return splits.train, pool


def load_client_data(
    cfg: DataConfig,
    spec: ImageSpec,
    seed: int,
    partition_id: int,
    num_partitions: int,
    cache_dir: Path | None = None,
) -> ClientData:
    """``cache_dir``: where the node keeps its partitionings (``partition_cache_dir``;
    None: drawn in this process)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id = {partition_id} is outside 0..{num_partitions - 1}")
    splits, _, _ = _splits(cfg, spec)
    indices = _partitions(cfg, spec, seed, num_partitions, cache_dir)[partition_id]
    targets = splits.train.targets
    train_idx, test_idx = stratified_split(indices, targets, cfg.test_fraction, seed + partition_id)
    # Validation comes out of the training split (never the test split), stratified, with
    # its own fixed seed: the same examples for a given (split, seed, partition).
    val_idx = np.zeros(0, dtype=train_idx.dtype)
    if cfg.val_fraction > 0:
        train_idx, val_idx = stratified_split(
            train_idx, targets, cfg.val_fraction, seed + partition_id + VAL_SEED_OFFSET
        )
    num_classes = len(splits.classes)
    key = f"{cfg!r}:{seed}:{num_partitions}:{partition_id}:{spec}"
    return ClientData(
        partition_id=partition_id,
        train=Subset(as_dataset(splits.train), train_idx.tolist()),
        test=Subset(as_dataset(splits.train), test_idx.tolist()),
        val=Subset(as_dataset(splits.train), val_idx.tolist()),
        num_classes=num_classes,
        train_counts=class_counts(targets[train_idx], num_classes),
        cache_key=key,
        held_out=partition_id in held_out_partitions(num_partitions, cfg.held_out_fraction, seed),
    )


def load_central_data(cfg: DataConfig, spec: ImageSpec) -> CentralData:
    splits, _, central = _splits(cfg, spec)
    source = splits.test if splits.test is not None else splits.train
    return CentralData(
        test=Subset(as_dataset(source), central.tolist()),
        num_classes=len(splits.classes),
        classes=splits.classes,
    )


def subset_source(subset: Subset) -> LabeledDataset:
    """The labelled data set a Subset of a client or central split indexes (torch types
    ``Subset.dataset`` as a plain ``Dataset``)."""
    return cast(LabeledDataset, subset.dataset)


def subset_targets(subset: Subset) -> np.ndarray:
    """Labels of a Subset without reading an image."""
    return np.asarray(subset_source(subset).targets)[np.asarray(subset.indices, dtype=np.int64)]
