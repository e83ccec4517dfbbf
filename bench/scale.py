"""How the server's cost grows with the number of SuperNodes: real ``flwr run .``s in
Flower's simulation engine at several federation sizes, measured side by side.

Run from the repository root (the venv's ``flwr`` next to ``sys.executable``)::

    python bench/scale.py --nodes 100,1000 --out bench/results/scale.json
    python bench/scale.py --report bench/results/scale.json     # the table again

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

The JSON (``--out``) holds every figure; ``--report`` prints its Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's packages
    sys.path.insert(0, str(ROOT))

from bench.local_flwr import BIN, flwr_env, stop_superlink  # noqa: E402

CACHE = Path(os.environ.get("PEP_FEDPT_CACHE", Path.home() / ".cache" / "pep-fedpt"))
DATA_DIR = CACHE / "data" / "cifar10"
SHARED_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
ARCHIVE = Path(os.environ.get("CIFAR10_ARCHIVE", SHARED_ARCHIVE))
ROUND_MARK = re.compile(r"\[ROUND (\d+)/(\d+)\]")
PHASE_LINE = re.compile(r"round (\d+) (query|train|evaluate): (\d+)/(\d+) replies in ([0-9.]+) s")
SUMMARY_MARK = "pep-fedpt summary"
TICKS = float(os.sysconf("SC_CLK_TCK"))
PROTOTYPE_MARK = "prototype round: asking"

# The tiny random ViT of bench/sim_overhead.py: no pre-training, seconds per round.
TINY: dict[str, str | int | float] = {
    "method": "pep-fedpt",
    "model.pretrained": "random",
    "model.depth": 2,
    "model.embed-dim": 64,
    "model.num-heads": 2,
    "model.img-size": 16,
    "data.dataset": "cifar10-folder",
    "data.partitioner": "iid",
}


# ---------------------------------------------------------------- pure helpers (tested)
def parse_status_kib(text: str, field_name: str) -> int | None:
    """Bytes of one ``/proc/<pid>/status`` field in kB (``VmHWM``, ``VmRSS``), or None
    when the text has no such field (a kernel thread, a process gone)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == field_name:
            parts = value.split()
            if len(parts) != 2 or parts[1] != "kB" or not parts[0].isdigit():
                raise ValueError(f"/proc status line {line!r}: expected '<n> kB'")
            return int(parts[0]) * 1024
    return None


def parse_stat_cpu_seconds(text: str, ticks_per_second: float) -> float:
    """User + system CPU seconds of a process from its ``/proc/<pid>/stat`` line (fields
    14 and 15, in clock ticks; counted after the ``)`` that ends its name)."""
    fields = text.rsplit(")", 1)[-1].split()
    if len(fields) < 13:
        raise ValueError(f"/proc stat line {text[:80]!r}: too few fields")
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


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


def round_seconds(marks: Sequence[float], end: float) -> list[float]:
    """Seconds of each round, from its mark to the next (the last to ``end``)."""
    bounds = [*marks, end]
    return [b - a for a, b in itertools.pairwise(bounds)]


def steady_state(rounds: Sequence[float]) -> float:
    """The median of rounds 2.. (round 1 also pays each actor's first clients)."""
    if len(rounds) < 2:
        raise ValueError(f"{len(rounds)} round(s): a steady state needs rounds 2..R")
    return statistics.median(rounds[1:])


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _get(run: Mapping[str, Any], *path: str) -> Any:
    """``run[path[0]][path[1]]...``, or None where a key is missing."""
    value: Any = run
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _memory(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda run: _mib(_get(run, "memory", name))


# The table's rows: label, the figure of one run, its format.
ROWS: tuple[tuple[str, Callable[[Mapping[str, Any]], float | None], str], ...] = (
    ("sampled clients per round (train)", lambda r: _get(r, "sampled_train"), ".0f"),
    ("start-up to the prototype round (s)", lambda r: _get(r, "startup_s"), ".1f"),
    (
        "prototype round: nodes queried",
        lambda r: _get(r, "phases", "0", "query", "sent"),
        ".0f",
    ),
    (
        "prototype round: in-app (s)",
        lambda r: _get(r, "phases", "0", "query", "seconds"),
        ".1f",
    ),
    ("prototype round: bytes up (MB)", lambda r: _mb(_get(r, "bytes", "0", "bytes-up")), ".3f"),
    ("steady-state round (s, median of rounds 2..)", lambda r: _get(r, "steady_round_s"), ".1f"),
    ("train phase, steady state (s, in-app)", lambda r: _steady_phase(r, "train"), ".1f"),
    ("evaluate phase, steady state (s, in-app)", lambda r: _steady_phase(r, "evaluate"), ".1f"),
    ("rest of the round (s): central evaluation, result files", lambda r: _steady_rest(r), ".1f"),
    ("bytes per round, down (MB)", lambda r: _mb(_round_bytes(r, "bytes-down")), ".3f"),
    ("bytes per round, up (MB)", lambda r: _mb(_round_bytes(r, "bytes-up")), ".3f"),
    ("server peak RSS: flwr-simulation (MiB)", _memory("simulation_hwm"), ".1f"),
    ("  the same, before round 1 (MiB)", _memory("simulation_hwm_before_round1"), ".1f"),
    ("flwr-simulation CPU, whole run (s)", lambda r: _get(r, "memory", "simulation_cpu_s"), ".1f"),
    (
        "flwr-simulation CPU, rounds 1..R (s)",
        lambda r: _difference(
            _get(r, "memory", "simulation_cpu_s"),
            _get(r, "memory", "simulation_cpu_s_before_round1"),
        ),
        ".1f",
    ),
    ("SuperLink peak RSS (MiB)", _memory("superlink_hwm"), ".1f"),
    ("Ray side: largest RSS sum seen (MiB)", _memory("ray_rss_max"), ".1f"),
    ("SuperLink database (MiB)", lambda r: _mib(_get(r, "database_bytes")), ".2f"),
    (
        "checkpoint.npz, per round (kB)",
        lambda r: _kb(_get(r, "result_files_bytes", "checkpoint.npz")),
        ".1f",
    ),
    (
        "partition.json (kB)",
        lambda r: _kb(_get(r, "result_files_bytes", "partition.json")),
        ".1f",
    ),
    ("whole run (s)", lambda r: _get(r, "total_s"), ".1f"),
)


def render_table(document: Mapping[str, Any]) -> str:
    """The Markdown table of a ``--out`` document: one column per run (by N), and the
    ratio of the largest N's figure to the smallest's."""
    runs = sorted(document["runs"], key=lambda r: r["nodes"])
    if not runs:
        raise ValueError("the document holds no runs")
    several = len(runs) > 1
    header = "| | " + " | ".join(f"N = {r['nodes']:,}" for r in runs) + " |"
    if several:
        header += f" ratio {runs[-1]['nodes']:,} / {runs[0]['nodes']:,} |"
    lines = [header, "|---" * (len(runs) + 1 + several) + "|"]

    def row(label: str, values: list[float | None], fmt: str) -> None:
        cells = ["-" if v is None else format(v, fmt) for v in values]
        if several:
            cells.append(_ratio(values[-1], values[0]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for label, figure, fmt in ROWS[:5]:
        row(label, [figure(r) for r in runs], fmt)
    for i in range(max(len(r["round_s"]) for r in runs)):
        row(f"round {i + 1} (s)", [_at(r["round_s"], i) for r in runs], ".1f")
    for label, figure, fmt in ROWS[5:]:
        row(label, [figure(r) for r in runs], fmt)
    return "\n".join(lines)


# The ratios that several invocations of the same command are compared by (first words of
# ``ROWS`` labels): how much of the growth is stable and how much is the machine's load.
PASS_ROWS = (
    "steady-state round",
    "prototype round: in-app",
    "server peak RSS",
    "flwr-simulation CPU, whole run",
    "bytes per round, up",
    "SuperLink database",
)


def _load_range(runs: Sequence[Mapping[str, Any]]) -> str:
    loads = [float(r["loadavg_1min"]) for r in runs if r.get("loadavg_1min") is not None]
    if not loads:
        return "load not recorded"
    low, high = f"{min(loads):.1f}", f"{max(loads):.1f}"
    return f"load {low}" if low == high else f"load {low} to {high}"


def render_passes(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One column per ``--out`` document (e.g. repeated invocations): for each ``PASS_ROWS``
    figure, the ratio of its largest N to its smallest (peak RSS also as MiB added), with
    the 1-minute load averages its runs saw in the header."""
    if not documents:
        raise ValueError("no documents to compare")
    columns = [sorted(doc["runs"], key=lambda r: r["nodes"]) for _, doc in documents]
    if any(len(runs) < 2 for runs in columns):
        raise ValueError("every document needs at least two sizes to give a ratio")
    sizes = {(runs[-1]["nodes"], runs[0]["nodes"]) for runs in columns}
    if len(sizes) != 1:
        raise ValueError(f"the documents compare different sizes: {sorted(sizes)}")
    (big, small) = sizes.pop()
    header = f"| ratio {big:,} / {small:,} | " + " | ".join(
        f"{name} ({_load_range(runs)})" for (name, _), runs in zip(documents, columns, strict=True)
    )
    lines = [header + " |", "|---" * (len(documents) + 1) + "|"]
    for label, figure, _ in ROWS:
        if not label.startswith(PASS_ROWS):
            continue
        cells = []
        for runs in columns:
            first, last = figure(runs[0]), figure(runs[-1])
            cell = _ratio(last, first)
            if label.startswith("server peak RSS") and first is not None and last is not None:
                cell += f" ({last - first:+.0f} MiB)"
            cells.append(cell)
        lines.append(f"| {label.split(' (')[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kb(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / 1e3


def _mb(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / 1e6


def _mib(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def _at(values: Sequence[float], i: int) -> float | None:
    return values[i] if i < len(values) else None


def _round_bytes(run: Mapping[str, Any], key: str) -> float | None:
    """A training round's bytes (median of rounds 1..R; they are equal without late nodes)."""
    values = [float(b[key]) for r, b in run["bytes"].items() if int(r) >= 1 and key in b]
    return statistics.median(values) if values else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _steady_rest(run: Mapping[str, Any]) -> float | None:
    """Steady-state round time outside the train and evaluate exchanges: the server's own
    work (central evaluation, result files and checkpoint) and the log's delivery."""
    parts = [_get(run, "steady_round_s"), _steady_phase(run, "train")]
    parts.append(_steady_phase(run, "evaluate"))
    if any(p is None for p in parts):
        return None
    return float(parts[0]) - float(parts[1]) - float(parts[2])


def _steady_phase(run: Mapping[str, Any], phase: str) -> float | None:
    values = [
        float(p[phase]["seconds"]) for r, p in run["phases"].items() if int(r) >= 2 and phase in p
    ]
    return statistics.median(values) if values else None


# ---------------------------------------------------------------- processes and /proc
def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # gone, or not ours to read
        return None


def _children_of() -> dict[int, list[int]]:
    """Parent pid -> child pids, from ``/proc/<pid>/stat`` (field 4)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        if stat is None:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # the name may hold spaces
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _cmdline(pid: int) -> str:
    raw = _read(Path(f"/proc/{pid}/cmdline"))
    return "" if raw is None else raw.replace("\0", " ")


def _status_bytes(pid: int, field_name: str) -> int | None:
    text = _read(Path(f"/proc/{pid}/status"))
    return None if text is None else parse_status_kib(text, field_name)


@dataclass
class MemoryWatch:
    """Polls the SuperLink of one FLWR_HOME, its ``flwr-simulation`` child and the Ray
    processes below that, in a thread, until ``stop``."""

    home: Path
    poll: float
    superlink: int | None = None
    simulation: int | None = None
    superlink_hwm: int | None = None
    simulation_hwm: int | None = None
    simulation_cpu_s: float | None = None
    ray_rss_max: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.poll)

    def sample(self) -> None:
        """One poll: find the processes (once), keep each high-water mark as last read."""
        tree = _children_of()
        if self.superlink is None:
            self.superlink = next(
                (
                    pid
                    for pids in tree.values()
                    for pid in pids
                    if "flower-superlink" in _cmdline(pid) and str(self.home) in _cmdline(pid)
                ),
                None,
            )
        if self.superlink is None:
            return
        if (hwm := _status_bytes(self.superlink, "VmHWM")) is not None:
            self.superlink_hwm = hwm
        if self.simulation is None:
            self.simulation = next(
                (p for p in _descendants(tree, self.superlink) if "flwr-simulation" in _cmdline(p)),
                None,
            )
        if self.simulation is None:
            return
        if (hwm := _status_bytes(self.simulation, "VmHWM")) is not None:
            self.simulation_hwm = hwm
        stat = _read(Path(f"/proc/{self.simulation}/stat"))
        if stat is not None:
            self.simulation_cpu_s = parse_stat_cpu_seconds(stat, TICKS)
        below = _descendants(tree, self.simulation)
        if below:
            total = sum(_status_bytes(pid, "VmRSS") or 0 for pid in below)
            self.ray_rss_max = max(self.ray_rss_max or 0, total)


def _descendants(tree: Mapping[int, list[int]], pid: int) -> list[int]:
    found, stack = [], list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(tree.get(child, []))
    return found


def ensure_data(data_dir: Path) -> Path:
    """The unpacked CIFAR-10 JPEG folders, unpacked from the shared archive if missing."""
    if (data_dir / "train").is_dir():
        return data_dir
    if data_dir != DATA_DIR:
        sys.exit(f"--data-dir {data_dir}: no train/ folder (<dir>/{{train,test}}/<class>/*.jpg)")
    if not ARCHIVE.is_file():
        sys.exit(f"bench/scale.py: no {DATA_DIR}/train and no {ARCHIVE} (set CIFAR10_ARCHIVE)")
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
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in config.items())


def run_once(
    nodes: int, rounds: int, fraction: float, data_dir: Path, work: Path, poll: float
) -> dict[str, Any]:
    """One ``flwr run .`` with ``nodes`` SuperNodes; its figures, or exit with its log."""
    home, out, cache = work / "home", work / "run", work / "cache"
    env = flwr_env(home)
    command = [
        str(BIN / "flwr"), "run", ".", "--stream",
        "-c", overrides(nodes, rounds, fraction, data_dir, out, cache),
        "--federation-config", f"num-supernodes={nodes}",
    ]  # fmt: skip
    watch = MemoryWatch(home, poll)
    log: list[str] = []
    marks: list[float] = []
    end: float | None = None
    hwm_before_round1: int | None = None
    cpu_before_round1: float | None = None
    asked: float | None = None  # the prototype round's first line
    start = time.monotonic()
    watch.start()
    try:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            log.append(line)
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
        process.wait()
        finished = time.monotonic()
        watch.sample()
    finally:
        watch.stop()
        status = _run_status(log, env)
        stop_superlink(home)
    text = "".join(log)
    if process.returncode != 0 or len(marks) != rounds or status != "finished:completed":
        kept = Path(tempfile.gettempdir()) / f"pep-fedpt-scale-failed-{nodes}.log"
        kept.write_text(text)
        sys.exit(
            f"flwr run with {nodes} SuperNodes failed (exit {process.returncode}, "
            f"{len(marks)}/{rounds} rounds, status {status}); log kept in {kept}:\n"
            f"{text[-4000:]}"
        )
    metrics = json.loads((out / "metrics.json").read_text())
    phases = phase_times(log)
    rounds_s = round_seconds(marks, end if end is not None else finished)
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
        "steady_round_s": steady_state(rounds_s) if rounds >= 2 else None,
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
    match = re.search(r"Successfully started run (\d+)", "".join(log))
    if match is None:
        return "unknown (no run id in the log)"
    listing = subprocess.run(
        [str(BIN / "flwr"), "ls", "--run-id", match.group(1), "--format", "json"],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    with contextlib.suppress(json.JSONDecodeError, KeyError, IndexError):
        return str(json.loads(listing.stdout)["runs"][0]["status"])
    return f"unknown ({listing.stdout[-300:]}{listing.stderr[-300:]})"


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="100,1000", help="SuperNode counts, e.g. 100,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.05, help="fraction-train/evaluate")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved passes over --nodes")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between /proc reads")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--report", type=Path, help="print the table of a --out file; no run")
    args = parser.parse_args(argv)
    if args.report is not None:
        try:
            document = json.loads(args.report.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"--report {args.report}: not a bench/scale.py --out file ({exc})")
        print(render_table(document))
        return
    try:
        counts = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes {args.nodes!r}: comma-separated whole numbers, e.g. 100,1000")
    if any(n < 2 for n in counts):
        parser.error(f"--nodes {args.nodes!r}: every count must be at least 2")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least 1")
    if not 0 < args.fraction <= 1:
        parser.error(f"--fraction {args.fraction}: in (0, 1]")
    data_dir = ensure_data(args.data_dir.expanduser().resolve())
    runs = []
    with tempfile.TemporaryDirectory(prefix="pep-fedpt-scale-") as tmp:
        for repeat in range(args.repeats):
            for nodes in counts:
                work = Path(tmp) / f"n{nodes}-r{repeat}"
                print(f"--- {nodes} SuperNodes (pass {repeat + 1}/{args.repeats})", flush=True)
                result = run_once(nodes, args.rounds, args.fraction, data_dir, work, args.poll)
                result["repeat"] = repeat
                runs.append(result)
                print(json.dumps(result), flush=True)
    document = {
        "command": " ".join(["python", "bench/scale.py", *(argv or sys.argv[1:])]),
        "setting": {**TINY, "num-server-rounds": args.rounds, "fraction": args.fraction},
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())},
        "runs": runs,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(render_table(document))


if __name__ == "__main__":
    main()
