"""The speed and backbone figures of the README and docs/, from result files in git.

``bench/tables.py`` writes these blocks beside the accuracy tables (same markers, same
``--check``); each reads one file that its benchmark command wrote under
``bench/results/``, so no figure in the pages is typed:

- ``aggregation``: ``bench/aggregate.py --out bench/results/aggregate.json`` (server
  aggregation against Flower's FedAvg on the same 100 replies);
- ``backbone``: ``bench/backbone_probe.py --out bench/results/backbone-probe.jsonl`` (linear
  probe of the benchmark backbone's features, classes 0-4 seen in pre-training, 5-9 not);
- ``scale`` (every row) and ``scale-summary`` (the rows a README reader needs):
  ``bench/scale.py --out bench/results/scale.json`` (100 against 1,000 SuperNodes);
- ``needs-bytes`` (docs/scale.md): bytes per round at 10,000 clients, computed by
  ``bench/needs.py`` from ``aggregate.json``'s state and checked against ``scale.json``;
- ``needs-memory`` (docs/scale.md): the server's memory at 10,000 clients, item by item,
  by ``bench/needs.py`` from ``aggregate.json``, ``scale.json`` and
  ``bench/prototype_round.py --nodes 1000,4000 --out bench/results/prototype-round.json``;
- ``scale-passes``: the 1,000 / 100 ratios of ``scale.json`` beside those of earlier
  invocations of the same command kept as ``scale-pass*.json``;
- ``sim-overhead``: ``bench/sim_overhead.py --repeats 3 --rounds 5 --out
  bench/results/sim-overhead.json`` (a real ``flwr run .`` against a plain loop, tiny
  rounds); ``sim-overhead-depth4``: the same with ``-c "model.depth=4 model.img-size=32"``
  and ``--out bench/results/sim-overhead-depth4.json`` (rounds about four times longer);
  ``sim-overhead-summary``: one row of each, and of every ``sim-overhead-pass*.json`` (other
  invocations of either setting, kept as they were written);
- ``cold-start``: ``bench/cold_start.py --image-folder 400 --out
  bench/results/cold-start.json`` (a ClientApp process's cold start per message), and
  ``pixel-cache``: two such files at 224 px, with the pixel cache on and off;
- ``fedmvp-step`` (docs/fedmvp.md): ``bench/fedmvp_step.py --threads 1 --out
  bench/results/fedmvp-step-tiny.json`` (tiny CLIP: cached text features against
  re-encoding, and memory against the bank size) and ``bench/fedmvp_step.py --clip-model
  ViT-B-16 --batch 8 --memory-classes 10,50 --skip-timing --threads 1 --out
  bench/results/fedmvp-step-vit-b-16.json`` (the paper's widths, memory only);
- ``ccmp-step`` (docs/benchmark.md): one table of ``bench/ccmp_step.py --threads 2
  --out bench/results/ccmp-step-c10.json``, ``bench/ccmp_step.py --threads 2 --classes 100
  --out bench/results/ccmp-step-c100.json`` and ``bench/ccmp_step.py --threads 2
  --recompute-z --out bench/results/ccmp-step-c10-recompute.json`` (a CCMP training step
  against VPT-deep's).

Which page holds which block: ``bench.tables.PAGES``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

AGGREGATE = "aggregate.json"
BACKBONE_PROBE = "backbone-probe.jsonl"
SCALE = "scale.json"
PROTOTYPE_ROUND = "prototype-round.json"
SIM_OVERHEAD = "sim-overhead.json"
# The same bench with longer rounds (``-c "model.depth=4 model.img-size=32"``).
SIM_OVERHEAD_LONG = "sim-overhead-depth4.json"
# Other invocations of either setting, kept so that the summary shows how much one moves.
SIM_OVERHEAD_PASSES = "sim-overhead-pass*.json"
COLD_START = "cold-start.json"
COLD_START_224, COLD_START_224_OFF = "cold-start-224.json", "cold-start-224-no-pixel-cache.json"
FEDMVP_STEP_TINY = "fedmvp-step-tiny.json"
FEDMVP_STEP_VIT_B_16 = "fedmvp-step-vit-b-16.json"
# bench/ccmp_step.py's rows, in the table's order: C = 10, C = 100, C = 10 without the z cache.
CCMP_STEP = ("ccmp-step-c10.json", "ccmp-step-c100.json", "ccmp-step-c10-recompute.json")
# The rows of bench/scale.py's table that the README shows (by their first words).
SCALE_SUMMARY = (
    "sampled clients per round",
    "prototype round: in-app",
    "steady-state round",
    "bytes per round, down",
    "server peak RSS",
    "SuperLink database",
)

_AGGREGATE_ROWS = (
    ("fedavg", "Flower `FedAvg.aggregate_train`"),
    ("pep-fedpt", "`PEPFedPT.aggregate_train`"),
    ("validation", "its reply checks alone"),
    ("merge", "its merge alone (replies read cold)"),
)


class FigureError(ValueError):
    """A result file is missing or does not hold what its block needs."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise FigureError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise FigureError(f"{path}: not JSON ({exc})") from None


def _load(document: Any, path: Path) -> str:
    load = document.get("load-average") or document.get("load")
    return ", ".join(f"{x:.1f}" for x in load) if load else f"not recorded in {path.name}"


def aggregation_block(results: Path) -> str:
    """Median seconds and tracemalloc peaks per path, and the ratios, from aggregate.json."""
    path = results / AGGREGATE
    doc = _read_json(path)
    try:
        median, peak, ratios = doc["median-s"], doc["peak-traced-mib"], doc["ratios"]
        lines = [
            f"{doc['clients']} train replies of {doc['values-per-reply']:,} float32 values; "
            f"median of {doc['repeats']} interleaved repeats on {doc['cpus']} CPUs, load "
            f"average {_load(doc, path)} (`bench/results/{AGGREGATE}`).",
            "",
            "| path | median s | tracemalloc peak |",
            "|---|---|---|",
        ]
        lines += [
            f"| {title} | {median[k]:.3f} | {peak[k]:.1f} MiB |" for k, title in _AGGREGATE_ROWS
        ]
        lines += [
            "",
            f"`PEPFedPT.aggregate_train` / `FedAvg.aggregate_train` = "
            f"**{ratios['pep-fedpt / fedavg time']:.2f}** (target ≤ 1.2); the merge alone "
            f"{median['merge']:.2f} s (target ≤ 0.3 s on a quiet machine); the checks take "
            f"{ratios['validation / merge time']:.2f} of the merge's time; peak memory "
            f"{ratios['pep-fedpt peak / one state']:.1f} states (FedAvg: "
            f"{ratios['fedavg peak / one state']:.1f}).",
        ]
    except (KeyError, TypeError) as exc:
        raise FigureError(f"{path}: no {exc} (written by bench/aggregate.py --out)") from None
    return "\n".join(lines) + "\n"


def _weights_label(weights: str) -> str:
    if weights == "local:random":
        return "same ViT, random weights (control)"
    if weights.startswith("local:"):
        return f"`local:0-4`, pre-trained here (`{Path(weights).name}`)"
    return f"`{weights}`"


def backbone_block(results: Path) -> str:
    """Linear-probe accuracy per backbone, overall and on the seen / unseen classes."""
    path = results / BACKBONE_PROBE
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise FigureError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise FigureError(f"{path}: a line is not JSON ({exc})") from None
    lines = [
        "| backbone | input | test accuracy | classes 0-4 (seen) | classes 5-9 (unseen) |",
        "|---|---|---|---|---|",
    ]
    try:
        for row in sorted(rows, key=lambda r: -r["acc"]):
            lines.append(
                f"| {_weights_label(row['weights'])} | {row['size']} px | {row['acc']:.1%} | "
                f"{row['acc-0-4']:.1%} | {row['acc-5-9']:.1%} |"
            )
    except (KeyError, TypeError) as exc:
        raise FigureError(f"{path}: a row has no {exc} (bench/backbone_probe.py --out)") from None
    return "\n".join(lines) + "\n"


def scale_block(results: Path) -> str:
    """bench/scale.py's whole table of ``scale.json``."""
    from bench.scale import render_table  # here: it imports the comparison runner

    path = results / SCALE
    try:
        return render_table(_read_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FigureError):
            raise
        raise FigureError(f"{path}: {exc} (written by bench/scale.py --out)") from None


def _from_files(results: Path, names: tuple[str, ...], render: Any) -> str:
    """``render`` of the documents in ``results / names``, in order; a flaw is named with
    the folder (the renderer names the file)."""
    documents = [_read_json(results / name) for name in names]
    try:
        return str(render(*documents)) + "\n"
    except (KeyError, TypeError, ValueError) as exc:
        raise FigureError(f"{results}: {exc}") from None


def needs_bytes_block(results: Path) -> str:
    """Bytes per round at 10,000 clients (bench/needs.py) from ``aggregate.json``'s state
    and ``scale.json``'s counted prototype bytes."""
    from bench.needs import render_bytes

    return _from_files(results, (AGGREGATE, SCALE), render_bytes)


def needs_memory_block(results: Path) -> str:
    """The ServerApp's memory at 10,000 clients (bench/needs.py), item by item, from
    ``aggregate.json``, ``scale.json`` and ``prototype-round.json``."""
    from bench.needs import render_memory

    return _from_files(results, (AGGREGATE, SCALE, PROTOTYPE_ROUND), render_memory)


def scale_passes_block(results: Path) -> str:
    """The ratios of every kept invocation (``scale-pass*.json``, then ``scale.json``)."""
    from bench.scale import render_passes

    paths = [*sorted(results.glob("scale-pass*.json")), results / SCALE]
    try:
        return render_passes([(path.name, _read_json(path)) for path in paths]) + "\n"
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FigureError):
            raise
        raise FigureError(f"{results}: {exc} (written by bench/scale.py --out)") from None


def scale_summary_block(results: Path) -> str:
    """The header and the ``SCALE_SUMMARY`` rows of the scale table."""
    lines = scale_block(results).splitlines()
    rows = [line for line in lines[2:] if line.strip("| ").startswith(SCALE_SUMMARY)]
    return "\n".join(lines[:2] + rows) + "\n"


def _rendered(results: Path, name: str, writer: str, render: Any) -> str:
    """``render`` of the document in ``results / name``; any flaw named with the file."""
    return str(_checked(results / name, writer, render)) + "\n"


def _checked(path: Path, writer: str, render: Any) -> Any:
    """``render`` of the document in ``path``; any flaw named with the file once."""
    try:
        return render(_read_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FigureError):
            raise
        hint = f"(written by {writer} --out)"
        message = str(exc) if hint in str(exc) else f"{exc} {hint}"
        raise FigureError(f"{path}: {message}") from None


def sim_overhead_block(results: Path) -> str:
    """bench/sim_overhead.py's table of ``sim-overhead.json``: per repeat, a real
    ``flwr run`` against a plain loop, and the median steady-state ratio."""
    from bench.sim_overhead import render_table

    return _rendered(results, SIM_OVERHEAD, "bench/sim_overhead.py", render_table)


def sim_overhead_long_block(results: Path) -> str:
    """The same table of ``sim-overhead-depth4.json`` (rounds about four times longer)."""
    from bench.sim_overhead import render_table

    return _rendered(results, SIM_OVERHEAD_LONG, "bench/sim_overhead.py", render_table)


def sim_overhead_summary_block(results: Path) -> str:
    """One row per invocation: ``sim-overhead.json``, ``sim-overhead-depth4.json``, then
    every ``sim-overhead-pass*.json`` in name order (earlier invocations of either
    setting): the steady-state round both ways, their gap and the ratio."""
    from bench.sim_overhead import render_summary

    def one(document: Any) -> Any:
        render_summary([document])  # a flaw is named with its file
        return document

    names = [SIM_OVERHEAD, SIM_OVERHEAD_LONG]
    names += sorted(path.name for path in results.glob(SIM_OVERHEAD_PASSES))
    documents = [_checked(results / name, "bench/sim_overhead.py", one) for name in names]
    return render_summary(documents, [f"`{name}`" for name in names]) + "\n"


def cold_start_block(results: Path) -> str:
    """bench/cold_start.py's stage table of ``cold-start.json``."""
    from bench.cold_start import render_table

    return _rendered(results, COLD_START, "bench/cold_start.py", render_table)


def pixel_cache_block(results: Path) -> str:
    """bench/cold_start.py at 224 px with the pixel cache on and off
    (``cold-start-224.json``, ``cold-start-224-no-pixel-cache.json``), side by side."""
    from bench.cold_start import render_pair

    on = results / COLD_START_224
    return _rendered(
        results,
        COLD_START_224_OFF,
        "bench/cold_start.py",
        lambda off: render_pair(_read_json(on), off),
    )


def fedmvp_step_block(results: Path) -> str:
    """bench/fedmvp_step.py's tables of ``fedmvp-step-tiny.json`` (time and memory) then
    ``fedmvp-step-vit-b-16.json`` (memory at the paper's widths), a blank line apart."""
    from bench.fedmvp_step import render_document

    return "\n".join(
        _rendered(results, name, "bench/fedmvp_step.py", render_document)
        for name in (FEDMVP_STEP_TINY, FEDMVP_STEP_VIT_B_16)
    )


def ccmp_step_block(results: Path) -> str:
    """bench/ccmp_step.py's one table of the ``CCMP_STEP`` files, a row each, in order
    (each file checked alone first, so a flaw names its file)."""
    from bench.ccmp_step import render_report

    def checked(document: Any) -> Any:
        render_report([document])
        return document

    writer = "bench/ccmp_step.py"
    documents = [_checked(results / name, writer, checked) for name in CCMP_STEP]
    return render_report(documents) + "\n"
