"""bench/probes/: each probe run as its README says (``python -m bench.probes.NAME``), on
tiny sizes: it refuses bad settings before anything runs, and a real run writes the
figures it promises into its ``--out`` file. The figures' values are the probes' business;
what is checked is that they are measured, consistent and written."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers.data import fake_image_tree, write_image

from pep_fedpt.data.torchvision_sets import CIFAR10_CLASSES

ROOT = Path(__file__).resolve().parents[1]


def probe(name: str, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m bench.probes.NAME ARGV`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.probes.{name}", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ran(name: str, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = probe(name, *argv, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize(
    ("name", "argv", "error"),
    [
        (
            "ccmp_step",
            ["--depth", "1"],
            "--depth = 1: at least 2 (prompts go into blocks 2..depth)",
        ),
        ("ccmp_step", ["--img-size", "30"], "--img-size = 30: not a multiple of --patch = 4"),
        ("ccmp_step", ["--threads", "-2"], "--threads = -2: a number of threads"),
        (
            "fedmvp_step",
            ["--memory-classes", "10,x"],
            "argument --memory-classes: '10,x': 'x' is not an integer; accepted: integers >= 1",
        ),
        ("fedmvp_step", ["--attributes", "/nonexistent/a.json"], "/nonexistent/a.json: no such"),
        ("client_memory", ["--batches", "4"], "--batches [4]: two or more distinct sizes"),
        ("client_memory", ["--batches", "1,1"], "argument --batches: '1,1' names '1' twice"),
        (
            "client_memory",
            ["--precisions", "fp8"],
            "argument --precisions: 'fp8': unknown 'fp8'; accepted: fp32, bf16, fp16",
        ),
        ("device_check", ["--device", "tpu"], "--device = 'tpu': use cpu, cuda or cuda:<index>"),
        ("device_check", ["--budget", "vitt=10"], "--budget 'vitt=10': write STAGE=SECONDS"),
        ("prototype_round", ["--nodes", "0"], "argument --nodes: '0': 0 is below 2; accepted"),
        ("prototype_round", ["--pull-batch", "0"], "--pull-batch = 0: at least 1"),
        ("cold_start", ["--partition-id", "2"], "--partition-id = 2, --num-partitions = 2"),
        ("cold_start", ["-c", "data.pixel-cache=3"], "data.pixel-cache = 3 has type int"),
        ("sim_overhead", ["--rounds", "1"], "--rounds = 1: a steady state needs at least 2"),
        ("sim_overhead", ["-c", "model.depth=-1"], "model.depth must be >= 0"),
        ("scale", ["--nodes", "2,x"], "argument --nodes: '2,x': 'x' is not an integer"),
        ("secagg_cost", ["--num-shares", "0,-1"], "argument --num-shares: '0,-1': -1 is below 0"),
        ("scale", ["--fraction", "2"], "--fraction 2.0: in (0, 1]"),
    ],
)
def test_a_probe_refuses_a_bad_setting_naming_it_before_anything_runs(
    name: str, argv: list[str], error: str
) -> None:
    done = probe(name, *argv, timeout=120)
    assert done.returncode == 2, done.stderr
    assert error in done.stderr
    assert done.stdout == ""  # nothing measured or printed before the refusal


def test_the_client_memory_fit_of_the_committed_file_is_the_one_the_docs_show() -> None:
    """The file holds the measured rows; ``--report`` fits them, and docs/configuration.md
    shows that fit as printed."""
    committed = "bench/results/client-memory-fedmvp-vit-b-16.json"
    report = ran("client_memory", "--report", committed, timeout=120).stdout
    assert "| bf16 |" in report
    assert report.rstrip("\n") in (ROOT / "docs" / "configuration.md").read_text()


@pytest.mark.integration
def test_a_tiny_ccmp_step_writes_both_paths_samples_and_the_verdict(tmp_path: Path) -> None:
    out = tmp_path / "ccmp-step.json"
    argv = ["--width", "32", "--depth", "2", "--heads", "2", "--batch", "2", "--repeats", "2"]
    run = ran("ccmp_step", *argv, "--threads", "1", "--recompute-z", "--out", str(out))
    document = json.loads(out.read_text())
    assert document["command"].startswith("python -m bench.probes.ccmp_step --width 32")
    assert document["setting"]["recompute_z"] is True and document["setting"]["threads"] == 1
    timing = document["timing"]
    assert len(timing["vpt_deep_s"]) == len(timing["ccmp_s"]) == 2
    assert timing["ccmp_over_vpt_deep"] == pytest.approx(
        timing["median_ccmp_s"] / timing["median_vpt_deep_s"]
    )
    assert run.stdout.startswith("CCMP / VPT-deep ") and "target <= 1.10" in run.stdout


@pytest.mark.integration
def test_a_tiny_fedmvp_step_writes_the_timing_and_a_memory_row_per_bank(tmp_path: Path) -> None:
    out = tmp_path / "fedmvp-step.json"
    argv = ["--classes", "5", "--repeats", "1", "--batch", "2", "--memory-classes", "5,10"]
    run = ran("fedmvp_step", *argv, "--threads", "1", "--device", "cpu", "--out", str(out))
    document = json.loads(out.read_text())
    assert document["setting"]["memory_classes"] == [5, 10]
    assert [row["sentences"] for row in document["memory"]] == [50, 100]
    assert all(row["per_element_bytes"] > 0 for row in document["memory"])
    assert document["timing"]["bank_sentences"] == 50
    step = document["timing"]["calls"]["training step"]
    assert step["reencode_over_cached"] == pytest.approx(
        step["median_reencode_s"] / step["median_cached_s"]
    )
    printed = json.loads(run.stdout)
    assert printed["memory"] == document["memory"]
    assert "cached_s" not in printed["timing"]["training step"]  # medians, not samples


@pytest.mark.integration
def test_a_tiny_client_memory_run_writes_rows_that_grow_with_the_batch(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    argv = ["--clip-model", "tiny", "--batches", "1,3", "--classes", "3", "--per-class", "2"]
    run = ran("client_memory", *argv, "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["precision"], r["batch"]) for r in rows] == [
        ("fp32", 1),
        ("fp32", 3),
        ("bf16", 1),
        ("bf16", 3),
    ]
    for precision in ("fp32", "bf16"):
        mine = [r for r in rows if r["precision"] == precision]
        assert mine[1]["step_peak_bytes"] > mine[0]["step_peak_bytes"] > 0
        assert mine[0]["resident_bytes"] > 0
    assert ran("client_memory", "--report", str(out)).stdout == run.stdout


@pytest.mark.integration
def test_the_prototype_rounds_peak_does_not_follow_the_replies(tmp_path: Path) -> None:
    """40 and 320 nodes of 10 x 512 sums (20 KiB a reply): holding them all would add
    5.5 MiB; the traced peak grows by the bookkeeping only (a few KiB a node)."""
    out = tmp_path / "prototype-round.json"
    argv = ["--nodes", "40,320", "--classes", "10", "--dim", "512", "--pull-batch", "8"]
    run = ran("prototype_round", *argv, "--out", str(out))
    document = json.loads(out.read_text())
    reply = document["setting"]["reply_bytes"]
    small, large = document["runs"]
    growth = (large["peak_bytes"] - small["peak_bytes"]) / (large["nodes"] - small["nodes"])
    assert growth < reply / 4, (growth, reply)
    assert large["nodes"] == 320 and large["peak_bytes"] < large["replies_bytes"] / 2
    assert json.loads(run.stdout)["peak_growth_per_node_bytes"] == pytest.approx(growth)


@pytest.mark.integration
def test_a_secure_training_round_costs_the_masked_vectors_and_keeps_the_plain_state() -> None:
    """The ViT-B/16 CIFAR-100 state over 10 nodes, plain and under SecAgg+ (k = 5)."""
    out = ran("secagg_cost", "--round", "train", "--nodes", "10", "--num-shares", "5").stdout
    plain, secure = (json.loads(line) for line in out.splitlines())
    assert (plain["mode"], secure["mode"]) == ("plain", "secagg k=5")
    # Plain: 929,380 float32 up per node; SecAgg+: int64 masked vectors of those values and
    # 1 + 100 counts and the loss, and keys besides.
    assert plain["array-bytes-up"] == 10 * 929_380 * 4
    assert secure["array-bytes-up"] > 2 * plain["array-bytes-up"] and secure["key-bytes"] > 0
    assert plain["max-error"] == 0
    assert 0 < secure["max-error"] < 1e-3 * secure["max-change"]


@pytest.mark.integration
def test_a_cold_start_run_times_every_stage_of_each_fresh_process(tmp_path: Path) -> None:
    out = tmp_path / "cold-start.json"
    run = ran("cold_start", "--repeats", "1", "--out", str(out))
    document = json.loads(out.read_text())
    first, (later,) = document["first"]["stages"], document["runs"]
    assert {"process start", "imports", "z(x) computed"} <= set(first)
    assert {"imports", "z(x) cache load", "train 1 round (cold)"} <= set(later["stages"])
    assert document["median_s"] == later["stages"]  # one run: its own median
    assert json.loads(run.stdout) == document["median_s"]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_sim_overhead_run_times_both_ways_and_their_ratio(tmp_path: Path) -> None:
    """The simulation through ``flwr run`` and the plain loop in a child process of its own
    (``python -m bench.probes.sim_overhead --loop-child``) both record every round."""
    out = tmp_path / "sim-overhead.json"
    run = ran("sim_overhead", "--clients", "2", "--rounds", "2", "--out", str(out), timeout=580)
    document = json.loads(out.read_text())
    (repeat,) = document["repeats"]
    assert len(repeat["simulation"]["rounds"]) == len(repeat["plain_loop"]["rounds"]) == 2
    assert repeat["plain_loop"]["encode_per_round"] > 0 < repeat["plain_loop"]["client_build"]
    (each,) = document["summary"]["repeats"]
    assert each["ratio"] == pytest.approx(each["simulation_steady_s"] / each["loop_steady_s"])
    assert each["simulation_steady_s"] == repeat["simulation"]["rounds"][1]
    assert document["setting"]["method"] and document["machine"]["cpus"]
    assert json.loads(run.stdout[run.stdout.index("{\n") :]) == document["summary"]


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small archive in the shared CIFAR-100 tarball's layout, cifar100/{train,test}/<class>/."""
    root = tmp_path_factory.mktemp("cifar100-src")
    fake_image_tree(root / "cifar100", classes=5, train=24, test=4)
    path = root / "cifar100-images.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(root / "cifar100", arcname="cifar100")
    return path


@pytest.mark.integration
def test_the_tiny_cpu_device_check_writes_every_stage(tarball: Path, tmp_path: Path) -> None:
    out = tmp_path / "device-check.json"
    argv = ["--device", "cpu", "--tiny", "--cifar100", str(tarball), "--work", str(tmp_path)]
    run = ran("device_check", *argv, "--out", str(out), timeout=900)
    document = json.loads(out.read_text())
    assert document["device"]["type"] == "cpu" and document["device"]["peak_tflops"] is None
    assert {"torch", "flwr", "timm", "open_clip"} <= set(document["versions"])
    stages = document["stages"]
    names = ["data", "vit", "fedmvp", "simulation"]
    assert [stages[name]["status"] for name in names] == ["done"] * 4, stages
    assert stages["data"]["classes"] == 5
    setting = document["setting"]
    configs = {(p, b) for p in setting["precisions"] for b in setting["batches"]}
    vit, fedmvp = stages["vit"]["rows"], stages["fedmvp"]["rows"]
    assert {(r["method"], r["precision"], r["batch"]) for r in vit} == {
        (m, p, b) for m in ("pep-fedpt", "fedavg-vpt-deep") for p, b in configs
    }
    assert {(r["precision"], r["batch"]) for r in fedmvp} == configs
    for row in vit + fedmvp:
        assert len(row["step_s"]) == setting["repeats"] and min(row["step_s"]) > 0
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["median_step_s"])
        assert row["flops"] > 0 and row["mfu"] is None  # no known peak for a CPU
    # A step's FLOPs grow with the batch; CCMP adds only the mixing to VPT-deep's.
    flops = {(r["method"], r["batch"]): r["flops"] for r in vit if r["precision"] == "fp32"}
    small, large = setting["batches"]
    assert flops[("pep-fedpt", large)] > flops[("pep-fedpt", small)]
    assert flops[("pep-fedpt", small)] >= flops[("fedavg-vpt-deep", small)]
    for row in fedmvp:
        assert 0 < row["promptformer_flops"] < row["flops"]
    sim = stages["simulation"]
    assert sim["finished"] and sim["rounds_recorded"] == [0, 1, 2]
    clientapps = [p for p in sim["processes"] if p["role"] == "clientapp"]
    assert sim["clientapp_processes"] == len(clientapps) >= 1
    assert f"every figure is in {out}" in run.stdout


def _fake_cifar10(root: Path, per_class: int) -> None:
    """CIFAR-10's folder layout (its 10 class names), 8 px greys."""
    for split, count in (("train", per_class), ("test", 2)):
        for c, name in enumerate(CIFAR10_CLASSES):
            for i in range(count):
                write_image(root / split / name / f"{i:04d}.jpg", (25 * c + 7 * i) % 256)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_the_scale_probe_runs_two_federation_sizes(tmp_path: Path) -> None:
    data = tmp_path / "cifar10"
    _fake_cifar10(data, per_class=24)  # 240 images: 10 per client at 24 nodes
    out = tmp_path / "scale.json"
    argv = ["--nodes", "12,24", "--rounds", "1", "--data-dir", str(data), "--fraction", "0.1"]
    ran("scale", *argv, "--out", str(out), timeout=280)
    small, large = json.loads(out.read_text())["runs"]
    assert (small["nodes"], large["nodes"]) == (12, 24)
    for entry in (small, large):
        # The prototype round asked every node; rounds sampled max(0.1 N, 2).
        assert entry["phases"]["0"]["query"]["replies"] == entry["nodes"]
        assert entry["sampled_train"] == 2
        assert len(entry["round_s"]) == 1 and entry["round_s"][0] > 0
        memory = entry["memory"]
        assert memory["simulation_hwm"] >= memory["simulation_hwm_before_round1"] > 50 * 2**20
        assert memory["superlink_hwm"] > 10 * 2**20
        assert entry["database_bytes"] > 0
    # Each node sends its class counts and feature sums once: twice the nodes, twice the bytes.
    assert large["bytes"]["0"]["bytes-up"] == 2 * small["bytes"]["0"]["bytes-up"]
    assert large["bytes"]["1"]["train/bytes-up"] == small["bytes"]["1"]["train/bytes-up"]
