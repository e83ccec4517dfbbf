"""How the server's cost grows with the number of SuperNodes: real ``flwr run .``s in
Flower's simulation engine at several federation sizes, measured side by side.

The command and what it showed: bench/probes/README.md.

Each run: PEP-FedPT with a tiny random ViT (depth 2, width 64, 16 px; no pre-training),
CIFAR-10 as JPEG folders (``data.dataset = "cifar10-folder"``, IID partitions of the
50,000 training images: 50 per client at 1,000), ``fed.fraction-train`` and
``fed.fraction-evaluate`` 0.05, 3 rounds. The unpacked data set is
``~/.cache/pep-fedpt/data/cifar10`` (``--data-dir``); when it is missing it is unpacked
from ``../shared/datasets/cifar10-jpeg.tar.gz`` (``CIFAR10_ARCHIVE`` overrides), as
``bench/cifar10.sh`` does. Every run gets its own FLWR_HOME, SuperLink ports, output and
node caches (in a temporary folder), so no run starts warmer than another.

Per run it reports:

- **round time**: from one ``[ROUND r/R]`` line to the next (the last round to the
  summary), timed as ``flwr run --stream`` delivers the lines; steady state is the
  median of rounds 2..R. The in-app phase times come from the strategy's own log lines
  (``round 1 train: 50/50 replies in 12.3 s``), which the streaming delay does not touch.
- **the prototype round** (round 0: it queries every connected node, so it grows with N,
  not with the sample): its replies and in-app seconds, and its bytes.
- **server peak memory**: in 1.42's simulation ``flwr run`` starts a local
  ``flower-superlink``, whose ``flower-superexec`` starts one ``flwr-simulation``
  process per run; that process runs the ServerApp (a thread), the in-memory LinkState
  that carries every message, and the engine that hands messages to the Ray actors
  (separate processes, the clients). Its peak RSS is the kernel's high-water mark
  ``VmHWM`` in ``/proc/<pid>/status``, read every ``--poll`` seconds while it lives: the
  kernel keeps the peak, so polling misses only growth within the last interval before
  the process exits. Its CPU seconds come from ``/proc/<pid>/stat``. The SuperLink's
  ``VmHWM`` likewise; the Ray side (every process below ``flwr-simulation``) as the
  largest sum of ``VmRSS`` seen in one poll (a sampled figure, for context).
- **bytes per round** (``metrics.json``: the arrays' bytes, ``strategies/traffic.py``).
- **the SuperLink database**: ``$FLWR_HOME/local-superlink/state.db`` (with its ``-wal``
  and ``-shm`` files) after the run.
- **the run's result files** (``checkpoint.npz``, ``partition.json``, ...): their sizes,
  which carry the strategy's per-node bookkeeping.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.comma import comma_ints
from bench.probes import sim_overhead
from bench.probes.result_file import header, write
from bench.probes.sampler import Sampler, command_line, cpu_seconds, status_bytes
from pep_fedpt.local_flwr import (
    COMPLETED,
    flwr_env,
    process_tree,
    run_id_in,
    run_status,
    stop_superlink,
    stream_to_end,
    superlinks,
)
from pep_fedpt.preflight import toml_value

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PEP_FEDPT_CACHE", Path.home() / ".cache" / "pep-fedpt"))
DATA_DIR = CACHE / "data" / "cifar10"
SHARED_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
ARCHIVE = Path(os.environ.get("CIFAR10_ARCHIVE", SHARED_ARCHIVE))
ROUND_MARK = re.compile(r"\[ROUND (\d+)/(\d+)\]")
PHASE_LINE = re.compile(r"round (\d+) (query|train|evaluate): (\d+)/(\d+) replies in ([0-9.]+) s")
SUMMARY_MARK = "pep-fedpt summary"
PROTOTYPE_MARK = "prototype round: asking"

# The tiny random ViT of sim_overhead (no pre-training, seconds per round) on CIFAR-10 files.
TINY: dict[str, str | int | float] = {
    "method": "pep-fedpt",
    **sim_overhead.TINY,
    "data.dataset": "cifar10-folder",
    "data.partitioner": "iid",
}


# ---------------------------------------------------------------- the log
def phase_times(lines: Sequence[str]) -> dict[int, dict[str, dict[str, float]]]:
    """Per round and phase, the strategy's own ``replies`` and in-app ``seconds`` (its
    ``round R PHASE: a/b replies in S s`` lines; round 0 is the prototype round)."""
    found: dict[int, dict[str, dict[str, float]]] = {}
    for line in lines:
        match = PHASE_LINE.search(line)
        if match is None:
            continue
        rnd, phase, got, sent, seconds = match.groups()
        entry = found.setdefault(int(rnd), {}).setdefault(
            phase, {"replies": 0, "sent": 0, "seconds": 0.0}
        )
        entry["replies"] += int(got)  # a phase may run twice (a late node's query)
        entry["sent"] += int(sent)
        entry["seconds"] += float(seconds)
    return found


# ---------------------------------------------------------------- the processes
class MemoryWatch(Sampler):
    """Polls the SuperLink of one FLWR_HOME, its ``flwr-simulation`` child and the Ray
    processes below that, until ``stop``."""

    def __init__(self, home: Path, poll: float) -> None:
        super().__init__(poll)
        self.home = home
        self.superlink: int | None = None
        self.simulation: int | None = None
        self.superlink_hwm: int | None = None
        self.simulation_hwm: int | None = None
        self.simulation_cpu_s: float | None = None
        self.ray_rss_max: int | None = None

    def sample(self) -> None:
        """One poll: find the processes (once), keep each high-water mark as last read."""
        if self.superlink is None:
            self.superlink = min(superlinks(self.home), default=None)
        if self.superlink is None:
            return
        if (hwm := status_bytes(self.superlink, "VmHWM")) is not None:
            self.superlink_hwm = hwm
        if self.simulation is None:
            self.simulation = next(
                (
                    p
                    for p in sorted(process_tree({self.superlink}))
                    if "flwr-simulation" in command_line(p)
                ),
                None,
            )
        if self.simulation is None:
            return
        if (hwm := status_bytes(self.simulation, "VmHWM")) is not None:
            self.simulation_hwm = hwm
        if (cpu := cpu_seconds(self.simulation)) is not None:
            self.simulation_cpu_s = cpu
        below = process_tree({self.simulation}) - {self.simulation}
        if below:
            total = sum(status_bytes(pid, "VmRSS") or 0 for pid in below)
            self.ray_rss_max = max(self.ray_rss_max or 0, total)


def ensure_data(data_dir: Path) -> Path:
    """The unpacked CIFAR-10 JPEG folders, unpacked from the shared archive if missing."""
    if (data_dir / "train").is_dir():
        return data_dir
    if data_dir != DATA_DIR:
        sys.exit(f"--data-dir {data_dir}: no train/ folder (<dir>/{{train,test}}/<class>/*.jpg)")
    if not ARCHIVE.is_file():
        sys.exit(
            f"bench/probes/scale.py: no {DATA_DIR}/train and no {ARCHIVE} (set CIFAR10_ARCHIVE)"
        )
    DATA_DIR.parent.mkdir(parents=True, exist_ok=True)
    print(f"unpacking {ARCHIVE} into {DATA_DIR.parent} ...", flush=True)
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(DATA_DIR.parent, filter="data")
    return data_dir


# ---------------------------------------------------------------- one run
def overrides(
    nodes: int, rounds: int, fraction: float, data_dir: Path, out: Path, cache: Path
) -> str:
    """The ``flwr run -c`` string of one run."""
    config: dict[str, str | int | float] = {
        **TINY,
        "num-server-rounds": rounds,
        "output-dir": str(out),
        "cache-dir": str(cache),
        "data.data-dir": str(data_dir),
        "fed.fraction-train": fraction,
        "fed.fraction-evaluate": fraction,
        # Every node connected before the prototype round, so it asks all N.
        "fed.min-available-nodes": nodes,
    }
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def run_once(
    nodes: int, rounds: int, fraction: float, data_dir: Path, work: Path, poll: float
) -> dict[str, Any]:
    """One ``flwr run .`` with ``nodes`` SuperNodes; its figures, or exit with its log."""
    home, out, cache = work / "home", work / "run", work / "cache"
    env = flwr_env(home)
    watch = MemoryWatch(home, poll)
    marks: list[float] = []
    end: float | None = None
    hwm_before_round1: int | None = None
    cpu_before_round1: float | None = None
    asked: float | None = None  # the prototype round's first line

    def mark(line: str) -> None:
        nonlocal asked, end, hwm_before_round1, cpu_before_round1
        if PROTOTYPE_MARK in line and asked is None:
            asked = time.monotonic()
        if ROUND_MARK.search(line):
            marks.append(time.monotonic())
            if len(marks) == 1:
                watch.sample()
                hwm_before_round1 = watch.simulation_hwm
                cpu_before_round1 = watch.simulation_cpu_s
        if SUMMARY_MARK in line and end is None:
            end = time.monotonic()

    log: list[str] = []
    start = time.monotonic()
    watch.start()
    try:
        run = stream_to_end(
            ROOT,
            "-c", overrides(nodes, rounds, fraction, data_dir, out, cache),
            "--federation-config", f"num-supernodes={nodes}",
            env=env, on_line=mark,
        )  # fmt: skip
        log = run.lines
        finished = time.monotonic()
        watch.sample()
    finally:
        watch.stop()
        status = _run_status(log, env)
        stop_superlink(home)
    text = "".join(log)
    if run.returncode != 0 or len(marks) != rounds or status != COMPLETED:
        kept = Path(tempfile.gettempdir()) / f"pep-fedpt-scale-failed-{nodes}.log"
        kept.write_text(text)
        sys.exit(
            f"flwr run with {nodes} SuperNodes failed (exit {run.returncode}, "
            f"{len(marks)}/{rounds} rounds, status {status}); log kept in {kept}:\n"
            f"{text[-4000:]}"
        )
    metrics = json.loads((out / "metrics.json").read_text())
    phases = phase_times(log)
    # From each round's mark to the next; the last to the summary line.
    rounds_s = [b - a for a, b in itertools.pairwise([*marks, end or finished])]
    database = [home / "local-superlink" / f"state.db{s}" for s in ("", "-wal", "-shm")]
    return {
        "nodes": nodes,
        "rounds": rounds,
        "fraction": fraction,
        "sampled_train": phases.get(1, {}).get("train", {}).get("sent"),
        "sampled_evaluate": phases.get(1, {}).get("evaluate", {}).get("sent"),
        "startup_s": None if asked is None else asked - start,
        "prototype_to_round1_s": None if asked is None else marks[0] - asked,
        "round_s": rounds_s,
        # The median of rounds 2.. (round 1 also pays each actor's first clients).
        "steady_round_s": statistics.median(rounds_s[1:]) if rounds >= 2 else None,
        "total_s": finished - start,
        "phases": {str(r): p for r, p in sorted(phases.items())},
        "bytes": {
            str(int(row["round"])): {
                k: int(v) for k, v in row.items() if "bytes" in k and isinstance(v, int | float)
            }
            for row in metrics
        },
        "memory": {
            "simulation_hwm": watch.simulation_hwm,
            "simulation_hwm_before_round1": hwm_before_round1,
            "simulation_cpu_s": watch.simulation_cpu_s,
            "simulation_cpu_s_before_round1": cpu_before_round1,
            "superlink_hwm": watch.superlink_hwm,
            "ray_rss_max": watch.ray_rss_max,
            "poll_s": poll,
        },
        "database_bytes": sum(p.stat().st_size for p in database if p.exists()) or None,
        "result_files_bytes": {p.name: p.stat().st_size for p in sorted(out.iterdir())},
        "loadavg_1min": os.getloadavg()[0],
    }


def _run_status(log: Sequence[str], env: Mapping[str, str]) -> str:
    """How the run ended (``flwr run --stream`` exits 0 even when it failed)."""
    run_id = run_id_in("".join(log))
    if not run_id:
        return "unknown (no run id in the log)"
    return run_status(run_id, env, cwd=ROOT)


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes",
        type=comma_ints(minimum=2, example="100,1000"),
        default="100,1000",
        help="SuperNode counts, e.g. 100,1000",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.05, help="fraction-train/evaluate")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved passes over --nodes")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between /proc reads")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction {args.fraction}: in (0, 1]")
    data_dir = ensure_data(args.data_dir.expanduser().resolve())
    load_start, runs = os.getloadavg(), []
    with tempfile.TemporaryDirectory(prefix="pep-fedpt-scale-") as tmp:
        for repeat in range(args.repeats):
            for nodes in args.nodes:
                work = Path(tmp) / f"n{nodes}-r{repeat}"
                print(f"--- {nodes} SuperNodes (pass {repeat + 1}/{args.repeats})", flush=True)
                result = run_once(nodes, args.rounds, args.fraction, data_dir, work, args.poll)
                result["repeat"] = repeat
                runs.append(result)
                print(json.dumps(result), flush=True)
    setting = {**TINY, "num-server-rounds": args.rounds, "fraction": args.fraction}
    argv = sys.argv[1:] if argv is None else list(argv)
    document = header("bench/probes/scale.py", argv, setting, load_start, os.getloadavg()) | {
        "runs": runs
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write(args.out, document)
        print(f"scale: wrote {args.out}")


if __name__ == "__main__":
    main()
