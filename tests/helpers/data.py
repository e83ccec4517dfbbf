"""Image data for the tests: fake trees in the published layouts, and the shared archive.

The shared CIFAR-10 JPEG archive lies beside the repository (``../shared``); tests that
need it skip when it is absent. Nothing from there is copied into the project.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from pep_fedpt.data import ImageSpec

SHARED = Path(__file__).resolve().parents[3] / "shared"
CIFAR10_ARCHIVE = SHARED / "datasets" / "cifar10-jpeg.tar.gz"

# 16 px, normalised to [-1, 1]: a uniform grey image has a value known by hand.
SPEC = ImageSpec(size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def write_image(path: Path, value: int, size: int = 8, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, value, value)).save(path)


def fake_domainnet(root: Path) -> None:
    """Two domains; 'bird' (label 24) and 'zebra' (344) are in the 10-class subset."""
    classes = {"aircraft_carrier": 1, "bird": 24, "zebra": 344}
    for d, domain in enumerate(("clipart", "sketch")):
        for split, per_class in (("train", 2), ("test", 1)):
            lines = []
            for name, label in classes.items():
                for i in range(per_class):
                    relative = f"{domain}/{name}/{domain}_{split}_{i}.jpg"
                    write_image(root / relative, 50 * d + 10 * i)
                    lines.append(f"{relative} {label}")
            (root / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")


def fake_domain_tree(root: Path, domains: tuple[str, ...], classes: tuple[str, ...]) -> None:
    """A DomainBed layout <domain>/<class>/<image>: domain d, class c has c + 1 images of
    grey 40 d + 10 i (sorted by name), and a stray text file that is not an image."""
    for d, domain in enumerate(domains):
        for c, name in enumerate(classes):
            for i in range(c + 1):
                write_image(root / domain / name / f"img_{i}.jpg", 40 * d + 10 * i)
        (root / domain / classes[0] / "notes.txt").write_text("not an image")


def write_truncated_jpeg(path: Path) -> None:
    """The first half of a valid JPEG: PIL opens it and fails mid-decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def fake_image_tree(root: Path, classes: int = 10, train: int = 20, test: int = 4) -> None:
    """An ImageFolder tree: ``{train,test}/class<c>/<i>.png``, 8 px greys."""
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            for i in range(count):
                write_image(root / split / f"class{c}" / f"{i}.png", (25 * c + 7 * i) % 256)
