"""What a federation of many clients needs (docs/scale.md), from result files and the
state's shapes, so that no figure of that page is typed.

Pure functions of documents already in ``bench/results/``:

- ``aggregate.json`` (``bench/aggregate.py``): the ViT-B/16 CIFAR-100 PEP-FedPT state
  (values per reply, checked against ``bench.aggregate.state_shapes``) and the merge's
  peak memory in states;
- ``scale.json`` (``bench/scale.py``): the server process's memory before round 1, and the
  prototype round's bytes per node, which checks the formula for a prototype reply's
  size against what a real run counted;
- ``prototype-round.json`` (``bench/prototype_round.py``): the prototype round's peak
  memory in the ServerApp at several node counts.

The scenario (nodes, fraction sampled) is an argument, not a measurement: the defaults are
docs/scale.md's 10,000 clients with 5% sampled per round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FLOAT32, INT64 = 4, 8
NODES, FRACTION = 10_000, 0.05


def _need(mapping: Any, key: str, where: str, writer: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        raise ValueError(f"{where}: no {key!r} (written by {writer} --out)")
    return mapping[key]


def state_values(aggregate: Mapping[str, Any]) -> tuple[int, int, int]:
    """(values per reply, classes C, width D) of aggregate.json's state; its measured
    values per reply must be what ``state_shapes`` gives today."""
    from bench.aggregate import DIM, NUM_CLASSES, state_shapes

    measured = int(_need(aggregate, "values-per-reply", "aggregate.json", "bench/aggregate.py"))
    shapes = state_shapes()
    expected = sum(math.prod(shape) for shape in shapes.values())
    if measured != expected:
        raise ValueError(
            f"aggregate.json: {measured} values per reply, but bench.aggregate.state_shapes "
            f"gives {expected}; run bench/aggregate.py --out bench/results/aggregate.json again"
        )
    return measured, NUM_CLASSES, DIM


def prototype_bytes(classes: int, dim: int) -> int:
    """A prototype reply's arrays (float32 sums, int64 counts), and the prototypes a node
    is sent once per version (float32 means, int64 counts): the same size."""
    return classes * dim * FLOAT32 + classes * INT64


def check_prototype_bytes(scale: Mapping[str, Any]) -> int:
    """The formula against a real run: scale.json's prototype round counted its bytes up;
    per node, they must be ``prototype_bytes`` of that run's (C, D). Returns the nodes."""
    runs = _need(scale, "runs", "scale.json", "bench/scale.py")
    setting = _need(scale, "setting", "scale.json", "bench/scale.py")
    dim = int(_need(setting, "model.embed-dim", "scale.json: setting", "bench/scale.py"))
    classes = 10 if str(setting.get("data.dataset", "")).startswith("cifar10") else None
    if classes is None:
        raise ValueError(f"scale.json: data set {setting.get('data.dataset')!r}: C unknown")
    run = runs[0]
    up = run["bytes"]["0"]["query/bytes-up"]
    per_node = up / run["phases"]["0"]["query"]["replies"]
    if per_node != prototype_bytes(classes, dim):
        raise ValueError(
            f"scale.json: the prototype round sent {per_node:g} bytes per node, but "
            f"prototype_bytes({classes}, {dim}) = {prototype_bytes(classes, dim)}"
        )
    return int(run["nodes"])


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


@dataclass(frozen=True)
class Scenario:
    """The sizes both tables start from: a reply's bytes, C and D, the sample, and the
    node count of the scale.json run that checked the prototype reply's size."""

    state: int
    classes: int
    dim: int
    nodes: int
    sampled: int
    checked_at: int


def scenario(
    aggregate: Mapping[str, Any], scale: Mapping[str, Any], nodes: int, fraction: float
) -> Scenario:
    """The scenario's sizes, every file checked once for both tables."""
    values, classes, dim = state_values(aggregate)
    checked_at = check_prototype_bytes(scale)
    sampled = math.ceil(fraction * nodes)
    return Scenario(values * FLOAT32, classes, dim, nodes, sampled, checked_at)


def render_bytes(
    aggregate: Mapping[str, Any],
    scale: Mapping[str, Any],
    nodes: int = NODES,
    fraction: float = FRACTION,
) -> str:
    """Bytes per round at ``nodes`` clients with ``fraction`` sampled per phase."""
    at = scenario(aggregate, scale, nodes, fraction)
    state, classes, dim, sampled = at.state, at.classes, at.dim, at.sampled
    proto = prototype_bytes(classes, dim)
    s = f"{sampled:,} sampled"
    rows = [
        f"| | per client | {s} |",
        "|---|---|---|",
        f"| train, down (the state; + the prototypes, {_mb(proto)}, the first time a node "
        f"is sampled) | {_mb(state)} | {_gb(sampled * state)} (+ up to {_gb(sampled * proto)}) |",
        f"| train, up (the state) | {_mb(state)} | {_gb(sampled * state)} |",
        f"| evaluate, down (the state; + the prototypes likewise) | {_mb(state)} "
        f"| {_gb(sampled * state)} (+ up to {_gb(sampled * proto)}) |",
        "| evaluate, up (metrics) | ~0 | ~0 |",
        f"| **a round** | | **{_gb(3 * sampled * state)}** "
        f"({_gb(3 * sampled * state / 2)} in float16) |",
        f"| prototype round, up, **every connected node**: sums {classes} × {dim} float32 + "
        f"counts | {_mb(proto)} | **{_gb(nodes * proto)}** for {nodes:,} |",
    ]
    return "\n".join(rows)


def render_memory(
    aggregate: Mapping[str, Any],
    scale: Mapping[str, Any],
    prototype: Mapping[str, Any],
    nodes: int = NODES,
    fraction: float = FRACTION,
) -> str:
    """The ServerApp's memory at ``nodes`` clients, item by item, each with its source."""
    at = scenario(aggregate, scale, nodes, fraction)
    state, sampled, measured_at = at.state, at.sampled, at.checked_at
    ratios = _need(aggregate, "ratios", "aggregate.json", "bench/aggregate.py")
    merge_states = float(ratios["pep-fedpt peak / one state"])
    run = _need(scale, "runs", "scale.json", "bench/scale.py")[0]
    fixed = float(run["memory"]["simulation_hwm_before_round1"])
    rows = [
        f"| item | how it grows | at {nodes:,} clients, {sampled:,} sampled |",
        "|---|---|---|",
        f"| fixed part: the server process after the prototype round, tiny model, "
        f"{measured_at:,} nodes (`scale.json`) | constant | {fixed / 2**30:.2f} GiB "
        "+ the backbone and the central test split |",
        f"| the sampled clients' replies, held until their phase ends | {_mb(state)} per "
        f"sampled client | {_gb(sampled * state)} |",
        f"| the merge's working memory (`aggregate.json`: {merge_states:.1f} states at its "
        "peak, tracemalloc) | constant | "
        f"{_mb(merge_states * state)} |",
    ]
    rows.append(prototype_row(prototype, nodes))
    return "\n".join(rows)


def prototype_row(prototype: Mapping[str, Any], nodes: int) -> str:
    """The prototype round's row: ``prototype-round.json``'s traced peak at its largest
    node count, extended to ``nodes`` by the per-node growth it measured between its
    smallest and largest counts (the bookkeeping it keeps per node: counts, partition)."""
    from bench.prototype_round import checked_runs, growth_per_node

    writer = "bench/prototype_round.py"
    try:
        runs = checked_runs(prototype)
    except ValueError as exc:
        raise ValueError(f"prototype-round.json: {exc}") from None
    per_node = growth_per_node(runs)
    if per_node is None:
        raise ValueError("prototype-round.json: one node count; the growth needs two")
    large = max(runs, key=lambda run: run["nodes"])
    at = large["peak_bytes"] + per_node * (nodes - large["nodes"])
    setting = _need(prototype, "setting", "prototype-round.json", writer)
    reply = float(_need(setting, "reply_bytes", "prototype-round.json: setting", writer))
    return (
        f"| the prototype round (`prototype-round.json`: traced peak "
        f"{large['peak_bytes'] / 2**20:.1f} MiB at {large['nodes']:,} nodes; each reply is "
        f"folded into an exact sum on arrival and dropped) | {per_node / 2**10:.1f} KiB per "
        f"connected node (a reply: {reply / 2**10:.0f} KiB) | {at / 2**20:.0f} MiB (extended "
        f"linearly; holding every reply would be {_gb(nodes * reply)}) |"
    )
