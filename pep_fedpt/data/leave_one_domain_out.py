"""FedMVP's domain-generalisation protocol: leave one domain out (numpy only).

Multi-source -> single target, as DomainBed and the FedMVP paper evaluate it: one domain
(``fedmvp.target-domain``) is held out; every other (source) domain gets k clients
(num-partitions = k x #sources), each holding a seeded 1/k share of its domain's pool
and training on ``fedmvp.shots`` examples per class drawn from that share. Tests:

- Local: each client, on the central test examples of its own domain (every class);
- Target: the server, on the central test examples of the held-out domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pep_fedpt.config import ConfigError
from pep_fedpt.data.base_new import draw_shots


@dataclass(frozen=True)
class DomainSplit:
    """Indices refer to the pool's data set (train) and the central test's (tests)."""

    target: int  # domain id of the held-out domain
    client_domains: tuple[int, ...]  # per partition id: its source domain
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
    shots: int,
    seed: int,
) -> DomainSplit:
    """The whole split of one run (see the module docstring). ``pool_domains`` etc. are
    indexed by data set index, ``pool``/``test`` the indices in play."""
    sources = [d for d in range(num_domains) if d != target]
    if num_partitions % len(sources):
        raise ConfigError(
            f"num-partitions = {num_partitions} is not a multiple of the {len(sources)} "
            "source domains: every source domain gets the same number of clients"
        )
    per_domain = num_partitions // len(sources)
    pool = np.asarray(pool, dtype=np.int64)
    test = np.asarray(test, dtype=np.int64)
    domains, train, tests = [], [], []
    for d in sources:
        own = pool[np.asarray(pool_domains)[pool] == d]
        shares = np.array_split(np.random.default_rng([seed, d]).permutation(own), per_domain)
        domain_test = test[np.asarray(test_domains)[test] == d]
        for share in shares:
            drawn = draw_shots(share, pool_targets, range(num_classes), shots, seed)
            if len(drawn) == 0:
                raise ConfigError(f"source domain {d} has no pool example for a client")
            domains.append(d)
            train.append(drawn)
            tests.append(domain_test)
    return DomainSplit(
        target=target,
        client_domains=tuple(domains),
        client_train=tuple(train),
        client_test=tuple(tests),
        target_test=test[np.asarray(test_domains)[test] == target],
    )
