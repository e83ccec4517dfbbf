"""PEPFedPT plugged into someone else's Flower app (docs/using-the-strategy.md).

The app is written into tmp_path by ``helpers/plugin_app.py``: its own pyproject, ServerApp
and a numpy-only ClientApp that follows ``strategies/wire.py``; none of this project's apps.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from helpers.deployment import MakeDeployment, make_deployment
from helpers.plugin_app import write_plugin_app

from server_app.inprocess import InProcessGrid, set_task_identity

__all__ = ["make_deployment"]  # the fixture, imported for pytest

RUN_CONFIG = {
    "num-server-rounds": 2,
    "num-classes": 3,
    "dim": 8,
    "min-nodes": 2,
    "round-timeout": 60.0,
    "wait-timeout": 60.0,
}


@pytest.fixture
def plugin_app(tmp_path: Path) -> Iterator[Path]:
    root = write_plugin_app(tmp_path / "toy-app")
    sys.path.insert(0, str(root))
    set_task_identity()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.startswith("toy_prompts")]:
            del sys.modules[name]


def test_strategy_runs_in_a_foreign_app(plugin_app: Path, tmp_path: Path) -> None:
    client = importlib.import_module("toy_prompts.client").app
    server = importlib.import_module("toy_prompts.server").app
    result_file = tmp_path / "result.json"
    run_config = {**RUN_CONFIG, "result-file": str(result_file)}
    grid = InProcessGrid(
        client,
        {node: {"partition-id": node - 1, "num-partitions": 3} for node in (1, 2, 3)},
        run_config,
    )

    server(
        grid,
        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config),
    )

    result = json.loads(result_file.read_text())
    # The prototype round, then 2 x (train, evaluate) to each of the 3 nodes.
    kinds = [kind for kind, _ in grid.sent]
    assert kinds[:3] == ["query"] * 3
    assert kinds.count("train") == 6 and kinds.count("evaluate") == 6
    rounds = result["rounds"]
    assert rounds["2"]["train/valid-replies"] == 3
    assert rounds["2"]["train/dropped-replies"] == 0
    assert rounds["2"]["evaluate/global-accuracy"] > 0.5  # it learns, not just runs
    arrays = {k: np.asarray(v) for k, v in result["arrays"].items()}
    assert set(arrays) == {
        "prompt.shared",
        "prompt.class.1",
        "head.weight",
        "head.bias",
        "proto.mean",
        "proto.count",
    }
    assert arrays["proto.count"].sum() == 3 * 61


@pytest.mark.deploy
@pytest.mark.timeout(180)
def test_strategy_in_a_real_deployment(make_deployment: MakeDeployment, tmp_path: Path) -> None:
    """The same foreign app, run with ``flwr run`` on a SuperLink and two SuperNodes: its
    FAB carries a copy of ``strategies/`` (a deployment need not have this project)."""
    app = write_plugin_app(tmp_path / "toy-app-fab", vendor_strategies=True)
    d = make_deployment(19060)
    d.start_superlink()
    for k in range(2):
        d.start_supernode(f"supernode-{k}", k, 2, port=19070 + k)
    for k in range(2):
        d.wait_connected(f"supernode-{k}")
    d.write_connection("toy")
    result_file = tmp_path / "result.json"
    run_id = d.submit("toy", {"result-file": str(result_file)}, app=app)
    status = d.wait_finished("toy", run_id, timeout=150)

    assert status == "finished:completed", d.describe()
    rounds = json.loads(result_file.read_text())["rounds"]
    assert rounds["2"]["train/valid-replies"] == 2
