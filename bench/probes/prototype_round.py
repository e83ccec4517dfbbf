"""Memory of the prototype round: the ServerApp's traced peak while the real
``PEPFedPT.prototype_round`` asks N nodes for their per-class feature sums.

The commands and what they showed: bench/probes/README.md.

The nodes are a synthetic ``Grid`` whose replies (C x D float32 sums, C counts, a
partition id) are built only when the strategy pulls them, as Flower's grids deserialise
the replies of one ``pull_messages`` call, so the grid holds none. The strategy folds each
reply into its exact tally on arrival and drops it, so the peak must not grow with N
beyond the per-node bookkeeping (its outgoing messages, each node's counts and partition
entry, its reply counters); holding every reply, as the round did before, would add N
replies. ``tracemalloc`` traces the whole process during the round (strategy and grid);
the setup (the nodes' reply tables, the initial state) is built before tracing starts.

``--out`` writes per node count the peak, what the round keeps afterwards and the replies'
bytes (``bench.probes.result_file.header`` first); the runs and growth are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from bench.comma import comma_ints
from bench.probes.result_file import header
from server_app.inprocess import InProcessGrid, incoming_message
from strategies import wire

WRITER = "bench/probes/prototype_round.py"
TABLES = 8  # distinct reply contents, reused round robin (built before tracing)


def growth_per_node(runs: Sequence[Mapping[str, Any]]) -> float | None:
    """Peak bytes added per node from the smallest to the largest run (None: one size)."""
    first = min(runs, key=lambda run: run["nodes"])
    last = max(runs, key=lambda run: run["nodes"])
    if last["nodes"] == first["nodes"]:
        return None
    return (last["peak_bytes"] - first["peak_bytes"]) / (last["nodes"] - first["nodes"])


# ---------------------------------------------------------------- the run
class SyntheticGrid(InProcessGrid):
    """A Flower ``Grid`` of ``num_nodes`` nodes whose prototype replies are built when
    pulled (from ``TABLES`` precomputed sums), so that the grid itself holds none; the
    rest of Grid's abstract surface is ``InProcessGrid``'s."""

    def __init__(self, num_nodes: int, classes: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.nodes = list(range(1000, 1000 + num_nodes))
        self.tables = []
        for _ in range(TABLES):
            counts = rng.integers(0, 50, size=classes).astype(np.int64)
            counts[rng.integers(classes)] += 1  # every node holds an example
            features = rng.standard_normal((classes, dim)).astype(np.float32)
            sums = (features * counts[:, None]).astype(np.float32)
            self.tables.append((sums, counts))
        self._pending: dict[str, tuple[int, Message]] = {}  # message id -> (node, message)
        self._next = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            self._next += 1
            message_id = f"m{self._next}"
            message.metadata.__dict__["_message_id"] = message_id  # as Flower's grids do
            self._pending[message_id] = (message.metadata.dst_node_id, message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies of these messages, built now (a list, as Flower's grids return)."""
        return [self._reply(*self._pending.pop(i)) for i in message_ids if i in self._pending]

    def _reply(self, node: int, message: Message) -> Message:
        sums, counts = self.tables[node % TABLES]
        incoming = incoming_message(
            RecordDict(),
            message.metadata.message_type,
            dst_node_id=node,
            message_id=message.metadata.message_id,
            group_id="",
        )
        content = RecordDict(
            {
                wire.PROTO: ArrayRecord(
                    {wire.PROTO_SUM: Array(sums), wire.PROTO_COUNT: Array(counts)}
                ),
                wire.METRICS: MetricRecord(
                    {wire.NUM_EXAMPLES: int(counts.sum()), wire.PARTITION_ID: node - 1000}
                ),
            }
        )
        return Message(content, reply_to=incoming)


def measure(num_nodes: int, classes: int, dim: int, pull_batch: int) -> dict[str, int]:
    """One prototype round of ``num_nodes`` nodes under tracemalloc: its peak, what is
    still allocated after it (the round's bookkeeping) and the bytes of all replies."""
    import gc
    import logging
    import tracemalloc

    from flwr.supercore.task_identity import TaskIdentity

    from strategies.pep_fedpt import PEPFedPT

    logging.getLogger("flwr").setLevel(logging.WARNING)  # no line per phase
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    arrays = ArrayRecord({wire.HEAD_WEIGHT: Array(np.zeros((classes, dim), np.float32))})
    # A round of two nodes first, untraced: what the first round of a process allocates
    # once (lazy imports, caches) is not the round's.
    PEPFedPT(min_available_nodes=2).prototype_round(SyntheticGrid(2, classes, dim), arrays, 0)
    grid = SyntheticGrid(num_nodes, classes, dim)
    strategy = PEPFedPT(min_train_nodes=2, min_available_nodes=2)
    strategy.pull_batch = pull_batch
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    state = strategy.prototype_round(grid, arrays, server_round=0)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if len(strategy._node_counts) != num_nodes or wire.PROTO_MEAN not in state:
        raise RuntimeError(f"the prototype round did not take all {num_nodes} replies")
    reply = sums_bytes(classes, dim)
    return {
        "nodes": num_nodes,
        "peak_bytes": int(peak - before),
        "kept_bytes": int(current - before),
        "replies_bytes": int(reply * num_nodes),
    }


def sums_bytes(classes: int, dim: int) -> int:
    """One reply's arrays: C x D float32 sums and C int64 counts."""
    return classes * dim * 4 + classes * 8


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes",
        type=comma_ints(minimum=2, example="1000,4000"),
        default="1000,4000",
        help="node counts (at least 2: min-available-nodes), comma separated",
    )
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument(
        "--pull-batch", type=int, default=None, help="replies per pull (default: the strategy's)"
    )
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    nodes = sorted(args.nodes)
    for name in ("classes", "dim"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} = {getattr(args, name)}: at least 1")
    if args.pull_batch is not None and args.pull_batch < 1:
        parser.error(f"--pull-batch = {args.pull_batch}: at least 1")

    from bench.probes.result_file import write
    from strategies.base import PromptFedAvg

    pull_batch = args.pull_batch or PromptFedAvg.pull_batch
    load_start = os.getloadavg()
    runs = [measure(n, args.classes, args.dim, pull_batch) for n in nodes]
    setting = {
        "classes": args.classes,
        "dim": args.dim,
        "nodes": nodes,
        "pull_batch": pull_batch,
        "reply_bytes": sums_bytes(args.classes, args.dim),
    }
    argv = sys.argv[1:] if argv is None else list(argv)
    document = header(WRITER, argv, setting, load_start, os.getloadavg()) | {"runs": runs}
    if args.out is not None:
        write(args.out, document)
    growth = growth_per_node(runs)
    print(json.dumps({"runs": runs, "peak_growth_per_node_bytes": growth}, indent=1))
    return document


if __name__ == "__main__":
    main()
