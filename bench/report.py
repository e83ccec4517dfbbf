"""The report of a comparison: every table and the plot, regenerated from the result files.

    .venv/bin/python -m bench.report OUT

reads what ``bench/compare.py`` left under ``OUT`` (``comparison.json``: methods, seeds,
grid; per run ``<stage>/<name>.json`` (how it ended), ``<stage>/<name>/metrics.json`` (its
rounds) and its two state files, or in a collected folder (``bench/collect.py``) its
``drift.json`` (``bench/prompt_drift.py``)) and writes ``results.md``,
``results.csv`` and ``accuracy.png``. No number in them is typed by hand: run it again
after editing a run, and the tables follow.

``results.md``: one row per method (final-round accuracies, mean ± sample std over the
completed seeds, beside its prompt drift, bytes per round and wall time); with a grid, the
selection table (every method's validation score at every grid point, the chosen one in
bold); then every final run with links to its config, log and folder; then the failures.
``results.csv``: one raw row per run, grid runs included (``stage`` = ``grid``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.grid import Grid, Point, grid_points, point_label, select
from bench.prompt_drift import DriftSummary, recorded_drift, summarize
from pep_fedpt.atomic import atomic_write
from pep_fedpt.local_flwr import COMPLETED
from server_app.metric_keys import (
    ACCURACIES,
    BY_KEY,
    CCMP_DIAGNOSTICS,
    VALIDATION,
    Accuracy,
)

Row = Mapping[str, Any]

COMPARISON = "comparison.json"  # what bench/compare.py was asked: methods, seeds, grid
FINAL, GRID = "runs", "grid"  # the folders of the final runs and of the grid runs
# The plot's curve: the first of these that the runs recorded.
PLOT_KEYS = tuple(
    BY_KEY[k]
    for k in ("evaluate/mean-client-accuracy", "evaluate/global-accuracy", "server/accuracy")
)
BYTES_DOWN, BYTES_UP = "bytes-down", "bytes-up"  # strategies/traffic.py
DRIFT_COLUMNS = (
    ("prompt-drift-median", "prompt drift (median)"),
    ("prompt-drift-max", "prompt drift (max)"),
    ("head-change", "head ‖Δ‖"),
)


# ---------------------------------------------------------------------- one run
@dataclass
class Outcome:
    """How one run ended, its recorded rounds (``metrics.json``) and its drift."""

    method: str
    seed: int
    status: str
    wall_s: float | None = None
    run_id: str = ""
    log: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    stage: str = FINAL
    point: Point = ()  # the grid values it ran with (none without a grid)
    name: str = ""  # the file stem under <stage>/; "" = <method>-s<seed>
    drift: DriftSummary | None = None
    variant: bool = False  # a sweep's run: a row of its own per (method, point)

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    @property
    def label(self) -> str:
        """The table row it counts in: its method, or ``method [point]`` in a sweep."""
        return f"{self.method} [{point_label(self.point)}]" if self.variant else self.method

    @property
    def path(self) -> str:
        """``<stage>/<name>``, relative to the comparison folder."""
        return f"{self.stage}/{self.name or f'{self.method}-s{self.seed}'}"


def read_outcome(
    out: Path,
    stage: str,
    name: str,
    method: str,
    seed: int,
    point: Point = (),
    variant: bool = False,
) -> Outcome:
    """The outcome recorded under ``out/<stage>/<name>`` (``missing`` if it never ran)."""
    folder = out / stage
    try:
        status = json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError):
        return Outcome(
            method, seed, "missing", stage=stage, point=point, name=name, variant=variant
        )
    rows: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError):
        rows = json.loads((folder / name / "metrics.json").read_text())
    drift = recorded_drift(folder / name)
    return Outcome(
        method,
        seed,
        str(status["status"]),
        status.get("wall-s"),
        str(status.get("run-id", "")),
        relative_log(out, stage, name, str(status.get("log", ""))),
        rows,
        stage=stage,
        point=point,
        name=name,
        drift=summarize(drift) if drift is not None else None,
        variant=variant,
    )


def relative_log(out: Path, stage: str, name: str, log: str) -> str:
    """A run's log as the tables show it: ``<stage>/<name>.log``, relative to the
    comparison folder, when it is there (where compare.py writes it), so that the tables
    do not depend on where the folder lies (moved, or collected by bench/collect.py);
    else the path as recorded."""
    if log and Path(log).name == f"{name}.log" and (out / stage / f"{name}.log").is_file():
        return f"{stage}/{name}.log"
    return log


def final_value(rows: Sequence[Row], key: str) -> float:
    """``key`` in the last round that recorded it (NaN if none did)."""
    for row in reversed(rows):
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return math.nan


def bytes_per_round(rows: Sequence[Row], key: str) -> float:
    """All bytes of ``key`` (the prototype round, round 0, included) over the federated
    rounds (≥ 1)."""
    rounds = [row for row in rows if row["round"] >= 1]
    if not rounds or not any(key in row for row in rows):
        return math.nan
    return sum(float(row.get(key, 0)) for row in rows) / len(rounds)


def validation_score(outcome: Outcome) -> float:
    """What grid selection compares: the last round's validation mean client accuracy of
    a completed run (NaN otherwise)."""
    return final_value(outcome.rows, VALIDATION.key) if outcome.completed else math.nan


def run_row(outcome: Outcome) -> dict[str, Any]:
    """One line of results.csv: the run's final accuracies, drift, bytes, wall time, status."""
    row: dict[str, Any] = {
        "method": outcome.label,
        "seed": outcome.seed,
        "status": outcome.status,
        "rounds": max((int(r["round"]) for r in outcome.rows), default=0),
    }
    for accuracy in ACCURACIES:
        row[accuracy.key] = final_value(outcome.rows, accuracy.key)
    row[VALIDATION.key] = final_value(outcome.rows, VALIDATION.key)
    for accuracy in CCMP_DIAGNOSTICS:
        row[accuracy.key] = final_value(outcome.rows, accuracy.key)
    drift = outcome.drift
    row["prompt-drift-median"] = drift.prompt_median if drift else math.nan
    row["prompt-drift-max"] = drift.prompt_max if drift else math.nan
    row["head-change"] = drift.head_change if drift else math.nan
    for key in (BYTES_DOWN, BYTES_UP):
        row[f"{key}-per-round"] = bytes_per_round(outcome.rows, key)
        row[f"{key}-total"] = sum(float(r.get(key, 0)) for r in outcome.rows)
    row["wall-s"] = outcome.wall_s if outcome.wall_s is not None else math.nan
    row["log"] = outcome.log
    return row


def diagnostics(outcomes: Sequence[Outcome]) -> tuple[Accuracy, ...]:
    """The CCMP-as-classifier columns, if any of ``outcomes`` recorded the diagnostic (a
    PEP-FedPT run since it exists); none otherwise, so older tables stay as they were."""
    recorded = any(a.key in row for o in outcomes for row in o.rows for a in CCMP_DIAGNOSTICS)
    return CCMP_DIAGNOSTICS if recorded else ()


DIAGNOSTIC_NOTE = (
    "CCMP argmax: PEP-FedPT's zero-training diagnostic, the accuracy of its mixing weights "
    "used directly as a classifier (argmax over c of cos(z(x), μ_c) / τ + log π(c), no "
    "prompt or head), with each client's own prior and with a uniform one, mean over the "
    'training clients (held-out: pooled over the held-out clients); "-" for the other '
    "methods."
)


# ---------------------------------------------------------------------- per method
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
    started: bool  # some run of it started: with none completed, it failed (else: not run)

    @property
    def missing(self) -> str:
        """What a row with no completed run shows in each cell."""
        return "failed" if self.started else "not run"


TABLE_KEYS = (
    *(a.key for a in ACCURACIES),
    *(a.key for a in CCMP_DIAGNOSTICS),
    *(key for key, _ in DRIFT_COLUMNS),
    f"{BYTES_DOWN}-per-round",
    f"{BYTES_UP}-per-round",
    "wall-s",
)


def method_rows(outcomes: Sequence[Outcome], methods: Sequence[str]) -> list[MethodRow]:
    """Per method (in ``methods`` order; a sweep's rows are ``Outcome.label``s), mean ± std
    over its completed runs."""
    table = []
    for method in methods:
        mine = [o for o in outcomes if o.label == method]
        done = [run_row(o) for o in mine if o.completed]
        stats = {key: mean_std([float(r[key]) for r in done]) for key in TABLE_KEYS}
        started = any(o.status != "missing" for o in mine)
        table.append(MethodRow(method, len(done), len(mine), stats, started))
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


def percent(x: float) -> str:
    """0.0123 -> '1.2%'; NaN -> '-'."""
    return f"{100 * x:.1f}%" if math.isfinite(x) else "-"


def cell(stat: tuple[float, float], fmt: str = ".4f", with_std: bool = True) -> str:
    """``mean ± std`` (the mean alone without ``with_std`` or a finite std; "-" for NaN)."""
    mean, std = stat
    std = std if with_std else math.nan
    if not math.isfinite(mean):
        return "-"
    return format(mean, fmt) if not math.isfinite(std) else f"{mean:{fmt}} ± {std:{fmt}}"


# ---------------------------------------------------------------------- the selection
@dataclass
class Selection:
    """The grid search: per method, one outcome per grid point (in grid order), all on
    ``seed`` with ``data.val-fraction = val_fraction``."""

    grid: Grid
    seed: int
    val_fraction: float
    outcomes: dict[str, list[Outcome]]

    def chosen(self, method: str) -> int | None:
        """The index of the method's kept point (``bench.grid.select``)."""
        return select([validation_score(o) for o in self.outcomes.get(method, [])])


def selection_table(selection: Selection, methods: Sequence[str]) -> str:
    """Every method's validation score at every grid point; the chosen one in bold."""
    keys = ", ".join(key for key, _ in selection.grid)
    lines = [
        "## Selection",
        "",
        f"Every method ran every point of the same grid ({keys}) on seed {selection.seed} "
        f"with data.val-fraction = {selection.val_fraction}, scored on the last round's "
        f"validation mean client accuracy ({VALIDATION.key}); the best point (**bold**; "
        "on a tie the earlier one) then ran on every seed, and only those runs are scored "
        "on test above.",
        "",
    ]
    first = next(iter(selection.outcomes.values()), [])
    titles = ["method", *(point_label(o.point) for o in first), "chosen"]
    lines += ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for method in methods:
        outcomes = selection.outcomes.get(method, [])
        chosen = selection.chosen(method)
        cells = []
        for index, outcome in enumerate(outcomes):
            score = validation_score(outcome)
            cell = f"{score:.4f}" if math.isfinite(score) else "-"
            if not outcome.completed:
                cell = "failed" if outcome.status != "missing" else "not run"
            cells.append(f"**{cell}**" if index == chosen else cell)
        picked = point_label(outcomes[chosen].point) if chosen is not None else "none"
        lines.append(f"| {method} | " + " | ".join([*cells, picked]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- results.md
def runs_table(outcomes: Sequence[Outcome]) -> str:
    """Every final run with its seed, status, headline accuracy, drift and files."""
    titles = ["method", "seed", "status", "mean client acc", "prompt drift (median)", "files"]
    lines = ["## Runs", "", "| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for o in outcomes:
        accuracy = final_value(o.rows, "evaluate/mean-client-accuracy")
        drift = percent(o.drift.prompt_median) if o.drift else "-"
        files = f"[config]({o.path}.toml) · [log]({o.path}.log) · [folder]({o.path}/)"
        if o.status == "missing" or not o.status.startswith(("finished", "failed")):
            files = "-"  # never started: no files
        cells = [o.label, str(o.seed), o.status, cell((accuracy, math.nan), ".4f"), drift]
        lines.append("| " + " | ".join([*cells, files]) + " |")
    return "\n".join(lines) + "\n"


def method_table(outcomes: Sequence[Outcome], methods: Sequence[str]) -> str:
    """The method table of results.md (one row per method, mean ± std over the completed
    seeds) and the paragraph under it that says what each column is."""
    extra = diagnostics(outcomes)
    titles = [
        "method",
        "runs",
        *(a.column for a in ACCURACIES),
        *(a.column for a in extra),
        *(title for _, title in DRIFT_COLUMNS),
        "down / round",
        "up / round",
        "wall time (s)",
    ]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in method_rows(outcomes, methods):
        if row.completed == 0:  # a comparison still running has methods it has not reached
            cells = [row.missing] * (len(titles) - 2)
        else:
            stats = row.stats  # drift and bytes: means over the seeds
            cells = [cell(stats[a.key]) for a in (*ACCURACIES, *extra)]
            cells += [percent(stats[f"prompt-drift-{m}"][0]) for m in ("median", "max")]
            cells.append(cell(stats["head-change"], ".3f", with_std=False))
            cells += [human_bytes(stats[f"{d}-per-round"][0]) for d in (BYTES_DOWN, BYTES_UP)]
            cells.append(cell(stats["wall-s"], ".1f"))
        lines.append(f"| {row.method} | {row.completed}/{row.runs} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Final-round accuracies, mean ± sample std over the completed seeds; prompt drift: "
        "relative change ‖final − initial‖ / ‖initial‖ of each prompt tensor, median and max "
        "over the run's tensors, mean over seeds (near 0%: the prompts did not learn, and the "
        "method is in effect a linear probe); head ‖Δ‖: the norm of the head's change from "
        "its initial value; bytes: array payloads per federated round (the prototype round "
        "before round 1 included), mean over seeds; wall time: the whole `flwr run`, simulation "
        "start-up included."
    )
    if extra:
        lines += ["", DIAGNOSTIC_NOTE]
    return "\n".join(lines) + "\n"


def markdown_table(
    outcomes: Sequence[Outcome], methods: Sequence[str], selection: Selection | None = None
) -> str:
    """results.md: one row per method, the selection (with a grid), every run, failures."""
    lines = [method_table(outcomes, methods).rstrip("\n")]
    if selection is not None:
        lines += ["", selection_table(selection, methods).rstrip("\n")]
    lines += ["", runs_table(outcomes).rstrip("\n")]
    failed = [o for o in outcomes if not o.completed]
    if selection is not None:
        failed += [o for runs in selection.outcomes.values() for o in runs if not o.completed]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [
            f"- {o.label} seed {o.seed}{_grid_note(o)}: {o.status} (log: {_logcell(o.log)})"
            for o in failed
        ]
    return "\n".join(lines) + "\n"


def _logcell(log: str) -> str:
    """A log inside the comparison folder (a relative path) as a link to it; else as is."""
    if not log:
        return "-"
    return f"[{log}]({log})" if not Path(log).is_absolute() else log


def _grid_note(outcome: Outcome) -> str:
    return f" (grid point {point_label(outcome.point)})" if outcome.stage == GRID else ""


def results_csv(outcomes: Sequence[Outcome], selection: Selection | None = None) -> str:
    """results.csv: one row per run (final runs, then grid runs), raw numbers (bytes in
    bytes, drift as a ratio), empty where unrecorded."""
    rows = []
    for o in outcomes:
        rows.append({**run_row(o), "stage": "final", "point": point_label(o.point)})
    if selection is not None:
        for method, runs in selection.outcomes.items():
            chosen = selection.chosen(method)
            for index, o in enumerate(runs):
                extra = {"stage": "grid", "point": point_label(o.point)}
                rows.append({**run_row(o), **extra, "chosen": int(index == chosen)})
    for row in rows:
        row.setdefault("chosen", "")
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
    """The first of ``PLOT_KEYS`` that some completed run recorded: (key, axis label)."""
    for accuracy in PLOT_KEYS:
        if any(accuracy.key in row for o in outcomes if o.completed for row in o.rows):
            return accuracy.key, f"{accuracy.label} accuracy"
    return None


def accuracy_curves(
    outcomes: Sequence[Outcome], methods: Sequence[str], key: str
) -> dict[str, Curve]:
    """Per method, ``key`` against the round: mean and sample std over completed seeds."""
    curves = {}
    for method in methods:
        by_round: dict[int, list[float]] = {}
        for o in outcomes:
            if o.label == method and o.completed:
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

    from server_app.plots import png_bytes

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
    return png_bytes(figure)


def write_results(
    out: Path,
    outcomes: Sequence[Outcome],
    methods: Sequence[str],
    selection: Selection | None = None,
) -> None:
    """results.csv, results.md and accuracy.png under ``out``."""
    atomic_write(out / "results.csv", results_csv(outcomes, selection).encode())
    atomic_write(out / "results.md", markdown_table(outcomes, methods, selection).encode())
    chosen = plot_key(outcomes)
    if chosen is not None:
        key, label = chosen
        seeds = sorted({o.seed for o in outcomes})
        which = f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
        title = f"{label}, mean ± std over {which}"
        png = comparison_plot(accuracy_curves(outcomes, methods, key), label, title)
        atomic_write(out / "accuracy.png", png)


# ---------------------------------------------------------------------- from a folder
def run_name(
    method: str, seed: int, grid_index: int | None = None, variant: int | None = None
) -> str:
    """The file stem of a run: ``<method>-s<seed>``, a grid run ``<method>-g<i>-s<seed>``,
    a sweep's run ``<method>-v<i>-s<seed>``."""
    if grid_index is not None:
        return f"{method}-g{grid_index}-s{seed}"
    if variant is not None:
        return f"{method}-v{variant}-s{seed}"
    return f"{method}-s{seed}"


def row_labels(methods: Sequence[str], sweep: Grid | None) -> list[str]:
    """The rows of the method table: the methods, or every (method, sweep point)."""
    if not sweep:
        return list(methods)
    return [f"{m} [{point_label(p)}]" for m in methods for p in grid_points(sweep)]


def _grid_json(grid: Grid | None) -> list[list[Any]] | None:
    return [[key, list(values)] for key, values in grid] if grid else None


def _grid_from_json(document: Any) -> Grid:
    return [(str(key), list(values)) for key, values in document]


def comparison_document(
    methods: Sequence[str],
    seeds: Sequence[int],
    grid: Grid | None,
    val_fraction: float | None,
    sweep: Grid | None = None,
) -> dict[str, Any]:
    """What ``comparison.json`` holds (``bench/compare.py`` writes it before any run)."""
    return {
        "methods": list(methods),
        "seeds": list(seeds),
        "grid": _grid_json(grid),
        "val-fraction": val_fraction,
        "sweep": _grid_json(sweep),
    }


def load_results(out: Path) -> tuple[list[Outcome], list[str], Selection | None]:
    """The final outcomes, the table's rows and the selection recorded under ``out``."""
    try:
        document = json.loads((out / COMPARISON).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"report: {out / COMPARISON}: {exc}; give the --out folder of a comparison "
            "(scripts/compare.sh) that started"
        ) from None
    methods, seeds = list(document["methods"]), [int(s) for s in document["seeds"]]
    if document.get("sweep"):
        sweep = _grid_from_json(document["sweep"])
        outcomes = [
            read_outcome(out, FINAL, run_name(m, s, variant=i), m, s, point, variant=True)
            for m in methods
            for i, point in enumerate(grid_points(sweep))
            for s in seeds
        ]
        return outcomes, row_labels(methods, sweep), None
    outcomes = [read_outcome(out, FINAL, run_name(m, s), m, s, ()) for m in methods for s in seeds]
    selection = None
    if document.get("grid"):
        grid = _grid_from_json(document["grid"])
        points = grid_points(grid)
        runs = {
            m: [
                read_outcome(out, GRID, run_name(m, seeds[0], i), m, seeds[0], point)
                for i, point in enumerate(points)
            ]
            for m in methods
        }
        selection = Selection(grid, seeds[0], float(document["val-fraction"]), runs)
        for o in outcomes:
            chosen = selection.chosen(o.method)
            if chosen is not None:
                o.point = points[chosen]
    return outcomes, methods, selection


def regenerate(out: Path) -> str:
    """Rewrite results.md, results.csv and accuracy.png from ``out``; return results.md."""
    outcomes, methods, selection = load_results(out)
    write_results(out, outcomes, methods, selection)
    return (out / "results.md").read_text()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the --out folder of a comparison")
    args = parser.parse_args(argv)
    print(regenerate(args.out.resolve()), end="", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
