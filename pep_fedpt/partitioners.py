"""The partitioners of ``data.partitioner``: one frozen record each, registered here once.

A record says what the run config may name, which ``data.*`` keys it reads, whether the
data set must carry a domain per example, how the results describe it, and which
function of ``pep_fedpt.data.partition`` draws the partitions (named, and imported when
a run partitions: this module is a leaf that ``pep_fedpt.config`` imports, and the
partition functions need flwr-datasets). Only the standard library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pep_fedpt.config import DataConfig


class UnknownPartitioner(ValueError):
    """A ``data.partitioner`` no record is registered for."""


@dataclass(frozen=True)
class Partitioning:
    """One partitioner's facts."""

    name: str  # the value of data.partitioner
    reads: tuple[str, ...]  # the DataConfig fields it reads (beyond the data set)
    needs_domains: bool  # whether every example must carry a domain id
    describe: Callable[[DataConfig], str]  # the partitioner and its parameters, in words
    # "module:function" drawing the partitions: (columns, num_partitions, cfg, seed,
    # domains) -> the sorted indices of each partition.
    split: str

    def split_function(self) -> Callable[..., Any]:
        """The function ``split`` names."""
        module, _, function = self.split.partition(":")
        found: Callable[..., Any] = getattr(importlib.import_module(module), function)
        return found


_SPLITS = "pep_fedpt.data.partition"

PARTITIONERS: dict[str, Partitioning] = {
    p.name: p
    for p in (
        Partitioning(
            name="dirichlet",
            reads=("alpha", "min_partition_size"),
            needs_domains=False,
            describe=lambda data: f"dirichlet, alpha {data.alpha:g}",
            split=f"{_SPLITS}:dirichlet_partitions",
        ),
        Partitioning(
            name="pathological",
            reads=("classes_per_client", "class_assignment"),
            needs_domains=False,
            describe=lambda data: (
                f"pathological, {data.classes_per_client} classes per client "
                f"({data.class_assignment})"
            ),
            split=f"{_SPLITS}:pathological_partitions",
        ),
        Partitioning(
            name="iid",
            reads=(),
            needs_domains=False,
            describe=lambda data: "iid",
            split=f"{_SPLITS}:iid_partitions",
        ),
        Partitioning(
            name="domain",
            reads=(),
            needs_domains=True,
            describe=lambda data: "domain",
            split=f"{_SPLITS}:domain_partitions",
        ),
    )
}


def get_partitioner(name: str) -> Partitioning:
    """The record of partitioner ``name``; ``UnknownPartitioner`` naming it and the
    accepted ones otherwise."""
    try:
        return PARTITIONERS[name]
    except KeyError:
        raise UnknownPartitioner(
            f"data.partitioner = {name!r} is not accepted; use one of: {', '.join(PARTITIONERS)}"
        ) from None
