"""Lazily loaded image data sets, transformed to what the backbone expects.

Every loader in this package returns one of these wrappers: images are read (or decoded)
only in ``__getitem__``, so a data set as large as iNaturalist never sits in memory, and
labels live in a numpy ``targets`` array so that partitioning never opens an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from pep_fedpt.data.registry import DatasetNotFoundError, ImageSpec


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image)."""


def decode_image(path: str | Path) -> Image.Image:
    """Open and fully decode one file as RGB; a file PIL cannot read is named in the error.

    PIL's own messages (``Truncated File Read``, ``image file is truncated``) name no file,
    and in a data set of 10^5 images that leaves the user nothing to fix.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() loads every pixel: truncation fails here
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three on bad files
        raise UnreadableImageError(
            f"{path}: cannot read this image ({type(exc).__name__}: {exc}); replace or "
            "delete the file (it is truncated or corrupt)"
        ) from exc


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


class ImageTransform:
    """PIL image -> (3, size, size) float tensor, normalised with the backbone's mean/std.

    With ``spec.resize_mode`` "" the whole image is resized (no crop): a 32 px CIFAR image
    becomes the 224 px input a ViT-B/16 was pre-trained on, and a grey image gets three
    identical channels. Otherwise (a CLIP) the geometry is open_clip's own eval transform
    for the spec (``open_clip.image_transform``: short side resized with the spec's
    interpolation, centre crop, RGB), used as open_clip builds it, not rewritten.

    Two stages, so that the expensive one can be cached: ``pixels`` (decode, RGB, resize:
    uint8) and ``finish`` (to float in [0, 1], normalise). ``finish(pixels(image))`` is
    bit-identical to torchvision's ``ToTensor`` + ``Normalize`` on the resized image, so for
    a CLIP to open_clip's whole transform.
    """

    def __init__(self, spec: ImageSpec) -> None:
        self.spec = spec
        self._normalize = transforms.Normalize(spec.mean, spec.std)
        # A Compose of module-level callables, so that the transform pickles (loader workers).
        if spec.resize_mode:
            self._geometry = transforms.Compose(_open_clip_geometry(spec))
        else:
            resize = transforms.Resize((spec.size, spec.size), antialias=True)
            self._geometry = transforms.Compose([_rgb, resize])

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """(3, size, size) uint8: the decoded, resized image (the cacheable stage)."""
        resized = _rgb(self._geometry(image))
        array = np.array(resized, dtype=np.uint8, copy=True)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def finish(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> float32, scaled to [0, 1] and normalised (as ToTensor does)."""
        return self._normalize(pixels.to(torch.float32).div(255))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(self.pixels(image))


def open_clip_transform(spec: ImageSpec) -> transforms.Compose:
    """open_clip's eval transform for a CLIP's ``spec`` (what ``create_model_and_transforms``
    returns as its validation transform for the same preprocessing config)."""
    import open_clip

    return open_clip.image_transform(
        spec.size,
        is_train=False,
        mean=spec.mean,
        std=spec.std,
        resize_mode=spec.resize_mode,
        interpolation=spec.interpolation,
    )


def _open_clip_geometry(spec: ImageSpec) -> list[Callable[[Image.Image], Image.Image]]:
    """The PIL stages of open_clip's transform: everything before its ``ToTensor``."""
    stages = list(open_clip_transform(spec).transforms)
    to_tensor = [i for i, t in enumerate(stages) if isinstance(t, transforms.ToTensor)]
    if len(to_tensor) != 1 or to_tensor[0] != len(stages) - 2:
        raise RuntimeError(
            f"open_clip's transform for {spec} is {stages}; expected PIL stages, ToTensor, "
            "Normalize (the layout this loader splits into its cacheable pixel stage)"
        )
    if not isinstance(stages[-1], transforms.Normalize):
        raise RuntimeError(f"open_clip's transform for {spec} does not end in Normalize")
    return stages[: to_tensor[0]]


def image_transform(spec: ImageSpec) -> ImageTransform:
    """The backbone's input transform for PIL images (``ImageTransform``)."""
    return ImageTransform(spec)


class Labeled(torch.utils.data.Dataset):
    """Any dataset of ``(PIL image, label)`` (a torchvision one), with numpy ``targets``.

    ``base`` must apply the image transform itself (torchvision's ``transform=``); this
    wrapper only fixes the label type and exposes the labels without reading images.
    """

    def __init__(self, base: Any, targets: Sequence[int] | np.ndarray) -> None:
        if len(base) != len(targets):
            raise ValueError(f"{len(base)} images but {len(targets)} labels")
        self.base = base
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image, _ = self.base[index]
        except UnreadableImageError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            # torchvision's ImageFolder lists its files in ``samples``: name the bad one.
            samples = getattr(self.base, "samples", None)
            if samples is None:
                raise
            path = samples[index][0]
            raise UnreadableImageError(
                f"{path}: cannot read this image ({type(exc).__name__}: {exc}); replace or "
                "delete the file (it is truncated or corrupt)"
            ) from exc
        return image, int(self.targets[index])


class ImageFiles(torch.utils.data.Dataset):
    """Image files listed with their labels (and optionally a domain per file)."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: Sequence[int] | np.ndarray,
        spec: ImageSpec,
        domains: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} files but {len(targets)} labels")
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.domains = None if domains is None else np.asarray(domains, dtype=np.int64)
        self.transform = image_transform(spec)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(decode_image(self.paths[index])), int(self.targets[index])


class ArrayImages(torch.utils.data.Dataset):
    """uint8 images held compactly in memory (N, H, W[, 3]); transformed one at a time."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, spec: ImageSpec) -> None:
        if len(pixels) != len(targets):
            raise ValueError(f"{len(pixels)} images but {len(targets)} labels")
        self.pixels = np.asarray(pixels, dtype=np.uint8)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = image_transform(spec)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.pixels[index])), int(self.targets[index])


def require_path(path: Path, what: str, where: str, *, is_dir: bool = True) -> Path:
    """``path`` if it exists (as a folder or a file), else an error saying what and where."""
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        kind = "folder" if is_dir else "file"
        raise DatasetNotFoundError(f"{path}: no such {kind}; expected {what} there. {where}")
    return path


def require_images(folder: Path, suffixes: Sequence[str], what: str, where: str) -> None:
    """Refuse a class folder without a single image file, naming the folder itself."""
    if not any(p.is_file() and p.suffix.lower() in suffixes for p in folder.iterdir()):
        raise DatasetNotFoundError(
            f"{folder}: no image files ({', '.join(suffixes)}) in this folder; expected "
            f"{what}. Add images or remove the folder. {where}"
        )


def data_root(data_dir: str, dataset: str, where: str) -> Path:
    """The configured ``data.data-dir``, which every file-based data set needs."""
    if not data_dir:
        raise DatasetNotFoundError(
            f"data.dataset = {dataset!r} needs data.data-dir = /absolute/path/to/it. {where}"
        )
    return Path(data_dir)
