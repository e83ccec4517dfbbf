"""The nine CoOp data sets of the base->new protocol, in CoOp's published layout.

CoOp (Zhou et al.) fixed one train/val/test split per data set, and CoCoOp, FedTPG and
FedMVP all use it: a ``split_zhou_<Name>.json`` file beside the images, an object with
"train", "val" and "test" lists of ``[relative image path, label, class name]``. These
loaders read that file, so a folder prepared for CoOp works as it is (its DATASETS.md
says where each archive and split file comes from). FGVCAircraft has no such file: its
``images_variant_{train,val,test}.txt`` lines (``<image id> <variant>``) and
``variants.txt`` (the class order) are read instead.

``data.data-dir`` is the data set's own folder (e.g. ``/data/caltech-101``); the clients
draw from "train", the server tests on "test" ("val" is not used). Class names come from
the split file, in label order, so they match the attribute files' keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from pep_fedpt.config import ConfigError, DataConfig
from pep_fedpt.data.images import ImageFiles, data_root, require_path
from pep_fedpt.data.registry import DatasetNotFoundError, DatasetSplits, ImageSpec, register_dataset


@dataclass(frozen=True)
class CoOpSet:
    name: str  # data.dataset (and the attribute file's name)
    folder: str  # CoOp's folder name, for the messages
    images: str  # image folder inside data-dir ("" = data-dir itself)
    split_file: str  # "" = FGVCAircraft's variant lists


COOP_SETS = {
    s.name: s
    for s in (
        CoOpSet("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
        CoOpSet("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
        CoOpSet("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
        CoOpSet("food101", "food-101", "images", "split_zhou_Food101.json"),
        CoOpSet("dtd", "dtd", "images", "split_zhou_DescribableTextures.json"),
        CoOpSet("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
        CoOpSet("sun397", "sun397", "SUN397", "split_zhou_SUN397.json"),
        CoOpSet("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
        CoOpSet("fgvc_aircraft", "fgvc_aircraft", "images", ""),
    )
}
WHERE = (
    "Prepare it as CoOp's DATASETS.md describes (https://github.com/KaiyangZhou/CoOp): the "
    "{folder} folder with {what}, and set data.data-dir to that folder."
)


def _where(coop: CoOpSet) -> str:
    what = (
        f"{coop.images}/ and {coop.split_file}"
        if coop.split_file
        else "images/, variants.txt and images_variant_{train,val,test}.txt"
    )
    if coop.split_file and not coop.images:
        what = f"the image folders and {coop.split_file}"
    return WHERE.format(folder=coop.folder, what=what)


def _read_split(path: Path, where: str) -> dict[str, list[tuple[str, int, str]]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetNotFoundError(f"{path}: not readable JSON ({exc}). {where}") from exc
    out = {}
    for split in ("train", "test"):
        entries = raw.get(split) if isinstance(raw, dict) else None
        if not isinstance(entries, list) or not entries:
            raise DatasetNotFoundError(
                f"{path}: no {split!r} list of [image, label, class name]. {where}"
            )
        rows = []
        for entry in entries:
            ok = (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and isinstance(entry[2], str)
            )
            if not ok:
                raise DatasetNotFoundError(
                    f"{path}: {split} entry {entry!r} is not [image, label, class name]. {where}"
                )
            rows.append((entry[0], entry[1], entry[2]))
        out[split] = rows
    return out


def _classes(rows: list[tuple[str, int, str]], path: Path, where: str) -> list[str]:
    names: dict[int, str] = {}
    for _, label, name in rows:
        if names.setdefault(label, name) != name:
            raise DatasetNotFoundError(
                f"{path}: label {label} is both {names[label]!r} and {name!r}. {where}"
            )
    if sorted(names) != list(range(len(names))):
        raise DatasetNotFoundError(f"{path}: the labels are not 0..{len(names) - 1}. {where}")
    return [names[label] for label in range(len(names))]


def _from_split_file(root: Path, coop: CoOpSet, spec: ImageSpec, where: str) -> DatasetSplits:
    path = require_path(root / coop.split_file, "CoOp's split file", where, is_dir=False)
    images = root / coop.images if coop.images else root
    require_path(images, "the images", where)
    split = _read_split(path, where)
    classes = _classes(split["train"] + split["test"], path, where)
    files = {
        name: ImageFiles([images / p for p, _, _ in rows], [y for _, y, _ in rows], spec)
        for name, rows in split.items()
    }
    return DatasetSplits(train=files["train"], test=files["test"], classes=classes)


def _fgvc_aircraft(root: Path, spec: ImageSpec, where: str) -> DatasetSplits:
    variants = require_path(root / "variants.txt", "the 100 variant names", where, is_dir=False)
    classes = [line.strip() for line in variants.read_text().splitlines() if line.strip()]
    label = {name: i for i, name in enumerate(classes)}
    images = require_path(root / "images", "the aircraft images", where)
    parts = {}
    for split in ("train", "test"):
        listing = require_path(
            root / f"images_variant_{split}.txt", f"the {split} list", where, is_dir=False
        )
        paths, targets = [], []
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image, _, variant = line.strip().partition(" ")
            if variant not in label:
                raise DatasetNotFoundError(
                    f"{listing}:{number}: {line!r} is not '<image id> <variant>' with a "
                    f"variant of variants.txt. {where}"
                )
            paths.append(images / f"{image}.jpg")
            targets.append(label[variant])
        parts[split] = ImageFiles(paths, targets, spec)
    return DatasetSplits(train=parts["train"], test=parts["test"], classes=classes)


def load_coop(cfg: DataConfig, spec: ImageSpec, coop: CoOpSet) -> DatasetSplits:
    where = _where(coop)
    root = require_path(data_root(cfg.data_dir, cfg.dataset, where), coop.folder, where)
    if not coop.split_file:
        return _fgvc_aircraft(root, spec, where)
    return _from_split_file(root, coop, spec, where)


def _register(name: str) -> None:
    @register_dataset(name)
    def load(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
        return load_coop(cfg, spec, COOP_SETS[name])


for _name in COOP_SETS:
    _register(_name)


# The paper's one base->new federation: the nine sets in the released code's order.
NINE = (
    "caltech101",
    "oxford_flowers",
    "fgvc_aircraft",
    "ucf101",
    "oxford_pets",
    "food101",
    "dtd",
    "stanford_cars",
    "sun397",
)
NINE_SETS = "coop-nine"


def nine_members(cfg: DataConfig) -> tuple[str, ...]:
    """The member sets of ``coop-nine``: all nine, or those ``data.domains`` keeps."""
    names = [d.strip() for d in cfg.domains.split(",") if d.strip()] or list(NINE)
    unknown = sorted(set(names) - set(NINE))
    if unknown:
        raise ConfigError(
            f"data.domains = {cfg.domains!r}: {unknown} are not CoOp sets of {NINE_SETS}; "
            f"use some of {list(NINE)}"
        )
    return tuple(n for n in NINE if n in names)


@register_dataset(NINE_SETS)
def load_nine(cfg: DataConfig, spec: ImageSpec) -> DatasetSplits:
    """The nine sets as one: ``data.data-dir`` is CoOp's data root (each set in its CoOp
    folder beneath it), labels offset set by set, every example's set in ``domains`` (its
    index among the members), class names in label order."""
    where = (
        "data.data-dir is CoOp's data root, each set in its CoOp folder beneath it "
        f"({', '.join(COOP_SETS[n].folder for n in NINE)}), as CoOp's DATASETS.md lays them out"
    )
    root = data_root(cfg.data_dir, NINE_SETS, where)
    parts: dict[str, tuple[list[Path], list[int], list[int]]] = {
        "train": ([], [], []),
        "test": ([], [], []),
    }
    classes: list[str] = []
    for index, name in enumerate(nine_members(cfg)):
        coop = COOP_SETS[name]
        member_cfg = replace(cfg, dataset=name, data_dir=str(root / coop.folder))
        try:
            member = load_coop(member_cfg, spec, coop)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(
                f"{NINE_SETS}, member {name}: {exc} (For {NINE_SETS}, data.data-dir is the "
                f"root that holds {coop.folder}/: {root}.)"
            ) from exc
        for split, files in (("train", member.train), ("test", member.test)):
            assert isinstance(files, ImageFiles)
            paths, targets, sets = parts[split]
            paths += files.paths
            targets += [len(classes) + int(t) for t in files.targets]
            sets += [index] * len(files.targets)
        classes += member.classes
    splits = {
        split: ImageFiles(paths, targets, spec, domains=sets)
        for split, (paths, targets, sets) in parts.items()
    }
    return DatasetSplits(train=splits["train"], test=splits["test"], classes=classes)
