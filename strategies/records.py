"""Typed records of the server's state that are kept as JSON (checkpoint, results).

A ``PartitionEntry`` is what the prototype round (or a late node's admission) learnt of
one partition: the node that answers for it, whether it is held out, and its training
class counts (empty under secure aggregation, where a node's counts stay unknown). It is
a plain dict at run time, so a checkpoint writes it as it always did.
"""

from __future__ import annotations

from typing import TypedDict, cast

PartitionEntry = TypedDict(
    "PartitionEntry", {"node-id": int, "held-out": bool, "class-counts": list[int]}
)

# partition id -> its entry, in partition-id order.
Partitions = dict[int, PartitionEntry]


def partition_json(entry: PartitionEntry) -> dict[str, int | bool | list[int]]:
    """``entry`` as the untyped dict that results and plots take (a shallow copy)."""
    return cast("dict[str, int | bool | list[int]]", dict(entry))
