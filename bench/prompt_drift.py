"""How far each trainable tensor of a finished run moved from its seeded initial value.

    .venv/bin/python -m bench.prompt_drift RUN_DIR [RUN_DIR ...]

A run whose prompts barely moved is, in effect, a linear probe on the frozen backbone: the
CPU benchmark (README) uses this to explain why the global prompt methods tie.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pep_fedpt.config import RunConfig
from pep_fedpt.data import load_central_data
from pep_fedpt.methods import initial_arrays
from pep_fedpt.models import create_backbone, image_spec


def drift(run_dir: Path) -> dict[str, tuple[float, float]]:
    """{key: (norm of the initial value, norm of final - initial)} for the global state."""
    flat = json.loads((run_dir / "config.json").read_text())
    cfg = RunConfig.from_flat(flat)
    backbone = create_backbone(cfg.model, cfg.seed, cfg.data)
    num_classes = load_central_data(cfg.data, image_spec(backbone)).num_classes
    initial = initial_arrays(cfg, backbone, num_classes)
    final = np.load(run_dir / "state.npz")
    return {
        key: (float(np.linalg.norm(value)), float(np.linalg.norm(final[key] - value)))
        for key, value in sorted(initial.items())
        if key in final.files
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (output-dir)")
    args = parser.parse_args()
    print("| run | key | initial norm | change norm | change / initial |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for key, (start, change) in drift(run).items():
            ratio = f"{change / start:.4f}" if start > 0 else "-"
            print(f"| {run.name} | {key} | {start:.3f} | {change:.4f} | {ratio} |")


if __name__ == "__main__":
    main()
