"""bench/sim_overhead.py: its document, its table and ``--report``, on hand-written figures
(no ``flwr run``, nothing timed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.result_file import machine_sentence
from bench.sim_overhead import (
    TINY,
    main,
    make_document,
    render_summary,
    render_table,
    round_times,
    run_config,
    steady_state,
    summary,
)
from tests.helpers.cli import refused

SETTING = {
    "clients": 4,
    "rounds": 3,
    "repeats": 2,
    "method": "pep-fedpt",
    "dataset": "digits",
    "model": TINY,
}


def _repeat(sim_rounds: list[float], loop_rounds: list[float]) -> dict[str, Any]:
    """One repeat's entry as bench/sim_overhead.py measures it."""
    return {
        "simulation": {"startup": 77.0, "rounds": sim_rounds, "total": 85.5},
        "plain_loop": {
            "startup": 5.9,
            "rounds": loop_rounds,
            "total": 10.5,
            "encode_per_round": 0.0012,
            "client_build": 0.43,
        },
    }


def _document() -> dict[str, Any]:
    repeats = [
        _repeat([1.5, 1.6, 1.8], [1.5, 1.4, 1.6]),  # steady 1.7 / 1.5
        _repeat([2.0, 3.0, 2.0], [1.8, 2.0, 2.0]),  # steady 2.5 / 2.0
    ]
    return make_document(
        ["--repeats", "2", "--out", "x y.json"], SETTING, repeats, (1.5, 1.0, 0.5), (2.25, 1, 1)
    )


def _rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines}


def test_the_steady_state_is_the_median_of_the_rounds_after_the_first() -> None:
    assert steady_state([30.0, 5.0, 6.0]) == 5.5
    with pytest.raises(ValueError, match=r"loop: 1 round\(s\)"):
        steady_state([30.0], "loop")


def test_the_document_holds_the_command_the_machine_and_each_repeats_ratio() -> None:
    document = _document()
    assert document["command"] == "python bench/sim_overhead.py --repeats 2 --out 'x y.json'"
    assert document["machine"]["loadavg_at_start"] == [1.5, 1.0, 0.5]
    assert document["machine"]["loadavg_at_end"] == [2.25, 1, 1]
    assert document["machine"]["cpus"] >= 1
    ratios = [r["ratio"] for r in document["summary"]["repeats"]]
    assert ratios == pytest.approx([1.7 / 1.5, 1.25])
    assert document["summary"]["ratio_median"] == pytest.approx((1.7 / 1.5 + 1.25) / 2)
    assert json.loads(json.dumps(document)) == document  # what --out writes


def test_the_table_has_both_ways_per_repeat_and_the_median_ratio_against_the_target() -> None:
    table = render_table(_document())
    lines = table.splitlines()
    assert lines[0].startswith(
        "4 clients, 3 rounds, tiny ViT (depth 2, width 64, 16 px), pep-fedpt on digits; "
        "2 runs of both ways, interleaved, on "
    )
    assert lines[0].endswith("1-minute load average 1.5 at the start, 2.2 at the end.")
    assert lines[2] == ("| | run 1: simulation | run 1: loop | run 2: simulation | run 2: loop |")
    assert lines[3] == "|---|---|---|---|---|"
    rows = _rows(table)
    assert rows["start-up to round 1 (s)"] == ["77.00", "5.90", "77.00", "5.90 |"]
    assert rows["round 2 (s)"] == ["1.60", "1.40", "3.00", "2.00 |"]
    assert rows["round 3 (s)"] == ["1.80", "1.60", "2.00", "2.00 |"]
    assert rows["whole run (s)"] == ["85.50", "10.50", "85.50", "10.50 |"]
    assert rows["steady-state round (s, median of rounds 2..3)"] == [
        "1.70",
        "1.50",
        "2.50",
        "2.00 |",
    ]
    assert rows["steady-state ratio simulation / loop"] == ["**1.13**", "", "**1.25**", " |"]
    assert rows["message encoding, Flower serde (s per round)"] == ["", "0.001", "", "0.001 |"]
    assert rows["a client built in a fresh process (s)"] == ["", "0.430", "", "0.430 |"]
    assert lines[-1] == (
        "Steady-state round ratio simulation / plain loop: **1.19** "
        "(median of 2 runs: 1.13, 1.25); target ≤ 1.10."
    )


def test_report_prints_the_table_of_a_written_file_without_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sim-overhead.json"
    path.write_text(json.dumps(_document()))
    main(["--report", str(path)])
    assert capsys.readouterr().out == render_table(_document()) + "\n"


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("repeats", 1, "plain_loop", "rounds"), r"repeats\[1\]\.plain_loop: no 'rounds'"),
        (("repeats", 0, "simulation", "startup"), r"repeats\[0\]\.simulation: no 'startup'"),
        (("repeats", 0, "plain_loop", "client_build"), r"plain_loop: no 'client_build'"),
        (("setting", "dataset"), r"setting: no 'dataset'"),
        (("repeats",), r"the document: no 'repeats'"),
    ],
)
def test_a_document_missing_a_figure_is_refused_naming_it(
    drop: tuple[Any, ...], named: str
) -> None:
    document = _document()
    holder: Any = document
    for key in drop[:-1]:
        holder = holder[key]
    del holder[drop[-1]]
    with pytest.raises(ValueError, match=named):
        render_table(document)


def test_report_of_a_file_missing_a_figure_names_the_file_and_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document()
    del document["repeats"][0]["simulation"]["rounds"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    error = refused(main, ["--report", str(path)], capsys)
    assert f"--report {path}: not a bench/sim_overhead.py --out file" in error
    assert "repeats[0].simulation: no 'rounds'" in error


def test_a_repeat_with_one_round_has_no_steady_state_and_says_which() -> None:
    document = _document()
    document["repeats"][1]["simulation"]["rounds"] = [4.0]
    with pytest.raises(ValueError, match=r"repeats\[1\]\.simulation\.rounds: 1 round"):
        summary(document)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--rounds", "1"], "--rounds = 1: a steady state needs at least 2 rounds"),
        (["--repeats", "0"], "--repeats = 0: at least 1"),
        (["--clients", "0"], "--clients = 0: at least 1"),
        (["-c", "model.depth=-1"], "-c 'model.depth=-1': model.depth must be >= 0"),
        (["-c", "model.no-such=1"], "no-such"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


def test_rounds_are_the_serverapps_own_took_lines_in_order_of_their_number() -> None:
    lines = [
        "INFO :      [ROUND 1/2]",
        "INFO :      pep-fedpt: round 2 took 1.250 s",
        "INFO :      pep-fedpt: round 1 took 3.500 s",
        "INFO :      pep-fedpt: round 3 took 9.000 s",  # a round beyond those asked for
    ]
    assert round_times(lines, 2) == [3.5, 1.25]
    assert round_times(lines[:2], 2) is None  # round 1 missing: no figure rather than a guess


def test_overrides_go_on_top_of_the_tiny_setting_and_are_named_in_the_table() -> None:
    config = run_config("model.depth=4 data.subsample=0.5")
    assert config == {**TINY, "model.depth": 4, "data.subsample": 0.5}
    document = _document()
    document["setting"] = {**document["setting"], "model": config, "overrides": "model.depth=4"}
    first = render_table(document).splitlines()[0]
    assert first.startswith("4 clients, 3 rounds, tiny ViT (depth 4, width 64, 16 px)")
    assert "(`-c model.depth=4`)" in first


def test_the_summary_has_a_row_per_setting_with_both_rounds_their_gap_and_the_ratio() -> None:
    short = _document()  # steady rounds 1.7 / 1.5 and 2.5 / 2.0
    longer = _document()
    longer["setting"] = {**longer["setting"], "model": {**TINY, "model.depth": 4}}
    longer["repeats"] = [_repeat([5.0, 4.4, 4.4], [4.5, 4.0, 4.0])]  # steady 4.4 / 4.0
    longer["summary"] = summary(longer)
    table = render_summary([short, longer])
    lines = table.splitlines()
    assert lines[0].startswith("| setting | loop round (s) | simulation round (s) |")
    assert lines[2] == (
        "| depth 2, 16 px, 4 clients, 3 rounds | 1.75 | 2.10 | 0.35 | **1.19** | 1.13, 1.25 "
        "| 1.5 → 2.2 |"
    )
    assert lines[3] == (
        "| depth 4, 16 px, 4 clients, 3 rounds | 4.00 | 4.40 | 0.40 | **1.10** | 1.10 | 1.5 → 2.2 |"
    )
    assert "(target ≤ 1.10)" in lines[-1]
    cpus = machine_sentence(short).split(", 1-minute load")[0]  # this machine's, as written
    assert lines[-1].endswith(f"(target ≤ 1.10). On {cpus}.")
    del longer["machine"]
    assert render_summary([longer]).splitlines()[2].endswith("| 1.10 | - |")


def test_a_summary_of_nothing_or_of_a_flawed_document_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no bench/sim_overhead\.py --out document"):
        render_summary([])
    document = _document()
    del document["setting"]["model"]
    with pytest.raises(ValueError, match=r"setting: no 'model'"):
        render_summary([document])


def test_named_summary_rows_start_with_their_file_and_the_names_must_match() -> None:
    table = render_summary([_document()], ["`a.json`"])
    assert table.splitlines()[0].startswith("| file | setting |")
    assert table.splitlines()[1] == "|---|---|---|---|---|---|---|---|"
    assert table.splitlines()[2].startswith("| `a.json` | depth 2, 16 px, 4 clients, 3 rounds |")
    with pytest.raises(ValueError, match="2 names for 1 documents"):
        render_summary([_document()], ["a", "b"])
