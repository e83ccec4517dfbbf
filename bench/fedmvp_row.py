"""The FedMVP paper's base->new table row from nine per-data-set runs.

The paper reports Local / Base / New / HM averaged over nine data sets (Caltech101,
OxfordFlowers, FGVCAircraft, UCF101, OxfordPets, Food101, DTD, StanfordCars, SUN397), the HM
of the averages (3 / (1/L + 1/B + 1/N) of the three means, as its rows are computed: the
FedMVP row 81.89 / 75.37 / 77.82 gives 78.27). A run here is one data set
(``conf/fedmvp-b2n-<dataset>.toml``); this script reads nine run folders (``config.json``
and ``metrics.json``), takes each one's last evaluated round, and prints one row per data
set, the nine-set average and the paper's reported row of the same method beside it:

    .venv/bin/python bench/fedmvp_row.py RUN_DIR [RUN_DIR ...] [--out row.md] [--partial]

Every folder must be a base->new run of the same method; each data set at most once; all
nine unless ``--partial`` (then the average is over the data sets given and says so).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pep_fedpt.data.coop import NINE

KEYS = {
    "local": "server/local-accuracy",
    "base": "server/base-accuracy",
    "new": "server/new-accuracy",
}
# The 9-set averages the FedMVP paper reports (Local, Base, New, HM), in percent.
PAPER = {
    "fedmvp": (81.89, 75.37, 77.82, 78.27),
    "zeroshot-clip": (76.72, 70.51, 75.78, 74.24),
    "promptfl": (81.75, 74.47, 71.70, 75.74),
    "fedtpg": (80.75, 73.68, 76.02, 76.70),
}


class RowError(ValueError):
    """A run folder that cannot be part of the row (missing, malformed, mismatched)."""


@dataclass(frozen=True)
class DatasetResult:
    dataset: str
    method: str
    round: int
    local: float  # accuracies in [0, 1]
    base: float
    new: float
    folder: Path


def harmonic_mean(local: float, base: float, new: float) -> float:
    """3 / (1/L + 1/B + 1/N); 0 when any of them is 0."""
    if min(local, base, new) <= 0:
        return 0.0
    return 3.0 / (1.0 / local + 1.0 / base + 1.0 / new)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RowError(
            f"{path}: no such file; a run folder holds config.json and metrics.json"
        ) from None
    except (OSError, ValueError) as exc:
        raise RowError(f"{path}: not readable JSON ({exc})") from exc


def read_run(folder: Path) -> DatasetResult:
    """One run folder's data set, method and last round that has Local, Base and New."""
    config = _json(folder / "config.json")
    rows = _json(folder / "metrics.json")
    if not isinstance(config, Mapping) or not isinstance(rows, list):
        raise RowError(f"{folder}: config.json must be an object and metrics.json a list")
    method, dataset = config.get("method"), config.get("data.dataset")
    protocol = config.get("fedmvp.protocol", "base-new")
    if protocol != "base-new":
        raise RowError(f"{folder}: fedmvp.protocol = {protocol!r}; the row needs base-new runs")
    if dataset == "coop-nine":
        raise RowError(
            f"{folder}: a coop-nine run is the paper's one federation and holds the row itself "
            "(server/local-accuracy, server/base-accuracy, server/new-accuracy, server/hm of "
            "its last round in metrics.json); this script averages nine single-set runs"
        )
    if dataset not in NINE:
        raise RowError(
            f"{folder}: data.dataset = {dataset!r} is not one of the paper's nine "
            f"({', '.join(NINE)})"
        )
    complete = [r for r in rows if isinstance(r, Mapping) and all(k in r for k in KEYS.values())]
    if not complete:
        raise RowError(
            f"{folder}/metrics.json: no round with {', '.join(KEYS.values())} (a run whose "
            "clients never evaluated)"
        )
    last = complete[-1]
    values = {}
    for name, key in KEYS.items():
        value = last[key]
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise RowError(f"{folder}: round {last.get('round')} {key} = {value!r} not in [0, 1]")
        values[name] = float(value)
    return DatasetResult(dataset, str(method), int(last.get("round", -1)), folder=folder, **values)


def collect(folders: Sequence[Path], partial: bool) -> list[DatasetResult]:
    results = [read_run(folder) for folder in folders]
    methods = sorted({r.method for r in results})
    if len(methods) != 1:
        raise RowError(f"the runs mix methods {methods}; give the runs of one method")
    seen: dict[str, Path] = {}
    for r in results:
        if r.dataset in seen:
            raise RowError(f"{r.dataset} twice: {seen[r.dataset]} and {r.folder}")
        seen[r.dataset] = r.folder
    missing = [d for d in NINE if d not in seen]
    if missing and not partial:
        raise RowError(
            f"missing data sets {missing}: the paper's row averages all nine "
            "(--partial averages the ones given)"
        )
    return sorted(results, key=lambda r: NINE.index(r.dataset))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def render(results: Sequence[DatasetResult]) -> str:
    method = results[0].method
    lines = [
        f"FedMVP base->new, method {method}: last evaluated round of each run; accuracies "
        "in percent; HM = 3 / (1/L + 1/B + 1/N).",
        "",
        "| data set | round | Local | Base | New | HM |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        hm = harmonic_mean(r.local, r.base, r.new)
        cells = [r.dataset, str(r.round), _pct(r.local), _pct(r.base), _pct(r.new), _pct(hm)]
        lines.append("| " + " | ".join(cells) + " |")
    n = len(results)
    mean = {k: math.fsum(getattr(r, k) for r in results) / n for k in ("local", "base", "new")}
    label = "average (9 sets)" if n == len(NINE) else f"average ({n} of 9 sets: partial)"
    hm = harmonic_mean(mean["local"], mean["base"], mean["new"])
    cells = [_pct(mean["local"]), _pct(mean["base"]), _pct(mean["new"]), _pct(hm)]
    lines.append(f"| **{label}** | | " + " | ".join(cells) + " |")
    if method in PAPER:
        reported = " | ".join(f"{v:.2f}" for v in PAPER[method])
        lines.append(f"| paper, as reported | | {reported} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, one per data set")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--partial", action="store_true", help="average fewer than nine")
    args = parser.parse_args(argv)
    try:
        table = render(collect(args.runs, args.partial))
    except RowError as exc:
        parser.error(str(exc))
    if args.out:
        args.out.write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
