"""``bench/device_check.py``: the GPU check's CPU run at tiny sizes (the same code path),
its time boxes, its report, and its pure parts (the peak table, MFU, the CCMP ratio)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers.cli import refused
from helpers.data import fake_image_tree
from helpers.flwr_run import ROOT

from bench.device_check import (
    PEAK_TFLOPS,
    STAGES,
    ccmp_ratios,
    figures,
    known_gpu,
    main,
    render_report,
    role,
)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small archive in the shared CIFAR-100 tarball's layout, cifar100/{train,test}/<class>/."""
    root = tmp_path_factory.mktemp("cifar100-src")
    fake_image_tree(root / "cifar100", classes=5, train=24, test=4)
    path = root / "cifar100-images.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(root / "cifar100", arcname="cifar100")
    return path


def check(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/device_check.py", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )


@pytest.mark.integration
def test_the_tiny_cpu_run_writes_every_figure_and_report_prints_it(
    tarball: Path, tmp_path: Path
) -> None:
    out = tmp_path / "device-check.json"
    argv = ["--device", "cpu", "--tiny", "--cifar100", str(tarball), "--work", str(tmp_path)]
    run = check([*argv, "--out", str(out)])
    document = json.loads(out.read_text())
    assert document["device"]["type"] == "cpu" and document["device"]["peak_tflops"] is None
    assert {"torch", "flwr", "timm", "open_clip"} <= set(document["versions"])
    stages = document["stages"]
    assert [stages[name]["status"] for name in STAGES] == ["done"] * 4, stages
    assert stages["data"]["classes"] == 5

    setting = document["setting"]
    configs = {(p, b) for p in setting["precisions"] for b in setting["batches"]}
    vit = stages["vit"]["rows"]
    assert {(r["method"], r["precision"], r["batch"]) for r in vit} == {
        (m, p, b) for m in ("pep-fedpt", "fedavg-vpt-deep") for p, b in configs
    }
    fedmvp = stages["fedmvp"]["rows"]
    assert {(r["precision"], r["batch"]) for r in fedmvp} == configs
    for row in vit + fedmvp:
        assert len(row["step_s"]) == setting["repeats"] and min(row["step_s"]) > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["median_step_s"])
        assert row["flops"] > 0 and row["mfu"] is None  # no known peak for a CPU
        assert row["peak_memory_bytes"] is None  # GPU memory only
    # A step's FLOPs grow with the batch; CCMP adds only the mixing to VPT-deep's.
    flops = {(r["method"], r["batch"]): r["flops"] for r in vit if r["precision"] == "fp32"}
    small, large = setting["batches"]
    assert flops[("pep-fedpt", large)] > flops[("pep-fedpt", small)]
    assert flops[("pep-fedpt", small)] >= flops[("fedavg-vpt-deep", small)]
    assert {(r["precision"], r["batch"]) for r in stages["vit"]["ratios"]} == configs
    for row in fedmvp:
        assert 0 < row["promptformer_flops"] < row["flops"]

    sim = stages["simulation"]
    assert sim["finished"] and sim["rounds_recorded"] == [0, 1, 2]
    assert sorted(sim["round_s"]) == ["1", "2"]
    clientapps = [p for p in sim["processes"] if p["role"] == "clientapp"]
    assert sim["clientapp_processes"] == len(clientapps) >= 1
    assert all(p["peak_rss_bytes"] > 0 for p in clientapps)
    assert "client-resources-num-gpus=0.0" in sim["command"][-1]

    again = check(["--report", str(out)])
    assert again.stdout == render_report(document)
    assert run.stdout.startswith(again.stdout)  # the run prints the report, then nothing else
    for text in ("| pep-fedpt | bf16 |", "| fedmvp | fp32 |", "CCMP / VPT-deep", "clientapp"):
        assert text in again.stdout


def test_a_spent_budget_skips_what_is_left_and_still_writes_the_file(
    tarball: Path, tmp_path: Path
) -> None:
    """vit's budget ends before its first step: every step is skipped with a note; the
    stages without budget are skipped; the data stage's figures are in the file."""
    out = tmp_path / "partial.json"
    budgets = ["--budget", "vit=0.001", "--budget", "fedmvp=0", "--budget", "simulation=0"]
    where = ["--cifar100", str(tarball), "--work", str(tmp_path), "--out", str(out)]
    main(["--device", "cpu", "--tiny", *where, *budgets])
    stages = json.loads(out.read_text())["stages"]
    assert stages["data"]["status"] == "done"
    assert stages["vit"]["status"] == "partial" and stages["vit"]["rows"] == []
    assert len(stages["vit"]["notes"]) == 8
    assert all("budget spent, skipped" in note for note in stages["vit"]["notes"])
    for name in ("fedmvp", "simulation"):
        assert stages[name] == {
            "budget_s": 0.0,
            "status": "skipped",
            "note": "no time left in its budget",
        }


def test_a_missing_tarball_fails_the_data_stage_naming_it_and_the_rest_is_skipped(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere.tar.gz"
    main(["--device", "cpu", "--tiny", "--cifar100", str(missing), "--work", str(tmp_path)])
    # Without --out a tiny run writes into its work folder (the full run: bench/results/).
    stages = json.loads((tmp_path / "device-check.json").read_text())["stages"]
    assert stages["data"]["status"] == "failed" and str(missing) in stages["data"]["note"]
    assert all(stages[n]["note"] == "no data: the data stage failed" for n in STAGES[1:])


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--device", "tpu"], "--device = 'tpu': use cpu, cuda or cuda:<index>"),
        (["--budget", "vitt=10"], "--budget 'vitt=10': write STAGE=SECONDS"),
        (["--budget", "vit=-1"], "seconds >= 0"),
        (["--budget", "vit=soon"], "--budget 'vit=soon'"),
        (["--report", "/nonexistent/file.json"], "--report /nonexistent/file.json"),
        (["--report", "a.json", "--out", "b.json"], "not both"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


@pytest.mark.parametrize(
    ("name", "board"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L4", None),
        ("Tesla V100-SXM2-32GB", None),
    ],
)
def test_a_device_name_finds_its_row_of_peaks_or_none(name: str, board: str | None) -> None:
    assert known_gpu(name) == board
    assert board is None or set(PEAK_TFLOPS[board]) == {"fp32", "bf16"}


def test_mfu_is_the_steps_flops_per_second_over_the_dtypes_peak() -> None:
    row = {"precision": "bf16", "median_step_s": 0.5, "flops": 2e14}
    figures(row, 128, PEAK_TFLOPS["H100 SXM"])
    assert row["images_per_s"] == 256
    assert row["achieved_tflops"] == pytest.approx(400.0)
    assert row["mfu"] == pytest.approx(400.0 / 989.4)
    unknown = {"precision": "bf16", "median_step_s": 0.5, "flops": 2e14}
    figures(unknown, 128, None)
    assert unknown["mfu"] is None


def test_the_ccmp_ratio_pairs_the_same_precision_and_batch_only() -> None:
    rows = [
        {"method": "pep-fedpt", "precision": "bf16", "batch": 32, "median_step_s": 0.11},
        {"method": "fedavg-vpt-deep", "precision": "bf16", "batch": 32, "median_step_s": 0.10},
        {"method": "pep-fedpt", "precision": "fp32", "batch": 32, "median_step_s": 0.3},
        {"method": "fedavg-vpt-deep", "precision": "fp32", "batch": 32, "error": "out of memory"},
    ]
    (ratio,) = ccmp_ratios(rows)
    assert ratio["precision"] == "bf16" and ratio["batch"] == 32
    assert ratio["ccmp_over_vpt_deep"] == pytest.approx(1.1)


def test_a_ray_worker_is_a_clientapp_once_it_has_loaded_torch() -> None:
    worker = "/venv/bin/python /venv/lib/python3.11/site-packages/ray/_private/workers/x.py"
    assert role(worker, "7f00 r-xp /venv/torch/lib/libtorch_cpu.so") == "clientapp"
    assert role(worker, "7f00 r-xp /usr/lib/libc.so.6") == "ray worker"
    assert role("/venv/bin/python /venv/bin/flwr-simulation --token x", "") == "simulation"
    assert role("/venv/bin/python /venv/bin/flower-superlink", "libtorch") == "other"


def gpu_document() -> dict:
    """What a GPU run writes, in short: one bf16 row of each step stage, a finished run."""
    row = {
        "precision": "bf16",
        "batch": 128,
        "median_step_s": 0.05,
        "flops": 2e13,
        "images_per_s": 2560.0,
        "achieved_tflops": 400.0,
        "mfu": 400.0 / 989.4,
        "peak_memory_bytes": 12 * 2**30,
    }
    return {
        "versions": {
            "torch": "2.14.1",
            "cuda": "13.0",
            "flwr": "1.42.0",
            "timm": "1",
            "open_clip": "3",
        },
        "device": {
            "type": "cuda",
            "name": "NVIDIA H100 80GB HBM3",
            "board": "H100 SXM",
            "peak_tflops": PEAK_TFLOPS["H100 SXM"],
        },
        "stages": {
            "data": {"status": "done", "seconds": 3.0, "budget_s": 60},
            "vit": {
                "status": "done",
                "seconds": 40.0,
                "budget_s": 120,
                "notes": [],
                "rows": [
                    {"method": "pep-fedpt", **row},
                    {"method": "fedavg-vpt-deep", **row, "median_step_s": 0.045},
                ],
                "ratios": [{"precision": "bf16", "batch": 128, "ccmp_over_vpt_deep": 0.05 / 0.045}],
            },
            "fedmvp": {
                "status": "partial",
                "seconds": 90.0,
                "budget_s": 90,
                "notes": ["fedmvp bf16 batch 128: budget spent, skipped"],
                "rows": [{"method": "fedmvp", **row, "batch": 64, "promptformer_flops": 2e12}],
            },
            "simulation": {
                "status": "done",
                "seconds": 100.0,
                "budget_s": 210,
                "finished": True,
                "timed_out": False,
                "rounds_recorded": [0, 1, 2],
                "round_s": {"1": 20.5, "2": 12.25},
                "clientapp_processes": 4,
                "peak_gpu_total_bytes": 30 * 2**30,
                "gpu_note": None,
                "processes": [
                    {
                        "pid": 7,
                        "role": "clientapp",
                        "peak_rss_bytes": 3 * 2**30,
                        "peak_gpu_bytes": 6 * 2**30,
                    }
                ],
            },
        },
    }


def test_the_report_of_a_gpu_run_shows_mfu_memory_and_the_run() -> None:
    from bench.device_check import verdict

    text = render_report(gpu_document())
    assert "H100 SXM, peak 989.4 bf16 / 66.9 fp32 TFLOP/s" in text
    assert (
        "| pep-fedpt | bf16 | 128 | 50.0 ms | 2560 | 20,000.0 | 400.00 | 40.4% | - | 12.00 GiB |"
        in text
    )
    assert "| bf16 | 128 | 1.111 |" in text
    assert "| fedmvp | bf16 | 64 |" in text and "| 10.0% | 12.00 GiB |" in text
    assert "**fedmvp**: partial" in text and "- fedmvp bf16 batch 128: budget spent" in text
    assert "round 1: 20.5 s, round 2: 12.2 s; 4 ClientApp processes" in text
    assert "the GPU's peak 30.00 GiB in all" in text
    assert "| 7 | clientapp | 3.00 GiB | 6.00 GiB |" in text
    assert verdict(gpu_document()) == "PEP-FedPT bf16 MFU 40.4%: target >= 40% met"


def test_a_package_missing_on_the_gpu_image_is_a_version_of_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lent GPU's image has torch and timm but may lack flwr, ray or open_clip: the run
    must still start (the stages that need them fail with a note, the others run)."""
    from bench.device_check import versions

    for name in ("flwr", "open_clip", "ray"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    found = versions()
    assert found["flwr"] is None and found["open_clip"] is None and found["ray"] is None
    assert found["torch"] and found["timm"]
