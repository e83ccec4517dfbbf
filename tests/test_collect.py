"""bench/collect.py: a benchmark's result files, small enough for git, give the very same
report as the benchmark's own folders (fake comparison folders, no Flower)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from helpers.fake_results import fake_benchmark

from bench import collect, report
from bench.prompt_drift import DRIFT_JSON, drift_from_files, drift_from_json, summarize

NAMES = ["ablation-tau", "alpha-0.1", "alpha-0.5"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake benchmark, built once for the module (it runs compare's real reporting)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return fake_benchmark(tmp_path_factory.mktemp("benchmark") / "out", monkeypatch)


@pytest.fixture
def benchmark(built: Path, tmp_path: Path) -> Path:
    """A copy of the fake benchmark's folder of comparisons, for this test alone."""
    return Path(shutil.copytree(built, tmp_path / "out"))


def test_the_collected_results_give_the_same_report_as_the_run_folders(
    benchmark: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "repo" / "bench" / "results" / "cifar10"
    done = collect.collect(benchmark, dest)
    assert [(c.name, c.runs) for c in done] == [
        ("ablation-tau", 2),
        ("alpha-0.1", 8),  # 2 methods x 2 grid points + 2 x 2 final runs
        ("alpha-0.5", 8),
    ]
    for name in NAMES:
        expected_md = report.regenerate(benchmark / name)
        expected_csv = (benchmark / name / "results.csv").read_text()
        assert (dest / name / "results.md").read_text() == expected_md  # written by collect
        (dest / name / "results.md").unlink()
        assert report.regenerate(dest / name) == expected_md
        assert (dest / name / "results.csv").read_text() == expected_csv
        assert (dest / name / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    # no weights; the drift column comes from drift.json
    assert not list(dest.rglob("*.npz"))
    md = (dest / "alpha-0.1" / "results.md").read_text()
    assert "| pep-fedpt | 2/2 |" in md and "| 12.0% | 18.0% | 0.060 |" in md
    # every link of results.md reaches a file of the collected folder
    for name in NAMES:
        page = dest / name / "results.md"
        links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
        assert links and all((page.parent / link).exists() for link in links), links


def test_a_collected_run_keeps_small_files_and_its_drift_without_weights(
    benchmark: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    collect.collect(benchmark, dest)
    source, copy = benchmark / "alpha-0.1" / "runs", dest / "alpha-0.1" / "runs"
    assert sorted(p.name for p in (copy / "pep-fedpt-s0").iterdir()) == [
        "config.json",
        DRIFT_JSON,
        "metrics.json",
    ]
    assert drift_from_json(copy / "pep-fedpt-s0") == drift_from_files(source / "pep-fedpt-s0")
    outcome = report.read_outcome(dest / "alpha-0.1", "runs", "pep-fedpt-s0", "pep-fedpt", 0)
    assert outcome.drift == summarize(drift_from_files(source / "pep-fedpt-s0") or {})
    # the log path, recorded absolute (and elsewhere: this benchmark folder was moved), is
    # relative to the comparison folder in the copy
    record = json.loads((copy / "pep-fedpt-s1.json").read_text())
    assert record["log"] == "runs/pep-fedpt-s1.log"
    assert json.loads((source / "pep-fedpt-s1.json").read_text())["log"].startswith("/")
    assert (copy / "pep-fedpt-s1.toml").read_text() == (source / "pep-fedpt-s1.toml").read_text()
    # the failed grid run is there (its outcome and log), for the failures of results.md
    assert (dest / "alpha-0.1" / "grid" / "local-g0-s0.json").is_file()
    failure = "- local seed 0 (grid point train.lr=0.01): failed (flwr run exited 1, no run id)"
    log = "grid/local-g0-s0.log"
    assert f"{failure} (log: [{log}]({log}))" in (dest / "alpha-0.1" / "results.md").read_text()


def test_a_long_log_keeps_its_last_lines_under_a_line_that_says_so(
    benchmark: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    collect.collect(benchmark, dest)
    full = (benchmark / "alpha-0.1" / "runs" / "pep-fedpt-s1.log").read_text()
    cut = (dest / "alpha-0.1" / "runs" / "pep-fedpt-s1.log").read_text()
    header, _, tail = cut.partition("\n")
    assert header.startswith("[bench.collect: cut; the log had 2000 lines")
    assert full.endswith(tail) and len(tail.encode()) <= collect.LOG_BYTES
    assert tail.count("\n") == collect.LOG_LINES
    short = (benchmark / "alpha-0.1" / "runs" / "local-s1.log").read_text()
    assert (dest / "alpha-0.1" / "runs" / "local-s1.log").read_text() == short
    assert collect.cut_log("a" * (collect.LOG_BYTES * 2)).endswith("a" * collect.LOG_BYTES)


def test_collecting_again_replaces_what_the_last_collect_wrote_and_nothing_else(
    benchmark: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    collect.collect(benchmark, dest)
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    (dest / "alpha-0.1" / "runs" / "gone-s0.json").write_text("{}")  # a run since removed
    (dest / "alpha-0.1" / "runs" / "pep-fedpt-s0" / "metrics.json").write_text("[]")
    (dest / "NOTES.md").write_text("kept")
    collect.collect(benchmark, dest)
    after = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert after.pop(Path("NOTES.md")) == b"kept"
    assert after.keys() == before.keys()
    changed = [str(k) for k in after if k.suffix != ".png" and after[k] != before[k]]
    assert changed == []
    assert not [p for p in dest.rglob(".collect-*")]  # the staging folder is gone


def test_a_dest_inside_out_or_out_inside_dest_is_refused(
    benchmark: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inside = benchmark / "results"
    assert collect.main([str(benchmark), str(inside)]) == 2
    assert "one lies inside the other" in capsys.readouterr().err
    assert collect.main([str(benchmark / "alpha-0.1"), str(benchmark)]) == 2
    assert "one lies inside the other" in capsys.readouterr().err
    assert collect.main([str(benchmark), str(benchmark)]) == 2
    assert not inside.exists()


def test_an_out_without_a_comparison_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out").mkdir()
    assert collect.main([str(tmp_path / "out"), str(tmp_path / "dest")]) == 2
    assert "holds no comparison (no comparison.json" in capsys.readouterr().err
    assert collect.main([str(tmp_path / "missing"), str(tmp_path / "dest")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "dest").exists()


def test_a_drift_file_that_holds_no_drift_is_an_error_naming_it(tmp_path: Path) -> None:
    assert drift_from_json(tmp_path) is None  # absent: no drift
    (tmp_path / DRIFT_JSON).write_text('{"tensors": {"prompt.shared": 3}}')
    with pytest.raises(ValueError, match=r"drift\.json: not a drift file"):
        drift_from_json(tmp_path)


def test_the_comparisons_are_found_at_any_depth_but_not_inside_one_or_hidden(
    tmp_path: Path,
) -> None:
    for folder in ("a", "b/c", "a/runs/x", ".collect-1/d"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "comparison.json").write_text("{}")
    assert collect.comparison_folders(tmp_path) == [tmp_path / "a", tmp_path / "b" / "c"]


def test_a_server_state_that_never_moved_has_no_drift_rather_than_zero() -> None:
    """``local`` keeps every trained tensor on its nodes: the server's copy is unchanged,
    which says nothing about whether the prompts learned."""
    still = summarize({"prompt.shared": (2.0, 0.0), "head.weight": (0.0, 0.0)})
    assert all(math.isnan(v) for v in (still.prompt_median, still.prompt_max, still.head_change))
    moved = summarize(
        {"prompt.shared": (2.0, 0.5), "prompt.class": (1.0, 0.0), "head.weight": (0.0, 0.0)}
    )
    assert (moved.prompt_median, moved.prompt_max, moved.head_change) == (0.125, 0.25, 0.0)
