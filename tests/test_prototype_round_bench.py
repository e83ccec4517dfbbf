"""bench/prototype_round.py: its table from a hand-written document, its refusals, and
a tiny real run whose peak does not grow with the replies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.prototype_round import growth_per_node, main, parse_nodes, render_table
from tests.helpers.cli import refused

ROOT = Path(__file__).resolve().parents[1]


def _document() -> dict[str, Any]:
    return {
        "command": "python bench/prototype_round.py --nodes 1000,4000",
        "setting": {
            "classes": 100,
            "dim": 768,
            "nodes": [1000, 4000],
            "pull_batch": 100,
            "reply_bytes": 307_200 + 800,
        },
        "machine": {
            "cpus": 2,
            "omp_num_threads": "1",
            "loadavg_at_start": [1.0, 1.0, 1.0],
            "loadavg_at_end": [2.0, 1.0, 1.0],
        },
        "runs": [
            {
                "nodes": 1000,
                "peak_bytes": 40 * 2**20,
                "kept_bytes": 3 * 2**20,
                "replies_bytes": 308_000 * 1000,
            },
            {
                "nodes": 4000,
                "peak_bytes": 52 * 2**20,
                "kept_bytes": 12 * 2**20,
                "replies_bytes": 308_000 * 4000,
            },
        ],
    }


def test_the_table_has_a_row_per_node_count_then_the_growth_per_node_and_the_setting() -> None:
    lines = render_table(_document()).splitlines()
    assert lines == [
        "| nodes | all replies (MiB) | traced peak (MiB) | kept after the round (MiB) |",
        "|---|---|---|---|",
        "| 1,000 | 293.7 | 40.0 | 3.0 |",
        "| 4,000 | 1174.9 | 52.0 | 12.0 |",
        "",
        "Peak growth per node: 4.1 KiB (one reply's arrays: 300.8 KiB).",
        "C = 100, D = 768: one reply holds 308,000 bytes of float32 sums and int64 counts; "
        "the strategy pulls at most 100 replies at a time; 2 CPUs (OMP_NUM_THREADS=1), "
        "1-minute load average 1.0 at the start, 2.0 at the end.",
    ]


def test_one_node_count_has_no_growth_line() -> None:
    document = _document()
    document["runs"] = document["runs"][:1]
    assert growth_per_node(document["runs"]) is None
    assert "growth" not in render_table(document)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("runs",), r"the document: no 'runs'"),
        (("setting", "reply_bytes"), r"setting: no 'reply_bytes'"),
        (("setting", "pull_batch"), r"setting: no 'pull_batch'"),
        (("runs", 1, "peak_bytes"), r"a run: no 'peak_bytes'"),
    ],
)
def test_a_document_missing_a_figure_is_refused_naming_it(
    path: tuple[Any, ...], named: str
) -> None:
    document = _document()
    holder: Any = document
    for key in path[:-1]:
        holder = holder[key]
    del holder[path[-1]]
    with pytest.raises(ValueError, match=named + r" \(written by bench/prototype_round\.py"):
        render_table(document)


def test_runs_that_are_not_counts_are_refused() -> None:
    document = _document()
    document["runs"][0]["peak_bytes"] = -1
    with pytest.raises(ValueError, match=r"'peak_bytes' = -1 is not a byte count"):
        render_table(document)
    document["runs"] = []
    with pytest.raises(ValueError, match="'runs' must be a non-empty list"):
        render_table(document)


def test_node_counts_are_parsed_sorted_and_bad_ones_named() -> None:
    assert parse_nodes("4000,1000") == [1000, 4000]
    with pytest.raises(ValueError, match=r"'ten' is not a whole number"):
        parse_nodes("1000,ten")
    with pytest.raises(ValueError, match="1 nodes; at least 2"):
        parse_nodes("1")
    with pytest.raises(ValueError, match="appears twice"):
        parse_nodes("10,10")


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--nodes", "0"], "--nodes '0': 0 nodes; at least 2"),
        (["--nodes", "a"], "'a' is not a whole number"),
        (["--classes", "0"], "--classes = 0: at least 1"),
        (["--dim", "-3"], "--dim = -3: at least 1"),
        (["--pull-batch", "0"], "--pull-batch = 0: at least 1"),
        (["--report", "a.json", "--out", "b.json"], "--report prints a file already written"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


def test_report_of_a_bad_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "old.json"
    document = _document()
    del document["setting"]["dim"]
    bad.write_text(json.dumps(document))
    err = refused(main, ["--report", str(bad)], capsys)
    assert f"--report {bad}: not a bench/prototype_round.py --out file" in err
    assert "setting: no 'dim'" in err


@pytest.mark.integration
def test_a_tiny_real_run_writes_the_file_report_prints_and_its_peak_does_not_follow_the_replies(
    tmp_path: Path,
) -> None:
    """40 and 320 nodes of 10 x 512 sums (20 KiB a reply): holding them all would add
    5.5 MiB; the traced peak grows by the bookkeeping only (a few KiB a node)."""
    out = tmp_path / "prototype-round.json"
    argv = ["--nodes", "40,320", "--classes", "10", "--dim", "512", "--pull-batch", "8"]
    run = subprocess.run(
        [sys.executable, "bench/prototype_round.py", *argv, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(out.read_text())
    assert run.stdout == render_table(document) + "\n"
    again = subprocess.run(
        [sys.executable, "bench/prototype_round.py", "--report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout == run.stdout
    reply = document["setting"]["reply_bytes"]
    growth = growth_per_node(document["runs"])
    assert growth is not None and growth < reply / 4, (growth, reply)
    large = document["runs"][1]
    assert large["nodes"] == 320 and large["peak_bytes"] < large["replies_bytes"] / 2
