"""Compare methods on one run config and seed set: one `flwr run` per (method, seed), with
an optional grid search per method first; the tables and the plot are ``bench/report.py``'s.

    scripts/compare.sh --run-config conf/X.toml --methods pep-fedpt,fedavg-vpt-deep \\
        --seeds 0,1,2 --out /abs/dir [--num-supernodes 10] [-c "num-server-rounds=20"] \\
        [--grid "train.lr=0.01,0.05,0.25,1"] [--val-fraction 0.1]

Under ``--out``: ``comparison.json`` (what was asked: methods, seeds, grid), and per final
run ``runs/<method>-s<seed>/`` (the run's own output folder, as the ServerApp writes it),
``runs/<method>-s<seed>.toml`` (the merged run config it ran with),
``runs/<method>-s<seed>.log`` (flwr's output) and ``runs/<method>-s<seed>.json`` (how it
ended: status, run id, wall time, config); then ``results.csv``, ``results.md`` and
``accuracy.png`` (``bench/report.py``, which regenerates them from these files alone).

With ``--grid`` (``bench/grid.py``), each method first runs every grid point on the first
seed, with ``data.val-fraction`` (``--val-fraction``, default 0.1) carving a validation
split out of each client's training split, into ``grid/<method>-g<i>-s<seed>...``; it keeps
the point with the best last-round validation mean client accuracy (on a tie, the earlier
point), then runs that point on every seed, scored on test. The final runs keep the same
validation carve, so the first seed's final run is the chosen grid run itself (copied into
``runs/``, not run twice: a run is deterministic given its config).

A run that does not end ``finished:completed`` is reported as failed and the comparison
goes on; the exit status is then 1. Invoked again with the same settings, it skips the runs
that completed with the same config, so an interrupted comparison resumes. Ctrl-C, SIGTERM
and SIGHUP stop the run under way together with the SuperLink and simulation it started
(``pep_fedpt.local_flwr``), say so in one line and exit 130, 143 or 129.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import tomli_w
from flwr.common.config import parse_config_args, unflatten_dict

from bench.comma import BadList, parse_choices, parse_ints
from bench.grid import Grid, Point, grid_points, parse_grid
from bench.report import (
    COMPARISON,
    COMPLETED,
    FINAL,
    GRID,
    Outcome,
    Selection,
    comparison_document,
    read_outcome,
    row_labels,
    run_name,
    write_results,
)
from pep_fedpt import local_flwr
from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.methods.registry import METHODS, method_for

ROOT = Path(__file__).resolve().parents[1]
Scalar = bool | int | float | str
VAL_FRACTION_KEY = "data.val-fraction"
DEFAULT_VAL_FRACTION = 0.1  # with --grid and no --val-fraction


# ---------------------------------------------------------------------- arguments
def parse_methods(text: str) -> list[str]:
    """Comma-separated method names, each one of ``pep_fedpt.methods.registry.METHODS``."""
    try:
        return parse_choices(text, METHODS, "--methods")
    except BadList as exc:
        raise ConfigError(str(exc)) from None


def parse_seeds(text: str) -> list[int]:
    """Comma-separated integer seeds, each once."""
    try:
        return parse_ints(text, "--seeds", example="0,1,2")
    except BadList as exc:
        raise ConfigError(str(exc)) from None


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
    """One run (method, seed, and a grid point for the grid's runs) and where its files go."""

    method: str
    seed: int
    out: Path
    point: Point = ()  # run-config values on top of the base config
    grid_index: int | None = None  # a selection run: its index in the grid
    variant: int | None = None  # a sweep's run: its point's index in the sweep

    @property
    def name(self) -> str:
        return run_name(self.method, self.seed, self.grid_index, self.variant)

    @property
    def stage(self) -> str:
        return FINAL if self.grid_index is None else GRID

    @property
    def run_dir(self) -> Path:
        return self.out / self.stage / self.name

    @property
    def config_path(self) -> Path:
        return self.out / self.stage / f"{self.name}.toml"

    @property
    def log_path(self) -> Path:
        return self.out / self.stage / f"{self.name}.log"

    @property
    def status_path(self) -> Path:
        return self.out / self.stage / f"{self.name}.json"


def run_config_for(base: Mapping[str, Scalar], spec: RunSpec) -> dict[str, Scalar]:
    """``base`` with this run's grid point, method, seed and output folder, checked by
    ``RunConfig`` and the method's registration (so that a typo fails before the first run,
    not after hours)."""
    flat = {
        **base,
        **dict(spec.point),
        "method": spec.method,
        "seed": spec.seed,
        "output-dir": str(spec.run_dir),
        "resume-from": "",
    }
    method_for(RunConfig.from_flat({**RunConfig().to_flat(), **flat}))  # and the method's
    return flat


def config_toml(flat: Mapping[str, Scalar]) -> str:
    """A TOML file for ``flwr run --run-config`` (nested tables; flwr flattens them)."""
    return tomli_w.dumps(unflatten_dict(dict(flat)))


# ---------------------------------------------------------------------- resume
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
    return read_outcome(
        spec.out,
        spec.stage,
        spec.name,
        spec.method,
        spec.seed,
        spec.point,
        variant=spec.variant is not None,
    )


def adopt(source: RunSpec, spec: RunSpec, flat: Mapping[str, Scalar]) -> Outcome:
    """Record the completed run ``source`` as ``spec`` (the same config but its folder):
    the chosen grid run becomes the first seed's final run without running again."""
    spec.status_path.unlink(missing_ok=True)
    if spec.run_dir.exists():
        shutil.rmtree(spec.run_dir)
    spec.run_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source.run_dir, spec.run_dir)
    if source.log_path.is_file():
        shutil.copyfile(source.log_path, spec.log_path)
    atomic_write(spec.config_path, config_toml(flat).encode())
    record = json.loads(source.status_path.read_text())
    record.update({"log": str(spec.log_path), "config": dict(flat), "copied-from": source.name})
    atomic_write(spec.status_path, json.dumps(record, indent=2).encode())
    print(f"compare: {spec.name}: the chosen grid run {source.name}, copied", flush=True)
    return load_outcome(spec)


# ---------------------------------------------------------------------- running
def our_superlinks() -> set[int]:
    """The local SuperLinks that this process's ``flwr run`` starts or uses: those of its
    FLWR_HOME on its port (another comparison in the same checkout has ports of its own)."""
    return local_flwr.superlinks(local_flwr.home_of(), local_flwr.port_of())


def execute(spec: RunSpec, flat: Mapping[str, Scalar], federation_config: str) -> Outcome:
    """One ``flwr run`` with the merged config; its status from ``flwr ls``."""
    spec.status_path.unlink(missing_ok=True)  # no outcome until this attempt has one
    if spec.run_dir.exists():  # an interrupted or failed attempt: start clean
        shutil.rmtree(spec.run_dir)
    spec.config_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(spec.config_path, config_toml(flat).encode())
    args = ["--run-config", str(spec.config_path), "--federation-config", federation_config]
    print(f"compare: {spec.name}: {' '.join(local_flwr.run_command(ROOT, *args))}", flush=True)
    start = time.monotonic()
    run = local_flwr.run_to_end(ROOT, *args, log_path=spec.log_path)
    wall = time.monotonic() - start
    record = {
        "method": spec.method,
        "seed": spec.seed,
        "status": run.status,
        "run-id": run.run_id,
        "wall-s": wall,
        "log": str(spec.log_path),
        "config": dict(flat),
    }
    atomic_write(spec.status_path, json.dumps(record, indent=2).encode())
    print(f"compare: {spec.name}: {run.status} in {wall:.1f} s (log: {spec.log_path})", flush=True)
    return load_outcome(spec)


# ---------------------------------------------------------------------- main
def plan(
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    base: Mapping[str, Scalar],
    point: Point = (),
) -> list[tuple[RunSpec, dict[str, Scalar]]]:
    """Every (method, seed) with its merged config, all checked before anything runs."""
    return [
        (spec, run_config_for(base, spec))
        for method in methods
        for seed in seeds
        for spec in [RunSpec(method, seed, out, point)]
    ]


def grid_plan(
    method: str, seed: int, out: Path, base: Mapping[str, Scalar], grid: Grid
) -> list[tuple[RunSpec, dict[str, Scalar]]]:
    """One method's selection runs: every grid point on ``seed``, in grid order."""
    return [
        (spec, run_config_for(base, spec))
        for index, point in enumerate(grid_points(grid))
        for spec in [RunSpec(method, seed, out, point, index)]
    ]


def sweep_plan(
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    base: Mapping[str, Scalar],
    sweep: Grid,
) -> list[tuple[RunSpec, dict[str, Scalar]]]:
    """Every (method, sweep point, seed): each point a row of its own (ablations)."""
    return [
        (spec, run_config_for(base, spec))
        for method in methods
        for index, point in enumerate(grid_points(sweep))
        for seed in seeds
        for spec in [RunSpec(method, seed, out, point, variant=index)]
    ]


def run_or_skip(spec: RunSpec, flat: Mapping[str, Scalar], federation_config: str) -> Outcome:
    """The run's outcome: from its files if it completed earlier with this config."""
    if already_completed(spec, flat):
        print(f"compare: {spec.name}: completed earlier, skipped", flush=True)
        return load_outcome(spec)
    return execute(spec, flat, federation_config)


def compare(
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    base: Mapping[str, Scalar],
    federation_config: str,
    grid: Grid | None = None,
    sweep: Grid | None = None,
) -> list[Outcome]:
    """Per method: its grid (if any) on the first seed, then the chosen point (or the base
    config) on every seed; with a sweep instead, every sweep point on every seed. Only what
    has not completed yet runs. The results are rewritten after every run; the SuperLinks
    this started are stopped at the end."""
    if grid and sweep:
        raise ConfigError("--grid and --sweep do not combine: select first, then sweep")
    out.mkdir(parents=True, exist_ok=True)
    value = base.get(VAL_FRACTION_KEY)
    val_fraction = float(value) if isinstance(value, int | float) else None
    document = comparison_document(methods, seeds, grid, val_fraction, sweep)
    atomic_write(out / COMPARISON, json.dumps(document, indent=2).encode())
    if sweep:
        return _run_sweep(
            out,
            federation_config,
            sweep_plan(methods, seeds, out, base, sweep),
            row_labels(methods, sweep),
        )
    selection = None
    if grid:
        selection = Selection(grid, seeds[0], val_fraction or 0.0, {})
    points = grid_points(grid) if grid else []
    before = our_superlinks()
    outcomes: list[Outcome] = []
    try:
        for method in methods:
            point: Point = ()
            if selection is not None:
                selection.outcomes[method] = runs = []
                for spec, flat in grid_plan(method, seeds[0], out, base, selection.grid):
                    runs.append(run_or_skip(spec, flat, federation_config))
                    write_results(out, outcomes, methods, selection)
                chosen = selection.chosen(method)
                if chosen is None:
                    reason = "not run (no grid point completed with a validation score)"
                    outcomes += [Outcome(method, seed, reason) for seed in seeds]
                    continue
                point = points[chosen]
            for spec, flat in plan([method], seeds, out, base, point):
                if selection is not None and spec.seed == seeds[0]:
                    source = RunSpec(method, spec.seed, out, point, points.index(point))
                    outcome = (
                        load_outcome(spec)
                        if already_completed(spec, flat)
                        else adopt(source, spec, flat)
                    )
                else:
                    outcome = run_or_skip(spec, flat, federation_config)
                outcomes.append(outcome)
                write_results(out, outcomes, methods, selection)
    finally:
        local_flwr.stop_superlinks(our_superlinks() - before)
    write_results(out, outcomes, methods, selection)
    return outcomes


def _run_sweep(
    out: Path,
    federation_config: str,
    runs: Sequence[tuple[RunSpec, dict[str, Scalar]]],
    labels: Sequence[str],
) -> list[Outcome]:
    """Every run of a sweep, in order; the table has a row per (method, point)."""
    before = our_superlinks()
    outcomes: list[Outcome] = []
    try:
        for spec, flat in runs:
            outcomes.append(run_or_skip(spec, flat, federation_config))
            write_results(out, outcomes, labels)
    finally:
        local_flwr.stop_superlinks(our_superlinks() - before)
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
    parser.add_argument(
        "--grid",
        default="",
        help='per-method selection grid, e.g. "train.lr=0.01,0.05 train.prompt-lr=1,5" '
        "(a Cartesian product, run on the first seed, scored on validation)",
    )
    parser.add_argument(
        "--sweep",
        default="",
        help="every point on every seed, a table row each (ablations), e.g. "
        '"prompt.tau=0.05,0.1,0.3"',
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help=f"data.val-fraction of every run (default: {DEFAULT_VAL_FRACTION} with --grid, "
        "else the run config's)",
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
        grid = parse_grid(args.grid) if args.grid.strip() else None
        sweep = parse_grid(args.sweep, "--sweep") if args.sweep.strip() else None
        if grid and sweep:
            raise ConfigError("--grid and --sweep do not combine: select first, then sweep")
        val_fraction = args.val_fraction
        if val_fraction is None and grid:
            val_fraction = DEFAULT_VAL_FRACTION
        if val_fraction is not None:
            if grid and not 0.0 < val_fraction < 1.0:
                raise ConfigError(
                    f"--val-fraction {val_fraction}: a grid is scored on validation, so it "
                    "must be in (0, 1)"
                )
            base[VAL_FRACTION_KEY] = val_fraction
        out = args.out.resolve()
        plan(methods, seeds, out, base)  # fail on a bad config before any run
        for method in methods:
            if grid:
                grid_plan(method, seeds[0], out, base, grid)
        if sweep:
            sweep_plan(methods, seeds, out, base, sweep)
    except ConfigError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    federation = f"num-supernodes={args.num_supernodes} {args.federation_config}".strip()
    try:
        with local_flwr.stop_on_signals():
            outcomes = compare(methods, seeds, out, base, federation, grid, sweep)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM or SIGHUP
        print(
            f"compare: {local_flwr.signal_name(stop)}: stopped, and the SuperLink and "
            f"simulation of the run under way with it; the completed runs are kept in {out}: "
            "the same command again skips them and goes on",
            file=sys.stderr,
            flush=True,
        )
        return local_flwr.exit_code(stop)
    failed = [o for o in outcomes if not o.completed]
    print(f"compare: {len(outcomes) - len(failed)}/{len(outcomes)} runs completed; see {out}")
    print((out / "results.md").read_text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
