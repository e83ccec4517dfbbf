"""A FedMVP client's training memory on a GPU, estimated on the CPU: measured at a few small
batches with random weights, fitted and extrapolated to the confs' batch.

The commands and what they showed: bench/probes/README.md.

What a client holds while it trains (``train.precision`` "auto" is bf16 on a GPU):

- resident: the frozen CLIP's parameters and buffers, the PromptFormer with its SGD
  momentum, the client's text bank: counted exactly from their tensors;
- one step's peak: every tensor storage the step creates (the batch, the activations kept
  for the backward pass, the gradients), tracked by ``bench.probes.fedmvp_step.PeakBytes``, a
  torch dispatch mode that counts the same bytes on the CPU as on CUDA (it sees storages,
  not the allocator). The step is ``bench.probes.fedmvp_step.train_step``: the prompted forward
  under the precision's autocast, CE + consistency against the cached g(x'), backward, SGD.

A step's peak is linear in the batch (activations per image, a fixed part for the bank and
the PromptFormer), so ``peak = a + b * batch`` is fitted by least squares and extrapolated.
Its error is stated two ways: the fit refitted without the largest measured batch predicts
that batch (held-out error), and the residuals. What the CPU cannot see comes on top: each
process's CUDA context (about 0.5 GiB), the caching allocator's slack and the ops whose
autocast dtype differs between CPU and CUDA; the GPU packing allows ``HEADROOM`` for the
last two. ``bench/probes/device_check.py`` measures the real figure on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.comma import comma_choices, comma_ints
from bench.probes.result_file import header, machine_sentence, need

WRITER = "bench/probes/client_memory.py"
GIB = 2**30
CUDA_CONTEXT_GIB = 0.5  # per process, not seen on the CPU (typical of CUDA 12/13 + torch)
# What the CPU cannot see, as a margin on the estimate: the caching allocator's slack and
# the ops CUDA's autocast runs in bf16 where the CPU's keeps fp32 (or the reverse).
HEADROOM = 1.25
GPUS_GIB = (40, 80)


def _need(mapping: Any, key: str, where: str) -> Any:
    return need(mapping, key, where, WRITER)


# ---------------------------------------------------------------- the fit
def fit(batches: Sequence[int], peaks: Sequence[float]) -> tuple[float, float]:
    """Least squares ``peak = a + b * batch``: (a, b). Needs two distinct batches."""
    if len(set(batches)) < 2:
        raise ValueError(f"batches {list(batches)}: a line needs two distinct batch sizes")
    n = len(batches)
    mean_x, mean_y = sum(batches) / n, sum(peaks) / n
    sxx = sum((x - mean_x) ** 2 for x in batches)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(batches, peaks, strict=True)) / sxx
    return mean_y - b * mean_x, b


def estimate(rows: Sequence[Mapping[str, Any]], target: int) -> dict[str, Any]:
    """The fitted line, its errors and the client's bytes at ``target`` (one precision's
    rows: ``batch``, ``step_peak_bytes``, ``resident_bytes``)."""
    ordered = sorted(rows, key=lambda r: r["batch"])
    batches = [int(r["batch"]) for r in ordered]
    peaks = [float(r["step_peak_bytes"]) for r in ordered]
    a, b = fit(batches, peaks)
    residual = max(abs(a + b * x - y) / y for x, y in zip(batches, peaks, strict=True))
    held_out = None
    if len(set(batches[:-1])) >= 2:
        a2, b2 = fit(batches[:-1], peaks[:-1])
        held_out = (a2 + b2 * batches[-1] - peaks[-1]) / peaks[-1]
    resident = max(int(r["resident_bytes"]) for r in ordered)
    client = resident + a + b * target
    return {
        "intercept_bytes": a,
        "per_image_bytes": b,
        "max_residual": residual,
        "held_out_error": held_out,
        "target_batch": target,
        "resident_bytes": resident,
        "client_bytes": client,
    }


def packing(client_bytes: float, gpu_gib: int) -> tuple[int, float]:
    """Clients of ``client_bytes`` (times ``HEADROOM``) that fit one GPU of ``gpu_gib`` GiB,
    each with its own CUDA context, and the ``client-resources-num-gpus`` that packs that
    many (Ray wants a fraction per ClientApp)."""
    each = client_bytes * HEADROOM + CUDA_CONTEXT_GIB * GIB
    count = int(gpu_gib * GIB // each)
    return count, (round(1 / count, 4) if count else 1.0)


# ---------------------------------------------------------------- the measurement
def measure(
    clip_model: str,
    batches: Sequence[int],
    precisions: Sequence[str],
    classes: int,
    per_class: int,
    threads: int,
) -> list[dict[str, Any]]:
    """Per precision and batch: the resident bytes and one step's peak bytes (CPU)."""
    import tempfile

    import torch

    from bench.probes.fedmvp_step import DEFAULT_ATTRIBUTES, PeakBytes, phrase_table, train_step
    from pep_fedpt.config import FedMVPConfig
    from pep_fedpt.fedmvp import FedMVPModel, build_clip, build_text_bank

    if threads:
        torch.set_num_threads(threads)
    cfg = FedMVPConfig(clip_model=clip_model, classes_per_client=classes)
    bundle = build_clip(cfg, seed=0, device="cpu")
    model = FedMVPModel(bundle, cfg, seed=0)
    table = phrase_table(DEFAULT_ATTRIBUTES, classes, per_class)
    bank = build_text_bank(bundle, list(table), table, cfg, Path(tempfile.mkdtemp()))
    params = [p for p in model.promptformer.parameters() if p.requires_grad]
    size = bundle.spec.size
    rows = []
    for precision in precisions:
        for batch in batches:
            optimizer = torch.optim.SGD(params, lr=0.003, momentum=0.9, weight_decay=1e-5)
            model.zero_grad(set_to_none=True)
            model.train()
            with PeakBytes() as tracker:
                images = torch.randn(batch, 3, size, size)
                labels = torch.arange(batch) % classes
                target = torch.randn(batch, bundle.text_dim)  # the cached g(x')
                train_step(model, optimizer, images, labels, bank, precision, target)
            tensors = [*model.state_dict(keep_vars=True).values(), bank.features]
            tensors += [s for state in optimizer.state.values() for s in state.values()]
            resident = sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))
            rows.append(
                {
                    "precision": precision,
                    "batch": batch,
                    "step_peak_bytes": tracker.peak,
                    "resident_bytes": resident,
                }
            )
            print(f"client_memory: {precision} batch {batch} measured", file=sys.stderr)
    return rows


# ---------------------------------------------------------------- the report
def render_report(document: Mapping[str, Any]) -> str:
    setting = _need(document, "setting", "the document")
    rows = _need(document, "rows", "the document")
    target = int(_need(setting, "target_batch", "setting"))
    lines = [
        f"FedMVP client training memory, CLIP {_need(setting, 'clip_model', 'setting')} "
        f"(random weights), text bank of {setting['classes']} classes x {setting['per_class']} "
        f"sentences, measured on the CPU with PeakBytes; {machine_sentence(document)}.",
        "",
        "| precision | batch | one step's peak | resident (weights, bank, optimiser) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['batch']} | {r['step_peak_bytes'] / GIB:.3f} GiB "
            f"| {r['resident_bytes'] / GIB:.3f} GiB |"
        )
    lines += [
        "",
        f"| precision | per image | fixed | held-out error | client at batch {target} "
        "| clients per 40 / 80 GB GPU | client-resources-num-gpus (40 / 80 GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision in dict.fromkeys(r["precision"] for r in rows):
        e = estimate([r for r in rows if r["precision"] == precision], target)
        held = "-" if e["held_out_error"] is None else f"{e['held_out_error']:+.2%}"
        fits = [packing(e["client_bytes"], gib) for gib in GPUS_GIB]
        lines.append(
            f"| {precision} | {e['per_image_bytes'] / 2**20:.1f} MiB "
            f"| {e['intercept_bytes'] / GIB:.2f} GiB | {held} "
            f"| {e['client_bytes'] / GIB:.1f} GiB | {fits[0][0]} / {fits[1][0]} "
            f"| {fits[0][1]:g} / {fits[1][1]:g} |"
        )
    lines += [
        "",
        f"Client = resident + fitted step peak at batch {target}. The packing gives each "
        f"client {HEADROOM:g} times that (the caching allocator's slack and autocast's "
        "CPU/CUDA differences, which the CPU cannot see) plus its CUDA context (about "
        f"{CUDA_CONTEXT_GIB} GiB). Held-out error: the line fitted without the largest "
        "measured batch, predicting it.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", default="ViT-B-16")
    parser.add_argument(
        "--batches",
        type=comma_ints(minimum=1, example="1,2,4"),
        default="1,2,4",
        help="measured batch sizes (two or more), a,b,...",
    )
    parser.add_argument(
        "--precisions", type=comma_choices(("fp32", "bf16", "fp16")), default="fp32,bf16"
    )
    parser.add_argument("--target-batch", type=int, default=128, help="the confs' batch")
    parser.add_argument("--classes", type=int, default=20, help="fedmvp.classes-per-client")
    parser.add_argument("--per-class", type=int, default=10, help="sentences per class")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--out", type=Path, help="write the rows and the fit here (JSON)")
    parser.add_argument("--report", type=Path, help="print the tables of an --out file; no run")
    args = parser.parse_args(argv)
    if args.report is not None:
        try:
            print(render_report(json.loads(args.report.read_text())), end="")
        except (OSError, ValueError) as exc:
            parser.error(f"--report {args.report}: {exc}")
        return
    batches, precisions = args.batches, args.precisions
    if len(batches) < 2:
        parser.error(f"--batches {batches}: two or more distinct sizes to fit a line, e.g. 1,2,4")
    for name in ("target_batch", "classes", "per_class"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)}: at least 1")

    from bench.probes.result_file import write

    load_start = os.getloadavg()
    rows = measure(args.clip_model, batches, precisions, args.classes, args.per_class, args.threads)
    setting = {
        "clip_model": args.clip_model,
        "batches": batches,
        "precisions": precisions,
        "target_batch": args.target_batch,
        "classes": args.classes,
        "per_class": args.per_class,
    }
    document = header(
        WRITER, sys.argv[1:] if argv is None else list(argv), setting, load_start, os.getloadavg()
    )
    document["rows"] = rows  # measured figures only: the report fits them (``estimate``)
    if args.out is not None:
        write(args.out, document)
    print(render_report(document), end="")


if __name__ == "__main__":
    main()
