"""Cost of the prototype round under SecAgg+ against the plain round: bytes and time.

The commands and what they showed: bench/probes/README.md.

The real ``PEPFedPT.prototype_round`` runs against N in-process nodes that answer both
the plain QUERY and the ``query.secagg`` stages (``client_app/secagg.py``) with random
per-class counts and feature sums; the nodes run one after another in this process, so
the node time is the sum over nodes (each node's share is that over N) and the server
time is the rest. Bytes: the arrays of both directions (``strategies.traffic``) and, under
SecAgg+, the keys, ciphertexts and shares that travel in ConfigRecords.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bench.comma import comma_ints
from client_app import secagg as client_secagg
from server_app.inprocess import InProcessGrid, set_task_identity
from strategies import PEPFedPT, traffic, wire
from strategies import secagg as server_secagg


def node_app(stats: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> ClientApp:
    app = ClientApp()

    @app.query()
    def plain(msg: Message, context: Context) -> Message:
        counts, sums = stats[context.node_id]
        proto = ArrayRecord({wire.PROTO_COUNT: Array(counts), wire.PROTO_SUM: Array(sums)})
        pid = context.node_id - 100
        metrics = MetricRecord({wire.NUM_EXAMPLES: int(counts.sum()), wire.PARTITION_ID: pid})
        return Message(RecordDict({wire.PROTO: proto, wire.METRICS: metrics}), reply_to=msg)

    def vector(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray]:
        config = msg.content[wire.CONFIG]
        counts, sums = stats[context.node_id]
        return counts, sums.reshape(-1).astype(np.float64) / float(config[server_secagg.SUM_SCALE])

    @app.query(server_secagg.ACTION)
    def secure(msg: Message, context: Context) -> Message:
        return client_secagg.answer(msg, context, vector)

    return app


class TimedGrid(InProcessGrid):
    """Adds up the time spent inside the nodes' ClientApps."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.node_seconds = 0.0
        app = self.client_app

        def timed(message: Message, context: Context) -> Message:
            start = time.perf_counter()
            try:
                return app(message, context)
            finally:
                self.node_seconds += time.perf_counter() - start

        self.client_app = timed  # type: ignore[assignment]  # a plain (message, context) function stands in for the ClientApp; the grid only calls it


def measure(nodes: int, classes: int, dim: int, num_shares: int | None) -> dict[str, float]:
    rng = np.random.default_rng(0)
    stats = {
        100 + k: (
            rng.integers(0, 50, classes).astype(np.int64),
            rng.normal(0, 1, (classes, dim)).astype(np.float32) * 20,
        )
        for k in range(nodes)
    }
    initial = ArrayRecord(
        {
            wire.HEAD_WEIGHT: Array(np.zeros((classes, dim), np.float32)),
            wire.HEAD_BIAS: Array(np.zeros(classes, np.float32)),
        }
    )
    if num_shares is None:
        strategy = PEPFedPT()
    else:
        params = server_secagg.SecAggParams(
            threshold=2 if num_shares == 0 else (num_shares + 1) // 2,
            clipping_range=16.0,
            bits=24,
            max_count=1000,
            num_shares=num_shares,
        )
        strategy = PEPFedPT(secure_aggregation="secaggplus", secagg=params)
    key_bytes = 0
    if num_shares is not None:
        original = server_secagg.SecAggServer.run

        def run(self, node_ids: Iterable[int]) -> server_secagg.SecureSum:
            nonlocal key_bytes
            result = original(self, node_ids)
            key_bytes = result.key_bytes
            return result

        server_secagg.SecAggServer.run = run  # type: ignore[method-assign]  # timed for the probe, put back in the finally below
    grid = TimedGrid(node_app(stats), {n: {} for n in stats}, {})
    start = time.perf_counter()
    try:
        state = strategy.prototype_round(grid, initial, server_round=0)
    finally:
        if num_shares is not None:
            server_secagg.SecAggServer.run = original  # type: ignore[method-assign]  # the original put back
    total = time.perf_counter() - start
    metrics = strategy.round_metrics[0]
    counts = sum(c for c, _ in stats.values())
    sums = sum(s.astype(np.float64) for _, s in stats.values())
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    error = float(np.abs(state[wire.PROTO_MEAN].numpy() - means).max())
    return {
        "array-bytes-down": float(metrics[traffic.BYTES_DOWN]),
        "array-bytes-up": float(metrics[traffic.BYTES_UP]),
        "key-bytes": float(key_bytes),
        "server-seconds": total - grid.node_seconds,
        "node-seconds-each": grid.node_seconds / nodes,
        "max-mean-error": error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=comma_ints(minimum=1, example="10,100"), default="10,100")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument(
        "--num-shares",
        type=comma_ints(minimum=0, example="0,5"),
        default="0",
        help="0: every node; odd k: SecAgg+",
    )
    args = parser.parse_args()
    set_task_identity()
    logging.getLogger("flwr").setLevel(WARNING)
    rows = []
    for n in args.nodes:
        modes: list[int | None] = [None, *args.num_shares]
        for k in modes:
            if k is not None and k > n:
                continue
            row = {"nodes": n, "mode": "plain" if k is None else f"secagg k={k or n}"}
            row.update(measure(n, args.classes, args.dim, k))
            rows.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
