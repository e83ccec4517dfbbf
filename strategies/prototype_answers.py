"""One valid prototype-round reply (``PrototypeAnswer``) and how it is folded in: the one
accumulation step that the first prototype round and late-node admission share
(``strategies.admission.NodeAdmission``)."""

from __future__ import annotations

from logging import WARNING
from typing import NamedTuple

import numpy as np
from flwr.supercore import log

from strategies import wire
from strategies.records import PartitionEntry
from strategies.tally import PrototypeTally


class PrototypeAnswer(NamedTuple):
    """One valid prototype-round reply, as ``NodeAdmission._ask_for_prototypes`` hands it on."""

    sent_index: int  # the index its query was sent at
    node: int
    pid: int | None  # its partition id, if it reported one
    held_out: bool
    proto: dict[str, np.ndarray]  # its ``proto`` arrays: views of the reply's bytes


def fold_answer(
    answer: PrototypeAnswer,
    reported: list[int],
    partitions: dict[int, tuple[int, PartitionEntry]],
    held_out: set[int],
    tally: PrototypeTally,
    where: str,
) -> bool:
    """One valid prototype answer, as the first round and late-node admission both take
    it: its partition entry kept (``keep_later``), a held-out node set apart, any other
    node's counts and sums added to ``tally``. Whether the node counts (is not held out)."""
    index, node, pid, is_held_out, proto = answer
    if pid is not None:
        keep_later(partitions, pid, index, node, is_held_out, reported, where)
    if is_held_out:
        held_out.add(node)
        return False
    tally.add(proto.get(wire.PROTO_SUM), proto[wire.PROTO_COUNT])
    return True


def keep_later(
    partitions: dict[int, tuple[int, PartitionEntry]],
    pid: int,
    index: int,
    node: int,
    held_out: bool,
    counts: list[int],
    where: str,
) -> None:
    """Record node ``node`` (sent as message ``index``) for partition ``pid``: of two
    nodes that report one partition, the one sent later is kept (the order replies
    arrive in does not matter), and a warning names both in the order sent."""
    earlier = partitions.get(pid)
    if earlier is not None:
        first, second = sorted([(earlier[0], earlier[1]["node-id"]), (index, node)])
        log(
            WARNING,
            "%s: nodes %d and %d both report partition-id %d; check their --node-config",
            where,
            first[1],
            second[1],
            pid,
        )
        if earlier[0] > index:
            return
    partitions[pid] = (index, {"node-id": node, "held-out": held_out, "class-counts": counts})
