"""The server's whole state after a round, in one file, so that a run can resume from it.

``<output-dir>/checkpoint.npz`` holds the global arrays (prompts, head, prototypes, global
counts) and, under ``__meta__``, a JSON document: the round, the strategy's own state
(sampler RNG, prototype version, known counts, refusals, metrics), the metric rows so far
and the run config. One file written by temp file + rename: a crash at any moment leaves
either the previous round's checkpoint or this one, never a mix of two rounds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import RunConfig

CHECKPOINT = "checkpoint.npz"
_META = "__meta__"
FORMAT = 1

# Keys a resumed run may change; any other difference would make it a different run.
RESUMABLE_CHANGES = frozenset(
    {
        "num-server-rounds",
        "resume-from",
        "output-dir",
        "cache-dir",
        "fed.round-timeout",
        "fed.wait-timeout",
        # Training does not depend on it (a skipped evaluation still draws its sample).
        "fed.evaluate-every",
    }
)


@dataclass
class Checkpoint:
    server_round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, Any]
    rows: list[dict[str, Any]]
    config: dict[str, Any]


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    meta = {
        "format": FORMAT,
        "round": checkpoint.server_round,
        "strategy": checkpoint.strategy,
        "rows": checkpoint.rows,
        "config": checkpoint.config,
    }
    if _META in checkpoint.arrays:
        raise ValueError(f"an array may not be named {_META!r}")
    encoded = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **checkpoint.arrays, **{_META: encoded})  # type: ignore[arg-type]  # numpy's stub checks **kwds against allow_pickle
    atomic_write(directory / CHECKPOINT, buffer.getvalue())


def _existing_checkpoint(directory: Path) -> Path:
    """The checkpoint file of ``directory``, or the error a resume from it gets."""
    path = directory / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"resume-from = {str(directory)!r}: no {CHECKPOINT} there; give the output-dir "
            "of a run that finished at least its first round"
        )
    return path


def load_checkpoint(directory: Path) -> Checkpoint:
    path = _existing_checkpoint(directory)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files if key != _META}
        meta = json.loads(data[_META].tobytes().decode())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")
    return Checkpoint(
        server_round=int(meta["round"]),
        arrays=arrays,
        strategy=meta["strategy"],
        rows=meta["rows"],
        config=meta["config"],
    )


def read_config(directory: Path) -> dict[str, Any]:
    """The run config a checkpoint was written with, from its meta data alone: the arrays
    stay unread (``np.load`` of an .npz reads a member when asked for it)."""
    path = _existing_checkpoint(directory)
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data[_META].tobytes().decode())
    config: dict[str, Any] = meta["config"]
    return config


def resume_refusal(
    resume_from: str, saved: Mapping[str, Any], current: Mapping[str, Any]
) -> str | None:
    """Why a run config may not resume a checkpoint written with ``saved`` (None: it may)."""
    changed = config_differences(saved, current)
    if not changed:
        return None
    allowed = ", ".join(sorted(RESUMABLE_CHANGES - {"resume-from"}))
    return (
        f"resume-from = {resume_from!r}: the run config differs from the checkpoint's in "
        f"{'; '.join(changed)}; resume with the same config (only {allowed} may change)"
    )


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved -> current`` for every run-config key a resume must not change. A key
    that the saved run predates counts as its default, which every new key keeps to the
    old behaviour (``dp.mode = "off"``), so an upgrade does not strand a run."""
    defaults = RunConfig().to_flat()
    before = {key: saved.get(key, defaults.get(key)) for key in set(saved) | set(current)}
    keys = sorted(set(before) - RESUMABLE_CHANGES)
    return [
        f"{key}: {before[key]!r} -> {current.get(key)!r}"
        for key in keys
        if before[key] != current.get(key)
    ]
