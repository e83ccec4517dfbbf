"""Server aggregation speed: ``PEPFedPT.aggregate_train`` against Flower's own FedAvg.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.probes.aggregate            # 100 replies, 5 repeats
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.probes.aggregate --clients 20 --repeats 3 \
        --out bench/results/aggregate.json

Builds ``--clients`` train replies of a ViT-B/16 CIFAR-100 PEP-FedPT state (the wire keys
and shapes of ``pep_fedpt.state.trainable_arrays`` for width 768, depth 12, 100 classes,
10 shared prompt tokens, one class prompt token in CCMP blocks 2-12: 929,380 float32
values per reply) with class counts from a Dirichlet(0.3) label split of CIFAR-100's
40,000 train images, as the real messages Flower hands the strategy. Then times, in
one interleaved loop over the same replies (median of ``--repeats``):

- ``fedavg``: ``flwr.serverapp.strategy.FedAvg.aggregate_train`` (the reference);
- ``pep-fedpt``: ``PEPFedPT.aggregate_train`` (checks, per-class merge, metrics);
- ``validation``: the reply checks alone (``check_train_reply`` + known counts);
- ``merge``: ``PEPFedPT.merge`` alone on the already decoded replies;

and, apart (tracing slows everything), each one's ``tracemalloc`` peak. Numpy only: no
torch model is built. Prints a table and the ratios (and writes them as JSON to
``--out``); read the ratios, not the seconds, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from server_app.inprocess import incoming_message
from strategies import wire
from strategies.pep_fedpt import PEPFedPT
from strategies.validation import (
    check_known_counts,
    check_train_reply,
    record_arrays,
)

# ViT-B/16 on CIFAR-100 with conf/cifar100-dir0.3.toml's prompts.
DIM, DEPTH, NUM_CLASSES = 768, 12, 100
SHARED_LENGTH, CLASS_LENGTH = 10, 1
CCMP_BLOCKS = range(1, DEPTH)  # "2-L", 0-based
TRAIN_PER_CLASS = 400  # 500 CIFAR-100 train images per class, 20% kept as local test


def state_shapes(dim: int = DIM, num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """The trainable keys of the PEP-FedPT state and their shapes."""
    shapes: dict[str, tuple[int, ...]] = {wire.SHARED_PROMPT: (SHARED_LENGTH, dim)}
    for block in CCMP_BLOCKS:
        shapes[wire.class_prompt_key(block)] = (num_classes, CLASS_LENGTH, dim)
    shapes[wire.HEAD_WEIGHT] = (num_classes, dim)
    shapes[wire.HEAD_BIAS] = (num_classes,)
    return shapes


def class_counts(
    num_clients: int, num_classes: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(K, C) train counts: each class split over the clients by Dirichlet(alpha)."""
    shares = [rng.dirichlet([alpha] * num_clients) for _ in range(num_classes)]
    counts = np.stack([rng.multinomial(TRAIN_PER_CLASS, p) for p in shares], axis=1)
    for k in np.flatnonzero(counts.sum(axis=1) == 0):  # every client holds something
        counts[k, rng.integers(num_classes)] = 1
    return counts.astype(np.int64)


def build(
    num_clients: int, seed: int, dim: int = DIM, num_classes: int = NUM_CLASSES
) -> tuple[ArrayRecord, dict[int, list[int]], list[Message]]:
    """The global state, every node's census counts and one train reply per node (node
    ids 1000, 1001, ...), as Flower hands them to ``aggregate_train``."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    rng = np.random.default_rng(seed)
    shapes = state_shapes(dim, num_classes)
    base = {k: rng.standard_normal(s).astype(np.float32) * 0.02 for k, s in shapes.items()}
    counts = class_counts(num_clients, num_classes, 0.3, rng)
    global_state = ArrayRecord({k: Array(v) for k, v in base.items()})
    means = rng.standard_normal((num_classes, dim)).astype(np.float32)
    global_state[wire.PROTO_MEAN] = Array(means)
    global_state[wire.PROTO_COUNT] = Array(counts.sum(axis=0))
    replies, known = [], {}
    for k in range(num_clients):
        node = 1000 + k
        known[node] = counts[k].tolist()
        arrays = ArrayRecord(
            {
                key: Array(value + rng.standard_normal(value.shape).astype(np.float32) * 1e-3)
                for key, value in base.items()
            }
        )
        metrics = MetricRecord(
            {
                wire.NUM_EXAMPLES: int(counts[k].sum()),
                wire.CLASS_COUNTS: counts[k].tolist(),
                wire.TRAIN_LOSS: float(rng.uniform(1.0, 4.0)),
            }
        )
        incoming = incoming_message(
            RecordDict(), MessageType.TRAIN, dst_node_id=node, message_id=f"m{node}"
        )
        replies.append(
            Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=incoming)
        )
    return global_state, known, replies


def pep_strategy(global_state: ArrayRecord, known: dict[int, list[int]]) -> PEPFedPT:
    strategy = PEPFedPT(min_train_nodes=2)
    strategy._global = global_state
    strategy._node_counts = dict(known)
    return strategy


def measure(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def traced_peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.repeats < 1:
        parser.error(f"--clients = {args.clients} must be >= 2, --repeats = {args.repeats} >= 1")

    global_state, known, replies = build(args.clients, args.seed)
    fedavg = FedAvg(weighted_by_key=wire.NUM_EXAMPLES, arrayrecord_key=wire.ARRAYS)
    pep = pep_strategy(global_state, known)
    previous = record_arrays(global_state)
    expected = {k: v.shape for k, v in previous.items() if k not in wire.GLOBAL_ONLY_KEYS}
    decoded = [record_arrays(msg.content[wire.ARRAYS]) for msg in replies]
    metrics = [msg.content[wire.METRICS] for msg in replies]

    def validate() -> None:
        for msg in replies:
            content = msg.content
            reason = check_train_reply(content, expected, NUM_CLASSES) or check_known_counts(
                content[wire.METRICS][wire.CLASS_COUNTS], known[msg.metadata.src_node_id]
            )
            assert reason is None, reason

    runs: dict[str, Callable[[], Any]] = {
        "fedavg": lambda: fedavg.aggregate_train(1, replies),
        "pep-fedpt": lambda: pep.aggregate_train(1, replies),
        "validation": validate,
        "merge": lambda: pep.merge(previous, decoded, metrics),
    }
    # The same replies, merged both ways: equal within float32 rounding.
    ours, _ = pep.aggregate_train(1, replies)
    theirs, _ = fedavg.aggregate_train(1, replies)
    assert ours is not None and theirs is not None
    shared = ours[wire.SHARED_PROMPT].numpy()
    np.testing.assert_allclose(shared, theirs[wire.SHARED_PROMPT].numpy(), rtol=1e-5, atol=1e-6)

    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(measure(fn))
    peaks = {name: traced_peak(fn) for name, fn in runs.items()}
    medians = {name: statistics.median(values) for name, values in times.items()}
    state_bytes = sum(int(np.prod(s)) * 4 for s in expected.values())
    result = {
        "clients": args.clients,
        "repeats": args.repeats,
        "values-per-reply": state_bytes // 4,
        "load-average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "median-s": medians,
        "peak-traced-mib": {k: v / 2**20 for k, v in peaks.items()},
        "ratios": {
            "pep-fedpt / fedavg time": medians["pep-fedpt"] / medians["fedavg"],
            "merge / fedavg time": medians["merge"] / medians["fedavg"],
            "validation / merge time": medians["validation"] / medians["merge"],
            "pep-fedpt peak / one state": peaks["pep-fedpt"] / state_bytes,
            "fedavg peak / one state": peaks["fedavg"] / state_bytes,
        },
    }
    print(
        f"{args.clients} replies of {state_bytes // 4:,} float32 values, {args.repeats} repeats, "
        f"load average {result['load-average'][0]:.2f} on {result['cpus']} CPUs"
    )
    print(f"{'':<12}{'median s':>10}{'peak MiB':>10}")
    for name in runs:
        print(f"{name:<12}{medians[name]:>10.3f}{peaks[name] / 2**20:>10.1f}")
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
