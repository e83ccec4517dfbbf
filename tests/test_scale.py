"""bench/scale.py: its /proc and log parsing, its table, and one toy run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.data import write_image

from bench.scale import (
    parse_stat_cpu_seconds,
    parse_status_kib,
    phase_times,
    render_passes,
    render_table,
    round_seconds,
    steady_state,
)
from pep_fedpt.data.torchvision_sets import CIFAR10_CLASSES

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "scale.json"

STATUS = """Name:\tflwr-simulation
State:\tS (sleeping)
VmPeak:\t 4194304 kB
VmHWM:\t  958816 kB
VmRSS:\t  902144 kB
Threads:\t42
"""


def test_a_status_field_in_kib_is_read_in_bytes() -> None:
    assert parse_status_kib(STATUS, "VmHWM") == 958816 * 1024
    assert parse_status_kib(STATUS, "VmRSS") == 902144 * 1024


def test_a_status_without_the_field_gives_none() -> None:
    # A kernel thread's status has no Vm* lines.
    assert parse_status_kib("Name:\tkthreadd\nState:\tS (sleeping)\n", "VmHWM") is None


def test_a_status_line_not_in_kib_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"VmHWM.*12 MB.*expected .<n> kB."):
        parse_status_kib("VmHWM:\t 12 MB\n", "VmHWM")


def test_cpu_seconds_are_user_plus_system_ticks_even_when_the_name_holds_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat = "4242 (ray::Actor (x) 1) S 1 4242 4242 0 -1 4194304 100 0 0 0 1234 566 0 0 20 0\n"
    assert parse_stat_cpu_seconds(stat, ticks_per_second=100.0) == 18.0
    with pytest.raises(ValueError, match="too few fields"):
        parse_stat_cpu_seconds("4242 (gone) S 1", ticks_per_second=100.0)


def test_phase_lines_are_read_per_round_and_phase_and_repeated_phases_add_up() -> None:
    lines = [
        "INFO :      round 0 query: 1000/1000 replies in 312.5 s\n",
        "INFO :      [ROUND 1/3]\n",
        "INFO :      round 1 query: 2/3 replies in 1.5 s\n",  # late nodes, asked twice
        "INFO :      round 1 query: 1/1 replies in 0.5 s\n",
        "WARNING :   round 1 train: 49/50 replies in 20.0 s (fed.round-timeout = 20 s; ...)\n",
        "INFO :      round 1 evaluate: 50/50 replies in 7.25 s\n",
        "INFO :      configure_train: sampled 50 nodes\n",
    ]
    assert phase_times(lines) == {
        0: {"query": {"replies": 1000, "sent": 1000, "seconds": 312.5}},
        1: {
            "query": {"replies": 3, "sent": 4, "seconds": 2.0},
            "train": {"replies": 49, "sent": 50, "seconds": 20.0},
            "evaluate": {"replies": 50, "sent": 50, "seconds": 7.25},
        },
    }


def test_rounds_run_from_mark_to_mark_and_the_steady_state_skips_round_one() -> None:
    rounds = round_seconds([10.0, 40.0, 45.0], end=51.0)
    assert rounds == [30.0, 5.0, 6.0]
    assert steady_state(rounds) == 5.5
    with pytest.raises(ValueError, match="1 round"):
        steady_state([30.0])


def _run(nodes: int, scale: float) -> dict[str, object]:
    """A run's entry as bench/scale.py writes it."""
    return {
        "nodes": nodes,
        "sampled_train": nodes // 20,
        "startup_s": 60.0,
        "round_s": [10.0 * scale, 4.0 * scale, 6.0 * scale],
        "steady_round_s": 5.0 * scale,
        "total_s": 100.0 * scale,
        "phases": {
            "0": {"query": {"replies": nodes, "sent": nodes, "seconds": nodes / 10}},
            "2": {"train": {"replies": 1, "sent": 1, "seconds": 2.0 * scale}},
            "3": {"train": {"replies": 1, "sent": 1, "seconds": 4.0 * scale}},
        },
        "bytes": {
            "0": {"bytes-up": 1000 * nodes, "bytes-down": 0},
            "1": {"bytes-up": 50 * nodes, "bytes-down": 70 * nodes},
            "2": {"bytes-up": 50 * nodes, "bytes-down": 70 * nodes},
        },
        "memory": {
            "simulation_hwm": 2**30 * scale,
            "simulation_hwm_before_round1": 2**29,
            "superlink_hwm": 2**27,
            "ray_rss_max": None,
        },
        "database_bytes": 2**21,
    }


def test_the_table_has_a_column_per_run_and_the_ratio_of_the_largest_to_the_smallest() -> None:
    table = render_table({"runs": [_run(1000, 3.0), _run(100, 1.0)]})
    lines = table.splitlines()
    assert lines[0] == "| | N = 100 | N = 1,000 | ratio 1,000 / 100 |"
    assert lines[1] == "|---|---|---|---|"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert rows["prototype round: nodes queried"] == ["100", "1000", "10.00 |"]
    assert rows["steady-state round (s, median of rounds 2..)"] == ["5.0", "15.0", "3.00 |"]
    assert rows["train phase, steady state (s, in-app)"] == ["3.0", "9.0", "3.00 |"]
    assert rows["server peak RSS: flwr-simulation (MiB)"] == ["1024.0", "3072.0", "3.00 |"]
    # A figure a run lacks is a dash, and so is its ratio.
    assert rows["Ray side: largest RSS sum seen (MiB)"] == ["-", "-", "- |"]
    assert rows["bytes per round, up (MB)"] == ["0.005", "0.050", "10.00 |"]


def test_repeated_invocations_are_compared_by_their_ratios_with_the_load_they_saw() -> None:
    calm = {
        "runs": [{**_run(100, 1.0), "loadavg_1min": 2.0}, {**_run(1000, 2.0), "loadavg_1min": 2.04}]
    }
    busy = {
        "runs": [{**_run(100, 1.0), "loadavg_1min": 3.0}, {**_run(1000, 4.0), "loadavg_1min": 5.0}]
    }
    lines = render_passes([("calm.json", calm), ("busy.json", busy)]).splitlines()
    assert lines[0] == "| ratio 1,000 / 100 | calm.json (load 2.0) | busy.json (load 3.0 to 5.0) |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert rows["steady-state round"] == ["2.00", "4.00 |"]
    assert rows["server peak RSS: flwr-simulation"] == ["2.00 (+1024 MiB)", "4.00 (+3072 MiB) |"]


def test_invocations_of_different_sizes_are_not_compared() -> None:
    other = {"runs": [_run(100, 1.0), _run(500, 2.0)]}
    with pytest.raises(ValueError, match="different sizes"):
        render_passes([("a", {"runs": [_run(100, 1.0), _run(1000, 2.0)]}), ("b", other)])
    with pytest.raises(ValueError, match="at least two sizes"):
        render_passes([("a", {"runs": [_run(100, 1.0)]})])


def test_a_document_without_runs_is_refused() -> None:
    with pytest.raises(ValueError, match="no runs"):
        render_table({"runs": []})


def test_the_committed_result_is_the_docs_scale_block() -> None:
    """docs/scale.md's table is ``bench/scale.py --report bench/results/scale.json``,
    written there by ``python -m bench.tables`` (its ``scale`` block)."""
    document = json.loads(RESULT.read_text())
    table = render_table(document)
    assert (
        f"<!-- bench:scale -->\n\n{table.rstrip()}\n\n<!-- /bench:scale -->"
        in (ROOT / "docs" / "scale.md").read_text()
    )
    assert {run["nodes"] for run in document["runs"]} == {100, 1000}


def _fake_cifar10(root: Path, per_class: int) -> None:
    """CIFAR-10's folder layout (its 10 class names), 8 px greys."""
    for split, count in (("train", per_class), ("test", 2)):
        for c, name in enumerate(CIFAR10_CLASSES):
            for i in range(count):
                write_image(root / split / name / f"{i:04d}.jpg", (25 * c + 7 * i) % 256)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_scale_bench_runs_two_federation_sizes_and_reports_both(tmp_path: Path) -> None:
    data = tmp_path / "cifar10"
    _fake_cifar10(data, per_class=24)  # 240 images: 10 per client at 24 nodes
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [
            sys.executable, "bench/scale.py", "--nodes", "12,24", "--rounds", "1",
            "--data-dir", str(data), "--out", str(out), "--fraction", "0.1",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    document = json.loads(out.read_text())
    small, large = document["runs"]
    assert (small["nodes"], large["nodes"]) == (12, 24)
    for entry in (small, large):
        # The prototype round asked every node; rounds sampled max(0.1 N, 2).
        assert entry["phases"]["0"]["query"]["replies"] == entry["nodes"]
        assert entry["sampled_train"] == 2
        assert len(entry["round_s"]) == 1 and entry["round_s"][0] > 0
        memory = entry["memory"]
        assert memory["simulation_hwm"] >= memory["simulation_hwm_before_round1"] > 50 * 2**20
        assert memory["simulation_cpu_s"] >= memory["simulation_cpu_s_before_round1"] > 0
        assert memory["superlink_hwm"] > 10 * 2**20
        assert entry["database_bytes"] > 0
        assert entry["result_files_bytes"]["checkpoint.npz"] > 0
    # Each node sends its class counts and feature sums once: twice the nodes, twice the bytes.
    assert large["bytes"]["0"]["bytes-up"] == 2 * small["bytes"]["0"]["bytes-up"]
    assert large["bytes"]["1"]["train/bytes-up"] == small["bytes"]["1"]["train/bytes-up"]
    report = subprocess.run(
        [sys.executable, "bench/scale.py", "--report", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert report.stdout.strip() == render_table(document)
    assert "| N = 12 | N = 24 | ratio 24 / 12 |" in report.stdout
