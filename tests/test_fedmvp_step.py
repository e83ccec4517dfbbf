"""bench/fedmvp_step.py: its document, its Markdown tables and ``--report``, on hand-written
samples and memory rows (no CLIP built, nothing timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.fedmvp_step import main, make_document, render_document, render_report
from tests.helpers.cli import refused

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def _setting(**changes: Any) -> dict[str, Any]:
    setting = {
        "clip_model": "tiny",
        "vision_width": 64,
        "text_dim": 64,
        "image_size": 32,
        "device": "cpu",
        "threads": 1,
        "batch": 32,
        "per_class": 10,
        "sentences_from": "caltech101.json",
        "classes": 100,
        "repeats": 3,
        "memory_classes": [10, 50],
        "skip_timing": False,
    }
    return setting | changes


def _memory(*rows: tuple[int, float, float]) -> list[dict[str, int]]:
    """(classes, MiB of this project, MiB per element) rows, 10 sentences per class."""
    return [
        {
            "classes": classes,
            "sentences": classes * 10,
            "this_project_bytes": int(mine * MIB),
            "per_element_bytes": int(theirs * MIB),
        }
        for classes, mine, theirs in rows
    ]


def _tiny() -> dict[str, Any]:
    timing = {
        "bank_classes": 100,
        "bank_sentences": 1000,
        "calls": {
            "training step": {"cached_s": [0.2, 0.19, 0.3], "reencode_s": [2.8, 3.0, 2.0]},
            "evaluation": {"cached_s": [0.05, 0.04, 0.06], "reencode_s": [2.0, 2.1, 2.2]},
        },
    }
    return _on_the_test_machine(
        make_document(
            ["--threads", "1", "--out", "tiny.json"],
            _setting(),
            timing,
            _memory((10, 8.6, 12.4), (50, 10.25, 30.9)),
            (1.25, 1.0, 1.0),
            (3.0, 2.0, 1.0),
        )
    )


def _on_the_test_machine(document: dict[str, Any]) -> dict[str, Any]:
    """The machine of the expected sentences, whatever runs the tests (CPUs, threads)."""
    document["machine"].update(cpus=2, omp_num_threads="1")
    return document


def _vit() -> dict[str, Any]:
    setting = _setting(clip_model="ViT-B-16", vision_width=768, text_dim=512, image_size=224)
    setting |= {"batch": 8, "skip_timing": True}
    return _on_the_test_machine(
        make_document(
            ["--clip-model", "ViT-B-16", "--skip-timing"],
            setting,
            None,
            _memory((10, 1083.7, 1089.0), (50, 1089.2, 1133.5)),
            (2.0, 1.0, 1.0),
            (2.5, 1.0, 1.0),
        )
    )


def test_the_document_keeps_every_sample_with_its_medians_and_ratio() -> None:
    document = _tiny()
    step = document["timing"]["calls"]["training step"]
    assert step["cached_s"] == [0.2, 0.19, 0.3]
    assert step["median_cached_s"] == 0.2 and step["median_reencode_s"] == 2.8
    assert step["reencode_over_cached"] == pytest.approx(14.0)
    assert document["command"] == "python bench/fedmvp_step.py --threads 1 --out tiny.json"
    assert document["machine"]["loadavg_at_start"] == [1.25, 1.0, 1.0]
    assert document["memory"][1]["per_element_bytes"] == int(30.9 * MIB)
    assert _vit()["timing"] is None
    assert json.loads(json.dumps(document)) == document  # what --out writes


def test_the_tables_show_the_settings_the_medians_the_ratios_and_the_memory_rows() -> None:
    lines = render_document(_tiny()).splitlines()
    assert lines[0] == (
        "FedMVP step costs, time and memory: CLIP tiny (vision width 64, text dim 64, 32 px, "
        "random weights), device cpu, torch threads 1, batch 32, 10 sentences per class "
        "(caltech101.json); 2 CPUs (OMP_NUM_THREADS=1), 1-minute load average 1.2 at the "
        "start, 3.0 at the end."
    )
    assert lines[2] == (
        "Time with a bank of 100 classes = 1000 sentences: median of 3 interleaved pairs "
        "(cached, re-encoding) after 2 warm-up pairs."
    )
    assert lines[4:8] == [
        "| call | cached | re-encoding all sentences | re-encoding / cached |",
        "|---|---|---|---|",
        "| training step | 200.00 ms | 2800.00 ms | **14.00** |",
        "| evaluation | 50.00 ms | 2100.00 ms | **42.00** |",
    ]
    assert lines[9] == "Peak memory one training step adds (forward + backward), batch 32:"
    assert lines[11:] == [
        "| classes | sentences | this project | bank projected per batch element |",
        "|---|---|---|---|",
        "| 10 | 100 | 8.6 MiB | 12.4 MiB |",
        "| 50 | 500 | 10.2 MiB | 30.9 MiB |",
    ]


def test_a_memory_only_document_has_no_timing_table() -> None:
    lines = render_document(_vit()).splitlines()
    assert lines[0].startswith(
        "FedMVP step costs, memory only (`--skip-timing`): CLIP ViT-B-16 (vision width 768, "
        "text dim 512, 224 px, random weights), device cpu, torch threads 1, batch 8, "
    )
    assert not any("re-encoding" in line for line in lines)
    assert lines[2] == "Peak memory one training step adds (forward + backward), batch 8:"
    assert lines[-2:] == [
        "| 10 | 100 | 1083.7 MiB | 1089.0 MiB |",
        "| 50 | 500 | 1089.2 MiB | 1133.5 MiB |",
    ]


def test_a_report_renders_each_document_in_order_a_blank_line_apart() -> None:
    tiny, vit = render_document(_tiny()), render_document(_vit())
    assert render_report([_tiny(), _vit()]) == f"{tiny}\n\n{vit}"
    assert render_report([_vit()]) == vit


def test_report_prints_the_tables_of_written_files_without_running(tmp_path: Path) -> None:
    paths = [tmp_path / "fedmvp-step-tiny.json", tmp_path / "fedmvp-step-vit-b-16.json"]
    for path, document in zip(paths, (_tiny(), _vit()), strict=True):
        path.write_text(json.dumps(document))
    done = subprocess.run(
        [sys.executable, "bench/fedmvp_step.py", "--report", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == render_report([_tiny(), _vit()]) + "\n"


def _drop(document: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    holder: Any = document
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    return document


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("setting", "clip_model"), r"setting: no 'clip_model'"),
        (("setting", "skip_timing"), r"setting: no 'skip_timing'"),
        (("timing", "bank_sentences"), r"timing: no 'bank_sentences'"),
        (("timing", "calls", "evaluation"), r"timing\.calls: no 'evaluation'"),
        (
            ("timing", "calls", "training step", "reencode_s"),
            r"timing\.calls\['training step'\]: no 'reencode_s'",
        ),
        (("memory", 1, "per_element_bytes"), r"memory\[1\]: no 'per_element_bytes'"),
        (("memory",), r"the document: no 'memory'"),
        (("timing",), r"the document: no 'timing'"),
    ],
)
def test_a_document_missing_a_figure_is_refused_naming_it(
    drop: tuple[Any, ...], named: str
) -> None:
    with pytest.raises(ValueError, match=named + r" \(written by bench/fedmvp_step\.py --out\)"):
        render_document(_drop(_tiny(), drop))


def test_inconsistent_timing_is_refused_naming_what_is_wrong() -> None:
    document = _tiny()
    document["timing"]["calls"]["evaluation"]["reencode_s"].pop()
    with pytest.raises(ValueError, match=r"timing\.calls\['evaluation'\]: .* got 3 and 2 samples"):
        render_document(document)
    document = _tiny()
    document["timing"]["calls"]["evaluation"]["cached_s"] = 0.05
    with pytest.raises(ValueError, match=r"'cached_s' and 'reencode_s' must be lists of seconds"):
        render_document(document)
    document = _tiny()
    document["timing"] = None
    with pytest.raises(ValueError, match=r"'timing' is null but setting 'skip_timing' is false"):
        render_document(document)
    document = _vit()
    document["memory"] = []
    with pytest.raises(ValueError, match=r"the document: 'memory' holds no rows"):
        render_document(document)


def test_report_of_a_file_missing_a_figure_names_the_file_and_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "tiny.json", tmp_path / "old.json"
    good.write_text(json.dumps(_tiny()))
    bad.write_text(json.dumps(_drop(_vit(), ("memory", 0, "this_project_bytes"))))
    # Refused with no table printed, though the first file is good.
    error = refused(main, ["--report", str(good), str(bad)], capsys)
    assert f"--report {bad}: not a bench/fedmvp_step.py --out file" in error
    assert "memory[0]: no 'this_project_bytes'" in error


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--batch", "0"], "--batch = 0: at least 1"),
        (["--per-class", "0"], "--per-class = 0: at least 1"),
        (["--repeats", "-1"], "--repeats = -1: at least 1"),
        (["--threads", "-2"], "--threads = -2: a number of threads"),
        (["--memory-classes", "10,x"], "--memory-classes = '10,x': comma-separated numbers"),
        (["--memory-classes", "10,0"], "--memory-classes = '10,0': comma-separated numbers"),
        (["--attributes", "/nonexistent/a.json"], "--attributes /nonexistent/a.json: no such"),
        (["--report", "a.json", "--out", "b.json"], "--report prints files already written"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


def test_one_timed_pair_is_said_in_the_singular() -> None:
    document = _tiny()
    for samples in document["timing"]["calls"].values():
        del samples["cached_s"][1:], samples["reencode_s"][1:]
    assert "median of 1 interleaved pair (cached, re-encoding)" in render_document(document)


@pytest.mark.integration
def test_a_real_tiny_run_writes_the_file_that_report_prints_again(tmp_path: Path) -> None:
    """End to end on the tiny random CLIP, small enough for seconds: what the run prints is
    what ``--report`` of its ``--out`` file prints."""
    out = tmp_path / "fedmvp-step.json"
    argv = ["--classes", "5", "--repeats", "1", "--batch", "2", "--memory-classes", "5,10"]
    argv += ["--threads", "1", "--device", "cpu", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "bench/fedmvp_step.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(out.read_text())
    assert document["setting"]["memory_classes"] == [5, 10]
    assert [row["sentences"] for row in document["memory"]] == [50, 100]
    assert document["timing"]["bank_sentences"] == 50
    assert all(row["per_element_bytes"] > 0 for row in document["memory"])
    again = subprocess.run(
        [sys.executable, "bench/fedmvp_step.py", "--report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout == again.stdout == render_report([document]) + "\n"
