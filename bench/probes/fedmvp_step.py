"""FedMVP's step costs: one training step and one evaluation with cached text features
against re-encoding the attribute sentences every step (as the authors' code does), and
the peak memory of a training step against the attribute bank's size.

The commands and what they showed: bench/probes/README.md.

What is measured, and how, is in ``bench/probes/fedmvp_measure.py`` (the torch half).
``--out`` writes every timed sample with the medians and ratios and the memory rows in
bytes, with the setting and the machine (``bench.probes.result_file.header``); the
medians, ratios and memory rows are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.probes.result_file import header

WRITER = "bench/probes/fedmvp_step.py"


# ---------------------------------------------------------------- the document
# A ``--out`` document holds the command line, the ``setting``, the ``machine``, the
# ``timing`` (null when skipped: the bank and, per call, every interleaved sample of
# cached and re-encoding seconds) and the ``memory`` rows (peak bytes per bank size).
# Each call's medians and ratio are written beside its samples.


def make_document(
    argv: Sequence[str],
    setting: Mapping[str, Any],
    timing: Mapping[str, Any] | None,
    memory: Sequence[Mapping[str, int]],
    load_start: Sequence[float],
    load_end: Sequence[float],
) -> dict[str, Any]:
    """What ``--out`` writes: every sample and row with what they were measured under."""
    document: dict[str, Any] = {
        **header(WRITER, argv, setting, load_start, load_end),
        "timing": None,
        "memory": [dict(row) for row in memory],
    }
    if timing is not None:
        calls = {name: dict(samples) for name, samples in timing["calls"].items()}
        document["timing"] = {**timing, "calls": calls}
        for samples in calls.values():
            m_cached = statistics.median(samples["cached_s"])
            m_again = statistics.median(samples["reencode_s"])
            samples["median_cached_s"] = m_cached
            samples["median_reencode_s"] = m_again
            samples["reencode_over_cached"] = m_again / m_cached
    return document


def summary(timing: Mapping[str, Any]) -> dict[str, Any]:
    """Per timed call, its medians and ratio (the samples left out)."""
    return {
        name: {k: v for k, v in samples.items() if not k.endswith("_s") or "median" in k}
        for name, samples in timing["calls"].items()
    }


# ---------------------------------------------------------------- command
def _bank_sizes(text: str) -> list[int]:
    """``"10,50"`` as [10, 50]; anything but positive whole numbers is a ValueError."""
    sizes = [int(part) for part in text.split(",")]  # ValueError on "x" or ""
    if any(size < 1 for size in sizes):
        raise ValueError("a number of classes below 1")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", default="tiny")
    parser.add_argument("--classes", type=int, default=100, help="bank size for the timing")
    parser.add_argument("--per-class", type=int, default=10, help="sentences per class")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timed pairs")
    parser.add_argument("--memory-classes", default="10,50,100,200", help="bank sizes, a,b,..")
    parser.add_argument("--attributes", type=Path, default=None, help="a phrases JSON file")
    parser.add_argument("--device", default="", help="default: cuda if there is one, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--skip-timing", action="store_true", help="part 2 (memory) only")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    for name in ("classes", "per_class", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)}: at least 1")
    if args.threads < 0:
        parser.error(f"--threads = {args.threads}: a number of threads, 0 for torch's default")
    if args.attributes is not None and not args.attributes.is_file():
        parser.error(f"--attributes {args.attributes}: no such file (a JSON of class -> phrases)")
    try:
        memory_classes = _bank_sizes(args.memory_classes)
    except ValueError:
        parser.error(
            f"--memory-classes = {args.memory_classes!r}: comma-separated numbers of classes, "
            "each at least 1 (e.g. 10,50)"
        )

    from bench.probes.fedmvp_measure import DEFAULT_ATTRIBUTES, measure  # torch: only for a run
    from bench.probes.result_file import write

    load_start = os.getloadavg()
    measured = measure(
        args.clip_model,
        args.classes,
        args.per_class,
        args.batch,
        args.repeats,
        memory_classes,
        attributes=args.attributes or DEFAULT_ATTRIBUTES,
        device=args.device,
        threads=args.threads,
        skip_timing=args.skip_timing,
    )
    setting = {
        "clip_model": args.clip_model,
        **measured["clip"],
        "device": measured["device"],
        "threads": measured["threads"],
        "batch": args.batch,
        "per_class": args.per_class,
        "sentences_from": measured["sentences_from"],
        "classes": args.classes,
        "repeats": args.repeats,
        "memory_classes": memory_classes,
        "skip_timing": args.skip_timing,
    }
    document = make_document(
        sys.argv[1:] if argv is None else list(argv),
        setting,
        measured["timing"],
        measured["memory"],
        load_start,
        os.getloadavg(),
    )
    if args.out is not None:
        write(args.out, document)
    print(
        json.dumps(
            {
                "timing": document["timing"] and summary(document["timing"]),
                "memory": document["memory"],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
