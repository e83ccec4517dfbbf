"""The CoOp data sets of the base->new protocol against fake trees in CoOp's layout: a
split_zhou_<Name>.json beside the images (FGVCAircraft: its variant lists)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.data import SPEC, write_image

from pep_fedpt.config import DataConfig
from pep_fedpt.data import DatasetNotFoundError, dataset_names, load_dataset
from pep_fedpt.data.coop import COOP_SETS


def load(dataset: str, data_dir: Path | str = ""):
    return load_dataset(DataConfig(dataset=dataset, data_dir=str(data_dir)), SPEC)


def fake_coop(root: Path, name: str) -> None:
    """Classes 'face' (0) and 'leopard' (1): train 2 + 1 images, test 1 + 1."""
    coop = COOP_SETS[name]
    images = root / coop.images if coop.images else root
    split = {"train": [], "val": [], "test": []}
    for part, per_class in (("train", (2, 1)), ("test", (1, 1))):
        for label, (cls, count) in enumerate(zip(("face", "leopard"), per_class, strict=True)):
            for i in range(count):
                relative = f"{cls}/{part}_{i}.jpg"
                write_image(images / relative, 20 * label + 10 * i)
                split[part].append([relative, label, cls])
    (root / coop.split_file).write_text(json.dumps(split))


@pytest.mark.parametrize("name", sorted(n for n, s in COOP_SETS.items() if s.split_file))
def test_each_coop_set_reads_its_split_file(name: str, tmp_path: Path) -> None:
    assert name in dataset_names()
    fake_coop(tmp_path, name)
    splits = load(name, tmp_path)
    assert splits.classes == ["face", "leopard"]
    assert splits.train.targets.tolist() == [0, 0, 1]
    assert splits.test is not None and splits.test.targets.tolist() == [0, 1]
    image, label = splits.train[2]
    assert image.shape == (3, 16, 16) and label == 1


def test_fgvc_aircraft_reads_its_variant_lists(tmp_path: Path) -> None:
    (tmp_path / "variants.txt").write_text("707-320\nCessna 172\n")
    for split, lines in (("train", ["1 707-320", "2 Cessna 172"]), ("test", ["3 Cessna 172"])):
        (tmp_path / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    for i in (1, 2, 3):
        write_image(tmp_path / "images" / f"{i}.jpg", 10 * i)
    splits = load("fgvc_aircraft", tmp_path)
    assert splits.classes == ["707-320", "Cessna 172"]  # a variant name may hold a space
    assert splits.train.targets.tolist() == [0, 1]
    assert splits.test is not None and splits.test.targets.tolist() == [1]
    (tmp_path / "images_variant_test.txt").write_text("4 Boeing 999\n")
    with pytest.raises(DatasetNotFoundError, match=r"images_variant_test.txt:1: '4 Boeing 999'"):
        load("fgvc_aircraft", tmp_path)


def test_missing_and_malformed_say_where_and_what(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=r"split_zhou_Caltech101.json: no such file.*CoOp"
    ):
        load("caltech101", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"needs data\.data-dir"):
        load("dtd")
    fake_coop(tmp_path, "dtd")
    (tmp_path / "split_zhou_DescribableTextures.json").write_text('{"train": [["a.jpg", 0]]}')
    with pytest.raises(DatasetNotFoundError, match=r"train entry \['a.jpg', 0\] is not"):
        load("dtd", tmp_path)
    split = {"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]], "test": [["c.jpg", 0, "x"]]}
    (tmp_path / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    with pytest.raises(DatasetNotFoundError, match=r"label 0 is both 'x' and 'y'"):
        load("dtd", tmp_path)
