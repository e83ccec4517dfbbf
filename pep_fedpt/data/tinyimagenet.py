"""TinyImageNet-200 in its published layout (no loader for it ships with torchvision).

``<data-dir>/wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` and
``val/val_annotations.txt`` (tab-separated: file, wnid, box). The labelled ``val`` split
is the central test split; the unlabelled ``test`` split is not used.
"""

from __future__ import annotations

from pathlib import Path

from pep_fedpt.config import DataConfig
from pep_fedpt.data.images import ImageFiles, data_root, require_images, require_path
from pep_fedpt.data.registry import DatasetNotFoundError, DatasetSplits, ImageSpec, register_dataset

WHERE = (
    "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and set "
    "data.data-dir = /path/to/tiny-imagenet-200."
)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def read_val_annotations(path: Path, wnid_index: dict[str, int]) -> list[tuple[str, int]]:
    """(file name, label) per line of ``val_annotations.txt``."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in wnid_index:
            raise DatasetNotFoundError(
                f"{path}:{number}: {line!r} is not '<file>\\t<wnid>\\t...' with a wnid "
                f"from wnids.txt. {WHERE}"
            )
        pairs.append((fields[0], wnid_index[fields[1]]))
    return pairs


@register_dataset("tinyimagenet")
def load_tinyimagenet(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    root = data_root(cfg.data_dir, cfg.dataset, WHERE)
    require_path(root, "TinyImageNet-200 (wnids.txt, train/, val/)", WHERE)
    wnids_file = require_path(
        root / "wnids.txt", "200 WordNet ids, one a line", WHERE, is_dir=False
    )
    wnids = sorted(w.strip() for w in wnids_file.read_text().splitlines() if w.strip())
    index = {wnid: label for label, wnid in enumerate(wnids)}
    paths, labels = [], []
    for wnid in wnids:
        folder = require_path(
            root / "train" / wnid / "images", f"the training images of {wnid}", WHERE
        )
        require_images(folder, IMAGE_SUFFIXES, f"the training images of {wnid}", WHERE)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [index[wnid]] * len(files)
    val_images = require_path(root / "val" / "images", "the validation images", WHERE)
    annotations = require_path(
        root / "val" / "val_annotations.txt", "the validation labels", WHERE, is_dir=False
    )
    val = read_val_annotations(annotations, index)
    return DatasetSplits(
        train=ImageFiles(paths, labels, spec),
        test=ImageFiles([val_images / name for name, _ in val], [y for _, y in val], spec),
        classes=wnids,
    )
