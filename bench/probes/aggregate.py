"""Server aggregation speed: ``PEPFedPT.aggregate_train`` against Flower's own FedAvg.

The commands and what they showed: bench/probes/README.md.

Builds ``--clients`` train replies of a ViT-B/16 CIFAR-100 PEP-FedPT state
(``server_app/synthetic_replies.py``: the wire keys and shapes of
``pep_fedpt.state.trainable_arrays`` for width 768, depth 12, 100 classes, 10 shared
prompt tokens, one class prompt token in CCMP blocks 2-12: 929,380 float32 values per
reply) with class counts from a Dirichlet(0.3) label split of CIFAR-100's 40,000 train
images, as the real messages Flower hands the strategy. Then times, in
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
from flwr.serverapp.strategy import FedAvg

from server_app.synthetic_replies import NUM_CLASSES, build, pep_strategy
from strategies import wire
from strategies.validation import (
    check_known_counts,
    check_train_reply,
    record_arrays,
)


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
