"""The comparison runner (bench/compare.py) without Flower: arguments, merged configs,
resume-skip, and the table and plot from hand-made recorded rounds."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from bench import compare
from bench.compare import COMPLETED, Outcome, RunSpec
from pep_fedpt.config import METHODS, ConfigError

FAILED = "failed (flwr run exited 1, no run id)"


def _rows(acc: list[float], down: float, census_up: float = 240.0) -> list[dict]:
    """Round 0 (census bytes) and one row per round with mean-client accuracy ``acc[i]``."""
    rows: list[dict] = [
        {"round": 0.0, "server/accuracy": 0.1, "bytes-down": 0, "bytes-up": census_up}
    ]
    for r, a in enumerate(acc, start=1):
        rows.append(
            {
                "round": float(r),
                "evaluate/global-accuracy": a + 0.1,
                "evaluate/mean-client-accuracy": a,
                "evaluate/worst-client-accuracy": a - 0.3,
                "server/accuracy": a + 0.05,
                "evaluate/client-accuracies": [a, a],
                "bytes-down": down,
                "bytes-up": 1000.0,
            }
        )
    return rows


@pytest.fixture
def outcomes() -> list[Outcome]:
    return [
        Outcome("a", 0, COMPLETED, 10.0, "1", "/o/a-s0.log", _rows([0.4, 0.6], 1000.0)),
        Outcome("a", 1, COMPLETED, 14.0, "2", "/o/a-s1.log", _rows([0.6, 0.8], 2048.0)),
        Outcome("b", 0, COMPLETED, 5.0, "3", "/o/b-s0.log", _rows([0.3, 0.5], 100.0)),
        Outcome("b", 1, FAILED, 1.0, "", "/o/b-s1.log", []),
        Outcome("c", 0, FAILED, 1.0, "", "/o/c-s0.log", []),
    ]


def test_parse_methods_and_seeds() -> None:
    assert compare.parse_methods("local, pep-fedpt") == ["local", "pep-fedpt"]
    with pytest.raises(ConfigError, match=r"unknown 'fedavg'.*accepted: pep-fedpt"):
        compare.parse_methods("fedavg,local")
    with pytest.raises(ConfigError, match="twice"):
        compare.parse_methods("local,local")
    assert compare.parse_seeds("0,1, 2") == [0, 1, 2]
    with pytest.raises(ConfigError, match="integers"):
        compare.parse_seeds("0,x")
    # the default is every known method: nothing else is listed by hand
    assert compare.build_parser().parse_args(["--out", "/o"]).methods == ",".join(METHODS)


def test_base_config_merges_the_file_then_the_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "x.toml"
    toml.write_text('num-server-rounds = 7\n[model]\npretrained = "hub"\ndepth = 3\n')
    flat = compare.base_config(toml, "model.depth=2 train.lr=0.5")
    assert flat == {"num-server-rounds": 7, "model.pretrained": "hub", "model.depth": 2,
                    "train.lr": 0.5}  # fmt: skip
    with pytest.raises(ConfigError, match=r"no such \.toml file"):
        compare.base_config(tmp_path / "missing.toml", "")


def test_run_config_sets_method_seed_and_output_and_is_checked(tmp_path: Path) -> None:
    spec = RunSpec("local", 3, tmp_path)
    flat = compare.run_config_for({"model.depth": 2}, spec)
    assert flat["method"] == "local" and flat["seed"] == 3
    assert flat["output-dir"] == str(tmp_path / "runs" / "local-s3")
    # the TOML flwr reads gives back the same flat config
    spec.config_path.parent.mkdir(parents=True)
    spec.config_path.write_text(compare.config_toml(flat))
    assert parse_config_args([str(spec.config_path)]) == flat
    with pytest.raises(ConfigError, match=r"model\.depthh"):
        compare.run_config_for({"model.depthh": 2}, spec)


def _complete(spec: RunSpec, flat: dict, status: str = COMPLETED) -> None:
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "metrics.json").write_text(json.dumps(_rows([0.5], 10.0)))
    record = {"status": status, "run-id": "9", "wall-s": 3.0, "log": "l", "config": flat}
    spec.status_path.write_text(json.dumps(record))


def test_already_completed_needs_status_same_config_and_metrics(tmp_path: Path) -> None:
    spec = RunSpec("local", 0, tmp_path)
    flat = compare.run_config_for({}, spec)
    assert not compare.already_completed(spec, flat)  # never ran
    _complete(spec, flat)
    assert compare.already_completed(spec, flat)
    assert not compare.already_completed(spec, {**flat, "train.lr": 0.5})  # other config
    (spec.run_dir / "metrics.json").unlink()
    assert not compare.already_completed(spec, flat)
    other = RunSpec("local", 1, tmp_path)
    _complete(other, compare.run_config_for({}, other), status="finished:failed")
    assert not compare.already_completed(other, compare.run_config_for({}, other))


def test_compare_runs_only_what_did_not_complete(tmp_path: Path, monkeypatch) -> None:
    done = RunSpec("local", 0, tmp_path)
    _complete(done, compare.run_config_for({}, done))
    broken = RunSpec("local", 1, tmp_path)
    _complete(broken, compare.run_config_for({}, broken), status="finished:failed")
    executed: list[str] = []

    def fake_execute(spec: RunSpec, flat: dict, federation: str) -> Outcome:
        executed.append(spec.name)
        return Outcome(spec.method, spec.seed, FAILED, 1.0, "", str(spec.log_path))

    monkeypatch.setattr(compare, "execute", fake_execute)
    outcomes = compare.compare(["local"], [0, 1], tmp_path, {}, "num-supernodes=2")
    assert executed == ["local-s1"]
    assert [(o.seed, o.completed) for o in outcomes] == [(0, True), (1, False)]
    assert outcomes[0].rows == _rows([0.5], 10.0) and outcomes[0].wall_s == 3.0
    assert {p.name for p in tmp_path.iterdir()} >= {"results.md", "results.csv", "accuracy.png"}


def test_run_row_final_values_and_bytes_per_round(outcomes: list[Outcome]) -> None:
    row = compare.run_row(outcomes[0])
    assert row["rounds"] == 2
    assert row["evaluate/mean-client-accuracy"] == pytest.approx(0.6)
    assert row["evaluate/global-accuracy"] == pytest.approx(0.7)
    assert math.isnan(row["evaluate/held-out-accuracy"])  # never recorded
    # the census (round 0) is spread over the 2 federated rounds
    assert row["bytes-down-per-round"] == pytest.approx((0 + 1000 + 1000) / 2)
    assert row["bytes-up-per-round"] == pytest.approx((240 + 1000 + 1000) / 2)
    assert row["bytes-up-total"] == 2240


def test_method_rows_mean_and_sample_std(outcomes: list[Outcome]) -> None:
    a, b, c = compare.method_rows(outcomes, ["a", "b", "c"])
    assert (a.completed, a.runs, b.completed, b.runs, c.completed) == (2, 2, 1, 2, 0)
    mean, std = a.stats["evaluate/mean-client-accuracy"]
    assert mean == pytest.approx(0.7)  # (0.6 + 0.8) / 2
    assert std == pytest.approx(math.sqrt(0.02))  # sqrt((0.1² + 0.1²) / (2 - 1))
    assert a.stats["wall-s"] == pytest.approx((12.0, math.sqrt(8.0)))
    assert a.stats["bytes-down-per-round"][0] == pytest.approx((1000 + 2048) / 2)
    assert math.isnan(b.stats["evaluate/mean-client-accuracy"][1])  # one seed: no std
    assert math.isnan(c.stats["evaluate/mean-client-accuracy"][0])


def test_markdown_table(outcomes: list[Outcome]) -> None:
    md = compare.markdown_table(outcomes, ["a", "b", "c"])
    lines = md.splitlines()
    assert lines[0].startswith("| method | runs | global acc | mean client acc |")
    a_line = next(line for line in lines if line.startswith("| a |"))
    cells = [cell.strip() for cell in a_line.strip("|").split("|")]
    assert cells == [
        "a", "2/2", "0.8000 ± 0.1414", "0.7000 ± 0.1414", "0.4000 ± 0.1414", "-",
        "0.7500 ± 0.1414", "1.5 KiB", "1.1 KiB", "12.0 ± 2.8",
    ]  # fmt: skip
    assert "| b | 1/2 | 0.6000 | 0.5000 |" in md
    assert "| c | 0/1 | failed |" in md
    assert f"- b seed 1: {FAILED} (log: /o/b-s1.log)" in md
    assert f"- c seed 0: {FAILED} (log: /o/c-s0.log)" in md


def test_human_bytes() -> None:
    assert compare.human_bytes(512) == "512 B"
    assert compare.human_bytes(1536) == "1.5 KiB"
    assert compare.human_bytes(3 * 1024**2) == "3.0 MiB"
    assert compare.human_bytes(math.nan) == "-"


def test_results_csv_one_raw_row_per_run(outcomes: list[Outcome]) -> None:
    rows = list(csv.DictReader(io.StringIO(compare.results_csv(outcomes))))
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("a", "0", COMPLETED), ("a", "1", COMPLETED), ("b", "0", COMPLETED),
        ("b", "1", FAILED), ("c", "0", FAILED),
    ]  # fmt: skip
    assert float(rows[1]["bytes-down-per-round"]) == 2048.0  # raw bytes
    assert float(rows[0]["evaluate/worst-client-accuracy"]) == pytest.approx(0.3)
    assert rows[0]["evaluate/held-out-accuracy"] == ""
    assert rows[3]["log"] == "/o/b-s1.log" and rows[3]["evaluate/global-accuracy"] == ""


def test_accuracy_curves_and_plot(outcomes: list[Outcome], tmp_path: Path) -> None:
    assert compare.plot_key(outcomes) == (
        "evaluate/mean-client-accuracy",
        "mean client accuracy",
    )
    curves = compare.accuracy_curves(outcomes, ["a", "b", "c"], "evaluate/mean-client-accuracy")
    assert set(curves) == {"a", "b"}  # c never completed
    assert curves["a"].rounds == [1, 2]
    assert curves["a"].mean == pytest.approx([0.5, 0.7])
    assert curves["a"].std == pytest.approx([math.sqrt(0.02)] * 2)
    assert curves["b"].std == [0.0, 0.0]  # one seed: no band
    server = compare.accuracy_curves(outcomes, ["b"], "server/accuracy")
    assert server["b"].rounds == [0, 1, 2]
    png = compare.comparison_plot(curves, "mean client accuracy", "t")
    assert png.startswith(b"\x89PNG")
    compare.write_results(tmp_path, outcomes, ["a", "b", "c"])
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "results.md").read_text() == compare.markdown_table(
        outcomes, ["a", "b", "c"]
    )


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_runner_end_to_end_and_resume(tmp_path: Path) -> None:
    """Two methods, one seed, 2 supernodes, 1 round of a random tiny ViT on digits through
    real `flwr run`s; invoked again, it runs nothing."""
    import subprocess
    import sys

    from helpers.flwr_run import ROOT, flwr_env, stop_superlink

    home = tmp_path / "flwr-home"
    out = tmp_path / "cmp"
    env = flwr_env(home)
    overrides = (
        f"num-server-rounds=1 model.pretrained='random' model.depth=2 model.embed-dim=64 "
        f"model.num-heads=2 model.img-size=16 cache-dir='{tmp_path / 'features'}'"
    )
    command = [
        sys.executable, "-m", "bench.compare", "--methods", "fedavg-vpt-deep,local",
        "--seeds", "0", "--num-supernodes", "2", "--out", str(out), "-c", overrides,
    ]  # fmt: skip
    try:
        first = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540
        )
        log = first.stdout + first.stderr
        assert first.returncode == 0, log
        rows = list(csv.DictReader((out / "results.csv").open()))
        assert [(r["method"], r["status"]) for r in rows] == [
            ("fedavg-vpt-deep", COMPLETED),
            ("local", COMPLETED),
        ]
        md = (out / "results.md").read_text()
        assert "| fedavg-vpt-deep | 1/1 |" in md and "| local | 1/1 |" in md
        assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
        deep = json.loads((out / "runs" / "fedavg-vpt-deep-s0" / "metrics.json").read_text())
        local = json.loads((out / "runs" / "local-s0" / "metrics.json").read_text())
        assert deep[1]["evaluate/bytes-down"] == deep[1]["train/bytes-down"] > 0
        assert local[1]["train/bytes-down"] == deep[1]["train/bytes-down"]
        assert local[1]["evaluate/bytes-down"] == 0  # each node evaluates its own state
        assert float(rows[0]["bytes-down-per-round"]) == deep[1]["bytes-down"]
        assert (out / "runs" / "local-s0.toml").is_file()
        assert not compare_superlinks(home), "the runner left its SuperLink running"

        again = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("completed earlier, skipped") == 2
        assert (out / "results.md").read_text() == md
    finally:
        stop_superlink(home)


def compare_superlinks(home: Path) -> list[str]:
    import subprocess

    found = subprocess.run(
        ["pgrep", "-f", f"flower-superlink.*{home}"], capture_output=True, text=True
    )
    return found.stdout.split()
