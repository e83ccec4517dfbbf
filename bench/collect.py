"""The result files of a benchmark, small enough for git: every table can be regenerated.

    .venv/bin/python -m bench.collect OUT DEST

``OUT`` is where the benchmark ran (``bench/compare.py`` folders, weights and long logs:
far too big for git); ``DEST`` is a folder of the repository (``bench/results/cifar10``).
For every comparison folder under ``OUT`` (a folder with a ``comparison.json``; its path
below ``OUT`` is kept below ``DEST``), it copies what ``bench/report.py`` reads and what
``results.md`` links to, and nothing else:

- ``comparison.json``;
- per run that the report reads (final runs, grid runs, sweep runs): its outcome
  (``<stage>/<name>.json``, the log path in it made relative to the comparison folder),
  its run config (``<name>.toml``), its log (``<name>.log``; a log over ``LOG_BYTES`` keeps
  only its last lines, under a first line that says so), and from its run folder the small
  text files (``RUN_FILES``: metrics, config, summary) plus ``drift.json``, the prompt
  drift measured from the two state files (``bench/prompt_drift.py``), in place of them;
- then ``results.md``, ``results.csv`` and ``accuracy.png``, regenerated from the copy by
  ``bench.report`` (the same tables as in ``OUT``: tested).

No weights (``*.npz``) and no pictures of single runs are copied. Collecting again
replaces what an earlier collect wrote for that comparison (its ``runs/``, ``grid/``,
``comparison.json`` and results files) and touches nothing else under ``DEST``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.prompt_drift import DRIFT_JSON, drift_document, drift_from_files
from bench.report import (
    COMPARISON,
    FINAL,
    GRID,
    load_results,
    regenerate,
    relative_log,
)
from pep_fedpt.atomic import atomic_write

# The small text files of a run folder (server_app/results.py) worth keeping in git.
RUN_FILES = ("metrics.json", "config.json", "summary.md", "dropped.json")
LOG_BYTES = 8 * 1024  # a longer log keeps only its tail
LOG_LINES = 60  # the tail: at most this many last lines (and at most LOG_BYTES)
# What a collect writes in a comparison's DEST folder; a new collect replaces exactly these.
MANAGED = (COMPARISON, FINAL, GRID, "results.md", "results.csv", "accuracy.png")


class CollectError(Exception):
    """Bad OUT or DEST: said before anything is written."""


@dataclass(frozen=True)
class Collected:
    """What one comparison folder gave: its path below OUT and the runs copied."""

    name: str
    runs: int


def comparison_folders(out: Path) -> list[Path]:
    """Every folder under ``out`` (``out`` itself included) holding a ``comparison.json``,
    sorted; not inside another one, nor in a hidden folder (a collect's staging folder)."""
    found: list[Path] = []
    candidates = sorted((p.parent for p in out.rglob(COMPARISON)), key=lambda f: len(f.parts))
    for folder in candidates:
        hidden = any(part.startswith(".") for part in folder.relative_to(out).parts)
        if not hidden and not any(folder.is_relative_to(outer) for outer in found):
            found.append(folder)
    return sorted(found)


def check_folders(out: Path, dest: Path) -> None:
    """OUT must exist and be apart from DEST: neither may lie inside the other (a collect
    would then copy its own output, or replace the runs it reads)."""
    if not out.is_dir():
        raise CollectError(f"OUT {str(out)!r} is not a folder (give a benchmark's --out)")
    if dest.is_relative_to(out) or out.is_relative_to(dest):
        raise CollectError(
            f"DEST {str(dest)!r} and OUT {str(out)!r}: one lies inside the other; give a "
            "DEST apart from OUT, e.g. bench/results/cifar10 of the repository"
        )
    if dest.exists() and not dest.is_dir():
        raise CollectError(f"DEST {str(dest)!r} exists and is not a folder")


def cut_log(text: str) -> str:
    """The log itself if it is at most ``LOG_BYTES``; else its last lines (at most
    ``LOG_LINES`` and ``LOG_BYTES``) under a first line that says what was cut."""
    if len(text.encode()) <= LOG_BYTES:
        return text
    lines = text.splitlines(keepends=True)
    tail = lines[-LOG_LINES:]
    while len(tail) > 1 and len("".join(tail).encode()) > LOG_BYTES:
        tail = tail[1:]
    kept = "".join(tail)
    if len(kept.encode()) > LOG_BYTES:  # one huge line: its end
        kept = kept.encode()[-LOG_BYTES:].decode(errors="replace")
    header = (
        f"[bench.collect: cut; the log had {len(lines)} lines, {len(text.encode())} bytes; "
        f"these are its last {len(tail)} lines; the full log stays in the benchmark's OUT]\n"
    )
    return header + kept


def collect_run(source: Path, target: Path, stage: str, name: str) -> None:
    """One run's small files from the comparison folder ``source`` into ``target``."""
    src, dst = source / stage, target / stage
    dst.mkdir(parents=True, exist_ok=True)
    if (src / f"{name}.toml").is_file():
        shutil.copyfile(src / f"{name}.toml", dst / f"{name}.toml")
    if (src / f"{name}.log").is_file():
        text = (src / f"{name}.log").read_bytes().decode(errors="replace")
        atomic_write(dst / f"{name}.log", cut_log(text).encode())
    record = json.loads((src / f"{name}.json").read_text())
    if isinstance(record.get("log"), str):
        record["log"] = relative_log(source, stage, name, record["log"])
    atomic_write(dst / f"{name}.json", json.dumps(record, indent=2).encode())
    run_src, run_dst = src / name, dst / name
    if not run_src.is_dir():
        return
    run_dst.mkdir(parents=True, exist_ok=True)
    for file in RUN_FILES:
        if (run_src / file).is_file():
            shutil.copyfile(run_src / file, run_dst / file)
    drift = drift_from_files(run_src)
    if drift is not None:
        atomic_write(run_dst / DRIFT_JSON, json.dumps(drift_document(drift), indent=2).encode())
    elif (run_src / DRIFT_JSON).is_file():  # a folder collected before
        shutil.copyfile(run_src / DRIFT_JSON, run_dst / DRIFT_JSON)


def run_paths(source: Path) -> list[tuple[str, str]]:
    """(stage, name) of every run the report of ``source`` reads and that started."""
    outcomes, _, selection = load_results(source)
    if selection is not None:
        outcomes = [*outcomes, *(o for runs in selection.outcomes.values() for o in runs)]
    paths = []
    for outcome in outcomes:
        stage, _, name = outcome.path.partition("/")
        if outcome.status != "missing" and (stage, name) not in paths:
            paths.append((stage, name))
    return paths


def collect_comparison(source: Path, target: Path) -> int:
    """Copy one comparison folder's results into ``target`` (replacing what a collect
    wrote there before) and regenerate its tables there; return the number of runs."""
    target.mkdir(parents=True, exist_ok=True)
    paths = run_paths(source)
    with tempfile.TemporaryDirectory(dir=target, prefix=".collect-") as tmp:
        staged = Path(tmp)
        shutil.copyfile(source / COMPARISON, staged / COMPARISON)
        for stage, name in paths:
            collect_run(source, staged, stage, name)
        regenerate(staged)
        for entry in MANAGED:
            old = target / entry
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
            if (staged / entry).exists():
                (staged / entry).rename(old)
    return len(paths)


def collect(out: Path, dest: Path) -> list[Collected]:
    """Every comparison under ``out`` into the same path under ``dest``."""
    out, dest = out.resolve(), dest.resolve()
    check_folders(out, dest)
    folders = comparison_folders(out)
    if not folders:
        raise CollectError(
            f"OUT {str(out)!r} holds no comparison (no {COMPARISON} in it or below it)"
        )
    done = []
    for folder in folders:
        name = folder.relative_to(out).as_posix()
        runs = collect_comparison(folder, dest / folder.relative_to(out))
        done.append(Collected(name, runs))
    return done


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the benchmark's folder of comparisons")
    parser.add_argument("dest", type=Path, help="the folder of the repository to fill")
    args = parser.parse_args(argv)
    try:
        done = collect(args.out, args.dest)
    except CollectError as exc:
        print(f"collect: {exc}", file=sys.stderr)
        return 2
    for item in done:
        print(f"collect: {item.name}: {item.runs} runs")
    size = folder_bytes(args.dest.resolve())
    print(f"collect: {args.dest} now holds {size / 1024:.1f} KiB; bench.tables rewrites the tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
