"""The DomainBed multi-domain sets FedMVP's domain-generalisation setting uses: PACS,
OfficeHome, VLCS and TerraIncognita, in their published folder layouts.

Layout under ``<data-dir>``: one folder per domain, one sub-folder per class, the images
inside (``<domain>/<class>/<image>``), as DomainBed's download script and the original
archives leave them. Every domain must hold the same classes; labels follow the sorted
class names. Every example carries its domain (``domains``, in the order below), so that
``data.partitioner = "domain"`` gives each client one domain and a leave-one-domain-out
protocol can hold one out. These sets have no official train/test split: the whole of
each domain is the pool (the central test split is carved as for digits).
``data.domains`` (comma-separated) keeps only some domains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pep_fedpt.config import ConfigError, DataConfig
from pep_fedpt.data.images import ImageFiles, data_root, require_path
from pep_fedpt.data.registry import DatasetNotFoundError, DatasetSplits, ImageSpec, register_dataset

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


@dataclass(frozen=True)
class DomainSet:
    name: str
    domains: tuple[str, ...]  # folder names, in the set's usual order
    where: str  # where to get it
    aliases: tuple[tuple[str, str], ...] = ()  # (other folder name, domain) also accepted


DOMAIN_SETS = {
    s.name: s
    for s in (
        DomainSet(
            "pacs",
            ("art_painting", "cartoon", "photo", "sketch"),
            "PACS (Li et al., 2017): DomainBed's download script (domainbed/scripts/"
            "download.py) or the kfold/ folder of the original release.",
        ),
        DomainSet(
            "officehome",
            ("Art", "Clipart", "Product", "Real World"),
            "OfficeHome (Venkateswara et al., 2017): unzip OfficeHomeDataset_10072016 "
            "(or use DomainBed's download script).",
            aliases=(("Real_World", "Real World"),),
        ),
        DomainSet(
            "vlcs",
            ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
            "VLCS (Fang et al., 2013): DomainBed's download script.",
        ),
        DomainSet(
            "terraincognita",
            ("location_100", "location_38", "location_43", "location_46"),
            "TerraIncognita (Beery et al., 2018): DomainBed's download script, which builds "
            "the four location folders from the Caltech Camera Traps release.",
        ),
    )
}


def selected(spec: str, domain_set: DomainSet) -> tuple[str, ...]:
    """``data.domains`` in the set's order; ``""`` means all of them."""
    names = [d.strip() for d in spec.split(",") if d.strip()] or list(domain_set.domains)
    unknown = sorted(set(names) - set(domain_set.domains))
    if unknown:
        raise ConfigError(
            f"data.domains = {spec!r}: {unknown} unknown for {domain_set.name}; "
            f"use some of {list(domain_set.domains)}"
        )
    return tuple(d for d in domain_set.domains if d in names)


def _domain_folder(root: Path, domain: str, domain_set: DomainSet, layout: str) -> Path:
    for alias, target in domain_set.aliases:
        if target == domain and not (root / domain).is_dir() and (root / alias).is_dir():
            return root / alias
    return require_path(root / domain, f"the {domain} domain ({layout})", domain_set.where)


def load_domain_folders(cfg: DataConfig, spec: ImageSpec, domain_set: DomainSet) -> DatasetSplits:
    layout = "<data-dir>/<domain>/<class>/<image>"
    where = f"Expected {layout} with domains {list(domain_set.domains)}. {domain_set.where}"
    root = data_root(cfg.data_dir, cfg.dataset, where)
    require_path(root, f"the {domain_set.name} domain folders ({layout})", where)
    domains = selected(cfg.domains, domain_set)
    folders = {d: _domain_folder(root, d, domain_set, layout) for d in domains}
    class_sets = {d: sorted(p.name for p in f.iterdir() if p.is_dir()) for d, f in folders.items()}
    first = domains[0]
    classes = class_sets[first]
    if not classes:
        raise DatasetNotFoundError(f"{folders[first]}: no class folders. {where}")
    for domain, names in class_sets.items():
        if names != classes:
            missing = sorted(set(classes) - set(names))
            extra = sorted(set(names) - set(classes))
            raise DatasetNotFoundError(
                f"{folders[domain]} holds other classes than {folders[first]} (missing "
                f"{missing}, extra {extra}): every domain needs the same class folders. {where}"
            )
    label = {name: i for i, name in enumerate(classes)}
    paths, targets, domain_ids = [], [], []
    for domain_id, domain in enumerate(domains):
        for name in classes:
            files = sorted(
                p
                for p in (folders[domain] / name).iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            paths += files
            targets += [label[name]] * len(files)
            domain_ids += [domain_id] * len(files)
    if not paths:
        raise DatasetNotFoundError(f"{root}: no image files ({sorted(IMAGE_SUFFIXES)}). {where}")
    return DatasetSplits(
        train=ImageFiles(paths, targets, spec, domains=domain_ids), test=None, classes=classes
    )


def _register(name: str) -> None:
    @register_dataset(name)
    def load(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
        return load_domain_folders(cfg, spec, DOMAIN_SETS[name])


for _name in DOMAIN_SETS:
    _register(_name)
