"""CIFAR-10/100 (torchvision's files or JPEG folders), iNaturalist and ImageFolder trees,
loaded by torchvision.

torchvision owns the formats and the downloads; this module only checks that the data
is where ``data.data-dir`` says before torchvision is asked (so a missing set fails
with a message naming the path and where to get it) and wraps the result lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision import datasets

from pep_fedpt.config import DataConfig
from pep_fedpt.data.images import (
    Labeled,
    data_root,
    decode_image,
    image_transform,
    require_images,
    require_path,
)
from pep_fedpt.data.registry import DatasetNotFoundError, DatasetSplits, ImageSpec, register_dataset

DEFAULT_DOWNLOAD_ROOT = Path.home() / ".cache" / "pep-fedpt" / "data"

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# CIFAR-100's fine label names in the official label order (0-99): the order of
# torchvision's CIFAR100.classes, which is alphabetical, so sorted folder names give it.
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)


def _download_root(cfg: DataConfig) -> Path:
    """data-dir, or the per-user cache when downloading without one."""
    if cfg.data_dir:
        return Path(cfg.data_dir)
    if cfg.download:
        return DEFAULT_DOWNLOAD_ROOT
    raise DatasetNotFoundError(
        f"data.dataset = {cfg.dataset!r} needs data.data-dir = /absolute/path (a folder that "
        "holds it), or data.download = true to let torchvision fetch it there"
    )


def _cifar(cfg: DataConfig, spec: ImageSpec, cls: type, folder: str, url: str) -> DatasetSplits:
    root = _download_root(cfg)
    if not cfg.download:
        require_path(
            root / folder,
            f"torchvision's unpacked {folder}/ (from {url})",
            f"Unpack the archive into {root}, or set data.download = true where the "
            "network allows it.",
        )
    transform = image_transform(spec)
    try:
        train = cls(str(root), train=True, transform=transform, download=cfg.download)
        test = cls(str(root), train=False, transform=transform, download=cfg.download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetNotFoundError(
            f"{root / folder}: torchvision cannot read it ({exc}); delete it and unpack {url} "
            "again, or set data.download = true"
        ) from exc
    return DatasetSplits(
        train=Labeled(train, train.targets),
        test=Labeled(test, test.targets),
        classes=list(train.classes),
    )


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """CIFAR-10 in torchvision's format (``<data-dir>/cifar-10-batches-py``)."""
    return _cifar(
        cfg,
        spec,
        datasets.CIFAR10,
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    )


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """CIFAR-100 (fine labels) in torchvision's format (``<data-dir>/cifar-100-python``)."""
    return _cifar(
        cfg,
        spec,
        datasets.CIFAR100,
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    )


IMG_EXTENSIONS = tuple(datasets.folder.IMG_EXTENSIONS)


def _image_folder(root: Path, transform: Callable[[Image.Image], torch.Tensor]) -> Any:
    """torchvision's ImageFolder whose loader names the file it cannot read."""
    return datasets.ImageFolder(str(root), transform=transform, loader=decode_image)


def image_folder_splits(
    root: Path, spec: ImageSpec, where: str, expected_classes: tuple[str, ...] | None = None
) -> DatasetSplits:
    """``root/train/<class>/*`` and, if present, ``root/test/<class>/*`` (or ``val``)."""
    require_path(root / "train", "one sub-folder of images per class (ImageFolder)", where)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(
            f"{root / 'train'}: no class folders; expected train/<class>/<image>. {where}"
        )
    if expected_classes is not None and tuple(classes) != tuple(sorted(expected_classes)):
        # Name the difference: a full list of 100 classes would bury it.
        missing = sorted(set(expected_classes) - set(classes))
        extra = sorted(set(classes) - set(expected_classes))
        raise DatasetNotFoundError(
            f"{root / 'train'} holds {len(classes)} classes; expected the "
            f"{len(expected_classes)} classes {sorted(expected_classes)[:3]}...; missing "
            f"{missing or 'none'}, unexpected {extra or 'none'}. {where}"
        )
    for name in classes:
        require_images(
            root / "train" / name, IMG_EXTENSIONS, f"the images of class {name!r}", where
        )
    transform = image_transform(spec)
    train = _image_folder(root / "train", transform)
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    test = None
    if test_dir is not None:
        test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
        if test_classes != classes:
            raise DatasetNotFoundError(
                f"{test_dir} holds classes {test_classes}, but {root / 'train'} holds "
                f"{classes}: both splits need the same class folders. {where}"
            )
        for name in test_classes:
            require_images(test_dir / name, IMG_EXTENSIONS, f"the images of class {name!r}", where)
        folder = _image_folder(test_dir, transform)
        test = Labeled(folder, folder.targets)
    return DatasetSplits(train=Labeled(train, train.targets), test=test, classes=classes)


@register_dataset("cifar10-folder")
def load_cifar10_folder(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """CIFAR-10 as JPEG files: ``<data-dir>/{train,test}/<class>/NNNN.jpg``."""
    where = (
        "Unpack cifar10-jpeg.tar.gz (tar -xzf cifar10-jpeg.tar.gz -C DIR) and set "
        "data.data-dir = DIR/cifar10; or use data.dataset = 'cifar10' with torchvision."
    )
    root = data_root(cfg.data_dir, cfg.dataset, where)
    return image_folder_splits(root, spec, where, CIFAR10_CLASSES)


@register_dataset("cifar100-folder")
def load_cifar100_folder(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """CIFAR-100 (fine labels) as JPEG files: ``<data-dir>/{train,test}/<fine-class>/*.jpg``;
    label c is the c-th fine class name in sorted order, the official numbering."""
    where = (
        "Unpack cifar100-images.tar.gz (tar -xzf cifar100-images.tar.gz -C DIR) and set "
        "data.data-dir = DIR/cifar100; or use data.dataset = 'cifar100' with torchvision."
    )
    root = data_root(cfg.data_dir, cfg.dataset, where)
    return image_folder_splits(root, spec, where, CIFAR100_CLASSES)


@register_dataset("imagefolder")
@register_dataset("inaturalist-folder")
def load_image_folder(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """Any ImageFolder tree, e.g. an iNaturalist export: train/<class>/*, test|val/<class>/*."""
    where = (
        "Lay the images out as <data-dir>/train/<class>/<image> (and optionally "
        "<data-dir>/test/<class>/<image> or val/), one folder per class."
    )
    return image_folder_splits(data_root(cfg.data_dir, cfg.dataset, where), spec, where)


def _inaturalist(root: Path, version: str, spec: ImageSpec, download: bool) -> Labeled:
    if not download:
        require_path(
            root / version,
            f"the unpacked iNaturalist {version} archive (one folder per category)",
            "Get it from https://github.com/visipedia/inat_comp or set data.download = true "
            "where the network allows it (torchvision's INaturalist).",
        )
    try:
        base = datasets.INaturalist(
            str(root),
            version=version,
            target_type="full",
            transform=image_transform(spec),
            download=download,
        )
    except RuntimeError as exc:  # a category folder not named as in the archive
        raise DatasetNotFoundError(
            f"{root / version}: not torchvision's iNaturalist {version} layout ({exc}). For "
            "any other tree of class folders use data.dataset = 'inaturalist-folder'."
        ) from exc
    return Labeled(base, [category for category, _ in base.index])


@register_dataset("inaturalist")
def load_inaturalist(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """torchvision's INaturalist; the 2021 train sets are tested on ``2021_valid``."""
    root = _download_root(cfg)
    version = cfg.inaturalist_version
    train = _inaturalist(root, version, spec, cfg.download)
    test = None
    if version in ("2021_train", "2021_train_mini"):
        test = _inaturalist(root, "2021_valid", spec, cfg.download)
        if len(test.base.all_categories) != len(train.base.all_categories):
            raise DatasetNotFoundError(
                f"{root / '2021_valid'} has {len(test.base.all_categories)} categories, "
                f"{root / version} has {len(train.base.all_categories)}: re-download one"
            )
    return DatasetSplits(train=train, test=test, classes=list(train.base.all_categories))
