"""FedMVP through the real ServerApp and ClientApps in one process (server_app/inprocess.py):
one round on the base->new protocol, a malformed reply, and a resumed run that ends as an
uninterrupted one. The tiny seeded CLIP on digits: the numbers mean nothing, the paths do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, MessageType
from helpers.data import fake_domain_tree
from helpers.run_helpers import CrashMidRound, load_json, load_state, on, recorder, run_server

from client_app.app import app as client_app
from pep_fedpt.config import RunConfig
from pep_fedpt.data.base_new import harmonic_mean
from server_app.checkpoint import load_checkpoint
from server_app.inprocess import InProcessGrid
from strategies import wire

pytestmark = pytest.mark.integration  # whole in-process runs

# Two clients with digits' five base classes in consecutive chunks of two, the last client
# the remainder: 0-1 and 2-4 (0-4 base, 5-9 new).
TWO = {10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)}


@pytest.fixture
def flat(tmp_path: Path) -> dict:
    config = RunConfig().to_flat()
    config.update(
        {
            "method": "fedmvp",
            "num-server-rounds": 1,
            "output-dir": str(tmp_path / "run"),
            "cache-dir": str(tmp_path / "features"),
            "fedmvp.classes-per-client": 2,
            "fedmvp.shots": 4,
            "train.batch-size": 8,
        }
    )
    return config


def test_one_round_through_the_real_apps(flat: dict, tmp_path: Path, task_identity) -> None:
    trains: list[Message] = []
    grid = run_server(flat, tamper={n: recorder(trains) for n in TWO}, nodes=TWO)
    assert [kind for kind, _ in grid.sent] == ["query"] * 2 + ["train"] * 2 + ["evaluate"] * 2

    out = tmp_path / "run"
    state = load_state(out)
    assert all(k.startswith(wire.FEDMVP_PREFIX) for k in set(state) - {wire.PROTO_COUNT})
    # The prototype round: 4 shots of each base class, in the released consecutive chunks
    # (0-1 and 2-4: every base class is trained); no new class anywhere.
    counts = state[wire.PROTO_COUNT]
    assert counts[:5].tolist() == [4] * 5 and counts[5:].sum() == 0
    # Equal weights (the paper): the new state is the plain mean of the two replies.
    for key in (k for k in state if k.startswith(wire.FEDMVP_PREFIX)):
        replies = [m.content[wire.ARRAYS][key].numpy().astype(np.float64) for m in trains]
        np.testing.assert_allclose(state[key], np.mean(replies, axis=0), rtol=1e-5, atol=1e-7)
    sizes = sorted(m.content[wire.METRICS][wire.NUM_EXAMPLES] for m in trains)
    assert sizes == [8, 12]  # 2 and 3 classes of 4 shots
    assert all(m.content[wire.METRICS][wire.ADAPTERS_ON] in (0, 1) for m in trains)

    rows = load_json(out / "metrics.json")
    assert [row["round"] for row in rows] == [0, 1]
    assert {"server/base-accuracy", "server/new-accuracy"} <= set(rows[0])
    assert "server/hm" not in rows[0]  # no client evaluated the initial state
    last = rows[1]
    assert last["server/local-accuracy"] == last["evaluate/mean-client-accuracy"]
    assert last["server/hm"] == pytest.approx(
        harmonic_mean(
            last["server/local-accuracy"],
            last["server/base-accuracy"],
            last["server/new-accuracy"],
        )
    )
    assert last["train/bytes-up"] == sum(
        sum(a.numpy().nbytes for a in m.content[wire.ARRAYS].values()) for m in trains
    )
    summary = (out / "summary.md").read_text()
    assert "| local acc | base acc | new acc | HM |" in summary


def test_a_malformed_fedmvp_reply_is_dropped_with_a_log_line(
    flat: dict, tmp_path: Path, task_identity, caplog
) -> None:
    def bad_switch(reply: Message) -> Message:
        reply.content[wire.METRICS][wire.ADAPTERS_ON] = 7
        return reply

    nodes = {10 + p: {"partition-id": p, "num-partitions": 3} for p in range(3)}
    flat["fedmvp.classes-per-client"] = 1
    with caplog.at_level(logging.WARNING):
        run_server(flat, tamper={12: on(MessageType.TRAIN, bad_switch)}, nodes=nodes)
    dropped = load_json(tmp_path / "run" / "dropped.json")
    assert [(d["round"], d["node"]) for d in dropped] == [(1, 12)]
    assert "adapters-on = 7" in dropped[0]["reason"]
    assert any("dropped reply from node 12" in r.getMessage() for r in caplog.records)
    assert load_json(tmp_path / "run" / "metrics.json")[1]["train/valid-replies"] == 2


# Four partitions (one base class each); one is held out by
# data.held-out-fraction = 0.25 with seed 0 (partition 3), so it never trains and evaluates apart.
FOUR = {10 + p: {"partition-id": p, "num-partitions": 4} for p in range(4)}


def test_a_resumed_fedmvp_run_ends_as_an_uninterrupted_one(
    flat: dict, tmp_path: Path, task_identity
) -> None:
    """Crash in round 3 of 4, 2 of 3 training nodes sampled per round; the adapter switches
    (on after round 1: the loss of one class is tiny) must come back from the checkpoint."""
    flat.update(
        {
            "num-server-rounds": 4,
            "fed.fraction-train": 0.67,
            "fedmvp.classes-per-client": 1,
            "data.held-out-fraction": 0.25,
        }
    )
    whole = dict(flat, **{"output-dir": str(tmp_path / "whole")})
    uninterrupted = run_server(whole, nodes=FOUR)
    partitions = load_json(tmp_path / "whole" / "partition.json")["partitions"]
    assert [e["partition-id"] for e in partitions if e["held-out"]] == [3]
    assert ("train", 13) not in uninterrupted.sent and ("evaluate", 13) in uninterrupted.sent

    broken_dir = tmp_path / "broken"
    broken = dict(flat, **{"output-dir": str(broken_dir)})
    crash = CrashMidRound(crash_round=3, num_nodes=len(FOUR))
    grid = InProcessGrid(client_app, FOUR, broken)
    with pytest.raises(RuntimeError, match="killed mid-round"):
        run_server(broken, {node: crash for node in FOUR}, grid=grid)
    saved = load_checkpoint(broken_dir)
    assert saved.server_round == 2
    assert any(saved.strategy["adapters-on"].values())  # the switches are in the checkpoint

    resume = dict(flat, **{"output-dir": "", "resume-from": str(broken_dir)})
    resumed = run_server(resume, nodes=FOUR)
    expected, got = load_state(tmp_path / "whole"), load_state(broken_dir)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert load_json(broken_dir / "metrics.json") == load_json(tmp_path / "whole" / "metrics.json")
    assert resumed.sent == uninterrupted.sent[-len(resumed.sent) :]
    assert ("query", 10) not in resumed.sent


def test_zero_shot_clip_scores_the_same_bank_without_training(
    flat: dict, tmp_path: Path, task_identity
) -> None:
    """zeroshot-clip: no trainable state; every round scores the same, Local/Base/New/HM."""
    flat.update({"method": "zeroshot-clip", "num-server-rounds": 2})
    grid = run_server(flat, nodes=TWO)
    assert [kind for kind, _ in grid.sent].count("train") == 4
    out = tmp_path / "run"
    assert set(load_state(out)) == {wire.PROTO_COUNT}
    rows = load_json(out / "metrics.json")
    assert rows[0]["server/base-accuracy"] == rows[1]["server/base-accuracy"]
    assert rows[1]["server/new-accuracy"] == rows[2]["server/new-accuracy"]
    assert rows[1]["server/hm"] == rows[2]["server/hm"]
    assert rows[1]["train/bytes-up"] == 0 and rows[1]["train/valid-replies"] == 2


def test_one_leave_one_domain_out_round_on_a_fake_pacs(
    flat: dict, tmp_path: Path, task_identity
) -> None:
    """Sketch held out; one client per source domain, each with its domain's template;
    the server scores the sketch examples of the central test split (Target)."""
    from pep_fedpt.data.domainbed import DOMAIN_SETS

    data = tmp_path / "pacs"
    fake_domain_tree(data, DOMAIN_SETS["pacs"].domains, ("dog", "elephant", "guitar"))
    flat.update(
        {
            "data.dataset": "pacs",
            "data.data-dir": str(data),
            "data.central-test-fraction": 0.5,
            "fedmvp.protocol": "domain",
            "fedmvp.target-domain": "sketch",
            "fedmvp.shots": 1,
            "fedmvp.attributes-dir": str(tmp_path / "attributes"),
        }
    )
    (tmp_path / "attributes").mkdir()
    phrases = {"dog": ["a wagging tail"], "elephant": ["a trunk"], "guitar": ["six strings"]}
    (tmp_path / "attributes" / "pacs.json").write_text(json.dumps(phrases))
    nodes = {10 + p: {"partition-id": p, "num-partitions": 3} for p in range(3)}
    run_server(flat, nodes=nodes)
    rows = load_json(tmp_path / "run" / "metrics.json")
    assert 0.0 <= rows[1]["server/target-accuracy"] <= 1.0
    assert rows[1]["server/local-accuracy"] == rows[1]["evaluate/mean-client-accuracy"]
    assert rows[1]["evaluate/num-clients"] == 3 and "server/hm" not in rows[1]
    assert "| local acc | target acc |" in (tmp_path / "run" / "summary.md").read_text()
    counts = load_state(tmp_path / "run")[wire.PROTO_COUNT]
    # 1 shot of each class a client's share holds: "dog" has one image per domain, and
    # the central carve takes half of them, so not every source domain keeps one
    assert counts[1:].tolist() == [3, 3] and 1 <= counts[0] <= 3


def test_float16_messages_halve_the_bytes_each_way(
    flat: dict, tmp_path: Path, task_identity
) -> None:
    """fed.wire-dtype = "float16" (every method's): the server sends half precision, FedMVP's
    clients reply in it; the state on disk stays float32."""
    rows = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        run_server({**flat, "output-dir": str(out), "fed.wire-dtype": dtype}, nodes=TWO)
        rows[dtype] = load_json(out / "metrics.json")[1]
        assert all(
            v.dtype == np.float32 for k, v in load_state(out).items() if k != wire.PROTO_COUNT
        )
    for key in ("train/bytes-down", "train/bytes-up", "evaluate/bytes-down"):
        assert rows["float16"][key] * 2 == rows["float32"][key], key
