"""FedMVP's step costs: one training step and one evaluation with cached text features
against re-encoding the attribute sentences every step (as the authors' code does), and
the peak memory of a training step against the attribute bank's size.

Run from the repository root::

    python bench/fedmvp_step.py                    # tiny CLIP, 100 classes x 10, batch 32
    python bench/fedmvp_step.py --repeats 20 --batch 64
    python bench/fedmvp_step.py --threads 1 --out bench/results/fedmvp-step-tiny.json
    python bench/fedmvp_step.py --clip-model ViT-B-16 --batch 8 --memory-classes 10,50 \\
        --skip-timing --threads 1 --out bench/results/fedmvp-step-vit-b-16.json
    python bench/fedmvp_step.py --report bench/results/fedmvp-step-tiny.json \\
        bench/results/fedmvp-step-vit-b-16.json     # the tables again, nothing run

What is measured, and how, is in ``bench/fedmvp_measure.py`` (the torch half, imported only
when something runs). ``--out`` writes every figure the tables show as JSON, atomically:
the settings (CLIP model and its widths, device, torch threads, batch, sentences per class
and where they came from, bank size, repeats, memory bank sizes, whether timing was
skipped), every timed sample in seconds with the medians and ratios, the memory rows in
bytes, the command line and the machine (CPUs, load averages at the start and the end).
``--report`` prints the Markdown of one or more such files without running anything
(``render_report``, a pure function that ``bench/figures.py`` also calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's bench/ and pep_fedpt/
    sys.path.insert(0, str(ROOT))

from bench.result_file import header, machine_sentence, need  # noqa: E402

WRITER = "bench/fedmvp_step.py"
# The timed calls, in the order of the table.
CALLS = ("training step", "evaluation")
MIB = 2**20


def _need(mapping: Any, key: str, where: str) -> Any:
    return need(mapping, key, where, WRITER)


# ---------------------------------------------------------------- the document
# A ``--out`` document holds the command line, the ``setting``, the ``machine``, the
# ``timing`` (null when skipped: the bank and, per call, every interleaved sample of
# cached and re-encoding seconds) and the ``memory`` rows (peak bytes per bank size).
# Each call's medians and ratio are written for a reader of the JSON; the tables recompute
# them from the samples.


def call_medians(timing: Mapping[str, Any]) -> dict[str, tuple[float, float, int]]:
    """Per timed call: the median cached and re-encoding seconds and the number of pairs;
    a call, or a sample list, that is missing, empty or unpaired is named."""
    calls = _need(timing, "calls", "timing")
    medians: dict[str, tuple[float, float, int]] = {}
    for name in CALLS:
        where = f"timing.calls[{name!r}]"
        samples = _need(calls, name, "timing.calls")
        cached = _need(samples, "cached_s", where)
        again = _need(samples, "reencode_s", where)
        if not all(isinstance(samples, list) for samples in (cached, again)):
            raise ValueError(f"{where}: 'cached_s' and 'reencode_s' must be lists of seconds")
        if not cached or len(cached) != len(again):
            raise ValueError(
                f"{where}: 'cached_s' and 'reencode_s' must be equally long, non-empty lists "
                f"(interleaved pairs), got {len(cached)} and {len(again)} samples"
            )
        m_cached = float(statistics.median(float(s) for s in cached))
        m_again = float(statistics.median(float(s) for s in again))
        if m_cached <= 0:
            raise ValueError(f"{where}: the cached median is {m_cached} s")
        medians[name] = (m_cached, m_again, len(cached))
    return medians


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
        calls = {name: dict(samples) for name, samples in _need(timing, "calls", "timing").items()}
        document["timing"] = {**timing, "calls": calls}
        for name, (m_cached, m_again, _) in call_medians(document["timing"]).items():
            calls[name]["median_cached_s"] = m_cached
            calls[name]["median_reencode_s"] = m_again
            calls[name]["reencode_over_cached"] = m_again / m_cached
    return document


# ---------------------------------------------------------------- the Markdown
def _setting_line(document: Mapping[str, Any]) -> str:
    setting = _need(document, "setting", "the document")

    def get(key: str) -> Any:
        return _need(setting, key, "setting")

    part = "memory only (`--skip-timing`)" if get("skip_timing") else "time and memory"
    return (
        f"FedMVP step costs, {part}: CLIP {get('clip_model')} (vision width "
        f"{get('vision_width')}, text dim {get('text_dim')}, {get('image_size')} px, random "
        f"weights), device {get('device')}, torch threads {get('threads')}, batch "
        f"{get('batch')}, {get('per_class')} sentences per class ({get('sentences_from')}); "
        f"{machine_sentence(document)}."
    )


def _timing_table(document: Mapping[str, Any]) -> list[str]:
    setting = _need(document, "setting", "the document")
    timing = _need(document, "timing", "the document")
    if timing is None:
        if not _need(setting, "skip_timing", "setting"):
            raise ValueError(
                f"the document: 'timing' is null but setting 'skip_timing' is false "
                f"(written by {WRITER} --out)"
            )
        return []
    medians = call_medians(timing)
    classes = _need(timing, "bank_classes", "timing")
    sentences = _need(timing, "bank_sentences", "timing")
    pairs = sorted({n for _, _, n in medians.values()})
    lines = [
        "",
        f"Time with a bank of {classes} classes = {sentences} sentences: median of "
        f"{'/'.join(map(str, pairs))} interleaved pair{'' if pairs == [1] else 's'} "
        "(cached, re-encoding) after 2 warm-up pairs.",
        "",
        "| call | cached | re-encoding all sentences | re-encoding / cached |",
        "|---|---|---|---|",
    ]
    for name, (m_cached, m_again, _) in medians.items():
        lines.append(
            f"| {name} | {m_cached * 1e3:.2f} ms | {m_again * 1e3:.2f} ms "
            f"| **{m_again / m_cached:.2f}** |"
        )
    return lines


def _memory_table(document: Mapping[str, Any]) -> list[str]:
    setting = _need(document, "setting", "the document")
    rows = _need(document, "memory", "the document")
    if not isinstance(rows, Sequence) or not rows:
        raise ValueError("the document: 'memory' holds no rows")
    lines = [
        "",
        f"Peak memory one training step adds (forward + backward), batch "
        f"{_need(setting, 'batch', 'setting')}:",
        "",
        "| classes | sentences | this project | bank projected per batch element |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(rows):
        where = f"memory[{i}]"
        mine = float(_need(row, "this_project_bytes", where)) / MIB
        theirs = float(_need(row, "per_element_bytes", where)) / MIB
        lines.append(
            f"| {_need(row, 'classes', where)} | {_need(row, 'sentences', where)} "
            f"| {mine:.1f} MiB | {theirs:.1f} MiB |"
        )
    return lines


def render_document(document: Mapping[str, Any]) -> str:
    """The Markdown of one ``--out`` document: its settings in one line, the timing table
    (unless skipped) and the memory table."""
    return "\n".join([_setting_line(document), *_timing_table(document), *_memory_table(document)])


def render_report(documents: Sequence[Mapping[str, Any]]) -> str:
    """Each document's Markdown, in order, a blank line apart."""
    return "\n\n".join(render_document(document) for document in documents)


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
    parser.add_argument(
        "--report", type=Path, nargs="+", help="print the tables of --out files; no run"
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        if args.out is not None:
            parser.error("--report prints files already written, --out writes a new run: not both")
        from bench.result_file import read_reports

        documents = read_reports(parser, args.report, WRITER, render_document)
        print(render_report(documents))
        return
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

    from bench.fedmvp_measure import DEFAULT_ATTRIBUTES, measure  # torch: only for a run
    from bench.result_file import write

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
    print(render_document(document))


if __name__ == "__main__":
    main()
