"""The benchmark's accuracy tables, printed from the collected results in git.

    .venv/bin/python -m bench.tables BLOCK [--results DIR] [--page PAGE]

``DIR`` (default ``bench/results/cifar10``) is a folder that ``bench/collect.py`` filled:
one comparison folder per setting (``alpha-0.1``, ``alpha-0.5``: every method,
grid-selected) and per ablation (``ablation-<name>``: a sweep of PEP-FedPT at α = 0.1;
``ablation-alpha-<α>-<name>``: one at another α); a setting's ``-onehot`` folder (the
CIFAR-100 benchmark) is a row of that setting. ``PAGE`` is the page the block is pasted
into (its links are relative to it). The blocks: ``main`` (the compact table of every
setting), ``full`` (``main`` and then every column), ``selection`` (every grid point),
``ablations`` and ``ablations-alpha-0.5``. The pages name the command of each of their
blocks; ``bench/paste.py`` runs them (``--check`` in CI).

``python -m bench.tables [--check] [RESULTS]`` without a block, as ``bench/benchmark.sh``
calls it, rewrites every block of the pages: ``bench/paste.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.collect import comparison_folders
from bench.grid import Grid, Point, grid_points
from bench.report import (
    COMPARISON,
    DIAGNOSTIC_NOTE,
    FINAL,
    MethodRow,
    Outcome,
    Selection,
    cell,
    diagnostics,
    load_results,
    method_rows,
    method_table,
    percent,
    row_labels,
    run_name,
    selection_table,
)
from pep_fedpt.config import RunConfig

DEFAULT_RESULTS = Path("bench/results/cifar10")
ONEHOT_SUFFIX, ONEHOT_METHOD = "-onehot", "pep-fedpt"
ONEHOT_ROW = "pep-fedpt (one-hot training weights)"
# The ablations' reference: this method's final run on this seed in this folder.
REFERENCE = ("alpha-0.1", "pep-fedpt", 0)
# An ablation run at another α than the first ablations' carries it in its folder name
# (``ablation-alpha-0.5-train-weights``, read against folder ``alpha-0.5``); one without
# (``ablation-tau``) ran at REFERENCE's α, 0.1.
ABLATION_AT = re.compile(r"ablation-alpha-(\d+(?:\.\d+)?)-.+")
FIRST_ABLATION_ALPHA = "0.1"
MEAN, WORST, HELD_OUT, GLOBAL = (
    "evaluate/mean-client-accuracy",
    "evaluate/worst-client-accuracy",
    "evaluate/held-out-accuracy",
    "evaluate/global-accuracy",
)


# ---------------------------------------------------------------------- the results
@dataclass
class Comparison:
    """One collected comparison folder, read as ``bench.report`` reads it."""

    name: str  # its path below RESULTS, e.g. "alpha-0.1"
    folder: Path
    outcomes: list[Outcome]
    methods: list[str]
    selection: Selection | None
    sweep: Grid | None
    # A row whose runs lie in another comparison folder (``merge_onehot``): that folder.
    row_folders: dict[str, Path] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """``alpha-0.1`` -> ``α = 0.1``, ``pathological-10`` -> ``pathological, 10 classes
        per client``; other names as they are."""
        found = re.fullmatch(r"alpha-(.+)", self.name)
        if found:
            return f"α = {found.group(1)}"
        found = re.fullmatch(r"pathological-(\d+)", self.name)
        return f"pathological, {found.group(1)} classes per client" if found else self.name

    @property
    def seeds(self) -> list[int]:
        return sorted({o.seed for o in self.outcomes})


def load_comparisons(results: Path) -> list[Comparison]:
    """Every comparison folder under ``results``, in name order (empty: none)."""
    if not results.is_dir():
        return []
    found = []
    for folder in comparison_folders(results):
        outcomes, _, selection = load_results(folder)
        document = json.loads((folder / COMPARISON).read_text())
        sweep = [(str(k), list(v)) for k, v in document["sweep"]] if document.get("sweep") else None
        name = folder.relative_to(results).as_posix()
        methods = [str(m) for m in document["methods"]]
        found.append(Comparison(name, folder, outcomes, methods, selection, sweep))
    return found


def merge_onehot(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Each setting folder X with a folder X-onehot beside it (PEP-FedPT with one-hot
    training weights, its own grid search and seeds: bench/cifar100-benchmark.sh) as one
    comparison, the one-hot runs a row ``ONEHOT_ROW`` of X's tables."""
    by_name = {c.name: c for c in comparisons}
    merged = []
    for comparison in comparisons:
        base = comparison.name.removesuffix(ONEHOT_SUFFIX)
        if comparison.name != base and base in by_name and not by_name[base].sweep:
            continue  # folded into its setting below
        onehot = by_name.get(comparison.name + ONEHOT_SUFFIX)
        if comparison.sweep or onehot is None:
            merged.append(comparison)
            continue
        rows = [dataclasses.replace(o, method=ONEHOT_ROW) for o in onehot.outcomes]
        selection = comparison.selection
        if selection is not None and onehot.selection is not None:
            grid_runs = onehot.selection.outcomes.get(ONEHOT_METHOD, [])
            renamed = [dataclasses.replace(o, method=ONEHOT_ROW) for o in grid_runs]
            selection = dataclasses.replace(
                selection, outcomes={**selection.outcomes, ONEHOT_ROW: renamed}
            )
        merged.append(
            dataclasses.replace(
                comparison,
                outcomes=comparison.outcomes + rows,
                methods=[*comparison.methods, ONEHOT_ROW],
                selection=selection,
                row_folders={ONEHOT_ROW: onehot.folder},
            )
        )
    return merged


def _alpha_key(comparison: Comparison) -> tuple[float, str]:
    found = re.fullmatch(r"alpha-(\d+(?:\.\d+)?)", comparison.name)
    return (float(found.group(1)) if found else math.inf, comparison.name)


def settings(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of every method (no sweep), by α then name."""
    return sorted((c for c in comparisons if not c.sweep), key=_alpha_key)


def ablation_alpha(comparison: Comparison) -> str:
    """The α an ablation folder ran at, as its name writes it: ``ablation-alpha-0.5-x``
    -> ``0.5``; a name without one (``ablation-tau``) -> ``FIRST_ABLATION_ALPHA``."""
    found = ABLATION_AT.fullmatch(comparison.name)
    return found.group(1) if found else FIRST_ABLATION_ALPHA


def ablations(
    comparisons: Sequence[Comparison], alpha: str = FIRST_ABLATION_ALPHA
) -> list[Comparison]:
    """The sweeps run at ``alpha`` (``ablation_alpha``), by name."""
    return [c for c in comparisons if c.sweep and ablation_alpha(c) == alpha]


# ---------------------------------------------------------------------- cells
def _link(text: str, target: Path, page_dir: Path, suffix: str = "") -> str:
    """A Markdown link from a page in ``page_dir`` to ``target`` (relative, posix)."""
    relative = Path(os.path.relpath(target, page_dir)).as_posix()
    return f"[{text}]({relative}{suffix})"


def _values(point: Point) -> str:
    return ", ".join(str(value) for _, value in point)


def _chosen(comparison: Comparison, method: str) -> str:
    selection = comparison.selection
    if selection is None:
        return "-"
    index = selection.chosen(method)
    runs = selection.outcomes.get(method, [])
    return _values(runs[index].point) if index is not None else "none"


def _run_folder(comparison: Comparison, method: str) -> Path | None:
    """The folder of the method's first-seed final run, if it was collected."""
    seeds = comparison.seeds
    where, name = comparison.folder, method
    if method in comparison.row_folders:  # a row merged from another folder
        where, name = comparison.row_folders[method], ONEHOT_METHOD
    folder = where / FINAL / run_name(name, seeds[0]) if seeds else None
    return folder if folder is not None and folder.is_dir() else None


# ---------------------------------------------------------------------- the blocks
DRIFT_NOTE = (
    "Prompt drift: median over the prompt tensors of the server's final state of "
    '‖final − initial‖ / ‖initial‖; "-" where there is nothing to measure (head-only '
    "trains no prompt; local's server state never changes, its prompts stay on the nodes)."
)


def _run_config(comparison: Comparison) -> Mapping[str, Any]:
    """The config.json of the setting's first collected run (every run of a setting shares
    the backbone); empty when none was collected."""
    for outcome in comparison.outcomes:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads((comparison.folder / outcome.path / "config.json").read_text()))
    return {}


def backbone_sentence(comparison: Comparison) -> str:
    """Which backbone the setting's runs used, from their recorded config: the weights, the
    architecture, the pre-training recipe and the steps it actually did (recorded since
    ``model.pretrain-steps-done`` exists; older results say they lack it)."""
    config = _run_config(comparison)
    if not config:
        return "Backbone: not recorded (no run's config.json was collected)."
    weights = config.get("model.pretrained", "?")
    # 0 is "the model's own" for these keys (docs/configuration.md): not said then.
    shape = [
        f"{label} {config[key]}{unit}"
        for key, label, unit in (
            ("model.depth", "depth", ""),
            ("model.embed-dim", "width", ""),
            ("model.img-size", "input", " px"),
        )
        if config.get(key)
    ]
    text = f"Backbone: `{weights}` {config.get('model.name', '?')}"
    if shape:
        text += f" ({', '.join(shape)})"
    if not str(weights).startswith("local:"):
        return text + "."
    steps, epochs = config.get("model.pretrain-steps", 0), config.get("model.pretrain-epochs")
    recipe = f"{steps} steps" if steps else f"{epochs} epochs"
    minutes = float(config.get("model.pretrain-minutes", 0) or 0)
    if minutes:
        recipe += f", capped at {minutes:g} minutes"
    done = config.get("model.pretrain-steps-done")
    if done is not None:
        recipe += f"; {done} of {config.get('model.pretrain-steps-planned', '?')} steps done"
    else:
        recipe += "; the steps actually done are not recorded in these results"
    return (
        f"{text}, pre-trained here on its classes ({recipe}; seed "
        f"{config.get('model.pretrain-seed', '?')}); its linear-probe accuracy is not "
        "recorded with the runs."
    )


def compact_table(comparison: Comparison, page_dir: Path) -> str:
    """One row per method: mean client accuracy (mean ± std over seeds), worst client,
    held-out, global, prompt drift (median), the chosen grid value; the method name links
    to its first seed's run folder."""
    keys = ", ".join(key for key, _ in comparison.selection.grid) if comparison.selection else ""
    seeds = ", ".join(map(str, comparison.seeds))
    extra = diagnostics(comparison.outcomes)
    titles = ["method", "mean client acc", "worst client", "held-out", "global"]
    titles += [a.column for a in extra]
    titles += ["prompt drift (median)", f"chosen {keys or 'point'}"]
    lines = [
        f"**{comparison.title}** (final round, mean over seeds {seeds}; every run with its "
        f"config and log: {_link('results.md', comparison.folder / 'results.md', page_dir)})",
        "",
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
    ]
    for row in method_rows(comparison.outcomes, comparison.methods):
        folder = _run_folder(comparison, row.method)
        name = _link(row.method, folder, page_dir, "/") if folder else row.method
        if 0 < row.completed < row.runs:  # the mean is over fewer seeds than the others'
            name += f" ({row.completed}/{row.runs} runs)"
        if row.completed == 0:  # a benchmark still running has methods it has not reached
            cells = [row.missing] * (len(titles) - 2)
        else:
            cells = _accuracy_cells(row.stats, extra)
        cells.append(_chosen(comparison, row.method))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", backbone_sentence(comparison), "", DRIFT_NOTE]
    if extra:
        lines += ["", DIAGNOSTIC_NOTE]
    return "\n".join(lines) + "\n"


def main_compact(comparisons: Sequence[Comparison], page_dir: Path) -> str:
    """README's ``main``: the compact table of every setting."""
    return "\n".join(compact_table(c, page_dir) for c in settings(comparisons))


def main_full(comparisons: Sequence[Comparison], page_dir: Path) -> str:
    """docs/benchmark.md's ``main``: per setting the compact table, then report.py's table
    with every column."""
    parts = [main_compact(comparisons, page_dir)]
    for comparison in settings(comparisons):
        parts.append(f"Every column, {comparison.title}:\n")
        parts.append(method_table(comparison.outcomes, comparison.methods))
    return "\n".join(parts)


def selection_block(comparisons: Sequence[Comparison], page_dir: Path) -> str:
    """Per setting with a grid, every method's validation score at every grid point."""
    parts = []
    for comparison in settings(comparisons):
        selection = comparison.selection
        if selection is None:
            continue
        keys = ", ".join(key for key, _ in selection.grid)
        table = selection_table(selection, comparison.methods)
        rows = table[table.index("\n| ") + 1 :]  # the table, without report.py's heading
        parts.append(
            f"**{comparison.title}**: every method at every {keys} on seed {selection.seed}, "
            f"data.val-fraction = {selection.val_fraction}, scored on the last round's "
            "validation mean client accuracy; **bold**: the point kept (on a tie the "
            f"earlier one) ({_link('results.md', comparison.folder / 'results.md', page_dir)})"
            f"\n\n{rows}"
        )
    return "\n".join(parts) if parts else "No setting with a grid in the results.\n"


def _reference(
    comparisons: Sequence[Comparison], name: str = REFERENCE[0]
) -> tuple[Outcome, Comparison] | None:
    """REFERENCE's method's run on REFERENCE's seed in the setting folder ``name``."""
    _, method, seed = REFERENCE
    for comparison in comparisons:
        if comparison.name == name and not comparison.sweep:
            for outcome in comparison.outcomes:
                if outcome.method == method and outcome.seed == seed:
                    return outcome, comparison
    return None


def _reference_config(reference: tuple[Outcome, Comparison] | None) -> Mapping[str, Any]:
    """The reference run's whole config: its run folder's ``config.json`` (what the
    ServerApp resolved), else its recorded overrides over today's defaults."""
    if reference is None:
        return {}
    outcome, comparison = reference
    run = comparison.folder / outcome.path
    with contextlib.suppress(OSError, ValueError):
        return dict(json.loads((run / "config.json").read_text()))
    flat: dict[str, Any] = dict(RunConfig().to_flat())
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((run.parent / f"{run.name}.json").read_text())
        flat.update(record.get("config") or {})
    return flat


def _accuracy_cells(stats: Mapping[str, tuple[float, float]], extra: Sequence[Any]) -> list[str]:
    """Mean client accuracy (± std over seeds), worst client, held-out, global, the CCMP
    diagnostics ``extra``, and the prompt drift (median)."""
    means = [stats[key] for key in (WORST, HELD_OUT, GLOBAL, *(a.key for a in extra))]
    drift = percent(stats["prompt-drift-median"][0])
    return [cell(stats[MEAN]), *(cell(m, with_std=False) for m in means), drift]


def _ablation_cells(row: MethodRow, extra: Sequence[Any]) -> list[str]:
    if row.completed == 0:
        return ["failed"] * (6 + len(extra))
    return [*_accuracy_cells(row.stats, extra), percent(row.stats["prompt-drift-max"][0])]


NO_ABLATION = "No ablation in the results."


def ablations_block(
    comparisons: Sequence[Comparison],
    page_dir: Path,
    alpha: str = FIRST_ABLATION_ALPHA,
    empty: str = NO_ABLATION,
) -> str:
    """One row per ablation point run at ``alpha`` (``ablations``), after the reference row
    (PEP-FedPT's first-seed final run of the setting folder ``alpha-<alpha>``, whose config
    every ablation keeps but for its key); ``empty`` where no ablation ran at ``alpha``."""
    folder_name = REFERENCE[0] if alpha == FIRST_ABLATION_ALPHA else f"alpha-{alpha}"
    reference = _reference(comparisons, folder_name)
    config = _reference_config(reference)
    _, method, seed = REFERENCE
    found = ablations(comparisons, alpha)
    involved = [o for c in found for o in c.outcomes] + ([reference[0]] if reference else [])
    extra = diagnostics(involved)
    titles = ["setting", "value", "mean client acc", "worst client", "held-out", "global"]
    titles += [a.column for a in extra]
    titles += ["prompt drift (median)", "prompt drift (max)"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    cells, title = ["not collected"] * (len(titles) - 2), folder_name
    if reference is not None:
        outcome, comparison = reference
        (row,) = method_rows([outcome], [outcome.label])
        cells, title = _ablation_cells(row, extra), comparison.title
        if (comparison.folder / outcome.path).is_dir():
            method = _link(method, comparison.folder / outcome.path, page_dir, "/")
    setting = f"reference: {method}, {title}, seed {seed}"
    lines.append(f"| {setting} | as in the main table | " + " | ".join(cells) + " |")
    seeds = sorted({o.seed for c in found for o in c.outcomes})
    if reference is not None and seeds not in ([], [seed]):
        # Some ablation ran more seeds: the reference over the same seeds, for its rows.
        outcome, comparison = reference
        same = [o for o in comparison.outcomes if o.label == outcome.label and o.seed in seeds]
        (row,) = method_rows(same, [outcome.label])
        setting = f"reference: {method}, {title}, seeds {', '.join(map(str, seeds))}"
        cells = _ablation_cells(row, extra)
        lines.append(f"| {setting} | as in the main table | " + " | ".join(cells) + " |")
    for comparison in found:
        sweep = comparison.sweep or []
        keys = [key for key, _ in sweep]
        setting = _link(", ".join(keys), comparison.folder / "results.md", page_dir)
        if all(key in config for key in keys):
            setting += f" (reference: {', '.join(str(config[key]) for key in keys)})"
        pairs = [(m, point) for m in comparison.methods for point in grid_points(sweep)]
        rows = method_rows(comparison.outcomes, row_labels(comparison.methods, sweep))
        for (name, point), row in zip(pairs, rows, strict=True):
            value = _values(point)
            if len(comparison.methods) > 1:
                value = f"{name}: {value}"
            cells = _ablation_cells(row, extra)
            lines.append(f"| {setting} | {value} | " + " | ".join(cells) + " |")
    if not found:
        lines.append("")
        lines.append(empty)
    lines += [
        "",
        "Each ablation changes one setting of the reference run and keeps the rest of its "
        "config (its chosen learning rate included); (reference: v) is the reference's value "
        "of that setting. Final round; mean ± sample std over the seeds a row ran (one "
        "seed: the value alone); prompt drift as in the tables above.",
    ]
    if extra:
        lines += ["", DIAGNOSTIC_NOTE]
    return "\n".join(lines) + "\n"


def ablations_alpha_05_block(comparisons: Sequence[Comparison], page_dir: Path) -> str:
    """docs/benchmark.md's ``ablations-alpha-0.5``: the ablations repeated at α = 0.5
    (one-hot training weights), against PEP-FedPT's own runs of folder ``alpha-0.5``."""
    empty = (
        "No ablation at α = 0.5 in the results yet: `bench/benchmark.sh` runs it after the "
        "α = 0.5 setting, into `ablation-alpha-0.5-train-weights`."
    )
    return ablations_block(comparisons, page_dir, "0.5", empty)


# The blocks, each from (the comparisons, the page's folder).
BLOCKS: dict[str, Callable[[Sequence[Comparison], Path], str]] = {
    "main": main_compact,
    "full": main_full,
    "selection": selection_block,
    "ablations": ablations_block,
    "ablations-alpha-0.5": ablations_alpha_05_block,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    given = [a for a in args if a != "--check"]
    if not given or (given[0] not in BLOCKS and Path(given[0]).is_dir()):
        # bench/benchmark.sh's `bench.tables [--check] [RESULTS]`: every page's blocks.
        if given and Path(given[0]).resolve() != DEFAULT_RESULTS.resolve():
            print(
                f"tables: {given[0]!r} is not accepted: the pages name their results "
                f"folders in their paste lines; give a block ({', '.join(BLOCKS)}) to print "
                "one from another folder",
                file=sys.stderr,
            )
            return 2
        from bench import paste

        return paste.main(["--check"] if "--check" in args else [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("block", choices=list(BLOCKS), help="the table to print")
    parser.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help=f"default: {DEFAULT_RESULTS}"
    )
    parser.add_argument(
        "--page", type=Path, default=Path("README.md"), help="the page its links start from"
    )
    parsed = parser.parse_args(args)
    comparisons = merge_onehot(load_comparisons(parsed.results))
    if not comparisons:
        print(
            f"No results collected in `{parsed.results}` yet (no {COMPARISON}): "
            f"`python -m bench.collect OUT {parsed.results}` fills it."
        )
        return 0
    print(BLOCKS[parsed.block](comparisons, parsed.page.parent).rstrip("\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
