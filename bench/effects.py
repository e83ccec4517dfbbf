"""The ablations that moved PEP-FedPT most, as the sweeps that rerun them on more seeds.

    .venv/bin/python -m bench.effects OUT [K]   # K lines (default 2): NAME<Tab>SWEEP

Issue 19 asks for the largest effects among the one-seed ablations on more seeds. The
benchmark script (bench/cifar100-benchmark.sh) reads them here rather than typed: an
ablation's effect is the largest change of the validation score (the one grid selection
uses, so the test split stays for the tables) that one of its values made from the
reference run, PEP-FedPT's seed-0 run in OUT/alpha-0.1; largest first, on a tie the
earlier ablation. The sweep is the ablation's whole sweep, as it ran: rerun in its own
folder on more seeds, its seed-0 runs are kept and every value gets the same seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.report import COMPARISON, load_results, validation_score
from pep_fedpt.preflight import toml_value

REFERENCE = ("alpha-0.1", "pep-fedpt", 0)  # folder, method, seed
PREFIX = "ablation-"


def largest_effects(out: Path, k: int) -> list[tuple[str, str]]:
    """(ablation name, its ``--sweep``) of the ``k`` ablations one of whose values moved
    the seed-0 validation score furthest from the reference's (runs that did not complete
    count not)."""
    folder, method, seed = REFERENCE
    reference = [o for o in load_results(out / folder)[0] if o.method == method and o.seed == seed]
    base = validation_score(reference[0]) if reference else math.nan
    if not math.isfinite(base):
        raise SystemExit(f"effects: {out / folder} has no completed {method} seed-{seed} run")
    effects: list[tuple[float, str, str]] = []
    for ablation in sorted(out.glob(f"{PREFIX}*/")):
        outcomes = load_results(ablation)[0]
        scores = [validation_score(o) for o in outcomes if o.seed == seed]
        moved = [abs(score - base) for score in scores if math.isfinite(score)]
        if moved:
            sweep = json.loads((ablation / COMPARISON).read_text())["sweep"]
            text = " ".join(f"{key}={','.join(map(toml_value, values))}" for key, values in sweep)
            effects.append((max(moved), ablation.name[len(PREFIX) :], text))
    effects.sort(key=lambda effect: -effect[0])  # stable: ties keep the folder order
    return [(name, sweep) for _, name, sweep in effects[:k]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the benchmark's output folder")
    parser.add_argument("k", type=int, nargs="?", default=2, help="how many (default 2)")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"k = {args.k} must be >= 1")
    for name, sweep in largest_effects(args.out.resolve(), args.k):
        print(f"{name}\t{sweep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
