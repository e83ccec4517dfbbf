"""bench/fedmvp_row.py, run as its command: nine fake per-data-set run folders into the
paper's table row, the HM of the averages by hand, and the folders it must refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pep_fedpt.data.base_new import harmonic_mean
from pep_fedpt.data.coop import NINE

ROOT = Path(__file__).resolve().parents[1]


def row(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m bench.fedmvp_row ARGV`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "bench.fedmvp_row", *map(str, argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(*argv: str | Path) -> str:
    """The command must stop as argparse does (exit 2), printing nothing; its stderr."""
    done = row(*argv)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    return done.stderr


def _run(folder: Path, dataset: str, local: float, base: float, new: float, **config) -> Path:
    """A run folder as the ServerApp writes it: round 0 without Local, rounds 1 and 2."""
    folder.mkdir(parents=True)
    flat = {"method": "fedmvp", "data.dataset": dataset, "fedmvp.protocol": "base-new"}
    (folder / "config.json").write_text(json.dumps({**flat, **config}))
    rows = [
        {"round": 0, "server/base-accuracy": 0.1, "server/new-accuracy": 0.1},
        {
            "round": 1,
            "server/local-accuracy": 0.2,
            "server/base-accuracy": 0.2,
            "server/new-accuracy": 0.2,
        },
        {
            "round": 2,
            "server/local-accuracy": local,
            "server/base-accuracy": base,
            "server/new-accuracy": new,
        },
    ]
    (folder / "metrics.json").write_text(json.dumps(rows))
    return folder


def _nine(tmp_path: Path) -> list[Path]:
    # Local 0.80 + k/100, Base 0.70, New 0.60 + k/100 for the k-th data set (k = 0..8):
    # averages 0.84, 0.70, 0.64.
    return [
        _run(tmp_path / name, name, 0.80 + k / 100, 0.70, 0.60 + k / 100)
        for k, name in enumerate(NINE)
    ]


def test_nine_runs_give_the_average_row_and_the_hm_of_the_averages(tmp_path: Path) -> None:
    folders = _nine(tmp_path)
    done = row(*reversed(folders), "--out", tmp_path / "row.md")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out == (tmp_path / "row.md").read_text()
    lines = out.splitlines()
    assert lines[4].startswith("| caltech101 | 2 | 80.00 | 70.00 | 60.00 |")  # the paper's order
    assert lines[12].startswith("| sun397 | 2 | 88.00 | 70.00 | 68.00 |")
    hm = 3 / (1 / 0.84 + 1 / 0.70 + 1 / 0.64)  # of the averages, not the mean of the HMs
    assert lines[13] == f"| **average (9 sets)** | | 84.00 | 70.00 | 64.00 | {100 * hm:.2f} |"
    assert lines[14] == "| paper, as reported | | 81.89 | 75.37 | 77.82 | 78.27 |"


def test_the_papers_row_has_the_hm_of_its_averages(tmp_path: Path) -> None:
    paper = next(
        line for line in row(*_nine(tmp_path)).stdout.splitlines() if line.startswith("| paper")
    )
    local, base, new, hm = (float(cell) for cell in paper.strip("|").split("|")[2:])
    assert 100 * harmonic_mean(local / 100, base / 100, new / 100) == pytest.approx(hm, abs=0.011)


def test_partial_rows_say_so(tmp_path: Path) -> None:
    done = row(*_nine(tmp_path)[:2], "--partial")
    assert done.returncode == 0, done.stderr
    assert "| **average (2 of 9 sets: partial)** | | 80.50 |" in done.stdout


@pytest.mark.integration  # runs commands: over the unit tier's ~2 s
def test_bad_folders_are_refused_naming_what_is_wrong(tmp_path: Path) -> None:
    folders = _nine(tmp_path)
    err = refused(*[str(f) for f in folders[:8]])
    assert "missing data sets ['sun397']" in err
    err = refused(*[str(f) for f in folders], str(folders[0]))
    assert "caltech101 twice" in err
    other = _run(tmp_path / "zs" / "dtd", "dtd", 0.5, 0.5, 0.5, method="zeroshot-clip")
    err = refused(*[str(f) for f in folders if f.name != "dtd"], str(other))
    assert "mix methods ['fedmvp', 'zeroshot-clip']" in err
    domain = _run(tmp_path / "dg", "dtd", 0.5, 0.5, 0.5, **{"fedmvp.protocol": "domain"})
    assert "needs base-new runs" in refused(*[str(domain), "--partial"])
    digits = _run(tmp_path / "digits", "digits", 0.5, 0.5, 0.5)
    assert "'digits' is not one of the paper's nine" in refused(*[str(digits), "--partial"])
    assert "no such file" in refused(*[str(tmp_path / "none"), "--partial"])
    joint = _run(tmp_path / "nine", "coop-nine", 0.5, 0.5, 0.5)
    assert "holds the row itself" in refused(*[str(joint), "--partial"])
    (folders[0] / "metrics.json").write_text(json.dumps([{"round": 0}]))
    assert "no round with" in refused(*[str(folders[0]), "--partial"])
