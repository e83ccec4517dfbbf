"""Cost of SecAgg+ against the plain mode, per round: bytes and time.

The commands and what they showed: bench/probes/README.md.

``--round prototypes``: the real ``PEPFedPT.prototype_round`` runs against N in-process
nodes that answer both the plain QUERY and the ``query.secagg`` stages
(``client_app/secagg.py``) with random per-class counts and feature sums. ``--round
train``: the strategy's own loop runs one training round of the ViT-B/16 CIFAR-100
PEP-FedPT state (``server_app/synthetic_replies.py``: 929,380 values, per-class class
prompts) after its prototype round, each node sending a fixed random update with the
class counts of a Dirichlet(0.3) split, as plain train replies or as ``secure_update``'s
masked vectors, with the run config's default ``fed.secagg-*`` values. The nodes run one
after another in this process, so the node time is the sum over nodes (each node's share
is that over N) and the server time is the rest. Bytes: the arrays of both directions
(``strategies.traffic``) and, under SecAgg+, the keys, ciphertexts and shares that travel
in ConfigRecords.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bench.comma import comma_ints
from client_app import secagg as client_secagg
from pep_fedpt.atomic import atomic_write
from server_app.inprocess import InProcessGrid, set_task_identity
from server_app.synthetic_replies import DIM, NUM_CLASSES, class_counts, state_shapes
from strategies import PEPFedPT, traffic, wire
from strategies import secagg as server_secagg

Update = dict[str, np.ndarray]


def _sent(msg: Message) -> Update:
    return {key: array.numpy() for key, array in msg.content[wire.ARRAYS].items()}


def _trained(sent: Update, update: Update, counts: np.ndarray) -> tuple[Update, dict]:
    """The state the message carried plus the node's fixed update, and its metrics."""
    arrays = {key: sent[key] + update[key] for key in update}
    metrics = {
        wire.NUM_EXAMPLES: int(counts.sum()),
        wire.CLASS_COUNTS: counts.tolist(),
        wire.TRAIN_LOSS: 1.0,
    }
    return arrays, metrics


def node_app(
    stats: Mapping[int, tuple[np.ndarray, np.ndarray]], updates: Mapping[int, Update] | None = None
) -> ClientApp:
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
        if config.get(wire.CFG_TASK) == server_secagg.TASK_TRAIN and updates is not None:
            sent = _sent(msg)
            arrays, metrics = _trained(sent, updates[context.node_id], counts)
            return server_secagg.secure_update(config, arrays, metrics, sent)
        return counts, sums.reshape(-1).astype(np.float64) / float(config[server_secagg.SUM_SCALE])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        assert updates is not None  # only the training round's nodes are asked to train
        counts = stats[context.node_id][0]
        arrays, metrics = _trained(_sent(msg), updates[context.node_id], counts)
        record = ArrayRecord({key: Array(value) for key, value in arrays.items()})
        content = RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord(metrics)})
        return Message(content, reply_to=msg)

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


@contextlib.contextmanager
def key_bytes_per_sum() -> Iterator[list[int]]:
    """The key, ciphertext and share bytes of every secure sum run inside, in order."""
    sums: list[int] = []
    original = server_secagg.SecAggServer.run

    def run(self: server_secagg.SecAggServer, node_ids: Iterable[int]) -> server_secagg.SecureSum:
        result = original(self, node_ids)
        sums.append(result.key_bytes)
        return result

    server_secagg.SecAggServer.run = run  # type: ignore[method-assign]  # counted for the probe, put back below
    try:
        yield sums
    finally:
        server_secagg.SecAggServer.run = original  # type: ignore[method-assign]  # the original put back


def secagg_params(num_shares: int, **values: float) -> server_secagg.SecAggParams:
    """SecAgg+ with ``num_shares`` neighbours (0: every node), half of them to rebuild."""
    threshold = 2 if num_shares == 0 else (num_shares + 1) // 2
    return server_secagg.SecAggParams(threshold=threshold, num_shares=num_shares, **values)  # type: ignore[arg-type]  # the keyword values are SecAggParams' numeric fields


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
        params = secagg_params(num_shares, clipping_range=16.0, bits=24, max_count=1000)
        strategy = PEPFedPT(secure_aggregation="secaggplus", secagg=params)
    grid = TimedGrid(node_app(stats), {n: {} for n in stats}, {})
    start = time.perf_counter()
    with key_bytes_per_sum() as key_bytes:
        state = strategy.prototype_round(grid, initial, server_round=0)
    total = time.perf_counter() - start
    metrics = strategy.round_metrics[0]
    counts = sum(c for c, _ in stats.values())
    sums = sum(s.astype(np.float64) for _, s in stats.values())
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    error = float(np.abs(state[wire.PROTO_MEAN].numpy() - means).max())
    return {
        "array-bytes-down": float(metrics[traffic.BYTES_DOWN]),
        "array-bytes-up": float(metrics[traffic.BYTES_UP]),
        "key-bytes": float(sum(key_bytes)),
        "server-seconds": total - grid.node_seconds,
        "node-seconds-each": grid.node_seconds / nodes,
        "max-mean-error": error,
    }


def measure_train(nodes: int, num_shares: int | None) -> tuple[dict[str, float], Update]:
    """One training round of the ViT-B/16 CIFAR-100 PEP-FedPT state after the prototype
    round (not counted): its cost, and the new trainable state."""
    rng = np.random.default_rng(0)
    shapes = state_shapes()
    counts = class_counts(nodes, NUM_CLASSES, 0.3, rng)
    stats = {
        100 + k: (counts[k], rng.normal(0, 1, (NUM_CLASSES, DIM)).astype(np.float32))
        for k in range(nodes)
    }
    updates = {
        node: {key: rng.normal(0, 1e-3, shape).astype(np.float32) for key, shape in shapes.items()}
        for node in stats
    }
    initial = ArrayRecord(
        {key: Array(np.zeros(shape, np.float32)) for key, shape in shapes.items()}
    )
    if num_shares is None:
        strategy = PEPFedPT(fraction_evaluate=0.0)
    else:
        # The run config's fed.secagg-* defaults (pep_fedpt/config.py).
        params = secagg_params(
            num_shares,
            clipping_range=64.0,
            bits=30,
            max_count=10_000,
            update_clipping_range=1.0,
        )
        strategy = PEPFedPT(fraction_evaluate=0.0, secure_aggregation="secaggplus", secagg=params)
    grid = TimedGrid(node_app(stats, updates), {n: {} for n in stats}, {})
    with key_bytes_per_sum() as key_bytes:
        ends = strategy.rounds(grid, initial, num_rounds=1, timeout=600.0)
        next(ends)  # round 0: the prototype round
        node_before, start = grid.node_seconds, time.perf_counter()
        end = next(ends)
        total = time.perf_counter() - start
        ends.close()
    node_seconds = grid.node_seconds - node_before
    state = {key: end.arrays[key].numpy() for key in shapes}
    return {
        "array-bytes-down": float(end.metrics[f"train/{traffic.BYTES_DOWN}"]),
        "array-bytes-up": float(end.metrics[f"train/{traffic.BYTES_UP}"]),
        "key-bytes": float(key_bytes[-1]) if num_shares is not None else 0.0,
        "server-seconds": total - node_seconds,
        "node-seconds-each": node_seconds / nodes,
    }, state


REPORT_COLUMNS = (
    ("nodes", "nodes", "{:d}"),
    ("mode", "mode", "{}"),
    ("array-bytes-up", "array bytes up", "{:,.0f}"),
    ("key-bytes", "key bytes (both ways)", "{:,.0f}"),
    ("server-seconds", "server s", "{:.2f}"),
    ("node-seconds-each", "node s (each)", "{:.3f}"),
    ("max-error", "max error", "{:.1e}"),
    ("max-change", "max change", "{:.1e}"),
)


def report(rows: list[dict[str, Any]]) -> str:
    """The rows of an ``--out`` file as a Markdown table."""
    lines = [
        "| " + " | ".join(title for _, title, _ in REPORT_COLUMNS) + " |",
        "|" + "|".join("---:" if key != "mode" else "---" for key, _, _ in REPORT_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [form.format(row[key]) for key, _, form in REPORT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=comma_ints(minimum=1, example="10,100"), default="10,100")
    parser.add_argument("--round", choices=("prototypes", "train"), default="prototypes")
    parser.add_argument("--classes", type=int, default=10, help="--round prototypes only")
    parser.add_argument("--dim", type=int, default=768, help="--round prototypes only")
    parser.add_argument(
        "--num-shares",
        type=comma_ints(minimum=0, example="0,5"),
        default="0",
        help="0: every node; odd k: SecAgg+",
    )
    parser.add_argument("--out", type=Path, help="also write the rows here (JSON lines)")
    parser.add_argument("--report", type=Path, help="print an --out file as a table; no run")
    args = parser.parse_args()
    if args.report is not None:
        try:
            rows = [json.loads(line) for line in args.report.read_text().splitlines() if line]
        except (OSError, ValueError) as exc:
            parser.error(f"--report {args.report}: {exc}")
        print(report(rows))
        return
    set_task_identity()
    logging.getLogger("flwr").setLevel(WARNING)
    measured: list[str] = []
    for n in args.nodes:
        modes: list[int | None] = [None, *args.num_shares]
        plain: Update = {}
        for k in modes:
            if k is not None and k > n:
                continue
            row: dict[str, float | int | str] = {
                "nodes": n,
                "mode": "plain" if k is None else f"secagg k={k or n}",
            }
            if args.round == "prototypes":
                row.update(measure(n, args.classes, args.dim, k))
            else:
                cost, state = measure_train(n, k)
                row.update(cost)
                plain = plain or state
                # Quantisation against the plain round's state (the round's own change,
                # from zeros, is the state itself).
                error = max(float(np.abs(state[key] - plain[key]).max()) for key in plain)
                change = max(float(np.abs(plain[key]).max()) for key in plain)
                row["max-error"], row["max-change"] = error, change
            measured.append(json.dumps(row))
            print(measured[-1], flush=True)
    if args.out is not None:
        atomic_write(args.out, ("\n".join(measured) + "\n").encode())


if __name__ == "__main__":
    main()
