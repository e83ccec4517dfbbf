"""The comparison runner (bench/compare.py) and its report (bench/report.py) without
Flower: arguments, merged configs, resume-skip, grid selection on fake result folders, and
the tables and plot from hand-made recorded rounds."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from helpers.fake_results import FAILED, FakeRuns, round_row, rounds, write_run

from bench import compare, report
from bench.compare import COMPLETED, Outcome, RunSpec
from bench.grid import grid_points, parse_grid, point_label, select
from bench.prompt_drift import DriftSummary
from pep_fedpt.config import ConfigError
from pep_fedpt.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def outcomes() -> list[Outcome]:
    return [
        Outcome(
            "a",
            0,
            COMPLETED,
            10.0,
            "1",
            "/o/a-s0.log",
            rounds([0.4, 0.6], 1000.0),
            drift=DriftSummary(0.01, 0.05, 0.2),
        ),
        Outcome(
            "a",
            1,
            COMPLETED,
            14.0,
            "2",
            "/o/a-s1.log",
            rounds([0.6, 0.8], 2048.0),
            drift=DriftSummary(0.03, 0.07, 0.4),
        ),
        Outcome("b", 0, COMPLETED, 5.0, "3", "/o/b-s0.log", rounds([0.3, 0.5], 100.0)),
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
    (spec.run_dir / "metrics.json").write_text(json.dumps(rounds([0.5], 10.0)))
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
    assert outcomes[0].rows == rounds([0.5], 10.0) and outcomes[0].wall_s == 3.0
    assert {p.name for p in tmp_path.iterdir()} >= {"results.md", "results.csv", "accuracy.png"}


def test_run_row_final_values_and_bytes_per_round(outcomes: list[Outcome]) -> None:
    row = report.run_row(outcomes[0])
    assert row["rounds"] == 2
    assert row["evaluate/mean-client-accuracy"] == pytest.approx(0.6)
    assert row["evaluate/global-accuracy"] == pytest.approx(0.7)
    assert math.isnan(row["evaluate/held-out-accuracy"])  # never recorded
    # the prototype round (round 0) is spread over the 2 federated rounds
    assert row["bytes-down-per-round"] == pytest.approx((0 + 1000 + 1000) / 2)
    assert row["bytes-up-per-round"] == pytest.approx((240 + 1000 + 1000) / 2)
    assert row["bytes-up-total"] == 2240


def test_method_rows_mean_and_sample_std(outcomes: list[Outcome]) -> None:
    a, b, c = report.method_rows(outcomes, ["a", "b", "c"])
    assert (a.completed, a.runs, b.completed, b.runs, c.completed) == (2, 2, 1, 2, 0)
    mean, std = a.stats["evaluate/mean-client-accuracy"]
    assert mean == pytest.approx(0.7)  # (0.6 + 0.8) / 2
    assert std == pytest.approx(math.sqrt(0.02))  # sqrt((0.1² + 0.1²) / (2 - 1))
    assert a.stats["wall-s"] == pytest.approx((12.0, math.sqrt(8.0)))
    assert a.stats["bytes-down-per-round"][0] == pytest.approx((1000 + 2048) / 2)
    assert math.isnan(b.stats["evaluate/mean-client-accuracy"][1])  # one seed: no std
    assert math.isnan(c.stats["evaluate/mean-client-accuracy"][0])


def test_markdown_table(outcomes: list[Outcome]) -> None:
    md = report.markdown_table(outcomes, ["a", "b", "c"])
    lines = md.splitlines()
    assert lines[0].startswith("| method | runs | global acc | mean client acc |")
    a_line = next(line for line in lines if line.startswith("| a |"))
    cells = [cell.strip() for cell in a_line.strip("|").split("|")]
    assert cells == [
        "a", "2/2", "0.8000 ± 0.1414", "0.7000 ± 0.1414", "0.4000 ± 0.1414", "-",
        "0.7500 ± 0.1414", "2.0%", "6.0%", "0.300", "1.5 KiB", "1.1 KiB", "12.0 ± 2.8",
    ]  # fmt: skip
    assert "| b | 1/2 | 0.6000 | 0.5000 |" in md
    assert "| c | 0/1 | failed |" in md
    assert f"- b seed 1: {FAILED} (log: /o/b-s1.log)" in md
    assert f"- c seed 0: {FAILED} (log: /o/c-s0.log)" in md


def test_human_bytes() -> None:
    assert report.human_bytes(512) == "512 B"
    assert report.human_bytes(1536) == "1.5 KiB"
    assert report.human_bytes(3 * 1024**2) == "3.0 MiB"
    assert report.human_bytes(math.nan) == "-"


def test_results_csv_one_raw_row_per_run(outcomes: list[Outcome]) -> None:
    rows = list(csv.DictReader(io.StringIO(report.results_csv(outcomes))))
    assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
        ("a", "0", COMPLETED), ("a", "1", COMPLETED), ("b", "0", COMPLETED),
        ("b", "1", FAILED), ("c", "0", FAILED),
    ]  # fmt: skip
    assert float(rows[1]["bytes-down-per-round"]) == 2048.0  # raw bytes
    assert float(rows[0]["evaluate/worst-client-accuracy"]) == pytest.approx(0.3)
    assert rows[0]["evaluate/held-out-accuracy"] == ""
    assert rows[3]["log"] == "/o/b-s1.log" and rows[3]["evaluate/global-accuracy"] == ""


def test_accuracy_curves_and_plot(outcomes: list[Outcome], tmp_path: Path) -> None:
    assert report.plot_key(outcomes) == (
        "evaluate/mean-client-accuracy",
        "mean client accuracy",
    )
    curves = report.accuracy_curves(outcomes, ["a", "b", "c"], "evaluate/mean-client-accuracy")
    assert set(curves) == {"a", "b"}  # c never completed
    assert curves["a"].rounds == [1, 2]
    assert curves["a"].mean == pytest.approx([0.5, 0.7])
    assert curves["a"].std == pytest.approx([math.sqrt(0.02)] * 2)
    assert curves["b"].std == [0.0, 0.0]  # one seed: no band
    server = report.accuracy_curves(outcomes, ["b"], "server/accuracy")
    assert server["b"].rounds == [0, 1, 2]
    png = report.comparison_plot(curves, "mean client accuracy", "t")
    assert png.startswith(b"\x89PNG")
    report.write_results(tmp_path, outcomes, ["a", "b", "c"])
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "results.md").read_text() == report.markdown_table(outcomes, ["a", "b", "c"])


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_runner_end_to_end_and_resume(tmp_path: Path) -> None:
    """Two methods, one seed, 2 supernodes, 1 round of a random tiny ViT on digits through
    real `flwr run`s; invoked again, it runs nothing."""
    import subprocess
    import sys

    from pep_fedpt.local_flwr import flwr_env, stop_superlink, superlinks

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
        assert not superlinks(home), "the runner left its SuperLink running"

        again = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("completed earlier, skipped") == 2
        assert (out / "results.md").read_text() == md
    finally:
        stop_superlink(home)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_sigterm_stops_every_process_it_started_and_keeps_what_completed(
    tmp_path: Path,
) -> None:
    """scripts/compare.sh as a job of its own (its process group) gets SIGTERM in the middle
    of its second run: within 30 s no process of its FLWR_HOME is left (the SuperLink that
    `flwr run` started detached, the simulation, Ray), it exits 143 with one line, the
    completed run keeps its status (the same command skips it) and the stopped one has
    none (the same command runs it again)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pep_fedpt.local_flwr import BIN, processes_of_home, stop_superlink

    home, out = tmp_path / "flwr-home", tmp_path / "cmp"
    overrides = (
        "model.pretrained='random' model.depth=2 model.embed-dim=64 model.num-heads=2 "
        f"model.img-size=16 cache-dir='{tmp_path / 'features'}'"
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "SKIP_SETUP": "1",  # the test's venv is set up; never pip-install from a test
        "PEP_FEDPT_PYTHON": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    script = subprocess.Popen(
        [
            str(ROOT / "scripts" / "compare.sh"), "--methods", "local", "--seeds", "0",
            "--num-supernodes", "2", "--out", str(out), "-c", overrides,
            "--sweep", "num-server-rounds=1,50",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job
    )  # fmt: skip
    done, stopped = out / "runs" / "local-v0-s0.json", out / "runs" / "local-v1-s0"
    try:
        deadline = time.monotonic() + 480
        # the second run has trained a round: its simulation and Ray are up
        while time.monotonic() < deadline and not (
            stopped.with_suffix(".log").is_file()
            and "round 1 took" in stopped.with_suffix(".log").read_text(errors="replace")
        ):
            assert script.poll() is None, script.communicate()
            time.sleep(1)
        started = processes_of_home(home)
        assert len(started) > 4, started  # compare, flwr run, SuperLink, simulation, Ray...
        os.killpg(script.pid, signal.SIGTERM)
        sent = time.monotonic()
        stdout, stderr = script.communicate(timeout=30)
        while processes_of_home(home) and time.monotonic() < sent + 30:
            time.sleep(0.5)
        left = processes_of_home(home)
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
        stop_superlink(home)
    assert left == set(), f"left running: {left}"
    assert script.returncode == 143, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.startswith("compare: ")]
    assert lines == [
        "compare: SIGTERM: stopped, and the SuperLink and simulation of the run under way "
        f"with it; the completed runs are kept in {out}: the same command again skips them "
        "and goes on"
    ], stderr
    assert "Traceback" not in stderr, stderr
    assert json.loads(done.read_text())["status"] == COMPLETED
    assert not stopped.with_suffix(".json").exists()


# ---------------------------------------------------------------------- grid selection
def test_a_grid_is_the_product_of_its_keys_in_the_order_given() -> None:
    grid = parse_grid("train.lr=0.05,0.25 train.prompt-lr=1,5")
    assert grid == [("train.lr", [0.05, 0.25]), ("train.prompt-lr", [1, 5])]
    assert [point_label(p) for p in grid_points(grid)] == [
        "train.lr=0.05, train.prompt-lr=1",
        "train.lr=0.05, train.prompt-lr=5",
        "train.lr=0.25, train.prompt-lr=1",
        "train.lr=0.25, train.prompt-lr=5",
    ]
    assert parse_grid("train.optimizer='sgd','adamw'") == [("train.optimizer", ["sgd", "adamw"])]
    for bad, why in [
        ("train.lr", "not key=value"),
        ("train.lr=", "not key=value"),
        ("train.lr=1 train.lr=2", "twice"),
        ("train.lr=1,1", "twice"),
        ("train.optimizer=adamw", "train.optimizer=adamw"),
    ]:
        with pytest.raises(ConfigError, match=why):
            parse_grid(bad)


def test_selection_picks_the_best_validation_score_and_on_a_tie_the_earlier_point() -> None:
    assert select([0.5, 0.7, 0.7, 0.6]) == 1
    assert select([math.nan, 0.2, 0.1]) == 1  # a failed point never wins
    assert select([math.nan, math.nan]) is None


def test_grid_selection_on_fake_result_folders(tmp_path: Path, monkeypatch) -> None:
    scores = {
        ("local", 0.01): 0.5, ("local", 0.05): 0.7, ("local", 0.25): 0.7,  # a tie: 0.05
        ("head-only", 0.01): 0.4, ("head-only", 0.05): None, ("head-only", 0.25): 0.2,
    }  # fmt: skip
    fake = FakeRuns(scores)
    monkeypatch.setattr(compare, "execute", fake)
    grid = parse_grid("train.lr=0.01,0.05,0.25")
    base = {"data.val-fraction": 0.1}
    outcomes = compare.compare(["local", "head-only"], [0, 1], tmp_path, base, "", grid)
    assert fake.executed == [
        "local-g0-s0", "local-g1-s0", "local-g2-s0", "local-s1",
        "head-only-g0-s0", "head-only-g1-s0", "head-only-g2-s0", "head-only-s1",
    ]  # fmt: skip
    # the first seed's final run is the chosen grid run, copied, with its own config
    final = json.loads((tmp_path / "runs" / "local-s0.json").read_text())
    assert final["copied-from"] == "local-g1-s0"
    assert final["config"]["train.lr"] == 0.05 and final["config"]["data.val-fraction"] == 0.1
    assert final["config"]["output-dir"] == str(tmp_path / "runs" / "local-s0")
    assert (tmp_path / "runs" / "local-s0" / "metrics.json").is_file()
    ran = json.loads((tmp_path / "runs" / "head-only-s1.json").read_text())
    assert ran["config"]["train.lr"] == 0.01
    assert [(o.method, o.seed, o.point) for o in outcomes] == [
        ("local", 0, (("train.lr", 0.05),)), ("local", 1, (("train.lr", 0.05),)),
        ("head-only", 0, (("train.lr", 0.01),)), ("head-only", 1, (("train.lr", 0.01),)),
    ]  # fmt: skip
    md = (tmp_path / "results.md").read_text()
    assert "| method | train.lr=0.01 | train.lr=0.05 | train.lr=0.25 | chosen |" in md
    assert "| local | 0.5000 | **0.7000** | 0.7000 | train.lr=0.05 |" in md
    assert "| head-only | **0.4000** | failed | 0.2000 | train.lr=0.01 |" in md
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    grid_rows = [(r["method"], r["point"], r["chosen"]) for r in rows if r["stage"] == "grid"]
    assert ("local", "train.lr=0.05", "1") in grid_rows and len(grid_rows) == 6
    assert [r["point"] for r in rows if r["stage"] == "final"] == ["train.lr=0.05"] * 2 + [
        "train.lr=0.01"
    ] * 2
    # the report regenerates the same files from the folder alone
    before = md
    (tmp_path / "results.md").unlink()
    assert report.regenerate(tmp_path) == before
    # invoked again: only the failed grid run runs again
    fake.executed.clear()
    compare.compare(["local", "head-only"], [0, 1], tmp_path, base, "", grid)
    assert fake.executed == ["head-only-g1-s0"]
    assert (tmp_path / "results.md").read_text() == before


def test_a_method_without_a_scored_grid_point_gets_no_final_runs(
    tmp_path: Path, monkeypatch
) -> None:
    fake = FakeRuns({("local", 0.01): None, ("local", 0.05): None})
    monkeypatch.setattr(compare, "execute", fake)
    grid = parse_grid("train.lr=0.01,0.05")
    outcomes = compare.compare(["local"], [0, 1], tmp_path, {"data.val-fraction": 0.1}, "", grid)
    assert fake.executed == ["local-g0-s0", "local-g1-s0"]
    assert [o.status for o in outcomes] == [
        "not run (no grid point completed with a validation score)"
    ] * 2
    assert "| local | failed | failed | none |" in (tmp_path / "results.md").read_text()


def test_the_runner_refuses_a_bad_grid_before_any_run(tmp_path: Path, capsys) -> None:
    code = compare.main(["--out", str(tmp_path), "--methods", "local", "--grid", "train.lrr=1,2"])
    assert code == 2 and "train.lrr" in capsys.readouterr().err
    code = compare.main(
        [
            "--out",
            str(tmp_path),
            "--methods",
            "local",
            "--grid",
            "train.lr=1",
            "--val-fraction",
            "0",
        ]
    )
    assert code == 2 and "--val-fraction 0.0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------- the report
EXPECTED_REPORT = """\
| method | runs | global acc | mean client acc | worst client acc | held-out acc | server acc | prompt drift (median) | prompt drift (max) | head ‖Δ‖ | down / round | up / round | wall time (s) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
| pep-fedpt | 2/2 | 0.6000 ± 0.1414 | 0.5000 ± 0.1414 | 0.3000 ± 0.1414 | - | 0.5500 ± 0.1414 | 30.0% | 50.0% | 0.500 | 1.0 KiB | 1.1 KiB | 12.0 ± 2.8 |
| local | 0/2 | not run | not run | not run | not run | not run | not run | not run | not run | not run | not run | not run |

Final-round accuracies, mean ± sample std over the completed seeds; prompt drift: relative change ‖final − initial‖ / ‖initial‖ of each prompt tensor, median and max over the run's tensors, mean over seeds (near 0%: the prompts did not learn, and the method is in effect a linear probe); head ‖Δ‖: the norm of the head's change from its initial value; bytes: array payloads per federated round (the prototype round before round 1 included), mean over seeds; wall time: the whole `flwr run`, simulation start-up included.

## Runs

| method | seed | status | mean client acc | prompt drift (median) | files |
|---|---|---|---|---|---|
| pep-fedpt | 0 | finished:completed | 0.4000 | 30.0% | [config](runs/pep-fedpt-s0.toml) · [log](runs/pep-fedpt-s0.log) · [folder](runs/pep-fedpt-s0/) |
| pep-fedpt | 1 | finished:completed | 0.6000 | 30.0% | [config](runs/pep-fedpt-s1.toml) · [log](runs/pep-fedpt-s1.log) · [folder](runs/pep-fedpt-s1/) |
| local | 0 | missing | - | - | - |
| local | 1 | missing | - | - | - |

Failed runs:

- local seed 0: missing (log: -)
- local seed 1: missing (log: -)
"""  # noqa: E501


def test_the_report_regenerates_the_expected_markdown_from_a_results_folder(
    tmp_path: Path,
) -> None:
    census = {"round": 0.0, "server/accuracy": 0.1, "bytes-down": 0, "bytes-up": 100}
    write_run(tmp_path, "pep-fedpt-s0", [census, round_row(0.4, 0.5)], 10.0)
    write_run(tmp_path, "pep-fedpt-s1", [census, round_row(0.6, 0.7)], 14.0)
    (tmp_path / "comparison.json").write_text(
        json.dumps(report.comparison_document(["pep-fedpt", "local"], [0, 1], None, None))
    )
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == EXPECTED_REPORT
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert float(rows[0]["prompt-drift-median"]) == pytest.approx(0.3)
    assert float(rows[0]["head-change"]) == pytest.approx(0.5)
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")


def test_the_report_of_a_folder_without_a_comparison_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"comparison\.json"):
        report.main([str(tmp_path)])


def test_a_sweep_runs_every_point_on_every_seed_as_rows_of_their_own(
    tmp_path: Path, monkeypatch
) -> None:
    fake = FakeRuns({("local", 0.01): 0.5, ("local", 0.05): 0.6})
    monkeypatch.setattr(compare, "execute", fake)
    sweep = parse_grid("train.lr=0.01,0.05", "--sweep")
    compare.compare(["local"], [0, 1], tmp_path, {}, "", sweep=sweep)
    assert fake.executed == ["local-v0-s0", "local-v0-s1", "local-v1-s0", "local-v1-s1"]
    md = (tmp_path / "results.md").read_text()
    assert "| local [train.lr=0.01] | 2/2 |" in md and "| local [train.lr=0.05] | 2/2 |" in md
    assert "## Selection" not in md
    (tmp_path / "results.md").unlink()
    assert report.regenerate(tmp_path) == md
    with pytest.raises(ConfigError, match="do not combine"):
        compare.compare(["local"], [0], tmp_path, {}, "", grid=sweep, sweep=sweep)


def test_a_method_the_comparison_has_not_reached_reads_not_run_not_failed() -> None:
    from bench.report import Outcome, method_table

    outcomes = [
        Outcome("head-only", 0, "failed (flwr run exited 1, no run id)"),
        Outcome("local", 0, "missing"),
    ]
    rows = {
        line.split(" | ")[0]: line
        for line in method_table(outcomes, ["head-only", "local"]).splitlines()
    }
    assert "| failed |" in rows["| head-only"] and "not run" not in rows["| head-only"]
    assert "| not run |" in rows["| local"] and "failed" not in rows["| local"]
