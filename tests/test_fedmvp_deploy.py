"""FedMVP outside simulation, as one more method: a real SuperLink and two SuperNodes on
127.0.0.1 (scripts/deploy/, tests/helpers/deployment.py). The deploy tier; ports 19060-19071.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.deployment import MakeDeployment, make_deployment

pytestmark = pytest.mark.deploy
__all__ = ["make_deployment"]  # the fixture, imported for pytest

# One round of the tiny seeded CLIP on digits, base->new: two clients, two classes each.
FEDMVP_RUN = {
    "method": "fedmvp",
    "num-server-rounds": 1,
    "fedmvp.classes-per-client": 2,
    "fedmvp.shots": 4,
    "train.batch-size": 8,
    "fed.min-train-nodes": 2,
    "fed.min-evaluate-nodes": 2,
    "fed.min-available-nodes": 2,
}


@pytest.mark.timeout(300)
def test_fedmvp_on_a_superlink_with_two_supernodes(
    make_deployment: MakeDeployment, tmp_path: Path
) -> None:
    d = make_deployment(19060)
    d.start_superlink()
    for k in range(2):
        d.start_supernode(f"supernode-{k}", k, 2, port=19070 + k)
    node_ids = {d.wait_connected(f"supernode-{k}") for k in range(2)}
    assert len(node_ids) == 2
    d.write_connection("fedmvp-test")

    out = tmp_path / "run"
    run_id = d.submit("fedmvp-test", {**FEDMVP_RUN, "output-dir": str(out)})
    status = d.wait_finished("fedmvp-test", run_id, timeout=240)

    assert status == "finished:completed", d.describe()
    last = json.loads((out / "metrics.json").read_text())[-1]
    assert last["round"] == 1 and last["train/valid-replies"] == 2
    for key in ("server/local-accuracy", "server/base-accuracy", "server/new-accuracy"):
        assert 0.0 <= last[key] <= 1.0, key
    assert "| local acc | base acc | new acc | HM |" in (out / "summary.md").read_text()
