"""bench/benchmark.sh, run in a copy of its folder layout where scripts/compare.sh and the
venv's python only record their arguments: which comparisons it starts, in which order,
with which config (its resume skips a run only if the config is unchanged)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEP = "\x1f"  # between the recorded arguments of one call
RECORD = f'#!/bin/sh\nprintf \'%s{SEP}\' "$(basename "$0")" "$@" >> "$CALLS"\necho >> "$CALLS"\n'
# The venv's python: records, and answers bench.chosen per setting folder (exit 1: none).
PYTHON = (
    RECORD
    + 'case "$2:$3" in\n'
    + "  bench.chosen:*/alpha-0.1) echo train.lr=0.25 ;;\n"
    + '  bench.chosen:*/alpha-0.5) [ -n "$NO_CHOICE_05" ] && exit 1; echo train.lr=0.05 ;;\n'
    + "esac\n"
)
# The alpha = 0.1 ablations as the script ran them before the alpha = 0.5 one was added:
# (folder, seeds, sweep); each with -c "<data> data.alpha=0.1 <chosen>".
ABLATIONS_01 = [
    ("ablation-mixing-prior", "0", "prompt.mixing-prior='uniform'"),
    ("ablation-test-prior", "0,1,2", "prompt.test-prior-correction=true"),
    ("ablation-train-weights", "0,1,2", "prompt.train-weights='onehot'"),
    ("ablation-aggregation", "0", "fed.class-prompt-aggregation='fedavg'"),
    ("ablation-tau", "0", "prompt.tau=0.03,0.3,1.0"),
    ("ablation-prior-smoothing", "0", "prompt.prior-smoothing=0.1,10.0"),
    ("ablation-class-length", "0", "prompt.class-length=2,4"),
    ("ablation-ccmp-blocks", "0", "prompt.ccmp-blocks='1-L','4'"),
    ("ablation-refresh", "0", "fed.prototype-refresh-every=2"),
    ("ablation-wire-dtype", "0", "fed.wire-dtype='float16'"),
]


def _run(
    tmp_path: Path, script: str = "benchmark.sh", **env: str
) -> tuple[int, list[list[str]], Path]:
    """``bench/<script>`` in a fake repository under ``tmp_path``: its exit status, every
    recorded call (program name first) and its OUT folder."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    root = tmp_path / "repo"
    (root / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / script, root / "bench" / script)
    data = tmp_path / "data"
    (root / "bench" / "cifar10-data.sh").write_text(f"cache={tmp_path}\ndata={data}\n")
    (root / "bench" / "cifar100-data.sh").write_text(f"cache={tmp_path}\ndata100={data}\n")
    for program, text in (("scripts/compare.sh", RECORD), (".venv/bin/python", PYTHON)):
        path = root / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    calls, out = tmp_path / "calls", tmp_path / "out"
    done = subprocess.run(
        ["bash", str(root / "bench" / script), str(out)],
        env={"PATH": "/usr/bin:/bin", "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return done.returncode, [line.split(SEP)[:-1] for line in lines], out


def _compare(call: list[str]) -> tuple[str, str, str, str]:
    """A compare.sh call as (its --out folder's name, --seeds, -c, --sweep or --grid)."""
    value = {call[i]: call[i + 1] for i in range(1, len(call) - 1) if call[i].startswith("-")}
    return (
        Path(value["--out"]).name,
        value["--seeds"],
        value["-c"],
        value.get("--sweep", value.get("--grid", "")),
    )


def test_the_alpha_01_ablations_keep_their_configs_and_one_hot_runs_again_at_alpha_05(
    tmp_path: Path,
) -> None:
    status, calls, out = _run(tmp_path)
    assert status == 0
    data = f"data.data-dir='{tmp_path / 'data'}'"
    compares = [_compare(c) for c in calls if c[0] == "compare.sh"]
    grid = "train.lr=0.01,0.05,0.25,1"
    assert compares == [
        ("alpha-0.1", "0,1,2", f"{data} data.alpha=0.1", grid),
        *[(f, s, f"{data} data.alpha=0.1 train.lr=0.25", w) for f, s, w in ABLATIONS_01],
        ("alpha-0.5", "0,1,2", f"{data} data.alpha=0.5", grid),
        (
            "ablation-alpha-0.5-train-weights",
            "0,1,2",
            f"{data} data.alpha=0.5 train.lr=0.05",  # PEP-FedPT's own alpha = 0.5 choice
            "prompt.train-weights='onehot'",
        ),
    ]
    chosen = [c[3] for c in calls if c[0] == "python" and c[2] == "bench.chosen"]
    assert set(chosen) == {str(out / "alpha-0.1"), str(out / "alpha-0.5")}
    assert [c[2] for c in calls[-2:]] == ["bench.collect", "bench.paste"]


def test_without_a_choice_at_alpha_05_its_ablation_is_skipped_and_the_script_fails_at_the_end(
    tmp_path: Path,
) -> None:
    status, calls, _ = _run(tmp_path, NO_CHOICE_05="1")
    assert status == 1
    folders = [_compare(c)[0] for c in calls if c[0] == "compare.sh"]
    assert folders[-1] == "alpha-0.5" and "ablation-alpha-0.5-train-weights" not in folders
    assert [c[2] for c in calls[-2:]] == ["bench.collect", "bench.paste"]  # still collected


def test_the_cifar100_benchmark_runs_three_settings_one_hot_rows_and_the_ablations(
    tmp_path: Path,
) -> None:
    status, calls, out = _run(tmp_path, "cifar100-benchmark.sh")
    assert status == 0
    data = f"data.data-dir='{tmp_path / 'data'}'"
    dirichlet = f"{data} data.partitioner='dirichlet' data.alpha=0.1"
    onehot = "prompt.train-weights='onehot'"
    grid = "train.lr=0.003,0.01,0.03"
    settings = {
        "alpha-0.5": f"{data} data.partitioner='dirichlet' data.alpha=0.5",
        "pathological-10": f"{data} data.partitioner='pathological' data.classes-per-client=10",
    }
    ablations = [
        ("ablation-train-weights", onehot),
        ("ablation-prior-smoothing", "prompt.prior-smoothing=0.01,0.1"),
        ("ablation-aggregation", "fed.class-prompt-aggregation='fedavg'"),
        ("ablation-tau", "prompt.tau=0.03,0.3"),
        ("ablation-ccmp-blocks", "prompt.ccmp-blocks='1-L','4'"),
        ("ablation-class-length", "prompt.class-length=2,4"),
    ]
    assert [_compare(c) for c in calls if c[0] == "compare.sh"] == [
        ("alpha-0.1", "0,1,2", dirichlet, grid),
        ("alpha-0.1-onehot", "0,1,2", f"{dirichlet} {onehot}", grid),
        *[(f, "0", f"{dirichlet} train.lr=0.25", w) for f, w in ablations],
        *[
            row
            for name, c in settings.items()
            for row in (
                (name, "0,1,2", c, grid),
                (f"{name}-onehot", "0,1,2", f"{c} {onehot}", grid),
            )
        ],
    ]
    methods = [c[c.index("--methods") + 1] for c in calls if c[0] == "compare.sh"]
    every = "pep-fedpt,fedavg-vpt-shallow,fedavg-vpt-deep,fedprox-vpt,head-only,"
    every += "fedavg-vpt-prior,local,sgpt,pfedpg"
    assert [i for i, m in enumerate(methods) if m == every] == [0, 8, 10]  # the settings
    assert all(m == "pep-fedpt" for i, m in enumerate(methods) if i not in (0, 8, 10))
    supernodes = {c[c.index("--num-supernodes") + 1] for c in calls if c[0] == "compare.sh"}
    assert supernodes == {"10"}
    assert calls[-1][2:] == [
        "bench.collect",
        str(out),
        str(tmp_path / "repo" / "bench" / "results" / "cifar100"),
    ]
