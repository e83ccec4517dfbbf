"""What the speed benchmarks' ``--out`` documents share: the machine they ran on, its load
as a sentence, an atomic write, and a key lookup whose error names the missing figure.

The probes of ``bench/probes/`` write such documents (``header`` first) into
``bench/results/``; ``client_memory --report`` reads one back, so a document that lacks a
figure must say which one and where, not raise a bare KeyError.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def need(mapping: Any, key: str, where: str, writer: str) -> Any:
    """``mapping[key]``, or a ValueError naming the key, where it was looked for and the
    command that writes it (``writer``)."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(mapping).__name__}")
    if key not in mapping:
        raise ValueError(f"{where}: no {key!r} (written by {writer} --out)")
    return mapping[key]


def machine(load_start: Sequence[float], load_end: Sequence[float]) -> dict[str, Any]:
    """The CPUs, the OpenMP threads and the load averages (1, 5, 15 min) at both ends."""
    return {
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_at_start": list(load_start),
        "loadavg_at_end": list(load_end),
    }


def header(
    writer: str,
    argv: Sequence[str],
    setting: Mapping[str, Any],
    load_start: Sequence[float],
    load_end: Sequence[float],
) -> dict[str, Any]:
    """The start of every document: the command line that wrote it (``writer`` is the
    script's path), what it measured (``setting``) and the machine it ran on."""
    module = writer.removesuffix(".py").replace("/", ".")
    return {
        "command": shlex.join(["python", "-m", module, *argv]),
        "setting": dict(setting),
        "machine": machine(load_start, load_end),
    }


def machine_sentence(document: Mapping[str, Any]) -> str:
    """``2 CPUs (OMP_NUM_THREADS=1), 1-minute load average 1.5 at the start, 2.0 at the
    end`` from a document's ``machine`` (what is not recorded is said so)."""
    recorded = document.get("machine")
    if not isinstance(recorded, Mapping):
        return "machine not recorded"
    cpus = recorded.get("cpus")
    threads = recorded.get("omp_num_threads")
    start, end = recorded.get("loadavg_at_start"), recorded.get("loadavg_at_end")
    text = f"{cpus} CPUs" if cpus else "CPUs not recorded"
    if threads:
        text += f" (OMP_NUM_THREADS={threads})"
    if start and end:
        return (
            text + f", 1-minute load average {start[0]:.1f} at the start, {end[0]:.1f} at the end"
        )
    return text + ", load not recorded"


def write(path: Path, document: Mapping[str, Any]) -> None:
    """Atomically: a reader (``bench.tables``) never sees half a file."""
    from pep_fedpt.atomic import atomic_write  # here: the renderers need no project import

    atomic_write(path, (json.dumps(document, indent=1) + "\n").encode())
