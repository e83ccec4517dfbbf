"""Client partitions (flwr-datasets partitioners) and per-client train/test splits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pep_fedpt.config import ConfigError, DataConfig
from pep_fedpt.partitioners import UnknownPartitioner, get_partitioner

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

# The labels and original indices of a pool's examples, as a flwr-datasets Dataset takes them.
Columns = dict[str, list[int]]
Domains = np.ndarray | None  # one domain id per example, for partitioner = "domain"


def partition_indices(
    targets: np.ndarray,
    num_partitions: int,
    cfg: DataConfig,
    seed: int,
    domains: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Indices of each partition, drawn by a flwr-datasets partitioner over the labels only
    (``data.partitioner``: its record in ``pep_fedpt.partitioners``).

    ``domains`` (one id per example) is needed by ``partitioner = "domain"``: partition p
    then holds the p-th of k IID shares of domain p // k, k = num_partitions / #domains.
    """
    try:
        partitioning = get_partitioner(cfg.partitioner)
    except UnknownPartitioner as exc:
        raise ConfigError(str(exc)) from None
    if num_partitions < 1 or num_partitions > len(targets):
        raise ConfigError(
            f"num-partitions = {num_partitions} must be in 1..{len(targets)} (the pool size)"
        )
    columns = {"label": np.asarray(targets).tolist(), "index": list(range(len(targets)))}
    if partitioning.needs_domains and domains is None:
        raise ConfigError(
            f"data.partitioner = {cfg.partitioner!r} needs a data set whose examples carry a "
            f"domain (domainnet, domainnet-10); data.dataset = {cfg.dataset!r} has none"
        )
    split = partitioning.split_function()
    partitions: list[np.ndarray] = split(columns, num_partitions, cfg, seed, domains)
    return partitions


def dirichlet_partitions(
    columns: Columns, num_partitions: int, cfg: DataConfig, seed: int, domains: Domains
) -> list[np.ndarray]:
    """``data.partitioner = "dirichlet"``: label skew of concentration ``data.alpha``."""
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=cfg.alpha,
        min_partition_size=cfg.min_partition_size,
        seed=seed,
    )
    return _load_shuffled(partitioner, columns, seed)


def pathological_partitions(
    columns: Columns, num_partitions: int, cfg: DataConfig, seed: int, domains: Domains
) -> list[np.ndarray]:
    """``data.partitioner = "pathological"``: ``data.classes-per-client`` classes each."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    num_classes = len(np.unique(columns["label"]))
    if cfg.classes_per_client > num_classes:
        raise ConfigError(
            f"data.classes-per-client = {cfg.classes_per_client} exceeds the "
            f"{num_classes} classes of data set {cfg.dataset!r}"
        )
    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=cfg.classes_per_client,
        class_assignment_mode=cfg.class_assignment,
        seed=seed,
    )
    return _load_shuffled(partitioner, columns, seed)


def iid_partitions(
    columns: Columns, num_partitions: int, cfg: DataConfig, seed: int, domains: Domains
) -> list[np.ndarray]:
    """``data.partitioner = "iid"``: equal random shares."""
    from flwr_datasets.partitioner import IidPartitioner

    return _load_shuffled(IidPartitioner(num_partitions=num_partitions), columns, seed)


def _load_shuffled(partitioner: Partitioner, columns: Columns, seed: int) -> list[np.ndarray]:
    """Every partition of ``partitioner`` over ``columns`` shuffled by ``seed``."""
    from datasets import Dataset

    # Shuffled first, as flwr-datasets' FederatedDataset does: IidPartitioner cuts
    # contiguous shards, and data sets listed class by class would give one class each.
    partitioner.dataset = Dataset.from_dict(columns).shuffle(seed=seed)
    return _load_all(partitioner)


def _load_all(partitioner: Partitioner) -> list[np.ndarray]:
    """The original indices of every partition, sorted."""
    return [
        np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
        for i in range(partitioner.num_partitions)
    ]


def domain_partitions(
    columns: Columns, num_partitions: int, cfg: DataConfig, seed: int, domains: Domains
) -> list[np.ndarray]:
    """``data.partitioner = "domain"``: one NaturalIdPartitioner share per domain, each cut
    in k IID shares."""
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner, NaturalIdPartitioner

    assert domains is not None  # partition_indices refuses a data set without domains
    domains = np.asarray(domains)
    num_domains = len(np.unique(domains))
    if num_partitions % num_domains:
        raise ConfigError(
            f"num-partitions = {num_partitions} is not a multiple of the {num_domains} "
            "domains: partitioner 'domain' gives every domain the same number of clients"
        )
    per_domain = num_partitions // num_domains
    by_domain = NaturalIdPartitioner(partition_by="domain")
    by_domain.dataset = Dataset.from_dict({**columns, "domain": domains.tolist()}).shuffle(
        seed=seed
    )
    partitions = []
    for d in range(num_domains):  # NaturalIdPartitioner numbers the sorted domain ids
        share = by_domain.load_partition(d)
        if per_domain == 1:
            partitions.append(np.sort(np.asarray(share["index"], dtype=np.int64)))
            continue
        if len(share) < per_domain:
            raise ConfigError(
                f"domain {d} has {len(share)} examples, fewer than its {per_domain} clients"
            )
        split = IidPartitioner(num_partitions=per_domain)
        split.dataset = share
        partitions += _load_all(split)
    return partitions


def held_out_partitions(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """The partition ids that never train: round(fraction * N), drawn from the seed.

    Every process draws the same set, so a client learns from its own partition id
    whether it is held out, and no list travels. At least one partition always trains.
    """
    count = round(fraction * num_partitions)
    if count == 0:
        return frozenset()
    if count >= num_partitions:
        raise ConfigError(
            f"data.held-out-fraction = {fraction} holds out {count} of {num_partitions} "
            "clients: at least one must train"
        )
    rng = np.random.default_rng([seed, 0x4E1D])  # a stream of its own, apart from the splits
    return frozenset(int(p) for p in rng.choice(num_partitions, size=count, replace=False))


def stratified_split(
    indices: np.ndarray, targets: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` so that the test part has the same class proportions.

    Per class c with n_c examples, round(n_c * test_fraction) go to test, but at least
    one example of each class stays for training.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(targets)[indices]
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(indices[labels == c])
        n_test = min(round(len(members) * test_fraction), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_subsample(
    indices: np.ndarray, targets: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Keep ``fraction`` of ``indices`` per class (at least one example of each class)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(targets)[indices]
    kept = []
    for c in np.unique(labels):
        members = rng.permutation(indices[labels == c])
        kept.append(members[: max(1, round(len(members) * fraction))])
    return np.sort(np.concatenate(kept))


def class_counts(targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)
