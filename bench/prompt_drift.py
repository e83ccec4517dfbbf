"""How far each trainable tensor of a finished run moved from its seeded initial value.

    .venv/bin/python -m bench.prompt_drift RUN_DIR [RUN_DIR ...]

A run whose prompts barely moved is, in effect, a linear probe on the frozen backbone: the
comparison report (``bench/report.py``) puts each method's drift beside its accuracy for
that reason. The measure of one tensor is its relative change ‖final − initial‖ /
‖initial‖; the head starts at zero (``prompt.head-init = "zeros"``), so its measure is the
absolute change ‖Δ head‖ (weight and bias together).

A run folder holds its initial state (``initial-state.npz``, written with round 0) and its
final one (``state.npz``); for a folder of an older run without the initial state, the
command line rebuilds it from the run's config (backbone and data set needed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INITIAL_STATE = "initial-state.npz"  # server_app.results.INITIAL_STATE
FINAL_STATE = "state.npz"
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


def rebuilt_drift(run_dir: Path) -> Drift:
    """The drift of a run folder without ``initial-state.npz``: the initial state rebuilt
    from its config.json (as the ServerApp seeds it)."""
    from pep_fedpt.config import RunConfig
    from pep_fedpt.data import load_central_data
    from pep_fedpt.methods import initial_arrays
    from pep_fedpt.models import create_backbone, image_spec

    cfg = RunConfig.from_flat(json.loads((run_dir / "config.json").read_text()))
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
    """``DriftSummary`` of a run's drift (empty or all-zero prompt tensors are left out)."""
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
        measured = drift_from_files(run)
        for key, (start, change) in (measured or rebuilt_drift(run)).items():
            ratio = f"{change / start:.4f}" if start > 0 else "-"
            print(f"| {run.name} | {key} | {start:.3f} | {change:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
