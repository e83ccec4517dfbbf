"""Dataset registry: a name maps to a loader that returns the train and central test splits.

Loaders return datasets whose items are ``(image_tensor, label)`` with images already at
the backbone's input size and normalisation (``ImageSpec``), and which expose their
labels as ``targets`` so that partitioning never has to read an image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from pep_fedpt.config import ConfigError, DataConfig


class DatasetNotFoundError(FileNotFoundError):
    """The configured data set is not on disk where the config says (or is malformed)."""


class LabeledDataset(Protocol):
    targets: np.ndarray  # labels, so that partitioning never reads an image

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


def as_dataset(data: LabeledDataset) -> Dataset[Any]:
    """``data`` as torch's ``Dataset`` (what ``Subset`` and ``DataLoader`` take): every
    loader here returns one; the protocol names only what partitioning reads."""
    return cast("Dataset[Any]", data)


def domains_of(data: LabeledDataset) -> np.ndarray:
    """The domain index of every example of a multi-domain data set (DomainBed, DomainNet)."""
    domains = getattr(data, "domains", None)
    if domains is None:
        raise ValueError(
            f"{type(data).__name__} has no per-example domains: the domain protocol needs a "
            "multi-domain data set (the DomainBed sets or DomainNet)"
        )
    return np.asarray(domains)


@dataclass(frozen=True)
class ImageSpec:
    """What the backbone expects: square input size and per-channel normalisation.

    ``resize_mode`` "" (the ViT backbones): the whole image resized to size x size. A CLIP
    sets open_clip's ``resize_mode`` ("shortest": the short side to ``size``, then a centre
    crop) and ``interpolation`` ("bicubic"): its images go through open_clip's own eval
    transform, as the weights were trained.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = ""
    interpolation: str = ""


@dataclass
class DatasetSplits:
    """A data set's pool for clients and its central test split (None: carve one)."""

    train: LabeledDataset
    test: LabeledDataset | None
    classes: list[str]


Loader = Callable[[DataConfig, ImageSpec], DatasetSplits]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def decorate(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return decorate


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(_LOADERS))


def load_dataset(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    if cfg.dataset not in _LOADERS:
        raise ConfigError(
            f"data.dataset = {cfg.dataset!r} is not known; use one of: {', '.join(dataset_names())}"
        )
    return _LOADERS[cfg.dataset](cfg, spec)


class TensorImages(torch.utils.data.Dataset):
    """Small data sets held in memory as one normalised tensor."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])
