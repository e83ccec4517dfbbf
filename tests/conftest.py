"""Shared fixtures (a tiny run config, Flower's task identity) and the test tiers' hooks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tiers import pytest_collection_modifyitems, pytest_report_header

from pep_fedpt.config import RunConfig
from server_app.inprocess import set_task_identity

__all__ = ["pytest_collection_modifyitems", "pytest_report_header"]  # hooks, for pytest

# A ViT small enough for 2 CPU cores: width 64, depth 3, 16 px, patch 4.
TINY_MODEL = {
    "model.pretrained": "random",
    "model.img-size": 16,
    "model.patch-size": 4,
    "model.embed-dim": 64,
    "model.depth": 3,
    "model.num-heads": 2,
}


@pytest.fixture
def task_identity() -> Iterator[None]:
    set_task_identity()
    yield


@pytest.fixture
def tiny_run_config(tmp_path: Path) -> dict[str, bool | int | float | str]:
    """The flat run config of a 1-round run of the tiny ViT on digits."""
    flat = RunConfig().to_flat()
    flat.update(TINY_MODEL)
    # Its own z(x) disk cache: a test never reads features another test (or run) wrote.
    flat.update(
        {
            "num-server-rounds": 1,
            "output-dir": str(tmp_path / "run"),
            "cache-dir": str(tmp_path / "features"),
        }
    )
    return flat
