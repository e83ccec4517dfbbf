"""The grid point a comparison chose for one method, as ``-c`` overrides.

    .venv/bin/python -m bench.chosen OUT METHOD     # e.g. prints: train.lr=0.1

The ablations (``bench/benchmark.sh``) run PEP-FedPT at the values its own grid search
picked on validation, read here from the comparison's result files rather than typed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.grid import grid_points
from bench.report import load_results
from pep_fedpt.preflight import toml_value

ROOT = Path(__file__).resolve().parents[1]


def chosen_overrides(out: Path, method: str) -> str:
    """``key=value`` pairs (space-separated) of the point ``method`` kept in ``out``."""
    _, methods, selection = load_results(out)
    if selection is None:
        raise SystemExit(f"chosen: {out} ran no --grid, so nothing was chosen")
    if method not in methods:
        raise SystemExit(f"chosen: {out} did not compare {method!r}; it compared {methods}")
    index = selection.chosen(method)
    if index is None:
        raise SystemExit(
            f"chosen: no grid point of {method!r} in {out} completed with a validation score"
        )
    point = grid_points(selection.grid)[index]
    return " ".join(f"{key}={toml_value(value)}" for key, value in point)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the --out folder of a comparison with --grid")
    parser.add_argument("method", help="a method of that comparison")
    args = parser.parse_args(argv)
    print(chosen_overrides(args.out.resolve(), args.method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
