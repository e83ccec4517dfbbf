"""Check a `flwr run` command line before anything starts: one line per error, in a second.

``scripts/run.sh`` calls ``python -m pep_fedpt.preflight --app . -- <flwr run arguments>``
before it starts a SuperLink, Ray or the simulation. It builds the run config exactly as
Flower and the ServerApp will (pyproject's ``[tool.flwr.app.config]``, fused with every
``-c``/``--run-config`` value, then ``RunConfig.from_flat``), checks that the data folder
exists and that the simulation's ``num-supernodes`` can reach ``fed.min-*-nodes``. On
success it prints the run's ``output-dir`` and ``resume-from`` (``key=value`` lines) for
the script; on error it prints ``run.sh: <what is wrong>`` to stderr and exits 2.

Flower's own parser (``flwr.common.config.parse_config_args``) costs about a second of
imports, so its few lines are mirrored here (``parse_config_args``; a test holds the two
to the same results) and neither torch nor flwr is imported.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.methods.registry import check_name
from pep_fedpt.output_dir import refuse_to_overwrite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Scalar = bool | int | float | str

# The data sets of pep_fedpt.data's registry (a test keeps the two equal); those in
# NEEDS_DATA_DIR read nothing without data.data-dir, DOWNLOADABLE ones can fetch it.
DATASETS = (
    "caltech101",
    "cifar10",
    "cifar10-folder",
    "cifar100",
    "coop-nine",
    "cifar100-folder",
    "digits",
    "domainnet",
    "domainnet-10",
    "dtd",
    "fashion-mnist",
    "fgvc_aircraft",
    "food101",
    "imagefolder",
    "inaturalist",
    "inaturalist-folder",
    "mnist",
    "officehome",
    "oxford_flowers",
    "oxford_pets",
    "pacs",
    "stanford_cars",
    "sun397",
    "terraincognita",
    "tinyimagenet",
    "ucf101",
    "vlcs",
)
DOWNLOADABLE = frozenset({"cifar10", "cifar100", "inaturalist"})
# digits ships with scikit-learn; fashion-mnist has a system folder (Debian's package).
NEEDS_DATA_DIR = frozenset(DATASETS) - DOWNLOADABLE - {"digits", "fashion-mnist"}
DEFAULT_NUM_SUPERNODES = 2  # Flower's simulation default

# flwr.common.config.parse_config_args: key=value pairs, values TOML (quoted or bare).
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


class PreflightError(ValueError):
    """The run would fail: the message names the key or argument, the value, what is accepted."""


@dataclass(frozen=True)
class Preflight:
    """What a checked command line will run."""

    config: RunConfig
    flat: dict[str, Scalar]  # the whole run config
    overrides: dict[str, Scalar]  # what the command line changed, for ``flwr run``
    federation: dict[str, Scalar]  # the merged --federation-config


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested tables to dotted keys, as ``flwr.common.config.flatten_dict``."""
    flat: dict[str, Scalar] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def parse_config_args(values: Sequence[str], option: str = "-c") -> dict[str, Scalar]:
    """The flat overrides of ``flwr run``'s ``-c``/``--run-config`` values (or of its
    ``--federation-config`` ones): one ``.toml`` file alone, or ``key=value`` strings."""
    if len(values) == 1 and values[0].endswith(".toml"):
        path = Path(values[0]).expanduser()
        try:
            with path.open("rb") as file:
                return flatten(tomllib.load(file))
        except FileNotFoundError:
            raise PreflightError(f"{option} {values[0]!r}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise PreflightError(f"{option} {values[0]!r}: not valid TOML ({exc})") from None
    nested: dict[str, Any] = {}
    for text in values:
        if not text:
            continue
        if text.endswith(".toml"):
            raise PreflightError(
                f"{option} {text!r}: a TOML file cannot be combined with key=value "
                "overrides; put the overrides into the file, or give them alone"
            )
        pairs = _PAIR.findall(text)
        try:
            nested.update(tomllib.loads("\n".join(f"{k} = {v}" for k, v in pairs)))
        except tomllib.TOMLDecodeError:
            raise PreflightError(
                f"{option} {text!r}: not key=value pairs with TOML values; write e.g. "
                "\"num-server-rounds=5 data.dataset='cifar10' data.download=true\" "
                "(strings in quotes)"
            ) from None
    return flatten(nested)


def app_defaults(app: Path) -> dict[str, Scalar]:
    """The app's ``[tool.flwr.app.config]``, flat: the defaults every override must name."""
    with (app / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)
    return flatten(project["tool"]["flwr"]["app"].get("config", {}))


def fuse(defaults: Mapping[str, Scalar], overrides: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """Flower's ``fuse_dicts``: an override must name a default's key."""
    for key, value in overrides.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
            hint = (
                f"did you mean {' or '.join(map(repr, close))}?"
                if close
                else (
                    "the keys are those of [tool.flwr.app.config] in pyproject.toml "
                    "(README, Configuration)"
                )
            )
            raise PreflightError(f"unknown run-config key {key!r} (= {value!r}); {hint}")
    return {**defaults, **overrides}


def split_flwr_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ``-c``/``--run-config`` values and the ``--federation-config`` values of an
    argument list, in order; any other argument is refused (the script owns the rest)."""
    run_config: list[str] = []
    federation: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if arg in ("-c", "--run-config", "--federation-config"):
            if i + 1 >= len(args):
                raise PreflightError(f"{arg} needs a value")
            (federation if arg == "--federation-config" else run_config).append(args[i + 1])
            i += 2
            continue
        if eq and name in ("--run-config", "--federation-config"):
            (federation if name == "--federation-config" else run_config).append(inline)
        elif arg.startswith("-c") and len(arg) > 2:
            run_config.append(arg[2:])
        else:
            raise PreflightError(
                f"argument {arg!r} is not accepted; give -c 'key=value ...', --run-config "
                "FILE.toml (both may be combined, later ones win) or --federation-config "
                "'num-supernodes=N ...'"
            )
        i += 1
    return run_config, federation


def run_config_overrides(values: Sequence[str]) -> dict[str, Scalar]:
    """Every ``-c``/``--run-config`` value in order, later keys winning: a ``.toml`` file
    or ``key=value`` pairs each (``flwr run`` itself takes one or the other, not both; the
    script hands it the merged result as one file)."""
    merged: dict[str, Scalar] = {}
    for value in values:
        merged.update(parse_config_args([value]))
    return merged


def toml_value(value: Scalar) -> str:
    """One TOML value (flat configs hold only bool, int, float and str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def toml_text(flat: Mapping[str, Scalar]) -> str:
    """Dotted ``key = value`` lines: read back by ``tomllib`` (and flwr), they give ``flat``."""
    return "".join(
        f"{'.'.join(json.dumps(part) for part in key.split('.'))} = {toml_value(value)}\n"
        for key, value in flat.items()
    )


def check_data(config: RunConfig) -> None:
    """The data set is one the registry knows, and its folder exists where it must."""
    data = config.data
    if data.dataset not in DATASETS:
        close = difflib.get_close_matches(data.dataset, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PreflightError(
            f"data.dataset = {data.dataset!r} is not accepted{hint}; use one of: "
            f"{', '.join(DATASETS)}"
        )
    if data.data_dir:
        if data.download and data.dataset in DOWNLOADABLE:
            return  # torchvision creates it
        if not Path(data.data_dir).is_dir():
            raise PreflightError(
                f"data.data-dir = {data.data_dir!r}: no such folder"
                + (" (or set data.download = true)" if data.dataset in DOWNLOADABLE else "")
            )
        check_layout(data.dataset, Path(data.data_dir), data.download)
    elif data.dataset in NEEDS_DATA_DIR:
        raise PreflightError(
            f"data.dataset = {data.dataset!r} needs data.data-dir = /absolute/path/to/it "
            "(docs/datasets.md says where to get it)"
        )
    elif data.dataset in DOWNLOADABLE and not data.download:
        raise PreflightError(
            f"data.dataset = {data.dataset!r} needs data.data-dir = /absolute/path/to/it, "
            "or data.download = true"
        )


# What a built-in data set in torchvision's format needs under data.data-dir.
TORCHVISION_FOLDERS = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def check_layout(dataset: str, root: Path, download: bool) -> None:
    """A data set in torchvision's format has its unpacked folder under ``root``; a folder
    of class folders of images is named as what it is, with the key that reads it."""
    expected = TORCHVISION_FOLDERS.get(dataset)
    if expected is None or download or (root / expected[0]).is_dir():
        return
    hint = f"unpack {expected[1]} there, or set data.download = true"
    layout = image_folder_layout(root)
    if layout:
        hint = (
            f"it holds {layout}: for images in class folders set data.dataset = "
            "'imagefolder' (docs/datasets.md, 'Any ImageFolder tree')"
        )
    raise PreflightError(
        f"data.dataset = {dataset!r} reads torchvision's {expected[0]}/ under data.data-dir "
        f"= {str(root)!r}, which is not there; {hint}"
    )


def image_folder_layout(root: Path) -> str:
    """``train/<class>/<image>`` or ``<class>/<image>`` under ``root`` in words ("" if
    neither): a look at the first few entries, so that a large folder costs no time."""
    for base, words in ((root / "train", "train/<class>/<image> folders"), (root, "")):
        if not base.is_dir():
            continue
        classes = [p for p in sorted(base.iterdir())[:20] if p.is_dir()]
        with_images = [c for c in classes[:3] if _holds_images(c)]
        if len(classes) >= 2 and with_images:
            return words or f"{len(classes)}+ class folders of images"
    return ""


def _holds_images(folder: Path) -> bool:
    for number, entry in enumerate(folder.iterdir()):
        if entry.suffix.lower() in _IMAGE_SUFFIXES:
            return True
        if number >= 50:
            return False
    return False


def check_resume(config: RunConfig) -> None:
    """A resumed run's config is its checkpoint's (but for the keys a resume may change),
    read from the checkpoint's meta data alone (no array is loaded)."""
    from server_app.checkpoint import read_config, resume_refusal

    folder = Path(config.resume_from)
    try:
        saved = read_config(folder)
    except (OSError, ValueError) as exc:
        raise PreflightError(str(exc)) from None
    refusal = resume_refusal(config.resume_from, saved, config.to_flat())
    if refusal:
        raise PreflightError(refusal)


def check_nodes(config: RunConfig, num_supernodes: int) -> None:
    """The simulation's SuperNodes can reach every ``fed.min-*-nodes``: otherwise the first
    round would wait for nodes that never come."""
    if num_supernodes < 1:
        raise PreflightError(f"num-supernodes = {num_supernodes} must be >= 1")
    fed = config.fed
    held_out = round(config.data.held_out_fraction * num_supernodes)
    trainers = num_supernodes - held_out
    nodes = "SuperNode" if num_supernodes == 1 else "SuperNodes"
    short = [
        f"{key} = {minimum} but the simulation has only {available} {what}"
        for key, minimum, available, what in (
            ("fed.min-available-nodes", fed.min_available_nodes, num_supernodes, nodes),
            ("fed.min-evaluate-nodes", fed.min_evaluate_nodes, num_supernodes, nodes),
            (
                "fed.min-train-nodes",
                fed.min_train_nodes,
                trainers,
                nodes
                if held_out == 0
                else f"training SuperNode(s) ({num_supernodes} minus {held_out} held out "
                f"by data.held-out-fraction = {config.data.held_out_fraction})",
            ),
        )
        if minimum > available
    ]
    if short:  # every key that must change, in one line: one command to fix them all
        keys = "those keys" if len(short) > 1 else short[0].split(" = ")[0]
        raise PreflightError(
            f"{'; '.join(short)} (NUM_SUPERNODES / num-supernodes = {num_supernodes}): the "
            f"run would wait forever; lower {keys} or run more SuperNodes"
        )


def num_supernodes_of(federation: Mapping[str, Scalar]) -> int:
    """``num-supernodes`` of the merged ``--federation-config``."""
    value = federation.get("num-supernodes", DEFAULT_NUM_SUPERNODES)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PreflightError(f"--federation-config num-supernodes = {value!r} must be an integer")
    return value


def preflight(app: Path, args: Sequence[str]) -> Preflight:
    """The run config and simulation size of ``args`` for the app in ``app``, checked."""
    run_config, federation_args = split_flwr_args(args)
    overrides = run_config_overrides(run_config)
    flat = fuse(app_defaults(app), overrides)
    try:
        config = RunConfig.from_flat(flat)
        check_name(config.method)  # the registration's own checks need torch: the app's
    except ConfigError as exc:
        raise PreflightError(str(exc)) from None
    check_data(config)
    if config.resume_from and not Path(config.resume_from).is_dir():
        raise PreflightError(f"resume-from = {config.resume_from!r}: no such folder")
    if config.resume_from:
        check_resume(config)
    if config.output_dir:  # an earlier run's results are refused here too, in a second
        try:
            refuse_to_overwrite(Path(config.output_dir), config)
        except ConfigError as exc:
            raise PreflightError(str(exc)) from None
    federation: dict[str, Scalar] = {}
    for value in federation_args:
        federation.update(parse_config_args([value], "--federation-config"))
    check_nodes(config, num_supernodes_of(federation))
    return Preflight(config, flat, overrides, federation)


def main(argv: Sequence[str] | None = None) -> int:
    """``[--app DIR] [--prefix NAME] [--write-run-config FILE] -- <arguments>``.

    Exit 2 with one line on stderr for a run that would fail; else print ``output-dir=``,
    ``resume-from=`` and ``federation-config=`` lines and write the merged overrides to
    FILE (a TOML file for ``flwr run --run-config``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    options = {"--app": ".", "--prefix": "run.sh", "--write-run-config": ""}
    while args and args[0] != "--":
        option = args.pop(0)
        if option not in options or not args:
            print(f"preflight: unknown argument {option!r}", file=sys.stderr)
            return 2
        options[option] = args.pop(0)
    if args:
        args.pop(0)
    try:
        checked = preflight(Path(options["--app"]), args)
    except PreflightError as exc:
        print(f"{options['--prefix']}: {exc}", file=sys.stderr)
        return 2
    if options["--write-run-config"]:
        Path(options["--write-run-config"]).write_text(toml_text(checked.overrides))
    federation = " ".join(f"{k}={toml_value(v)}" for k, v in checked.federation.items())
    print(f"output-dir={checked.config.output_dir}")
    print(f"resume-from={checked.config.resume_from}")
    print(f"federation-config={federation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
