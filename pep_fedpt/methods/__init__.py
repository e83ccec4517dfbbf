"""Client-side routines, one module per method, and the registry that picks one.

``CLIENTS`` maps every ``method`` of the run config to its client class;
``client_for`` builds (once per process and partition) the client of ``cfg.method``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pep_fedpt.config import RunConfig
from pep_fedpt.methods.baselines import BaselineClient
from pep_fedpt.methods.common import PromptClient, build_model, image_spec, initial_arrays
from pep_fedpt.methods.pep_fedpt import PEPFedPTClient
from pep_fedpt.methods.pfedpg import PFedPGClient
from pep_fedpt.methods.sgpt import SGPTClient

CLIENTS: dict[str, type[PromptClient]] = {
    "pep-fedpt": PEPFedPTClient,
    "fedavg-vpt-shallow": BaselineClient,
    "fedavg-vpt-deep": BaselineClient,
    "fedprox-vpt": BaselineClient,
    "head-only": BaselineClient,
    "fedavg-vpt-prior": BaselineClient,
    "local": BaselineClient,
    "sgpt": SGPTClient,
    "pfedpg": PFedPGClient,
}


@functools.lru_cache(maxsize=64)
def client_for(
    cfg: RunConfig, partition_id: int, num_partitions: int, cache_dir: Path | None = None
) -> PromptClient:
    """The per-process client of one partition (a simulation worker serves many)."""
    return CLIENTS[cfg.method](cfg, partition_id, num_partitions, cache_dir)


__all__ = [
    "CLIENTS",
    "BaselineClient",
    "PEPFedPTClient",
    "PFedPGClient",
    "PromptClient",
    "SGPTClient",
    "build_model",
    "client_for",
    "image_spec",
    "initial_arrays",
]
