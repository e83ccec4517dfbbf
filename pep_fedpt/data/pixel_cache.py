"""Node-local cache of a partition's decoded, resized images.

Flower 1.42 starts a fresh ClientApp process for every message in deployment, and every
epoch of every message would decode and resize each image of the partition again (at
224 px, most of a small round's time). The expensive stage of ``ImageTransform``
(decode, RGB, resize: uint8 pixels) is done once per split and kept in a file of the
node's cache folder, keyed like the z(x) cache (data config, the exact examples and their
labels, the transform) and written atomically; a damaged file is recomputed. Only the
cheap stage (to float, normalise) runs per item, so the tensors a split yields are
bit-identical to the uncached ones.

Data sets already held as tensors in memory (the digits) and any data set whose images
do not go through ``ImageTransform`` are left as they are.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pep_fedpt.config import DataConfig
from pep_fedpt.data.client_data import ClientData, subset_targets
from pep_fedpt.data.images import ImageTransform, Labeled
from pep_fedpt.feature_cache import TensorStore, examples_digest

FORMAT = "px1"  # bump when the stored layout or ImageTransform's ``pixels`` changes


@functools.lru_cache(maxsize=8)
def pixel_store(directory: Path) -> TensorStore:
    """One store per cache folder and process; the splits hold their pixels, not the store."""
    return TensorStore(directory, FORMAT, torch.uint8, keep_in_memory=False)


def _transform_of(dataset: Any) -> ImageTransform | None:
    """The ``ImageTransform`` a data set's items go through (None: not an image data set)."""
    if isinstance(dataset, Labeled):
        return _transform_of(dataset.base)
    transform = getattr(dataset, "transform", None)
    return transform if isinstance(transform, ImageTransform) else None


def _pixel_view(dataset: Any) -> Any:
    """A shallow copy of ``dataset`` whose items are uint8 pixels (the cacheable stage)."""
    view = copy.copy(dataset)
    if isinstance(dataset, Labeled):
        view.base = _pixel_view(dataset.base)
    else:
        view.transform = dataset.transform.pixels
    return view


class CachedSubset(Subset):
    """A ``Subset`` of an image data set whose decoded, resized pixels come from the node's
    cache (or are decoded once and written there). ``dataset`` and ``indices`` stay those
    of the subset, so labels, keys and counts read as before."""

    def __init__(self, subset: Subset, key: str, store: TensorStore) -> None:
        super().__init__(subset.dataset, subset.indices)
        transform = _transform_of(subset.dataset)
        if transform is None:
            raise ValueError(
                f"{type(subset.dataset).__name__} does not use ImageTransform; nothing to cache"
            )
        self._finish = transform.finish
        self._targets = subset_targets(subset)
        self.key = key
        self.store = store
        self.loader_workers = 0  # worker processes of its loaders (and of the first decode)
        self._pixels: torch.Tensor | None = None

    def prepare(self) -> torch.Tensor:
        """The split's (N, 3, S, S) uint8 pixels: held, else the cache file, else decoded.

        Called before a DataLoader starts worker processes, so that they inherit the pixels
        rather than each decoding the split."""
        if self._pixels is None:
            self._pixels = self.store.get(self.key, self._decode)
        return self._pixels

    def _decode(self) -> torch.Tensor:
        view = _pixel_view(self.dataset)
        if not self.indices:
            size = _transform_of(self.dataset).spec.size  # type: ignore[union-attr]
            return torch.zeros(0, 3, size, size, dtype=torch.uint8)
        loader = DataLoader(
            Subset(view, self.indices), batch_size=64, num_workers=self.loader_workers
        )
        return torch.cat([pixels for pixels, _ in loader])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        pixels = self.prepare()
        return self._finish(pixels[index]), int(self._targets[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:  # type: ignore[override]
        return [self[i] for i in indices]


def split_key(data: ClientData, split: str, subset: Subset) -> str:
    """What a split's pixels depend on: data config and partition (``cache_key``, which
    includes the image spec), the exact examples with their labels, and the transform."""
    examples = examples_digest(np.asarray(subset.indices), subset_targets(subset))
    spec = _transform_of(subset.dataset).spec  # type: ignore[union-attr]
    return f"{data.cache_key}|{split}|{examples}|{FORMAT}:{spec}"


def node_splits(data: ClientData, cfg: DataConfig, directory: Path) -> ClientData:
    """``data`` as a node reads it: from the pixel cache in ``directory`` (with
    ``data.pixel-cache``), its loaders in ``data.num-workers`` worker processes."""
    if cfg.pixel_cache:
        data = with_pixel_cache(data, directory)
    for name in ("train", "val", "test"):
        subset = getattr(data, name)
        if subset is not None:
            subset.loader_workers = cfg.num_workers
    return data


def with_pixel_cache(data: ClientData, directory: Path) -> ClientData:
    """``data`` with its train, val and test splits served from the node's pixel cache in
    ``directory`` (unchanged when its images do not go through ``ImageTransform``)."""
    if _transform_of(data.train.dataset) is None:
        return data
    store = pixel_store(directory)
    splits = {}
    for name in ("train", "val", "test"):
        subset = getattr(data, name)
        if subset is not None:
            splits[name] = CachedSubset(subset, split_key(data, name, subset), store)
    return dataclasses.replace(data, **splits)
