"""The base->new protocol of CoOp, CoCoOp and FedTPG, as FedMVP evaluates it (numpy only).

A data set's classes split in two by label: base (the first half, ceil(C/2) classes) and
new (the rest). Clients hold consecutive chunks of ``classes-per-client`` base classes, the
last client the remainder, so every base class is trained (the released code's split), and
``shots`` training examples of each, drawn with the seed from the client pool (the train
split); no client ever sees a new class. Tests come from the central test split:

- Local: each client's own classes (evaluated on the client, its own class bank);
- Base: every base class; New: every new class (evaluated on the server, with the bank
  of the classes being evaluated, so new classes need only their attribute phrases).

HM = 3 / (1/L + 1/B + 1/N), the three-way harmonic mean the FedMVP paper reports.

Every process derives the same split from (targets, seed, num-partitions, config), so no
index list travels over the network.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pep_fedpt.config import ConfigError

_LOG = logging.getLogger(__name__)


def split_base_new(num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Base = labels 0..ceil(C/2)-1, new = the rest (CoOp's ``subsample_classes``)."""
    if num_classes < 2:
        raise ConfigError(
            f"the base->new protocol needs a data set of at least 2 classes, not {num_classes}"
        )
    cut = math.ceil(num_classes / 2)
    return tuple(range(cut)), tuple(range(cut, num_classes))


def published_clients(num_classes: int, classes_per_client: int) -> int:
    """How many clients the released code gives ``num_classes`` classes: round(m / c) with
    numpy's rounding (halves to even), at least one."""
    return max(1, int(np.around(num_classes / classes_per_client)))


def class_chunks(
    classes: Sequence[int], num_clients: int, classes_per_client: int
) -> list[tuple[int, ...]]:
    """Consecutive chunks of ``classes_per_client`` classes, one per client, the last client
    taking the remainder, so that every class is held (as the released code splits them).

    The released code has ``published_clients`` clients; another count is accepted (a log
    line names the published one) as long as every client gets a class.
    """
    if num_clients < 1:
        raise ConfigError(f"num-partitions = {num_clients} must be >= 1")
    if classes_per_client < 1:
        raise ConfigError(f"fedmvp.classes-per-client = {classes_per_client} must be >= 1")
    classes = tuple(int(c) for c in classes)
    if (num_clients - 1) * classes_per_client >= len(classes):
        most = -(-len(classes) // classes_per_client)
        raise ConfigError(
            f"{len(classes)} classes in consecutive chunks of fedmvp.classes-per-client = "
            f"{classes_per_client} leave no class for the last of {num_clients} clients; use at "
            f"most {most} clients (the released code uses "
            f"{published_clients(len(classes), classes_per_client)}) or fewer classes per client"
        )
    published = published_clients(len(classes), classes_per_client)
    if num_clients != published:
        _LOG.warning(
            "%d classes in chunks of %d: the released code uses %d clients, this run %d "
            "(the last client holds %d classes)",
            len(classes),
            classes_per_client,
            published,
            num_clients,
            len(classes) - (num_clients - 1) * classes_per_client,
        )
    cut = [k * classes_per_client for k in range(num_clients)] + [len(classes)]
    return [classes[cut[k] : cut[k + 1]] for k in range(num_clients)]


def draw_shots(
    indices: np.ndarray, targets: np.ndarray, classes: Sequence[int], shots: int, seed: int
) -> np.ndarray:
    """``shots`` examples of each class among ``indices`` (all of a class with fewer),
    drawn with the seed; each class's draw depends only on (seed, class), so a client's
    examples do not change with the classes of the others. Sorted indices."""
    if shots < 1:
        raise ConfigError(f"fedmvp.shots = {shots} must be >= 1")
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(targets)[indices]
    chosen = []
    for c in classes:
        of_class = indices[labels == c]
        rng = np.random.default_rng([seed, int(c)])
        take = min(shots, len(of_class))
        chosen.append(rng.choice(of_class, size=take, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def of_classes(indices: np.ndarray, targets: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """The indices whose label is one of ``classes`` (order kept)."""
    indices = np.asarray(indices, dtype=np.int64)
    keep = np.isin(np.asarray(targets)[indices], np.asarray(classes, dtype=np.int64))
    return indices[keep]


@dataclass(frozen=True)
class BaseNewSplit:
    """Who holds which classes and examples. Indices refer to the data set they came from
    (train: the client pool's data set; tests: the central test split's)."""

    base: tuple[int, ...]
    new: tuple[int, ...]
    client_classes: tuple[tuple[int, ...], ...]  # per partition id
    client_train: tuple[np.ndarray, ...]  # per partition id: the few-shot examples
    client_test: tuple[np.ndarray, ...]  # per partition id: central test of its classes
    base_test: np.ndarray
    new_test: np.ndarray
    # Several data sets in one federation: per partition id, the index of its member set.
    client_members: tuple[int, ...] = ()


def base_new_split(
    train_indices: np.ndarray,
    train_targets: np.ndarray,
    test_indices: np.ndarray,
    test_targets: np.ndarray,
    num_classes: int,
    num_partitions: int,
    classes_per_client: int,
    shots: int,
    seed: int,
) -> BaseNewSplit:
    """The whole base->new split of one run (see the module docstring)."""
    base, new = split_base_new(num_classes)
    classes = class_chunks(base, num_partitions, classes_per_client)
    train = tuple(draw_shots(train_indices, train_targets, c, shots, seed) for c in classes)
    for pid, (own, idx) in enumerate(zip(classes, train, strict=True)):
        if len(idx) == 0:
            raise ConfigError(
                f"base->new: partition {pid}'s classes {list(own)} have no training example "
                "in the client pool"
            )
    return BaseNewSplit(
        base=base,
        new=new,
        client_classes=tuple(classes),
        client_train=train,
        client_test=tuple(of_classes(test_indices, test_targets, c) for c in classes),
        base_test=of_classes(test_indices, test_targets, base),
        new_test=of_classes(test_indices, test_targets, new),
    )


def harmonic_mean(local: float, base: float, new: float) -> float:
    """HM = 3 / (1/L + 1/B + 1/N); 0 when any of the three is 0."""
    values = (local, base, new)
    for name, value in zip(("local", "base", "new"), values, strict=True):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} accuracy = {value!r} must be in [0, 1]")
    if min(values) == 0.0:
        return 0.0
    return 3.0 / sum(1.0 / v for v in values)


def member_base_new(groups: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], ...]]:
    """Base and new labels of each member set of a joint federation: the first
    ceil(C_m / 2) of its labels, and the rest (each set split as it is alone)."""
    out: list[tuple[tuple[int, ...], ...]] = []
    for labels in groups:
        labels = tuple(int(c) for c in labels)
        cut = math.ceil(len(labels) / 2)
        out.append((labels[:cut], labels[cut:]))
    return out


def joint_base_new_split(
    groups: Sequence[Sequence[int]],
    names: Sequence[str],
    train_indices: np.ndarray,
    train_targets: np.ndarray,
    test_indices: np.ndarray,
    test_targets: np.ndarray,
    num_partitions: int,
    classes_per_client: int,
    shots: int,
    seed: int,
) -> BaseNewSplit:
    """The paper's one federation over several data sets (``groups``: each member's labels,
    ``names`` its name): every member's base split into its released chunks, the clients of
    the members one after another (the nine CoOp sets at 20 classes per chunk: 30)."""
    halves = member_base_new(groups)
    counts = [published_clients(len(base), classes_per_client) for base, _ in halves]
    if num_partitions != sum(counts):
        per_set = ", ".join(f"{n} {k}" for n, k in zip(names, counts, strict=True))
        raise ConfigError(
            f"num-partitions = {num_partitions}: the released chunks of "
            f"fedmvp.classes-per-client = {classes_per_client} give {sum(counts)} clients "
            f"over these sets ({per_set}); run that many SuperNodes"
        )
    classes: list[tuple[int, ...]] = []
    members: list[int] = []
    for m, ((base, _), count) in enumerate(zip(halves, counts, strict=True)):
        classes += class_chunks(base, count, classes_per_client)
        members += [m] * count
    train = tuple(draw_shots(train_indices, train_targets, c, shots, seed) for c in classes)
    base = tuple(c for b, _ in halves for c in b)
    new = tuple(c for _, n in halves for c in n)
    return BaseNewSplit(
        base=base,
        new=new,
        client_classes=tuple(classes),
        client_train=train,
        client_test=tuple(of_classes(test_indices, test_targets, c) for c in classes),
        base_test=of_classes(test_indices, test_targets, base),
        new_test=of_classes(test_indices, test_targets, new),
        client_members=tuple(members),
    )
