"""The GPU check: every figure a first GPU should give, from one command, into one file.

Run from the repository root::

    python -m bench.probes.device_check          # on the GPU: ~8 minutes on an H100, writes
                                          # bench/results/device-check.json
    python -m bench.probes.device_check --device cpu --tiny --out /tmp/device-check.json

Stages, each with its own time budget; a stage (or the rest of one) whose budget is spent is
skipped with a note, and the JSON is rewritten after every stage, so a run cut short still
leaves every figure measured so far:

1. ``data``: CIFAR-100 unpacked from ``--cifar100`` (the shared JPEG tarball) into the work
   folder; the step stages take their batches from it.
2. ``vit``: one local training step of PEP-FedPT (CCMP, z(x) cached) and of FedAvg-VPT-deep
   (the same prompt tokens), ViT-B/16 at 224 px, 100 classes, at each batch and precision:
   step time, images/s, the step's FLOPs (``torch.utils.flop_counter``), model-FLOPs
   utilisation against the device's peak for the dtype, peak GPU memory; and the CCMP /
   VPT-deep step ratio.
3. ``fedmvp``: one FedMVP step (ViT-B-16 CLIP, PromptFormer over a client's text bank of
   ``fedmvp.classes-per-client`` classes, g(x') cached): the same figures, and the
   PromptFormer's share of the FLOPs.
4. ``simulation``: a real ``flwr run .`` in the simulation engine, 4 ClientApps sharing the
   GPU (``client-resources-num-gpus = 0.25``), 2 rounds of PEP-FedPT on CIFAR-100
   partitions: whether it finished, each round's time, each ClientApp process's peak memory.

Weights are random (no network on a lent GPU machine): the figures are costs, not
accuracies. ``--device cpu --tiny`` runs the same code at tiny sizes (the integration tier
runs it). The step code is ``bench/probes/ccmp_step.py``'s and ``bench/probes/fedmvp_step.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.probes.result_file import header, write
from bench.probes.sampler import Sampler, command_line, proc_text, status_bytes
from pep_fedpt.local_flwr import flwr_env, processes_of_home, stop_superlink, stream_to_end

ROOT = Path(__file__).resolve().parents[2]
WRITER = "bench/probes/device_check.py"
TARBALL = "cifar100-images.tar.gz"
# Where the shared data lies: beside the checkout (../shared), or inside it (a device
# machine's copy of the working tree carries shared/ when the checkout has one).
DEFAULT_TARBALLS = (
    ROOT.parent / "shared" / "datasets" / TARBALL,
    ROOT / "shared" / "datasets" / TARBALL,
)
GIB = 2**30
DEFAULT_OUT = ROOT / "bench" / "results" / "device-check.json"
# CIFAR-100's class folders through the generic image-folder loader: sorted folder names
# are the official labels 0-99, and the tiny test's archive need not hold all 100 classes.
FOLDER_DATASET = "imagefolder"
MFU_TARGET = 0.40  # prompt tuning in bf16 on an H100-class GPU (issue 22)

# Dense peak TFLOP/s per precision (no sparsity) from the vendors' data sheets. "fp32" is
# plain FP32 (torch leaves TF32 matmuls off unless asked: ``allow_tf32`` is recorded).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 66.9, "bf16": 989.4},
    "H100 NVL": {"fp32": 60.0, "bf16": 835.0},
    "H100 PCIe": {"fp32": 51.2, "bf16": 756.0},
    "H200": {"fp32": 66.9, "bf16": 989.4},
    "A100": {"fp32": 19.5, "bf16": 312.0},
}


def known_gpu(name: str) -> str | None:
    """The ``PEAK_TFLOPS`` row of a CUDA device name (``torch.cuda.get_device_name``), or
    None: "NVIDIA H100 80GB HBM3" is the SXM board, "NVIDIA H100 PCIe" the PCIe one."""
    if "H100" in name:
        return next((f"H100 {b}" for b in ("NVL", "PCIe") if b in name), "H100 SXM")
    return next((board for board in ("H200", "A100") if board in name), None)


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the paper's sizes on a GPU, tiny ones for the CPU test."""

    model: dict[str, Any]  # run-config model.* keys of the ViT
    clip_model: str
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    warmup: int
    repeats: int
    bank_classes: int  # a FedMVP client's classes (fedmvp.classes-per-client)
    bank_sentences: int  # sentences per class
    sim: dict[str, Any]  # run-config overrides of the flwr run
    sim_cpus: int  # client-resources-num-cpus per ClientApp
    sim_gpus: float  # client-resources-num-gpus per ClientApp
    budgets: dict[str, float] = field(default_factory=dict)  # seconds per stage


VIT_B16 = {
    "model.name": "vit_base_patch16_224",
    "model.pretrained": "random",
    "model.img-size": 0,
    "model.patch-size": 0,
    "model.embed-dim": 0,
    "model.depth": 0,
    "model.num-heads": 0,
}
TINY_VIT = {
    "model.pretrained": "random",
    "model.img-size": 16,
    "model.patch-size": 4,
    "model.embed-dim": 64,
    "model.depth": 3,
    "model.num-heads": 2,
}
FULL = Sizes(
    model=VIT_B16,
    clip_model="ViT-B-16",
    batches=(32, 64, 128),
    precisions=("fp32", "bf16"),
    warmup=3,
    repeats=10,
    bank_classes=20,
    bank_sentences=10,
    # A fifth of CIFAR-100 (10,000 training images over 4 clients, 2,000 central test
    # images): two rounds fit the stage's budget at 224 px.
    sim={**VIT_B16, "data.subsample": 0.2, "train.batch-size": 64, "data.num-workers": 2},
    sim_cpus=4,
    sim_gpus=0.25,
    budgets={"data": 60, "vit": 120, "fedmvp": 90, "simulation": 210},
)
TINY = Sizes(
    model=TINY_VIT,
    clip_model="tiny",
    batches=(2, 4),
    precisions=("fp32", "bf16"),
    warmup=1,
    repeats=2,
    bank_classes=3,
    bank_sentences=2,
    sim={
        **TINY_VIT,
        "data.subsample": 1.0,
        "train.batch-size": 8,
        "data.num-workers": 0,
        "data.min-partition-size": 5,
    },
    sim_cpus=1,
    sim_gpus=0.0,
    budgets={"data": 60, "vit": 120, "fedmvp": 120, "simulation": 300},
)
STAGES = ("data", "vit", "fedmvp", "simulation")


# ---------------------------------------------------------------- the device
def device_facts(device: Any) -> dict[str, Any]:
    """What the device is and what it can do at most (``peak_tflops``: None if unknown)."""
    import torch

    if device.type != "cuda":
        return {
            "type": device.type,
            "name": platform.processor() or platform.machine(),
            "board": None,
            "peak_tflops": None,
        }
    props = torch.cuda.get_device_properties(device)
    board = known_gpu(props.name)
    return {
        "type": "cuda",
        "name": props.name,
        "board": board or "unknown",
        "capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
        "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False),
        "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "peak_tflops": PEAK_TFLOPS.get(board) if board else None,
    }


def versions() -> dict[str, str | None]:
    """The versions that made the figures; a package missing on the machine is None (a GPU
    image may lack flwr or open_clip: the stages that need them fail, the others run)."""
    import importlib

    import torch

    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
    }
    for name in ("flwr", "timm", "open_clip", "ray"):
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            found[name] = None
    return found


class Clock:
    """Wall time with the device's queue drained (CUDA runs asynchronously)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def measure_step(
    step: Callable[[], Any], device: Any, sizes: Sizes, deadline: float
) -> dict[str, Any]:
    """Median seconds of ``sizes.repeats`` steps after ``sizes.warmup``, the FLOPs of one
    step, and the peak memory the device held (CUDA: ``max_memory_allocated``, weights
    included; not measured on the CPU)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    now = Clock(device)
    for _ in range(sizes.warmup):
        step()
    samples = []
    for _ in range(sizes.repeats):
        if samples and time.monotonic() > deadline:
            break
        start = now()
        step()
        samples.append(now() - start)
    with FlopCounterMode(display=False) as counter:
        step()
    by_module = counter.get_flop_counts()
    return {
        "step_s": samples,
        "median_step_s": statistics.median(samples),
        "flops": int(counter.get_total_flops()),
        "flops_by_module": {m: int(sum(c.values())) for m, c in by_module.items()},
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
    }


def measured_row(
    row: dict[str, Any],
    step: Callable[[], Any],
    device: Any,
    sizes: Sizes,
    deadline: float,
) -> dict[str, Any]:
    """``row`` with ``measure_step``'s figures, images/s and model-FLOPs utilisation, or
    ``error`` when the device ran out of memory (a finding: the next one still runs)."""
    import torch

    try:
        row |= measure_step(step, device, sizes, deadline)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return row | {"error": "out of memory"}
    peak = device_facts(device)["peak_tflops"]
    tflops = peak.get(row["precision"]) if peak else None
    achieved = row["flops"] / row["median_step_s"]
    row["images_per_s"] = row["batch"] / row["median_step_s"]
    row["achieved_tflops"] = achieved / 1e12
    row["mfu"] = achieved / (tflops * 1e12) if tflops else None
    return row


# ---------------------------------------------------------------- stages
def stage_data(tarball: Path, work: Path) -> dict[str, Any]:
    """CIFAR-100's class folders under ``work`` (unpacked once; a later run reuses them)."""
    target = work / "cifar100"
    if not (target / "train").is_dir():
        if not tarball.is_file():
            raise FileNotFoundError(
                f"{tarball}: no CIFAR-100 tarball there; pass --cifar100 /path/to/{TARBALL}"
            )
        with tarfile.open(tarball) as archive:
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(work, **kwargs)
        if not (target / "train").is_dir():
            raise FileNotFoundError(f"{tarball}: holds no cifar100/train/ folder")
    classes = sorted(p.name for p in (target / "train").iterdir() if p.is_dir())
    return {"data_dir": str(target), "classes": len(classes)}


def real_batch(data_dir: str, spec: Any, size: int) -> tuple[Any, Any]:
    """``size`` CIFAR-100 training images through the project's image-folder loader (the
    model's input size and normalisation), spread over the classes, and their labels."""
    import torch

    from pep_fedpt.config import DataConfig
    from pep_fedpt.data import load_dataset

    train = load_dataset(DataConfig(dataset=FOLDER_DATASET, data_dir=data_dir), spec).train
    step = max(len(train) // size, 1)
    items = [train[(i * step) % len(train)] for i in range(size)]
    return torch.stack([image for image, _ in items]), torch.tensor([y for _, y in items])


def stage_vit(sizes: Sizes, device: Any, data: Mapping[str, Any], deadline: float) -> dict:
    """PEP-FedPT (CCMP, cached z(x)) and FedAvg-VPT-deep steps at every batch and precision."""
    import torch

    from bench.probes.ccmp_step import prompt_pair, sgd, train_step
    from pep_fedpt.ccmp import mixing_weights, smoothed_prior
    from pep_fedpt.config import RunConfig
    from pep_fedpt.models import create_backbone, image_spec

    model_cfg = RunConfig.from_flat(sizes.model).model
    backbone = create_backbone(model_cfg, seed=0).to(device)
    classes = int(data["classes"])
    deep, ccmp = (m.to(device) for m in prompt_pair(backbone, classes, 10))
    images, labels = real_batch(data["data_dir"], image_spec(backbone), max(sizes.batches))
    images, labels = images.to(device), labels.to(device)
    width = backbone.embed_dim
    gen = torch.Generator().manual_seed(0)
    cached_z = torch.randn(max(sizes.batches), width, generator=gen).to(device)
    prototypes = torch.randn(classes, width, generator=gen).to(device)
    log_prior = smoothed_prior(torch.full((classes,), 50)).log().to(device)
    rows, notes = [], []
    for precision in sizes.precisions:
        for batch in sizes.batches:
            x, y, z = images[:batch], labels[:batch], cached_z[:batch]
            ones = torch.ones(batch, 1, device=device)
            for method, model in (("pep-fedpt", ccmp), ("fedavg-vpt-deep", deep)):
                if time.monotonic() > deadline:
                    notes.append(f"{method} {precision} batch {batch}: budget spent, skipped")
                    continue

                def weights(is_ccmp: bool = method == "pep-fedpt", z: Any = z, o: Any = ones):
                    return mixing_weights(z, prototypes, log_prior, 0.1) if is_ccmp else o

                step = partial(train_step, model, sgd(model), x, y, weights, precision)
                row = {"method": method, "precision": precision, "batch": batch}
                rows.append(measured_row(row, step, device, sizes, deadline))
    return {
        "rows": rows,
        "ratios": ccmp_ratios(rows),
        "notes": notes,
        "setting": {
            "model": sizes.model,
            "classes": classes,
            "shared_length": 10,
            "prompt_blocks": f"2-{len(backbone.blocks)}",
            "z": "cached",
        },
    }


def ccmp_ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """CCMP / VPT-deep median step time, per precision and batch where both were measured."""
    times = {
        (r["method"], r["precision"], r["batch"]): r["median_step_s"]
        for r in rows
        if "median_step_s" in r
    }
    return [
        {"precision": p, "batch": b, "ccmp_over_vpt_deep": t / times[("fedavg-vpt-deep", p, b)]}
        for (method, p, b), t in times.items()
        if method == "pep-fedpt" and ("fedavg-vpt-deep", p, b) in times
    ]


def stage_fedmvp(sizes: Sizes, device: Any, data: Mapping[str, Any], deadline: float) -> dict:
    """FedMVP steps: CLIP image tower with the PromptFormer's prompts, a client's bank."""
    import torch

    from bench.probes.fedmvp_step import DEFAULT_ATTRIBUTES, phrase_table, train_step
    from pep_fedpt.config import FedMVPConfig
    from pep_fedpt.fedmvp import FedMVPModel, build_clip, build_text_bank

    cfg = FedMVPConfig(clip_model=sizes.clip_model, classes_per_client=sizes.bank_classes)
    bundle = build_clip(cfg, seed=0, device=device)
    model = FedMVPModel(bundle, cfg, seed=0).to(device)
    table = phrase_table(DEFAULT_ATTRIBUTES, sizes.bank_classes, sizes.bank_sentences)
    cache = Path(tempfile.mkdtemp(prefix="device-check-bank-"))
    bank = build_text_bank(bundle, list(table), table, cfg, cache).to(device)
    images, _ = real_batch(data["data_dir"], bundle.spec, max(sizes.batches))
    images = images.to(device)
    labels = torch.arange(max(sizes.batches), device=device) % sizes.bank_classes
    with torch.no_grad():
        flipped = model.frozen_features(images.flip(-1)).float()  # g(x'), cached by clients
    params = [p for p in model.promptformer.parameters() if p.requires_grad]
    former = type(model.promptformer).__name__  # the FLOP counter keys modules by class
    rows, notes = [], []
    for precision in sizes.precisions:
        for batch in sizes.batches:
            if time.monotonic() > deadline:
                notes.append(f"fedmvp {precision} batch {batch}: budget spent, skipped")
                continue
            x, y, target = images[:batch], labels[:batch], flipped[:batch]
            optimizer = torch.optim.SGD(params, lr=0.003, momentum=0.9, weight_decay=1e-5)
            model.train()
            step = partial(train_step, model, optimizer, x, y, bank, precision, target)
            row = {"method": "fedmvp", "precision": precision, "batch": batch}
            row = measured_row(row, step, device, sizes, deadline)
            if "flops_by_module" in row:
                row["promptformer_flops"] = row["flops_by_module"].get(former, 0)
            rows.append(row)
    return {
        "rows": rows,
        "notes": notes,
        "setting": {
            "clip_model": sizes.clip_model,
            "image_size": bundle.spec.size,
            "bank_classes": sizes.bank_classes,
            "bank_sentences": len(bank.sentences),
            "sentences_from": DEFAULT_ATTRIBUTES.name
            if DEFAULT_ATTRIBUTES.is_file()
            else "synthetic",
        },
    }


class MemorySampler(Sampler):
    """Each process of one ``flwr run``'s simulation (found by its FLWR_HOME): the peak
    host memory (VmHWM) and, on CUDA, the peak GPU memory ``nvidia-smi`` shows for it,
    sampled twice a second until ``stop``."""

    def __init__(self, home: Path, cuda: bool) -> None:
        super().__init__(poll=0.5)
        self.home, self.cuda = home, cuda
        self.seen: dict[int, dict[str, Any]] = {}
        self.gpu_note: str | None = None
        self.peak_gpu_total_bytes: int | None = None  # the whole GPU, whoever holds it

    def sample(self) -> None:
        gpu = self._gpu_bytes() if self.cuda else {}
        if self.cuda:
            self._gpu_total()
        for pid in sorted(processes_of_home(self.home)):
            command = command_line(pid)
            if not command:  # gone, or not ours
                continue
            known = self.seen.get(pid, {}).get("role") == "clientapp"
            entry = self.seen.setdefault(
                pid, {"command": command[:120], "peak_rss_bytes": 0, "peak_gpu_bytes": None}
            )
            if not known:
                entry["role"] = role(command, proc_text(pid, "maps"))
            if (hwm := status_bytes(pid, "VmHWM")) is not None:
                entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], hwm)
            if pid in gpu:
                entry["peak_gpu_bytes"] = max(entry["peak_gpu_bytes"] or 0, gpu[pid])

    def _gpu_total(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True)
            used = int(out.stdout.split()[0]) * 2**20
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return
        self.peak_gpu_total_bytes = max(self.peak_gpu_total_bytes or 0, used)

    def _gpu_bytes(self) -> dict[int, int]:
        query = [
            "nvidia-smi",
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            self.gpu_note = f"nvidia-smi failed ({exc}): GPU memory per process not measured"
            return {}
        found = {}
        for line in out.stdout.splitlines():
            pid, _, mib = line.partition(",")
            if pid.strip().isdigit() and mib.strip().isdigit():
                found[int(pid)] = int(mib) * 2**20
        return found


def role(command: str, maps: str) -> str:
    """A simulation process's part: a ClientApp (a Ray worker that loaded torch; idle pool
    workers have not), the ServerApp's simulation process, or other."""
    if "ray/_private/workers/" in command or command.startswith("ray::"):
        return "clientapp" if "libtorch" in maps else "ray worker"
    if "flwr-simulation" in command:
        return "simulation"
    return "other"


def stage_simulation(
    sizes: Sizes, device: Any, data: Mapping[str, Any], work: Path, deadline: float
) -> dict:
    """``flwr run .``: 4 ClientApps sharing the device, 2 rounds of PEP-FedPT."""
    from bench.probes.sim_overhead import ROUND_TOOK
    from pep_fedpt.preflight import toml_value

    clients, rounds = 4, 2
    out, home = work / "sim-run", work / "flwr-home"
    config = {
        "method": "pep-fedpt",
        "num-server-rounds": rounds,
        "output-dir": str(out),
        "cache-dir": str(work / "sim-cache"),
        "data.dataset": FOLDER_DATASET,
        "data.data-dir": data["data_dir"],
        "fed.min-train-nodes": clients,
        "fed.min-evaluate-nodes": clients,
        "fed.min-available-nodes": clients,
        **sizes.sim,
    }
    federation = (
        f"num-supernodes={clients} client-resources-num-cpus={sizes.sim_cpus} "
        f"client-resources-num-gpus={sizes.sim_gpus}"
    )
    overrides = " ".join(f"{k}={toml_value(v)}" for k, v in config.items())
    args = ["-c", overrides, "--federation-config", federation]
    sampler = MemorySampler(home, device.type == "cuda")
    start = time.monotonic()
    sampler.start()
    try:
        run = stream_to_end(
            ROOT, *args, env=flwr_env(home), timeout=max(deadline - time.monotonic(), 1)
        )
        seconds = time.monotonic() - start
    finally:
        sampler.stop()
        stop_superlink(home)
    processes, log, timed_out = sampler.seen, run.lines, run.timed_out
    took = {int(m.group(1)): float(m.group(2)) for m in map(ROUND_TOOK.search, log) if m}
    metrics = out / "metrics.json"
    recorded = (
        [int(r["round"]) for r in json.loads(metrics.read_text())] if metrics.is_file() else []
    )
    finished = not timed_out and run.returncode == 0 and recorded[-1:] == [rounds]
    clientapps = [p for p in processes.values() if p["role"] == "clientapp"]
    if device.type == "cuda" and not any(p["peak_gpu_bytes"] for p in clientapps):
        # In a container nvidia-smi may list host PIDs, or none: the total still tells.
        sampler.gpu_note = sampler.gpu_note or (
            "nvidia-smi listed none of the run's ClientApp processes (another PID "
            "namespace?): only the GPU's total is known"
        )
    return {
        "finished": finished,
        "timed_out": timed_out,
        "returncode": run.returncode,
        "seconds": seconds,
        "round_s": {str(r): took[r] for r in sorted(took)},
        "rounds_recorded": recorded,
        "processes": [{"pid": pid, **entry} for pid, entry in sorted(processes.items())],
        "clientapp_processes": len(clientapps),
        "gpu_note": sampler.gpu_note,
        "peak_gpu_total_bytes": sampler.peak_gpu_total_bytes,
        "command": ["flwr", "run", ".", "--stream", *args],
        "log_tail": "".join(log[-40:]) if not finished else "",
    }


# ---------------------------------------------------------------- the run
def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Every stage in order within its budget, the document written after each."""
    import torch

    sizes = TINY if args.tiny else FULL
    sizes = replace(sizes, budgets={**sizes.budgets, **args.budget})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = args.work or Path(tempfile.mkdtemp(prefix="device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.out is None:  # the full run's file is the one to commit; a tiny one is not
        args.out = work / "device-check.json" if args.tiny else DEFAULT_OUT
    load = os.getloadavg()
    setting = {
        "tiny": args.tiny,
        "device": str(device),
        "work": str(work),
        "cifar100": str(args.cifar100),
        **asdict(sizes),
    }
    document = header(WRITER, argv, setting, load, load)
    document |= {"versions": versions(), "device": device_facts(device), "stages": {}}
    started = time.monotonic()
    total = sum(sizes.budgets.values())
    data: dict[str, Any] = {}
    for name in STAGES:
        budget = min(sizes.budgets[name], total - (time.monotonic() - started))
        entry: dict[str, Any] = {"budget_s": sizes.budgets[name]}
        if budget <= 0:
            entry |= {"status": "skipped", "note": "no time left in its budget"}
        elif name != "data" and not data:
            entry |= {"status": "skipped", "note": "no data: the data stage failed"}
        else:
            deadline = time.monotonic() + budget
            t0 = time.monotonic()
            try:
                if name == "data":
                    result = data = stage_data(args.cifar100, work)
                elif name == "simulation":
                    result = stage_simulation(sizes, device, data, work, deadline)
                else:
                    stage = stage_vit if name == "vit" else stage_fedmvp
                    result = stage(sizes, device, data, deadline)
                skipped = bool(result.get("notes"))
                entry |= {"status": "partial" if skipped else "done", **result}
            except Exception as exc:  # a failed stage is a finding; the next ones still run
                entry |= {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
            entry["seconds"] = time.monotonic() - t0
            if device.type == "cuda":
                torch.cuda.empty_cache()
        document["stages"][name] = entry
        document["machine"]["loadavg_at_end"] = list(os.getloadavg())
        write(args.out, document)
        print(f"device_check: {name} {entry['status']}", file=sys.stderr, flush=True)
    return document


def verdict(document: Mapping[str, Any]) -> str | None:
    """Whether PEP-FedPT in bf16 met the MFU target, at its best batch (None: unknown)."""
    rows = document.get("stages", {}).get("vit", {}).get("rows", [])
    mine = [r for r in rows if (r.get("method"), r.get("precision")) == ("pep-fedpt", "bf16")]
    best = max((r["mfu"] for r in mine if r.get("mfu") is not None), default=None)
    if best is None:
        return None
    return f"PEP-FedPT bf16 MFU {best:.1%}: target >= {MFU_TARGET:.0%} " + (
        "met" if best >= MFU_TARGET else "MISSED"
    )


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="", help="default: cuda if there is one, else cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU test's run")
    parser.add_argument("--cifar100", type=Path, help=f"the {TARBALL} (default: ../shared)")
    parser.add_argument("--work", type=Path, help="unpacked data and the flwr run (default: temp)")
    parser.add_argument(
        "--out",
        type=Path,
        help="the JSON result file, rewritten per stage (default: bench/results/"
        "device-check.json; with --tiny, device-check.json in the work folder)",
    )
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help=f"a stage's time budget (stages: {', '.join(STAGES)}); repeatable",
    )
    args = parser.parse_args(argv)
    budgets = {}
    for item in args.budget:
        stage, _, seconds = item.partition("=")
        try:
            budgets[stage] = float(seconds)
        except ValueError:
            budgets[stage] = -1.0
        if stage not in STAGES or not budgets[stage] >= 0:
            parser.error(
                f"--budget {item!r}: write STAGE=SECONDS with a stage of {', '.join(STAGES)} "
                "and seconds >= 0"
            )
    args.budget = budgets
    if args.device not in ("", "cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device = {args.device!r}: use cpu, cuda or cuda:<index>")
    if args.cifar100 is None:
        args.cifar100 = next((p for p in DEFAULT_TARBALLS if p.is_file()), DEFAULT_TARBALLS[0])
    if args.device.startswith("cuda") and not __import__("torch").cuda.is_available():
        parser.error(f"--device = {args.device!r}: torch sees no CUDA device here")
    document = run(args, sys.argv[1:] if argv is None else list(argv))
    print(f"device_check: every figure is in {args.out}")
    line = verdict(document)
    if line:
        print(line)


if __name__ == "__main__":
    main()
