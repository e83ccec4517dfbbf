"""The hyper-parameter grid of a comparison: its points, and which one a method keeps.

    --grid "train.lr=0.05,0.25 train.prompt-lr=1,5"

Keys separated by spaces, each with comma-separated values (typed as ``flwr run -c``
types them: ``1`` an int, ``1.0`` a float, ``'x'`` a string; a value may hold neither a
comma nor a space). The points are the Cartesian product in the order given: the first
key varies slowest, each key's values in their order. A method keeps the point with the
best validation score; on a tie, the earliest point, so that the order given decides.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import click
from flwr.common.config import parse_config_args

from bench.comma import comma_items
from pep_fedpt.config import ConfigError

Scalar = bool | int | float | str
Grid = list[tuple[str, list[Scalar]]]  # (key, values), in the order given
Point = tuple[tuple[str, Scalar], ...]  # ((key, value), ...), one value per grid key


def parse_grid(text: str, option: str = "--grid") -> Grid:
    """``"k1=a,b k2=c"`` -> ``[("k1", [a, b]), ("k2", [c])]``; each key once, each value once.

    ``option`` names the command-line option in the errors (``--grid``, ``--sweep``)."""
    grid: Grid = []
    for part in text.split():
        key, sep, values = part.partition("=")
        texts = comma_items(values)
        if not sep or not key or not texts:
            raise ConfigError(
                f"{option} {text!r}: {part!r} is not key=value,value,... "
                '(e.g. --grid "train.lr=0.01,0.05 train.prompt-lr=1,5")'
            )
        if key in (k for k, _ in grid):
            raise ConfigError(f"{option} {text!r} names {key!r} twice")
        try:
            typed = [parse_config_args([f"{key}={v}"])[key] for v in texts]
        except (click.ClickException, ValueError, KeyError) as exc:
            raise ConfigError(f"{option} {text!r}: {part!r}: {exc}") from None
        if len(set(map(repr, typed))) != len(typed):
            raise ConfigError(f"{option} {text!r} gives a value of {key!r} twice")
        grid.append((key, typed))
    if not grid:
        raise ConfigError(f"{option} {text!r}: give at least one key=value,value,...")
    return grid


def grid_points(grid: Grid) -> list[Point]:
    """Every point of the grid, the first key varying slowest."""
    keys = [key for key, _ in grid]
    return [
        tuple(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in grid))
    ]


def point_label(point: Point) -> str:
    """``train.lr=0.05, train.prompt-lr=1``: how tables name a point."""
    return ", ".join(f"{key}={value}" for key, value in point)


def select(scores: Sequence[float]) -> int | None:
    """The index of the best finite score, the earliest on a tie; None if none is finite
    (no grid point completed with a validation score)."""
    best: int | None = None
    for index, score in enumerate(scores):
        if math.isfinite(score) and (best is None or score > scores[best]):
            best = index
    return best
