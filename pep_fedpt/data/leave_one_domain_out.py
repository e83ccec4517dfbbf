"""FedMVP's domain-generalisation protocol: leave one domain out (numpy only).

Multi-source -> single target, as DomainBed and the FedMVP paper evaluate it: one domain
(``fedmvp.target-domain``) is held out; every other (source) domain gets k clients
(num-partitions = k x #sources), each holding a consecutive chunk of
``classes-per-client`` classes of its domain (the last client of a domain the remainder, as
the released code splits them: OfficeHome 3 clients of 20, 20 and 25 classes per domain)
and training on ``fedmvp.shots`` examples of each of its classes from its domain's pool.
Tests:

- Local: each client, on the central test examples of its own domain and classes;
- Target: the server, on the held-out domain (its central test examples, or all of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pep_fedpt.config import ConfigError
from pep_fedpt.data.base_new import class_chunks, draw_shots


@dataclass(frozen=True)
class DomainSplit:
    """Indices refer to the pool's data set (train) and the central test's (tests)."""

    target: int  # domain id of the held-out domain
    client_domains: tuple[int, ...]  # per partition id: its source domain
    client_classes: tuple[tuple[int, ...], ...]  # per partition id: its chunk of classes
    client_train: tuple[np.ndarray, ...]
    client_test: tuple[np.ndarray, ...]
    target_test: np.ndarray


def target_index(domain_names: Sequence[str], target: str) -> int:
    """The id of ``fedmvp.target-domain`` among the run's domains (a clear error if not)."""
    if target not in domain_names:
        raise ConfigError(
            f"fedmvp.target-domain = {target!r} is not one of the run's domains "
            f"{list(domain_names)}; name the domain to hold out"
        )
    if len(domain_names) < 2:
        raise ConfigError("leave-one-domain-out needs at least 2 domains (sources and target)")
    return list(domain_names).index(target)


def leave_one_domain_out(
    pool: np.ndarray,
    pool_domains: np.ndarray,
    pool_targets: np.ndarray,
    test: np.ndarray,
    test_domains: np.ndarray,
    num_domains: int,
    target: int,
    num_partitions: int,
    num_classes: int,
    classes_per_client: int,
    shots: int,
    seed: int,
    test_targets: np.ndarray | None = None,
) -> DomainSplit:
    """The whole split of one run (see the module docstring). ``pool_domains`` etc. are
    indexed by data set index, ``pool``/``test`` the indices in play; ``test_targets``
    (the test data set's labels) defaults to ``pool_targets`` (one data set for both)."""
    sources = [d for d in range(num_domains) if d != target]
    if num_partitions % len(sources):
        raise ConfigError(
            f"num-partitions = {num_partitions} is not a multiple of the {len(sources)} "
            "source domains: every source domain gets the same number of clients"
        )
    per_domain = num_partitions // len(sources)
    chunks = class_chunks(range(num_classes), per_domain, classes_per_client)
    pool = np.asarray(pool, dtype=np.int64)
    test = np.asarray(test, dtype=np.int64)
    test_targets = np.asarray(pool_targets if test_targets is None else test_targets)
    domains, classes, train, tests = [], [], [], []
    for d in sources:
        own = pool[np.asarray(pool_domains)[pool] == d]
        domain_test = test[np.asarray(test_domains)[test] == d]
        for chunk in chunks:
            drawn = draw_shots(own, pool_targets, chunk, shots, seed)
            if len(drawn) == 0:
                raise ConfigError(
                    f"source domain {d} has no pool example of the classes {list(chunk)}"
                )
            domains.append(d)
            classes.append(chunk)
            train.append(drawn)
            tests.append(domain_test[np.isin(test_targets[domain_test], chunk)])
    return DomainSplit(
        target=target,
        client_domains=tuple(domains),
        client_classes=tuple(classes),
        client_train=tuple(train),
        client_test=tuple(tests),
        target_test=test[np.asarray(test_domains)[test] == target],
    )
