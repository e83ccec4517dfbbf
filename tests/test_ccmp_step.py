"""bench/ccmp_step.py: its document, its one-table Markdown and ``--report``, on
hand-written samples (no model built, nothing timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.ccmp_step import main, make_document, render_report
from tests.helpers.cli import refused

ROOT = Path(__file__).resolve().parents[1]


def _setting(**changes: Any) -> dict[str, Any]:
    setting = {
        "classes": 10,
        "width": 192,
        "depth": 6,
        "heads": 3,
        "img_size": 32,
        "patch": 4,
        "tokens": 76,
        "batch": 32,
        "threads": 2,
        "shared_length": 10,
        "class_length": 1,
        "recompute_z": False,
        "repeats": 3,
        "warmup": 3,
    }
    return setting | changes


def _on_the_test_machine(document: dict[str, Any]) -> dict[str, Any]:
    """The machine of the expected sentences, whatever runs the tests (CPUs, threads)."""
    document["machine"].update(cpus=2, omp_num_threads="2")
    return document


def _document(
    deep: list[float], ccmp: list[float], argv: tuple[str, ...] = (), **changes: Any
) -> dict[str, Any]:
    return _on_the_test_machine(
        make_document(
            ["--threads", "2", *argv], _setting(**changes), deep, ccmp, (0.4, 1.0, 1.0), (0.5, 1, 1)
        )
    )


def _c10() -> dict[str, Any]:
    return _document([0.2367, 0.25, 0.2], [0.2377, 0.3, 0.21])


def _c100() -> dict[str, Any]:
    return _document([0.2614, 0.27, 0.26], [0.2627, 0.28, 0.26], ("--classes", "100"), classes=100)


def _recompute() -> dict[str, Any]:
    return _document([0.2351], [0.3225], ("--recompute-z",), recompute_z=True)


def test_the_document_keeps_every_sample_with_its_medians_and_ratio() -> None:
    document = _c10()
    timing = document["timing"]
    assert timing["vpt_deep_s"] == [0.2367, 0.25, 0.2]
    assert timing["ccmp_s"] == [0.2377, 0.3, 0.21]
    assert timing["median_vpt_deep_s"] == 0.2367 and timing["median_ccmp_s"] == 0.2377
    assert timing["ccmp_over_vpt_deep"] == pytest.approx(0.2377 / 0.2367)
    assert document["command"] == "python bench/ccmp_step.py --threads 2"
    assert document["setting"]["recompute_z"] is False
    assert document["machine"]["loadavg_at_start"] == [0.4, 1.0, 1.0]
    assert json.loads(json.dumps(document)) == document  # what --out writes


def test_the_report_is_one_table_a_row_per_document_then_what_each_was_measured_under() -> None:
    lines = render_report([_c10(), _c100(), _recompute()]).splitlines()
    assert lines[:5] == [
        "| setting | VPT-deep | CCMP | CCMP / VPT-deep |",
        "|---|---|---|---|",
        "| C = 10, z(x) cached | 236.7 ms | 237.7 ms | 1.004 |",
        "| C = 100, z(x) cached | 261.4 ms | 262.7 ms | 1.005 |",
        "| C = 10, z(x) recomputed every step | 235.1 ms | 322.5 ms | 1.372 |",
    ]
    assert lines[5] == ""
    assert lines[6] == (
        "- C = 10, z(x) cached: ViT width 192, depth 6, 3 heads, 32 px / patch 4 (76 tokens), "
        "batch 32, 10 shared prompt tokens + one per block 2..6, torch threads 2, median of 3 "
        "interleaved steps after 3 warm-up; 2 CPUs (OMP_NUM_THREADS=2), 1-minute load average "
        "0.4 at the start, 0.5 at the end."
    )
    assert lines[7].startswith("- C = 100, z(x) cached: ViT width 192")
    assert lines[8].startswith("- C = 10, z(x) recomputed every step: ViT width 192")
    assert "median of 1 interleaved step after 3 warm-up" in lines[8]  # the singular
    assert len(lines) == 9


def test_report_prints_the_table_of_written_files_without_running(tmp_path: Path) -> None:
    documents = [_c10(), _c100(), _recompute()]
    paths = [tmp_path / f"{i}.json" for i in range(3)]
    for path, document in zip(paths, documents, strict=True):
        path.write_text(json.dumps(document))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "bench/ccmp_step.py", "--report", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == render_report(documents) + "\n"
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "bench.result_file" in imported  # the import log was read
    assert "torch" not in imported  # a pure renderer


def _drop(document: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    holder: Any = document
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    return document


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("setting", "classes"), r"setting: no 'classes'"),
        (("setting", "recompute_z"), r"setting: no 'recompute_z'"),
        (("setting", "threads"), r"setting: no 'threads'"),
        (("timing", "ccmp_s"), r"timing: no 'ccmp_s'"),
        (("timing",), r"the document: no 'timing'"),
        (("setting",), r"the document: no 'setting'"),
    ],
)
def test_a_document_missing_a_figure_is_refused_naming_it(
    drop: tuple[str, ...], named: str
) -> None:
    with pytest.raises(ValueError, match=named + r" \(written by bench/ccmp_step\.py --out\)"):
        render_report([_c10(), _drop(_c100(), drop)])


def test_inconsistent_timing_is_refused_naming_what_is_wrong() -> None:
    document = _c10()
    document["timing"]["ccmp_s"].pop()
    with pytest.raises(ValueError, match=r"timing: .*\(interleaved pairs\), got 3 and 2 samples"):
        render_report([document])
    document = _c10()
    document["timing"]["vpt_deep_s"] = 0.2
    with pytest.raises(ValueError, match=r"'vpt_deep_s' and 'ccmp_s' must be lists of seconds"):
        render_report([document])
    with pytest.raises(ValueError, match=r"no documents to render"):
        render_report([])


def test_report_of_a_file_missing_a_figure_names_the_file_and_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "c10.json", tmp_path / "old.json"
    good.write_text(json.dumps(_c10()))
    bad.write_text(json.dumps(_drop(_c100(), ("timing", "vpt_deep_s"))))
    # Refused with no table printed, though the first file is good.
    error = refused(main, ["--report", str(good), str(bad)], capsys)
    assert f"--report {bad}: not a bench/ccmp_step.py --out file" in error
    assert "timing: no 'vpt_deep_s'" in error


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--batch", "0"], "--batch = 0: at least 1"),
        (["--classes", "0"], "--classes = 0: at least 1"),
        (["--repeats", "-1"], "--repeats = -1: at least 1"),
        (["--img-size", "0"], "--img-size = 0: at least 1"),
        (["--depth", "1"], "--depth = 1: at least 2 (prompts go into blocks 2..depth)"),
        (["--shared-length", "-1"], "--shared-length = -1: at least 0"),
        (["--threads", "-2"], "--threads = -2: a number of threads"),
        (["--img-size", "30"], "--img-size = 30: not a multiple of --patch = 4"),
        (["--width", "100"], "--width = 100: not a multiple of --heads = 3"),
        (["--report", "a.json", "--out", "b.json"], "--report prints files already written"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


@pytest.mark.integration
def test_a_real_tiny_run_writes_the_file_that_report_prints_again(tmp_path: Path) -> None:
    """End to end on a tiny random ViT, small enough for seconds: what the run prints is
    the table ``--report`` of its ``--out`` file prints, then the verdict on the target."""
    out = tmp_path / "ccmp-step.json"
    argv = ["--width", "32", "--depth", "2", "--heads", "2", "--batch", "2", "--repeats", "2"]
    argv += ["--threads", "1", "--recompute-z", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "bench/ccmp_step.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(out.read_text())
    assert document["setting"]["recompute_z"] is True and document["setting"]["threads"] == 1
    assert len(document["timing"]["vpt_deep_s"]) == len(document["timing"]["ccmp_s"]) == 2
    again = subprocess.run(
        [sys.executable, "bench/ccmp_step.py", "--report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout == render_report([document]) + "\n"
    table, verdict = run.stdout.rsplit("\n\n", 1)
    assert table + "\n" == again.stdout
    assert verdict.startswith("CCMP / VPT-deep ") and "target <= 1.10" in verdict
