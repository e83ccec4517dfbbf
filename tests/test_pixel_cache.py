"""The node-local cache of decoded, resized images and ``data.num-workers``: a cached split
yields bit-identical tensors, a fresh process loads them from disk without opening an
image, another key misses, a damaged file is recomputed, and two loader workers give the
same batches as none."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pep_fedpt.data.images as images_module
from pep_fedpt.config import ConfigError, DataConfig, RunConfig
from pep_fedpt.data import ImageSpec, load_client_data
from pep_fedpt.data.client_data import ClientData
from pep_fedpt.data.pixel_cache import (
    CachedSubset,
    node_splits,
    pixel_store,
    split_key,
    with_pixel_cache,
)
from pep_fedpt.engine import compute_query_features, evaluate, pick_device, unit_weights
from pep_fedpt.feature_cache import TensorStore
from pep_fedpt.methods import client_for
from pep_fedpt.methods.common import build_model
from pep_fedpt.models import create_backbone

SPEC = ImageSpec(size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def write_folder(root: Path, per_class: int = 12, classes: int = 3) -> None:
    """Random-noise JPEGs of odd sizes (so the resize really interpolates)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            folder = root / "train" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (21 + i, 27, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "images")
    return tmp_path / "images"


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    pixel_store.cache_clear()
    client_for.cache_clear()
    yield
    pixel_store.cache_clear()
    client_for.cache_clear()


def client_data(folder: Path, **data: object) -> ClientData:
    cfg = DataConfig(dataset="imagefolder", data_dir=str(folder), min_partition_size=1, **data)  # type: ignore[arg-type]  # the test's options pass through as object; DataConfig checks each
    return load_client_data(cfg, SPEC, seed=0, partition_id=0, num_partitions=2)


class OpenCounter:
    """Counts real image decodes (PIL's ``Image.open`` as the loaders call it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = Image.open

        def counted(*args: object, **kwargs: object) -> Image.Image:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]  # a spy passing any call through to the function it wraps

        monkeypatch.setattr(Image, "open", counted)
        monkeypatch.setattr(images_module.Image, "open", counted)


def items(dataset: torch.utils.data.Dataset) -> list[tuple[torch.Tensor, int]]:
    return [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one


def test_a_cached_split_yields_the_same_tensors_bit_for_bit(folder: Path, tmp_path: Path) -> None:
    plain = client_data(folder, val_fraction=0.25)
    cached = with_pixel_cache(plain, tmp_path / "cache")
    for name in ("train", "val", "test"):
        split = cached.split(name)
        assert isinstance(split, CachedSubset) and len(split) > 0
        assert split.indices == plain.split(name).indices
        for (a, ya), (b, yb) in zip(items(plain.split(name)), items(split), strict=True):
            assert torch.equal(a, b) and a.dtype == torch.float32 and ya == yb


def test_a_fresh_process_loads_the_pixels_from_disk_without_decoding(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = with_pixel_cache(client_data(folder), tmp_path / "cache")
    expected = items(first.train)
    assert pixel_store(tmp_path / "cache").computed == 1
    pixel_store.cache_clear()  # a new process: nothing in memory
    opens = OpenCounter(monkeypatch)
    again = with_pixel_cache(client_data(folder), tmp_path / "cache")
    got = items(again.train)
    assert opens.calls == 0
    store = pixel_store(tmp_path / "cache")
    assert (store.computed, store.loaded) == (0, 1)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(expected, got, strict=True))


def test_other_examples_or_another_image_size_miss_the_cache(folder: Path, tmp_path: Path) -> None:
    data = client_data(folder)
    other_split = client_data(folder, test_fraction=0.5)
    keys = {
        split_key(data, "train", data.train),
        split_key(other_split, "train", other_split.train),
    }
    bigger = load_client_data(
        DataConfig(dataset="imagefolder", data_dir=str(folder), min_partition_size=1),
        dataclasses.replace(SPEC, size=24),
        seed=0,
        partition_id=0,
        num_partitions=2,
    )
    keys.add(split_key(bigger, "train", bigger.train))
    keys.add(split_key(data, "test", data.test))
    assert len(keys) == 4
    cached = with_pixel_cache(bigger, tmp_path / "cache")
    assert cached.train[0][0].shape == (3, 24, 24)


def test_a_damaged_cache_file_is_recomputed_and_replaced(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    split = with_pixel_cache(client_data(folder), directory).train
    assert isinstance(split, CachedSubset)
    expected = split.prepare().clone()
    path = split.store.path(split.key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn write
    pixel_store.cache_clear()
    again = with_pixel_cache(client_data(folder), directory).train
    assert isinstance(again, CachedSubset)
    with caplog.at_level(logging.WARNING):
        pixels = again.prepare()
    assert "unusable" in caplog.text and str(path) in caplog.text
    assert torch.equal(pixels, expected)
    assert pixel_store(directory).computed == 1
    reread = TensorStore(directory, "px1", torch.uint8).get(split.key, lambda: torch.zeros(0))
    assert torch.equal(reread, expected)  # the file was rewritten whole


def test_a_file_of_another_dtype_is_not_used(tmp_path: Path) -> None:
    store = TensorStore(tmp_path, "px1", torch.uint8)
    TensorStore(tmp_path, "px1", torch.float32).get("k", lambda: torch.ones(2))
    assert torch.equal(store.get("k", lambda: torch.full((2,), 7)), torch.full((2,), 7).byte())
    assert store.computed == 1


def test_in_memory_digits_are_left_as_they_are(tmp_path: Path) -> None:
    data = load_client_data(DataConfig(), SPEC, seed=0, partition_id=0, num_partitions=2)
    assert with_pixel_cache(data, tmp_path) is data


def test_two_loader_workers_give_what_none_give(folder: Path, tmp_path: Path) -> None:
    cfg = RunConfig.from_flat(
        {
            "model.pretrained": "random",
            "model.img-size": 16,
            "model.patch-size": 4,
            "model.embed-dim": 32,
            "model.depth": 2,
            "model.num-heads": 2,
            "method": "fedavg-vpt-shallow",
        }
    )
    device = pick_device()
    model = build_model(create_backbone(cfg.model, cfg.seed), cfg, 3).to(device)
    results = []
    for workers, pixel_cache in ((0, False), (2, False), (2, True)):
        data_cfg = DataConfig(
            dataset="imagefolder",
            data_dir=str(folder),
            min_partition_size=1,
            num_workers=workers,
            pixel_cache=pixel_cache,
        )
        data = node_splits(
            load_client_data(data_cfg, SPEC, 0, 0, 2), data_cfg, tmp_path / f"c{workers}"
        )
        assert data.train.loader_workers == workers  # type: ignore[attr-defined]  # node_splits sets loader_workers on the split, a Subset, which does not declare it
        z = compute_query_features(model, data.train, device, batch_size=5)
        result = evaluate(model, data.test, torch.zeros(len(data.test), 0), unit_weights, device)
        results.append((z, result))
    (z0, r0), *others = results
    for z, r in others:
        assert torch.equal(z, z0) and r == r0
    assert r0.total > 0 and z0.shape[0] == len(load_client_data(data_cfg, SPEC, 0, 0, 2).train)


def test_num_workers_and_pixel_cache_do_not_change_the_cache_keys() -> None:
    assert repr(DataConfig(num_workers=4, pixel_cache=False)) == repr(DataConfig())
    flat = RunConfig(data=DataConfig(num_workers=3)).to_flat()
    assert flat["data.num-workers"] == 3 and flat["data.pixel-cache"] is True
    assert RunConfig.from_flat(flat).data.num_workers == 3


def test_negative_num_workers_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"data.num-workers = -1 must be >= 0"):
        RunConfig.from_flat({"data.num-workers": -1})


def test_the_partitioning_is_drawn_once_per_node_and_read_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cold process reads its partition from the node's cache instead of importing
    flwr-datasets and drawing it; a damaged file is drawn again."""
    import pep_fedpt.data.client_data as client_data_module

    cfg = DataConfig()
    drawn = [client_data_module._partitions(cfg, SPEC, 3, 4)]  # no cache: drawn
    calls = {"n": 0}
    real = client_data_module.partition_indices

    def counted(*args: object, **kwargs: object) -> list[np.ndarray]:
        calls["n"] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]  # a spy passing any call through to the function it wraps

    monkeypatch.setattr(client_data_module, "partition_indices", counted)
    for _ in range(2):  # two fresh processes on one node
        client_data_module._partitions.cache_clear()
        drawn.append(client_data_module._partitions(cfg, SPEC, 3, 4, tmp_path))
    assert calls["n"] == 1
    for other in drawn[1:]:
        assert len(other) == 4
        assert all(np.array_equal(a, b) for a, b in zip(drawn[0], other, strict=True))
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == ".pt"]
    path.write_bytes(b"not a torch file")
    client_data_module._partitions.cache_clear()
    with caplog.at_level(logging.WARNING):
        again = client_data_module._partitions(cfg, SPEC, 3, 4, tmp_path)
    assert calls["n"] == 2 and "unusable" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(drawn[0], again, strict=True))
    client_data_module._partitions.cache_clear()
    other_seed = client_data_module._partitions(cfg, SPEC, 4, 4, tmp_path)
    assert calls["n"] == 3 and not all(
        np.array_equal(a, b) for a, b in zip(drawn[0], other_seed, strict=True)
    )
    client_data_module._partitions.cache_clear()
