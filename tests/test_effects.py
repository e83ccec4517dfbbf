"""``bench.effects``: which one-seed ablations the CIFAR-100 benchmark reruns on more
seeds, read from result files laid out as ``scripts/compare.sh`` writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.effects import largest_effects, main
from bench.report import COMPARISON, FINAL, run_name

VAL = "evaluate/val-mean-client-accuracy"


def _comparison(out: Path, runs: dict[str, float | None], sweep: list | None = None) -> None:
    """A comparison folder: each run's outcome and its one recorded round (None: failed)."""
    out.mkdir(parents=True)
    document = {"methods": ["pep-fedpt"], "seeds": [0], "grid": None, "val-fraction": 0.1}
    (out / COMPARISON).write_text(json.dumps({**document, "sweep": sweep}))
    (out / FINAL).mkdir()
    for name, score in runs.items():
        status = "finished:completed" if score is not None else "failed"
        (out / FINAL / f"{name}.json").write_text(json.dumps({"status": status}))
        (out / FINAL / name).mkdir()
        rows = [{"round": 1, VAL: score}] if score is not None else []
        (out / FINAL / name / "metrics.json").write_text(json.dumps(rows))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    _comparison(tmp_path / "alpha-0.1", {run_name("pep-fedpt", 0): 0.25})
    tau = [["prompt.tau", [0.03, 0.3]]]
    _comparison(
        tmp_path / "ablation-tau",
        {run_name("pep-fedpt", 0, variant=0): 0.24, run_name("pep-fedpt", 0, variant=1): 0.15},
        tau,
    )
    blocks = [["prompt.ccmp-blocks", ["1-L", "4"]]]
    _comparison(
        tmp_path / "ablation-ccmp-blocks",
        {run_name("pep-fedpt", 0, variant=0): 0.20, run_name("pep-fedpt", 0, variant=1): 0.05},
        blocks,
    )
    # A failed run moves nothing, however low it would have scored.
    failed = [["prompt.class-length", [2]]]
    _comparison(
        tmp_path / "ablation-class-length", {run_name("pep-fedpt", 0, variant=0): None}, failed
    )
    return tmp_path


def test_the_ablations_whose_value_moved_the_validation_score_most_come_first(
    out: Path,
) -> None:
    # ccmp-blocks moved it by 0.20 (its "4"), tau by 0.10 (its 0.3): whole sweeps, in order.
    assert largest_effects(out, 2) == [
        ("ccmp-blocks", 'prompt.ccmp-blocks="1-L","4"'),
        ("tau", "prompt.tau=0.03,0.3"),
    ]
    assert largest_effects(out, 1) == [("ccmp-blocks", 'prompt.ccmp-blocks="1-L","4"')]


def test_the_command_prints_tab_separated_lines_and_refuses_a_bad_count(
    out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(out), "1"]) == 0
    assert capsys.readouterr().out == 'ccmp-blocks\tprompt.ccmp-blocks="1-L","4"\n'
    with pytest.raises(SystemExit):
        main([str(out), "0"])
    assert "k = 0 must be >= 1" in capsys.readouterr().err


def test_without_a_completed_reference_nothing_is_chosen(tmp_path: Path) -> None:
    _comparison(tmp_path / "alpha-0.1", {run_name("pep-fedpt", 0): None})
    with pytest.raises(SystemExit, match="no completed pep-fedpt seed-0 run"):
        largest_effects(tmp_path, 2)
