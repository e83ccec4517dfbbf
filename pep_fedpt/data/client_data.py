"""What one client (or the server) sees of a data set, built the same way in every process.

Every process derives the same split from (data config, seed, num-partitions), so no
index list ever travels over the network.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Subset

from pep_fedpt.config import DataConfig
from pep_fedpt.data.partition import (
    class_counts,
    held_out_partitions,
    partition_indices,
    stratified_split,
    stratified_subsample,
)
from pep_fedpt.data.registry import DatasetSplits, ImageSpec, LabeledDataset, load_dataset

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
        splits = {"train": self.train, "val": self.val, "test": self.test}
        if name not in splits or splits[name] is None:
            raise ValueError(f"split {name!r}: use one of train, val, test")
        return splits[name]  # type: ignore[return-value]


@dataclass
class CentralData:
    """The data set's central test split, evaluated by the server with the global prior."""

    test: Subset | LabeledDataset
    num_classes: int
    classes: list[str]


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


@functools.lru_cache(maxsize=2)
def _partitions(
    cfg: DataConfig, spec: ImageSpec, seed: int, num_partitions: int
) -> list[np.ndarray]:
    splits, pool, _ = _splits(cfg, spec)
    domains = getattr(splits.train, "domains", None)
    local = partition_indices(
        splits.train.targets[pool],
        num_partitions,
        cfg,
        seed,
        domains=None if domains is None else domains[pool],
    )
    return [pool[p] for p in local]


def client_pool(cfg: DataConfig, spec: ImageSpec) -> tuple[LabeledDataset, np.ndarray]:
    """The data set clients draw from and the indices of its client pool (no central test)."""
    splits, pool, _ = _splits(cfg, spec)
    return splits.train, pool


def load_client_data(
    cfg: DataConfig, spec: ImageSpec, seed: int, partition_id: int, num_partitions: int
) -> ClientData:
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id = {partition_id} is outside 0..{num_partitions - 1}")
    splits, _, _ = _splits(cfg, spec)
    indices = _partitions(cfg, spec, seed, num_partitions)[partition_id]
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
        train=Subset(splits.train, train_idx.tolist()),
        test=Subset(splits.train, test_idx.tolist()),
        val=Subset(splits.train, val_idx.tolist()),
        num_classes=num_classes,
        train_counts=class_counts(targets[train_idx], num_classes),
        cache_key=key,
        held_out=partition_id in held_out_partitions(num_partitions, cfg.held_out_fraction, seed),
    )


def load_central_data(cfg: DataConfig, spec: ImageSpec) -> CentralData:
    splits, _, central = _splits(cfg, spec)
    source = splits.test if splits.test is not None else splits.train
    return CentralData(
        test=Subset(source, central.tolist()),
        num_classes=len(splits.classes),
        classes=splits.classes,
    )


def subset_targets(subset: Subset) -> np.ndarray:
    """Labels of a Subset without reading an image."""
    return np.asarray(subset.dataset.targets)[np.asarray(subset.indices, dtype=np.int64)]
