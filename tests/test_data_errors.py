"""A data error names the file or folder to fix, not only what PIL or torchvision saw."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.data import SPEC, write_image, write_truncated_jpeg

from pep_fedpt.config import DataConfig
from pep_fedpt.data import DatasetNotFoundError, DatasetSplits, load_dataset
from pep_fedpt.data.images import ImageFiles, UnreadableImageError


def load(dataset: str, data_dir: Path) -> DatasetSplits:
    return load_dataset(DataConfig(dataset=dataset, data_dir=str(data_dir)), SPEC)


def image_tree(root: Path) -> None:
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            for i in range(2):
                write_image(root / split / name / f"{i}.jpg", 60 + 40 * i)


def test_a_truncated_jpeg_in_an_image_folder_is_named_by_its_path(tmp_path: Path) -> None:
    image_tree(tmp_path)
    bad = tmp_path / "train" / "dog" / "2.jpg"
    write_truncated_jpeg(bad)
    splits = load("imagefolder", tmp_path)
    splits.train[0]  # a good file still reads
    index = splits.train.base.samples.index((str(bad), 1))
    with pytest.raises(UnreadableImageError, match=rf"^{bad}: cannot read this image") as info:
        splits.train[index]
    assert "Truncated File Read" in str(info.value) or "truncated" in str(info.value)


def test_a_truncated_jpeg_listed_as_a_file_is_named_by_its_path(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    write_image(good, 100)
    write_truncated_jpeg(bad)
    files = ImageFiles([good, bad], [0, 1], SPEC)
    assert files[0][1] == 0
    with pytest.raises(UnreadableImageError, match=rf"^{bad}: cannot read this image"):
        files[1]
    # Not an image at all: the same error, naming the file.
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(UnreadableImageError, match=rf"^{tmp_path / 'text.jpg'}: cannot read"):
        ImageFiles([tmp_path / "text.jpg"], [0], SPEC)[0]


def test_an_empty_class_folder_is_named_by_its_path(tmp_path: Path) -> None:
    image_tree(tmp_path)
    empty = tmp_path / "train" / "cow"
    empty.mkdir()
    (tmp_path / "test" / "cow").mkdir()
    write_image(tmp_path / "test" / "cow" / "0.jpg", 30)
    with pytest.raises(DatasetNotFoundError, match=rf"^{empty}: no image files"):
        load("imagefolder", tmp_path)
    # The same in the test split.
    write_image(empty / "0.jpg", 30)
    (tmp_path / "test" / "cow" / "0.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=rf"^{tmp_path / 'test' / 'cow'}: no image"):
        load("imagefolder", tmp_path)


def test_an_empty_tinyimagenet_class_folder_is_named_by_its_path(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    root.mkdir()
    (root / "wnids.txt").write_text("n01\nn02\n")
    write_image(root / "train" / "n01" / "images" / "n01_0.JPEG", 40)
    folder = root / "train" / "n02" / "images"
    folder.mkdir(parents=True)
    write_image(root / "val" / "images" / "val_0.JPEG", 100)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t8\t8\n")
    with pytest.raises(DatasetNotFoundError, match=rf"^{folder}: no image files"):
        load("tinyimagenet", root)
