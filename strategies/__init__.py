"""Server-side strategies: numpy and flwr only, importable by any Flower app.

``strategies.wire`` (the names on the wire) imports nothing, so the torch library can
share it without pulling Flower in; the strategies are loaded on first use.

``PromptFedAvg`` is the FedAvg base of every method (prototype round, seeded sampling,
reply checks, resume, and the named hooks a method overrides); ``PEPFedPT`` and the
baselines' ``LocalOnly``, ``SGPT`` and ``PFedPG`` subclass it, and so does
FedMVP's ``FedMVP``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from strategies.base import PromptFedAvg
    from strategies.baselines import LocalOnly
    from strategies.fedmvp import FedMVP
    from strategies.pep_fedpt import PEPFedPT
    from strategies.pfedpg import PFedPG
    from strategies.sgpt import SGPT

__all__ = ["SGPT", "FedMVP", "LocalOnly", "PEPFedPT", "PFedPG", "PromptFedAvg"]

_HOMES = {
    "PEPFedPT": "strategies.pep_fedpt",
    "PromptFedAvg": "strategies.base",
    "LocalOnly": "strategies.baselines",
    "SGPT": "strategies.sgpt",
    "PFedPG": "strategies.pfedpg",
    "FedMVP": "strategies.fedmvp",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")
