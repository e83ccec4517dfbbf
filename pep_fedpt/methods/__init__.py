"""The methods: one client module per method, each registering itself (``registry``).

``get_method(name)`` gives a method's registration (``registry.Method``), importing its
module on first use; ``client_for`` builds (once per process and partition) the client of
``cfg.method``. The names below load lazily, so that importing the registry stays
torch-free: the launcher's preflight refuses an unknown name (``registry.check_name``)
before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pep_fedpt.methods.baselines import BaselineClient
    from pep_fedpt.methods.common import PromptClient, build_model, initial_arrays
    from pep_fedpt.methods.pep_fedpt import PEPFedPTClient
    from pep_fedpt.methods.pfedpg import PFedPGClient
    from pep_fedpt.methods.registry import Method, client_for, get_method
    from pep_fedpt.methods.sgpt import SGPTClient

_HOMES = {
    "BaselineClient": "pep_fedpt.methods.baselines",
    "PromptClient": "pep_fedpt.methods.common",
    "build_model": "pep_fedpt.methods.common",
    "initial_arrays": "pep_fedpt.methods.common",
    "PEPFedPTClient": "pep_fedpt.methods.pep_fedpt",
    "PFedPGClient": "pep_fedpt.methods.pfedpg",
    "SGPTClient": "pep_fedpt.methods.sgpt",
    "Method": "pep_fedpt.methods.registry",
    "client_for": "pep_fedpt.methods.registry",
    "get_method": "pep_fedpt.methods.registry",
}

__all__ = [
    "BaselineClient",
    "Method",
    "PEPFedPTClient",
    "PFedPGClient",
    "PromptClient",
    "SGPTClient",
    "build_model",
    "client_for",
    "get_method",
    "initial_arrays",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pep_fedpt.methods' has no attribute {name!r}")
