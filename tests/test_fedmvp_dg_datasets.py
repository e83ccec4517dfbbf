"""The DomainBed loaders (PACS, OfficeHome, VLCS, TerraIncognita) against fake trees in
their published layout: <domain>/<class>/<image>."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import SPEC, fake_domain_tree, write_image

from pep_fedpt.config import ConfigError, DataConfig
from pep_fedpt.data import DatasetNotFoundError, dataset_names, load_dataset
from pep_fedpt.data.client_data import load_client_data
from pep_fedpt.data.domainbed import DOMAIN_SETS


def load(dataset: str, data_dir: Path | str = "", **kwargs: object):
    return load_dataset(DataConfig(dataset=dataset, data_dir=str(data_dir), **kwargs), SPEC)


def check_item(item: tuple[torch.Tensor, int], value: int, label: int) -> None:
    """A uniform image of grey ``value`` comes out at 16 px, normalised with SPEC."""
    image, y = item
    assert image.shape == (3, 16, 16) and y == label
    assert torch.allclose(image, torch.full_like(image, (value / 255 - 0.5) / 0.5), atol=0.02)


@pytest.mark.parametrize("name", sorted(DOMAIN_SETS))
def test_each_set_reads_its_published_layout_with_domains(name: str, tmp_path: Path) -> None:
    assert name in dataset_names()
    domains = DOMAIN_SETS[name].domains
    fake_domain_tree(tmp_path, domains, ("zebra", "dog"))
    splits = load(name, tmp_path)
    assert splits.classes == ["dog", "zebra"]  # sorted class names
    assert splits.test is None  # no official split: the central test is carved
    # per domain: dog (label 0) 2 images, zebra (label 1) 1 image; the .txt is skipped
    assert splits.train.targets.tolist() == [0, 0, 1] * len(domains)
    assert splits.train.domains.tolist() == np.repeat(np.arange(len(domains)), 3).tolist()
    check_item(splits.train[3 + 1], 40 + 10, 0)  # domain 1, dog, img_1


def test_some_domains_and_leave_one_out_partitions(tmp_path: Path) -> None:
    fake_domain_tree(tmp_path, DOMAIN_SETS["pacs"].domains, ("dog", "horse"))
    splits = load("pacs", tmp_path, domains="sketch,cartoon")
    assert splits.train.domains.tolist() == [0, 0, 0, 1, 1, 1]  # cartoon, then sketch
    with pytest.raises(ConfigError, match=r"\['painting'\] unknown for pacs"):
        load("pacs", tmp_path, domains="painting")
    # one client per source domain: the domain partitioner sees every example's domain
    cfg = DataConfig(
        dataset="pacs",
        data_dir=str(tmp_path),
        domains="art_painting,cartoon,photo",
        partitioner="domain",
        central_test_fraction=0.34,
        test_fraction=0.34,
        min_partition_size=1,
    )
    clients = [load_client_data(cfg, SPEC, 0, p, 3) for p in range(3)]
    held_domains = []
    for client in clients:
        source = client.train.dataset.domains
        own = {int(d) for d in source[client.train.indices + client.test.indices]}
        assert len(own) == 1  # every client holds exactly one domain
        held_domains += own
    assert sorted(held_domains) == [0, 1, 2]


def test_officehome_accepts_either_real_world_folder(tmp_path: Path) -> None:
    fake_domain_tree(tmp_path, ("Art", "Clipart", "Product", "Real_World"), ("Alarm_Clock",))
    splits = load("officehome", tmp_path)
    assert splits.classes == ["Alarm_Clock"] and len(splits.train) == 4


def test_a_missing_domain_names_the_path_and_the_layout(tmp_path: Path) -> None:
    fake_domain_tree(tmp_path, ("Caltech101", "LabelMe", "SUN09"), ("bird",))
    with pytest.raises(
        DatasetNotFoundError, match=r"VOC2007: no such folder.*<domain>/<class>/<image>"
    ):
        load("vlcs", tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"needs data.data-dir"):
        load("terraincognita")


def test_domains_with_other_classes_are_refused(tmp_path: Path) -> None:
    fake_domain_tree(tmp_path, DOMAIN_SETS["terraincognita"].domains, ("bobcat", "coyote"))
    write_image(tmp_path / "location_43" / "rabbit" / "x.jpg", 0)
    with pytest.raises(DatasetNotFoundError, match=r"location_43 holds other classes.*'rabbit'"):
        load("terraincognita", tmp_path)
