"""bench/figures.py: the speed and backbone blocks come from their result files, and a
file that lacks what a block needs is named in the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import figures

AGGREGATE = {
    "clients": 100,
    "repeats": 7,
    "values-per-reply": 929380,
    "load-average": [1.0, 2.0, 3.0],
    "cpus": 2,
    "median-s": {"fedavg": 0.4, "pep-fedpt": 0.44, "validation": 0.1, "merge": 0.25},
    "peak-traced-mib": {"fedavg": 7.5, "pep-fedpt": 11.8, "validation": 0.0, "merge": 11.8},
    "ratios": {
        "pep-fedpt / fedavg time": 1.1,
        "merge / fedavg time": 0.625,
        "validation / merge time": 0.4,
        "pep-fedpt peak / one state": 3.3,
        "fedavg peak / one state": 2.1,
    },
}


def test_the_aggregation_block_reads_every_figure_from_the_file(tmp_path: Path) -> None:
    (tmp_path / figures.AGGREGATE).write_text(json.dumps(AGGREGATE))
    block = figures.aggregation_block(tmp_path)
    assert "| Flower `FedAvg.aggregate_train` | 0.400 | 7.5 MiB |" in block
    assert "| its merge alone (replies read cold) | 0.250 | 11.8 MiB |" in block
    assert "= **1.10** (target ≤ 1.2); the merge alone 0.25 s" in block
    assert "929,380 float32 values" in block and "load average 1.0, 2.0, 3.0" in block


def test_an_aggregate_file_without_its_ratios_is_named(tmp_path: Path) -> None:
    (tmp_path / figures.AGGREGATE).write_text(json.dumps({**AGGREGATE, "ratios": {}}))
    with pytest.raises(figures.FigureError, match=r"aggregate\.json: no 'pep-fedpt / fedavg"):
        figures.aggregation_block(tmp_path)
    with pytest.raises(figures.FigureError, match=r"backbone-probe\.jsonl"):
        figures.backbone_block(tmp_path)


def test_the_backbone_block_lists_the_best_probe_first(tmp_path: Path) -> None:
    rows = [
        {"weights": "local:random", "size": 32, "acc": 0.31, "acc-0-4": 0.2, "acc-5-9": 0.4},
        {"weights": "local:/c/vit-x.pth", "size": 32, "acc": 0.46, "acc-0-4": 0.5, "acc-5-9": 0.42},
    ]
    (tmp_path / figures.BACKBONE_PROBE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = figures.backbone_block(tmp_path).splitlines()
    assert (
        lines[2]
        == "| `local:0-4`, pre-trained here (`vit-x.pth`) | 32 px | 46.0% | 50.0% | 42.0% |"
    )
    assert lines[3].startswith("| same ViT, random weights (control) | 32 px | 31.0%")


def test_the_readme_scale_summary_keeps_the_header_and_its_rows() -> None:
    root = Path(__file__).resolve().parents[1] / "bench" / "results"
    whole = figures.scale_block(root).splitlines()
    summary = figures.scale_summary_block(root).splitlines()
    assert summary[:2] == whole[:2] and set(summary) <= set(whole)
    assert summary[2].split("|")[1].strip() == "sampled clients per round (train)"
    assert len(summary) == 2 + len(figures.SCALE_SUMMARY)  # one row per summary entry
