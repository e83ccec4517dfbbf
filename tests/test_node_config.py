"""The per-node ``data-dir`` in a SuperNode's node config overrides ``data.data-dir``."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client_app.app import _node
from pep_fedpt.config import ConfigError


def _context(run_config: dict, node_config: dict) -> Context:
    return Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config
    )


def test_node_data_dir_overrides_run_config(tiny_run_config: dict, tmp_path: Path) -> None:
    run_config = dict(tiny_run_config, **{"data.data-dir": "/nonexistent/run-config-dir"})
    node = {"partition-id": 0, "num-partitions": 2, "data-dir": str(tmp_path)}
    _, client = _node(_context(run_config, node))
    assert client.cfg.data.data_dir == str(tmp_path)


def test_without_node_data_dir_the_run_config_wins(tiny_run_config: dict) -> None:
    run_config = dict(tiny_run_config, **{"data.data-dir": "/srv/shared-data"})
    _, client = _node(_context(run_config, {"partition-id": 1, "num-partitions": 2}))
    assert client.cfg.data.data_dir == "/srv/shared-data"


def test_relative_node_data_dir_is_refused(tiny_run_config: dict) -> None:
    node = {"partition-id": 0, "num-partitions": 2, "data-dir": "data"}
    with pytest.raises(ConfigError, match="absolute path"):
        _node(_context(tiny_run_config, node))
