"""Compare methods on one run config and seed set: one `flwr run` per (method, seed), then
one table (Markdown and CSV) and one plot of accuracy against rounds.

    scripts/compare.sh --run-config conf/X.toml --methods pep-fedpt,fedavg-vpt-deep \\
        --seeds 0,1,2 --out /abs/dir [--num-supernodes 10] [-c "num-server-rounds=20"]

Under ``--out``: ``runs/<method>-s<seed>/`` (the run's own output folder, as the ServerApp
writes it), ``runs/<method>-s<seed>.toml`` (the merged run config it ran with),
``runs/<method>-s<seed>.log`` (flwr's output) and ``runs/<method>-s<seed>.json`` (how it
ended: status, run id, wall time); then ``results.csv`` (one row per run),
``results.md`` (one row per method: mean ± sample std over the seeds) and
``accuracy.png``. A run that does not end ``finished:completed`` is reported as failed and
the comparison goes on; the exit status is then 1. Invoked again with the same settings,
it skips the runs that completed, so an interrupted comparison resumes.

Everything from reading the recorded rounds to the table and the plot is pure functions
over ``metrics.json`` rows (``server_app/results.py``), tested without Flower.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import tomli_w
from flwr.common.config import parse_config_args, unflatten_dict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's packages
    sys.path.insert(0, str(ROOT))

from pep_fedpt.atomic import atomic_write  # noqa: E402
from pep_fedpt.config import METHODS, ConfigError, RunConfig  # noqa: E402

Scalar = bool | int | float | str
Row = Mapping[str, Any]

COMPLETED = "finished:completed"
# Final-round accuracies of the table: (metrics.json key, column title).
ACCURACIES = (
    ("evaluate/global-accuracy", "global acc"),
    ("evaluate/mean-client-accuracy", "mean client acc"),
    ("evaluate/worst-client-accuracy", "worst client acc"),
    ("evaluate/held-out-accuracy", "held-out acc"),
    ("server/accuracy", "server acc"),
)
# The plot's curve: the first of these that the runs recorded.
PLOT_KEYS = (
    ("evaluate/mean-client-accuracy", "mean client accuracy"),
    ("evaluate/global-accuracy", "global accuracy"),
    ("server/accuracy", "server accuracy"),
)
BYTES_DOWN, BYTES_UP = "bytes-down", "bytes-up"  # strategies/traffic.py


# ---------------------------------------------------------------------- arguments
def parse_methods(text: str) -> list[str]:
    """Comma-separated method names, each one of ``pep_fedpt.config.METHODS``."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(
            f"--methods {text!r}: unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
            f"accepted: {', '.join(METHODS)}"
        )
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods {text!r} names a method twice")
    return methods


def parse_seeds(text: str) -> list[int]:
    """Comma-separated integer seeds."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"--seeds {text!r}: write integers separated by commas, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: give at least one seed, each once")
    return seeds


def base_config(run_config: Path | None, overrides: str) -> dict[str, Scalar]:
    """The flat run config shared by every run: the TOML file, then ``-c`` overrides,
    parsed as ``flwr run`` parses them (``flwr.common.config.parse_config_args``)."""
    flat: dict[str, Scalar] = {}
    if run_config is not None:
        if run_config.suffix != ".toml" or not run_config.is_file():
            raise ConfigError(f"--run-config {str(run_config)!r}: no such .toml file")
        try:
            flat.update(parse_config_args([str(run_config)]))
        except ValueError as exc:  # TOML syntax
            raise ConfigError(f"--run-config {str(run_config)!r}: {exc}") from None
    if overrides.strip():
        try:
            flat.update(parse_config_args([overrides]))
        except click.ClickException as exc:
            raise ConfigError(f"-c {overrides!r}: {exc.message}") from None
    return flat


@dataclass(frozen=True)
class RunSpec:
    """One (method, seed) run and where its files go."""

    method: str
    seed: int
    out: Path

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.name

    @property
    def config_path(self) -> Path:
        return self.out / "runs" / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.out / "runs" / f"{self.name}.log"

    @property
    def status_path(self) -> Path:
        return self.out / "runs" / f"{self.name}.json"


def run_config_for(base: Mapping[str, Scalar], spec: RunSpec) -> dict[str, Scalar]:
    """``base`` with this run's method, seed and output folder, checked by ``RunConfig``
    (so that a typo fails before the first run, not after hours)."""
    flat = {
        **base,
        "method": spec.method,
        "seed": spec.seed,
        "output-dir": str(spec.run_dir),
        "resume-from": "",
    }
    RunConfig.from_flat({**RunConfig().to_flat(), **flat})
    return flat


def config_toml(flat: Mapping[str, Scalar]) -> str:
    """A TOML file for ``flwr run --run-config`` (nested tables; flwr flattens them)."""
    return tomli_w.dumps(unflatten_dict(dict(flat)))


# ---------------------------------------------------------------------- resume
@dataclass
class Outcome:
    """How one run ended, and its recorded rounds (``metrics.json``)."""

    method: str
    seed: int
    status: str
    wall_s: float | None = None
    run_id: str = ""
    log: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def already_completed(spec: RunSpec, flat: Mapping[str, Scalar]) -> bool:
    """Whether an earlier invocation completed this run with this exact config."""
    try:
        status = json.loads(spec.status_path.read_text())
    except (OSError, ValueError):
        return False
    return (
        status.get("status") == COMPLETED
        and status.get("config") == dict(flat)
        and (spec.run_dir / "metrics.json").is_file()
    )


def load_outcome(spec: RunSpec) -> Outcome:
    """The outcome recorded for ``spec`` (``missing`` if it never ran)."""
    try:
        status = json.loads(spec.status_path.read_text())
    except (OSError, ValueError):
        return Outcome(spec.method, spec.seed, "missing")
    rows: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError):
        rows = json.loads((spec.run_dir / "metrics.json").read_text())
    return Outcome(
        spec.method,
        spec.seed,
        str(status["status"]),
        status.get("wall-s"),
        str(status.get("run-id", "")),
        str(status.get("log", "")),
        rows,
    )


# ---------------------------------------------------------------------- running
def flwr_bin() -> str:
    """This virtualenv's ``flwr`` (the one next to the interpreter), else PATH's."""
    local = Path(sys.executable).parent / "flwr"
    return str(local) if local.exists() else "flwr"


def superlink_pids() -> set[int]:
    """Local SuperLinks of this FLWR_HOME (``flwr run`` starts one and leaves it running)."""
    home = os.environ.get("FLWR_HOME", str(Path.home() / ".flwr"))
    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{re.escape(home)}"], capture_output=True, text=True
    )
    return {int(pid) for pid in found.stdout.split()}


def stop_processes(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def execute(spec: RunSpec, flat: Mapping[str, Scalar], federation_config: str) -> Outcome:
    """One ``flwr run`` with the merged config; its status from ``flwr ls``."""
    spec.status_path.unlink(missing_ok=True)  # no outcome until this attempt has one
    if spec.run_dir.exists():  # an interrupted or failed attempt: start clean
        shutil.rmtree(spec.run_dir)
    spec.config_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(spec.config_path, config_toml(flat).encode())
    command = [
        flwr_bin(),
        "run",
        str(ROOT),
        "--stream",
        "--run-config",
        str(spec.config_path),
        "--federation-config",
        federation_config,
    ]
    print(f"compare: {spec.name}: {' '.join(command)}", flush=True)
    start = time.monotonic()
    with spec.log_path.open("w") as log:
        returncode = subprocess.run(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    wall = time.monotonic() - start
    text = spec.log_path.read_text(errors="replace")
    found = re.search(r"\brun (\d{6,})", text)
    run_id = found.group(1) if found else ""
    if not run_id:
        status = f"failed (flwr run exited {returncode}, no run id)"
    else:
        listing = subprocess.run(
            [flwr_bin(), "ls", "--run-id", run_id, "--format", "json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            status = str(json.loads(listing.stdout)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            status = f"failed (flwr ls: {listing.stdout.strip() or listing.stderr.strip()})"
    record = {
        "method": spec.method,
        "seed": spec.seed,
        "status": status,
        "run-id": run_id,
        "wall-s": wall,
        "log": str(spec.log_path),
        "config": dict(flat),
    }
    atomic_write(spec.status_path, json.dumps(record, indent=2).encode())
    print(f"compare: {spec.name}: {status} in {wall:.1f} s (log: {spec.log_path})", flush=True)
    return load_outcome(spec)


# ---------------------------------------------------------------------- the table
def final_value(rows: Sequence[Row], key: str) -> float:
    """``key`` in the last round that recorded it (NaN if none did)."""
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return math.nan


def bytes_per_round(rows: Sequence[Row], key: str) -> float:
    """All bytes of ``key`` (census in round 0 included) over the federated rounds (≥ 1)."""
    rounds = [row for row in rows if row["round"] >= 1]
    if not rounds or not any(key in row for row in rows):
        return math.nan
    return sum(float(row.get(key, 0)) for row in rows) / len(rounds)


def run_row(outcome: Outcome) -> dict[str, Any]:
    """One line of results.csv: the run's final accuracies, bytes, wall time and status."""
    row: dict[str, Any] = {
        "method": outcome.method,
        "seed": outcome.seed,
        "status": outcome.status,
        "rounds": max((int(r["round"]) for r in outcome.rows), default=0),
    }
    for key, _ in ACCURACIES:
        row[key] = final_value(outcome.rows, key)
    for key in (BYTES_DOWN, BYTES_UP):
        row[f"{key}-per-round"] = bytes_per_round(outcome.rows, key)
        row[f"{key}-total"] = sum(float(r.get(key, 0)) for r in outcome.rows)
    row["wall-s"] = outcome.wall_s if outcome.wall_s is not None else math.nan
    row["log"] = outcome.log
    return row


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (std NaN below two)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), std


@dataclass
class MethodRow:
    """One method's line of results.md: (mean, std) over its completed seeds per column."""

    method: str
    completed: int
    runs: int
    stats: dict[str, tuple[float, float]]


TABLE_KEYS = (
    *(key for key, _ in ACCURACIES),
    f"{BYTES_DOWN}-per-round",
    f"{BYTES_UP}-per-round",
    "wall-s",
)


def method_rows(outcomes: Sequence[Outcome], methods: Sequence[str]) -> list[MethodRow]:
    """Per method (in ``methods`` order), mean ± std over its completed runs."""
    table = []
    for method in methods:
        mine = [o for o in outcomes if o.method == method]
        done = [run_row(o) for o in mine if o.completed]
        stats = {key: mean_std([float(r[key]) for r in done]) for key in TABLE_KEYS}
        table.append(MethodRow(method, len(done), len(mine), stats))
    return table


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units)."""
    if not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _cell(stat: tuple[float, float], fmt: str) -> str:
    mean, std = stat
    if not math.isfinite(mean):
        return "-"
    return format(mean, fmt) if not math.isfinite(std) else f"{mean:{fmt}} ± {std:{fmt}}"


def markdown_table(outcomes: Sequence[Outcome], methods: Sequence[str]) -> str:
    """results.md: one row per method, then every run that failed with its log."""
    titles = [
        "method",
        "runs",
        *(title for _, title in ACCURACIES),
        "down / round",
        "up / round",
        "wall time (s)",
    ]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in method_rows(outcomes, methods):
        if row.completed == 0:
            cells = ["failed"] * (len(titles) - 2)
        else:
            cells = [_cell(row.stats[key], ".4f") for key, _ in ACCURACIES]
            for key in (f"{BYTES_DOWN}-per-round", f"{BYTES_UP}-per-round"):
                mean, _ = row.stats[key]
                cells.append(human_bytes(mean))
            cells.append(_cell(row.stats["wall-s"], ".1f"))
        lines.append(f"| {row.method} | {row.completed}/{row.runs} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Final-round accuracies, mean ± sample std over the completed seeds; bytes: array "
        "payloads per federated round (the census before round 1 included), mean over seeds; "
        "wall time: the whole `flwr run`, simulation start-up included."
    )
    failed = [o for o in outcomes if not o.completed]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {o.method} seed {o.seed}: {o.status} (log: {o.log or '-'})" for o in failed]
    return "\n".join(lines) + "\n"


def results_csv(outcomes: Sequence[Outcome]) -> str:
    """results.csv: one row per run, raw numbers (bytes in bytes), empty where unrecorded."""
    rows = [run_row(o) for o in outcomes]
    columns = list(rows[0]) if rows else ["method", "seed", "status"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            ["" if isinstance(v, float) and not math.isfinite(v) else v for v in row.values()]
        )
    return out.getvalue()


# ---------------------------------------------------------------------- the plot
@dataclass
class Curve:
    rounds: list[int]
    mean: list[float]
    std: list[float]  # 0 where fewer than two seeds recorded the round


def plot_key(outcomes: Sequence[Outcome]) -> tuple[str, str] | None:
    """The first of ``PLOT_KEYS`` that some completed run recorded."""
    for key, label in PLOT_KEYS:
        if any(key in row for o in outcomes if o.completed for row in o.rows):
            return key, label
    return None


def accuracy_curves(
    outcomes: Sequence[Outcome], methods: Sequence[str], key: str
) -> dict[str, Curve]:
    """Per method, ``key`` against the round: mean and sample std over completed seeds."""
    curves = {}
    for method in methods:
        by_round: dict[int, list[float]] = {}
        for o in outcomes:
            if o.method == method and o.completed:
                for row in o.rows:
                    if isinstance(row.get(key), int | float):
                        by_round.setdefault(int(row["round"]), []).append(float(row[key]))
        if by_round:
            rounds = sorted(by_round)
            stats = [mean_std(by_round[r]) for r in rounds]
            curves[method] = Curve(
                rounds,
                [m for m, _ in stats],
                [s if math.isfinite(s) else 0.0 for _, s in stats],
            )
    return curves


def comparison_plot(curves: Mapping[str, Curve], ylabel: str, title: str) -> bytes:
    """PNG: one line per method with a ± std band."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    for method, curve in curves.items():
        (line,) = ax.plot(curve.rounds, curve.mean, marker="o", label=method)
        low = [m - s for m, s in zip(curve.mean, curve.std, strict=True)]
        high = [m + s for m, s in zip(curve.mean, curve.std, strict=True)]
        ax.fill_between(curve.rounds, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    rounds = sorted({r for curve in curves.values() for r in curve.rounds})
    if len(rounds) == 1:  # a lone point: integer ticks around it, not a zoom to ±0.05
        ax.set_xlim(rounds[0] - 1, rounds[0] + 1)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if ax.lines:
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def write_results(out: Path, outcomes: Sequence[Outcome], methods: Sequence[str]) -> None:
    """results.csv, results.md and accuracy.png under ``out``."""
    atomic_write(out / "results.csv", results_csv(outcomes).encode())
    atomic_write(out / "results.md", markdown_table(outcomes, methods).encode())
    chosen = plot_key(outcomes)
    if chosen is not None:
        key, label = chosen
        seeds = sorted({o.seed for o in outcomes})
        which = f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
        title = f"{label}, mean ± std over {which}"
        png = comparison_plot(accuracy_curves(outcomes, methods, key), label, title)
        atomic_write(out / "accuracy.png", png)


# ---------------------------------------------------------------------- main
def plan(
    methods: Sequence[str], seeds: Sequence[int], out: Path, base: Mapping[str, Scalar]
) -> list[tuple[RunSpec, dict[str, Scalar]]]:
    """Every (method, seed) with its merged config, all checked before anything runs."""
    return [
        (spec, run_config_for(base, spec))
        for method in methods
        for seed in seeds
        for spec in [RunSpec(method, seed, out)]
    ]


def compare(
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    base: Mapping[str, Scalar],
    federation_config: str,
) -> list[Outcome]:
    """Run what is not completed yet, then write the results; the SuperLinks this started
    are stopped at the end."""
    runs = plan(methods, seeds, out, base)
    out.mkdir(parents=True, exist_ok=True)
    before = superlink_pids()
    outcomes = []
    try:
        for spec, flat in runs:
            if already_completed(spec, flat):
                print(f"compare: {spec.name}: completed earlier, skipped", flush=True)
                outcomes.append(load_outcome(spec))
            else:
                outcomes.append(execute(spec, flat, federation_config))
            write_results(out, outcomes, methods)  # a partial table while it runs
    finally:
        stop_processes(superlink_pids() - before)
    return outcomes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run several methods over seeds on one run config; write a table and a plot."
    )
    parser.add_argument("--run-config", type=Path, help="TOML run config (e.g. conf/X.toml)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated, from: {', '.join(METHODS)} (default: all)",
    )
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder for runs and results")
    parser.add_argument("--num-supernodes", type=int, default=10, help="simulated clients")
    parser.add_argument(
        "--federation-config",
        default="",
        help='more of flwr\'s --federation-config, e.g. "client-resources-num-gpus=0.25"',
    )
    parser.add_argument(
        "-c", "--overrides", default="", help='run-config overrides, e.g. "num-server-rounds=20"'
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        methods = parse_methods(args.methods)
        seeds = parse_seeds(args.seeds)
        if args.num_supernodes < 1:
            raise ConfigError(f"--num-supernodes {args.num_supernodes}: must be >= 1")
        base = base_config(args.run_config, args.overrides)
        out = args.out.resolve()
        plan(methods, seeds, out, base)  # fail on a bad config before any run
    except ConfigError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    federation = f"num-supernodes={args.num_supernodes} {args.federation_config}".strip()
    outcomes = compare(methods, seeds, out, base, federation)
    failed = [o for o in outcomes if not o.completed]
    print(f"compare: {len(outcomes) - len(failed)}/{len(outcomes)} runs completed; see {out}")
    print((out / "results.md").read_text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
