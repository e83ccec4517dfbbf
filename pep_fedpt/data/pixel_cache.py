"""Node-local cache of a partition's decoded, resized images.

Flower 1.42 starts a fresh ClientApp process for every message in deployment, and every
epoch of every message would decode and resize each image of the partition again (at
224 px, most of a small round's time). The expensive stage of ``ImageTransform``
(decode, RGB, resize: uint8 pixels) is done once per split and kept in a file of the
node's cache folder, keyed like the z(x) cache (data config, the exact examples and their
labels, the transform) and written atomically; a damaged file is recomputed. Only the
cheap stage (to float, normalise) runs per item, so the tensors a split yields are
bit-identical to the uncached ones.

Any transform with these two stages (``pixels``, ``finish``) and an image ``spec`` is
cached the same way: the ViT methods' ``ImageTransform`` and a CLIP method's. Data sets
already held as tensors in memory (the digits) and any data set whose images do not go
through such a transform are left as they are. A subset with labels of its own (FedMVP's
``ClassSubset``: positions in its text bank) keeps them (``targets``).
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


def _two_stage(transform: Any) -> bool:
    """Whether ``transform`` splits into a cacheable ``pixels`` stage (uint8) and a cheap
    ``finish`` stage, with the ``spec`` it produces (``ImageTransform`` does)."""
    if isinstance(transform, ImageTransform):
        return True
    return all(callable(getattr(transform, name, None)) for name in ("pixels", "finish")) and (
        hasattr(transform, "spec")
    )


def _transform_of(dataset: Any) -> Any:
    """The two-stage transform a data set's items go through (None: not an image data set
    or a transform that cannot be split)."""
    if isinstance(dataset, Labeled):
        return _transform_of(dataset.base)
    transform = getattr(dataset, "transform", None)
    return transform if _two_stage(transform) else None


def can_cache(dataset: Any) -> bool:
    """Whether the pixels of ``dataset``'s images can be cached (``with_pixel_cache``)."""
    return _transform_of(dataset) is not None


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

    def __init__(self, subset: Any, key: str, store: TensorStore) -> None:
        super().__init__(subset.dataset, subset.indices)
        transform = _transform_of(subset.dataset)
        if transform is None:
            raise ValueError(
                f"{type(subset.dataset).__name__} does not use a two-stage image transform "
                "(ImageTransform or one with pixels/finish/spec); nothing to cache"
            )
        self._finish = transform.finish
        own = getattr(subset, "targets", None)  # a ClassSubset's bank positions
        self.targets = subset_targets(subset) if own is None else np.asarray(own)
        self._targets = self.targets
        if hasattr(subset, "classes"):
            self.classes = subset.classes
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
        if not len(self.indices):
            size = _transform_of(self.dataset).spec.size
            return torch.zeros(0, 3, size, size, dtype=torch.uint8)
        loader = DataLoader(
            Subset(view, self.indices), batch_size=64, num_workers=self.loader_workers
        )
        return torch.cat([pixels for pixels, _ in loader])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.prepare()
        return self._finish(pixels[index]), int(self._targets[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        return [self[i] for i in indices]


def split_key(data: ClientData, split: str, subset: Subset) -> str:
    """What a split's pixels depend on: data config and partition (``cache_key``, which
    includes the image spec), the exact examples with their labels, and the transform."""
    examples = examples_digest(np.asarray(subset.indices), subset_targets(subset))
    spec = _transform_of(subset.dataset).spec
    return f"{data.cache_key}|{split}|{examples}|{FORMAT}:{spec}"


def examples_key(prefix: str, subset: Any) -> str:
    """What the pixels of any subset (``dataset``, ``indices``) depend on: ``prefix`` (the
    data config and the split's name), the exact examples with their data set labels, and
    the transform (its type and spec: a CLIP transform crops where ``ImageTransform``
    squashes)."""
    indices = np.asarray(subset.indices, dtype=np.int64)
    examples = examples_digest(indices, np.asarray(subset.dataset.targets)[indices])
    transform = _transform_of(subset.dataset)
    return f"{prefix}|{examples}|{FORMAT}:{type(transform).__qualname__}:{transform.spec}"


def cached_subset(subset: Any, prefix: str, directory: Path, num_workers: int) -> Any:
    """``subset`` served from the pixel cache in ``directory`` when its images can be cached
    (else as it is), its loaders in ``num_workers`` worker processes."""
    if can_cache(subset.dataset):
        subset = CachedSubset(subset, examples_key(prefix, subset), pixel_store(directory))
    subset.loader_workers = num_workers
    return subset


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
    splits: dict[str, Any] = {}  # dataclasses.replace's keyword arguments
    for name in ("train", "val", "test"):
        subset = getattr(data, name)
        if subset is not None:
            splits[name] = CachedSubset(subset, split_key(data, name, subset), store)
    return dataclasses.replace(data, **splits)
