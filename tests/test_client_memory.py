"""``bench/client_memory.py``: the fitted line, its held-out error, the GPU packing, the
refusals, and a tiny CLIP's run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import refused
from helpers.flwr_run import ROOT

from bench.client_memory import (
    CUDA_CONTEXT_GIB,
    GIB,
    HEADROOM,
    estimate,
    fit,
    main,
    packing,
    render_report,
)


def test_the_fit_is_exact_on_a_line_and_its_errors_are_zero() -> None:
    assert fit([1, 2, 4], [13.0, 16.0, 22.0]) == pytest.approx((10.0, 3.0))
    rows = [
        {"batch": b, "step_peak_bytes": 10 * GIB + 3 * GIB * b / 10, "resident_bytes": GIB}
        for b in (1, 2, 4)
    ]
    e = estimate(rows, target=20)
    assert e["held_out_error"] == pytest.approx(0.0, abs=1e-12)
    assert e["max_residual"] == pytest.approx(0.0, abs=1e-12)
    assert e["client_bytes"] == pytest.approx(GIB + 10 * GIB + 6 * GIB)  # 17 GiB


def test_the_held_out_error_is_the_smaller_fit_missing_the_largest_batch() -> None:
    """Peaks 1, 2, 5 at batches 1, 2, 3: the line through the first two predicts 3 for the
    third, 40% short."""
    rows = [
        {"batch": b, "step_peak_bytes": p, "resident_bytes": 0}
        for b, p in ((1, 1.0), (2, 2.0), (3, 5.0))
    ]
    assert estimate(rows, target=3)["held_out_error"] == pytest.approx(-0.4)


def test_packing_allows_headroom_and_a_cuda_context_per_client() -> None:
    # 15.6 GiB x 1.25 + 0.5 GiB of context = 20 GiB: 4 per 80 GiB (0.25 each), 2 per 40 GiB.
    client = (20 - CUDA_CONTEXT_GIB) / HEADROOM * GIB
    assert packing(client, 80) == (4, 0.25)
    assert packing(client, 40) == (2, 0.5)
    assert packing(100 * GIB, 80) == (0, 1.0)  # does not fit: a whole GPU, said by 0


def test_a_line_needs_two_batch_sizes() -> None:
    with pytest.raises(ValueError, match="two distinct batch sizes"):
        fit([4, 4], [1.0, 2.0])


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--batches", "4"], "--batches = '4': two or more distinct sizes"),
        (["--batches", "1,x"], "--batches = '1,x'"),
        (["--precisions", "fp8"], "--precisions = 'fp8'"),
        (["--target-batch", "0"], "--target-batch = 0: at least 1"),
        (["--report", "/nonexistent.json"], "--report /nonexistent.json"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


@pytest.mark.integration
def test_a_tiny_clip_run_writes_the_rows_that_report_fits_and_prints(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    argv = ["--clip-model", "tiny", "--batches", "1,3", "--classes", "3", "--per-class", "2"]
    command = [sys.executable, "bench/client_memory.py", *argv, "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    document = json.loads(out.read_text())
    rows = document["rows"]
    assert [(r["precision"], r["batch"]) for r in rows] == [
        ("fp32", 1),
        ("fp32", 3),
        ("bf16", 1),
        ("bf16", 3),
    ]
    for precision in ("fp32", "bf16"):
        mine = [r for r in rows if r["precision"] == precision]
        assert mine[1]["step_peak_bytes"] > mine[0]["step_peak_bytes"] > 0
        assert mine[0]["resident_bytes"] > 0
        assert estimate(mine, 128)["client_bytes"] > mine[1]["resident_bytes"]
    again = subprocess.run(
        [sys.executable, "bench/client_memory.py", "--report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout == run.stdout == render_report(document)


def test_the_configuration_page_shows_the_committed_estimate_as_the_report_prints_it() -> None:
    document = json.loads((ROOT / "bench/results/client-memory-fedmvp-vit-b-16.json").read_text())
    assert render_report(document).rstrip("\n") in (ROOT / "docs/configuration.md").read_text()
