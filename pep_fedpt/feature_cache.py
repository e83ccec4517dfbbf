"""Node-local disk cache of the frozen query features z(x).

The backbone is frozen, so z(x) of a client's data never changes within (or across) runs.
In deployment Flower 1.42 starts a fresh ClientApp process for every message, so an
in-memory cache dies with each message; this one also keeps each tensor in a file named by
a hash of its key (data set, partition, transform, backbone weights, device), written
atomically, so that only the first message on a node ever runs the backbone for it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pep_fedpt.atomic import atomic_write

FORMAT = "z1"  # bump when the stored layout or the meaning of z(x) changes

_LOG = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "pep-fedpt" / "features"


def resolve_cache_dir(run_value: str, node_value: object = None) -> Path:
    """The node's own setting wins (it knows its disks), then the run config's, then
    ``~/.cache/pep-fedpt/features``."""
    for value in (node_value, run_value):
        if value not in (None, ""):
            path = Path(str(value)).expanduser()
            if not path.is_absolute():
                raise ValueError(f"cache-dir = {value!r} must be an absolute path")
            return path
    return default_cache_dir()


def examples_digest(indices: np.ndarray, labels: np.ndarray) -> str:
    """Which examples, in which order, with which labels: part of the key, so that a change
    of the partitioning code (same config, other examples) can never reuse stale z(x)."""
    data = np.asarray(indices, dtype=np.int64).tobytes() + np.asarray(labels, np.int64).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def cache_file_name(key: str, fmt: str = FORMAT) -> str:
    """A fixed-length, file-system-safe name; the full key is stored inside and checked."""
    return hashlib.sha256(f"{fmt}|{key}".encode()).hexdigest()[:40] + ".pt"


class TensorStore:
    """One tensor by key: from memory, else from ``directory``, else computed and written
    there (atomically; a damaged or foreign file is recomputed and replaced).

    ``fmt`` names the stored layout and meaning (part of the file name and checked inside);
    ``dtype`` is what every stored tensor must be; ``keep_in_memory``: also hold each value
    in this object (z(x): small; decoded images: their owner holds them instead).
    """

    def __init__(
        self,
        directory: Path,
        fmt: str = FORMAT,
        dtype: torch.dtype = torch.float32,
        keep_in_memory: bool = True,
    ) -> None:
        self.directory = directory
        self.format = fmt
        self.dtype = dtype
        self.keep_in_memory = keep_in_memory
        self._memory: dict[str, torch.Tensor] = {}
        self.computed = 0  # how often ``compute`` ran: the cost the disk cache saves
        self.loaded = 0

    def path(self, key: str) -> Path:
        return self.directory / cache_file_name(key, self.format)

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._memory:
            return self._memory[key]
        value = self._load(key)
        if value is None:
            value = compute().detach().to("cpu", self.dtype).contiguous()
            self.computed += 1
            self._save(key, value)
        else:
            self.loaded += 1
        if self.keep_in_memory:
            self._memory[key] = value
        return value

    def _load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("format") != self.format or stored.get("key") != key:
                raise ValueError("the file belongs to another key or format")
            value = stored["features"]
            if not isinstance(value, torch.Tensor) or value.dtype != self.dtype:
                raise ValueError(f"no {self.dtype} tensor inside")
            return value
        except Exception as exc:  # a damaged cache file only costs one recomputation
            _LOG.warning("cache file %s unusable (%s); recomputing", path, exc)
            return None

    def _save(self, key: str, value: torch.Tensor) -> None:
        buffer = io.BytesIO()
        torch.save({"format": self.format, "key": key, "features": value}, buffer)
        try:
            atomic_write(self.path(key), buffer.getvalue())
        except OSError as exc:  # a read-only or full disk must not fail the round
            _LOG.warning("cache file %s not written (%s)", self.path(key), exc)


class FeatureStore(TensorStore):
    """z(x) by key (float32), kept in memory too: the store of the frozen query features."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, FORMAT, torch.float32, keep_in_memory=True)


@functools.lru_cache(maxsize=8)
def feature_store(directory: Path) -> FeatureStore:
    """One store per cache folder and process, shared by every partition it serves."""
    return FeatureStore(directory)
