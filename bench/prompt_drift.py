"""How far each trainable tensor of a finished run moved from its seeded initial value.

    .venv/bin/python -m bench.prompt_drift RUN_DIR [RUN_DIR ...]

A run whose prompts barely moved is, in effect, a linear probe on the frozen backbone: the
comparison report (``bench/report.py``) puts each method's drift beside its accuracy for
that reason. The measure of one tensor is its relative change ‖final − initial‖ /
‖initial‖; the head starts at zero (``prompt.head-init = "zeros"``), so its measure is the
absolute change ‖Δ head‖ (weight and bias together).

A run folder holds its initial state (``initial-state.npz``, written with round 0) and its
final one (``state.npz``); for a folder of an older run without the initial state, the
command line rebuilds it from the run's config (backbone and data set needed). A run
folder collected into git (``bench/collect.py``) keeps no weights: its ``drift.json``
holds the same numbers, measured from the two state files when it was collected.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INITIAL_STATE = "initial-state.npz"  # server_app.results.INITIAL_STATE
FINAL_STATE = "state.npz"
DRIFT_JSON = "drift.json"  # a collected run folder's drift, in place of its state files
PROMPT_PREFIX, HEAD_PREFIX = "prompt.", "head."  # strategies.wire's trainable families

# {key: (norm of the initial value, norm of final - initial)}
Drift = dict[str, tuple[float, float]]


def drift_between(initial: Mapping[str, np.ndarray], final: Mapping[str, np.ndarray]) -> Drift:
    """Per prompt and head tensor present in both states, its initial and change norms."""
    return {
        key: (
            float(np.linalg.norm(np.asarray(value, dtype=np.float64))),
            float(np.linalg.norm(np.asarray(final[key], dtype=np.float64) - value)),
        )
        for key, value in sorted(initial.items())
        if key in final and key.startswith((PROMPT_PREFIX, HEAD_PREFIX))
    }


def drift_from_files(run_dir: Path) -> Drift | None:
    """The drift of a run folder from its two state files; None if either is missing."""
    try:
        with np.load(run_dir / INITIAL_STATE) as first, np.load(run_dir / FINAL_STATE) as last:
            return drift_between(
                {k: first[k] for k in first.files}, {k: last[k] for k in last.files}
            )
    except (OSError, ValueError):
        return None


def drift_document(drift: Drift) -> dict[str, Any]:
    """What ``drift.json`` holds: per tensor its initial norm and the norm of its change."""
    tensors = {
        key: {"initial-norm": start, "change-norm": change}
        for key, (start, change) in drift.items()
    }
    return {"tensors": tensors}


def drift_from_json(run_dir: Path) -> Drift | None:
    """The drift recorded in a collected run folder's ``drift.json``; None if absent.

    A file that is there but does not hold a drift is an error naming it (a collected
    result must not silently lose its drift column)."""
    path = run_dir / DRIFT_JSON
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        tensors = json.loads(text)["tensors"]
        return {
            str(key): (float(value["initial-norm"]), float(value["change-norm"]))
            for key, value in tensors.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"{path}: not a drift file ({exc!r}); expected "
            '{"tensors": {KEY: {"initial-norm": N, "change-norm": N}}}'
        ) from None


def recorded_drift(run_dir: Path) -> Drift | None:
    """A run folder's drift: from its two state files, else from its ``drift.json``
    (a collected folder), else None."""
    measured = drift_from_files(run_dir)
    return measured if measured is not None else drift_from_json(run_dir)


def rebuilt_drift(run_dir: Path) -> Drift:
    """The drift of a run folder without ``initial-state.npz``: the initial state rebuilt
    from its config.json (as the ServerApp seeds it)."""
    from pep_fedpt.config import RunConfig
    from pep_fedpt.data import load_central_data
    from pep_fedpt.methods import initial_arrays
    from pep_fedpt.models import create_backbone, image_spec
    from server_app.results import RECORDED_ONLY

    recorded = json.loads((run_dir / "config.json").read_text())
    cfg = RunConfig.from_flat({k: v for k, v in recorded.items() if k not in RECORDED_ONLY})
    backbone = create_backbone(cfg.model, cfg.seed, cfg.data)
    num_classes = load_central_data(cfg.data, image_spec(backbone)).num_classes
    with np.load(run_dir / FINAL_STATE) as final:
        return drift_between(
            initial_arrays(cfg, backbone, num_classes), {k: final[k] for k in final.files}
        )


@dataclass(frozen=True)
class DriftSummary:
    """One run's "did the prompts learn": median and max relative change over its prompt
    tensors (NaN without any), and the head's absolute change."""

    prompt_median: float
    prompt_max: float
    head_change: float


def summarize(drift: Drift) -> DriftSummary:
    """``DriftSummary`` of a run's drift (empty or all-zero prompt tensors are left out).

    A server state in which nothing moved at all (``local``: each node keeps its own
    prompts and head, the server's copy never changes) is not "0% drift" but unmeasured
    here: all three values are NaN, which the tables print as "-"."""
    if drift and all(change == 0 for _, change in drift.values()):
        return DriftSummary(math.nan, math.nan, math.nan)
    ratios = [
        change / start
        for key, (start, change) in drift.items()
        if key.startswith(PROMPT_PREFIX) and start > 0
    ]
    head = [change for key, (_, change) in drift.items() if key.startswith(HEAD_PREFIX)]
    return DriftSummary(
        statistics.median(ratios) if ratios else math.nan,
        max(ratios) if ratios else math.nan,
        math.sqrt(sum(c * c for c in head)) if head else math.nan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (output-dir)")
    args = parser.parse_args()
    print("| run | key | initial norm | change norm | change / initial |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        measured = recorded_drift(run)
        for key, (start, change) in (measured or rebuilt_drift(run)).items():
            ratio = f"{change / start:.4f}" if start > 0 else "-"
            print(f"| {run.name} | {key} | {start:.3f} | {change:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
