"""Resume: a run that crashes in round 3 of 4 and is resumed ends exactly as one that never
stopped (state arrays, metrics, refusals, and which nodes were asked what).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from helpers.run_helpers import NODES, CrashMidRound, load_json, load_state, run_server

from client_app.app import app as client_app
from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import ConfigError, RunConfig
from server_app.app import load_resume_point
from server_app.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    config_differences,
    load_checkpoint,
    write_checkpoint,
)
from server_app.inprocess import InProcessGrid
from strategies import PEPFedPT


@pytest.fixture
def flat(tiny_run_config: dict, tmp_path: Path) -> dict:
    """4 rounds, 2 of 3 nodes sampled per round, so that the sampler's RNG matters."""
    config = dict(tiny_run_config)
    config.update(
        {
            "num-server-rounds": 4,
            "fed.fraction-train": 0.67,
            "fed.min-train-nodes": 2,
            "cache-dir": str(tmp_path / "features"),
        }
    )
    return config


# A 4th node on partition 6, which data.held-out-fraction = 0.125 holds out (seed 0).
WITH_HELD_OUT = {**NODES, 13: {"partition-id": 6, "num-partitions": 8}}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("restart", "extra"),
    [
        ("all-processes", {}),
        ("server-only", {}),
        # Prototypes refreshed in round 3 (the resumed run's first), a held-out node, and
        # evaluation in rounds 0, 2 and 4 only (fed.evaluate-every = 2): the resumed run's
        # first round does not evaluate.
        (
            "all-processes",
            {
                "fed.prototype-refresh-every": 2,
                "data.held-out-fraction": 0.125,
                "fed.evaluate-every": 2,
            },
        ),
    ],
    ids=["all-processes", "server-only", "refresh-and-held-out"],
)
def test_resumed_run_ends_as_an_uninterrupted_one(
    restart: str, extra: dict, flat: dict, tmp_path: Path, task_identity: None
) -> None:
    flat.update(extra)
    nodes = WITH_HELD_OUT if extra else NODES
    whole = dict(flat, **{"output-dir": str(tmp_path / "whole")})
    uninterrupted = run_server(whole, nodes=nodes)

    broken_dir = tmp_path / "broken"
    broken = dict(flat, **{"output-dir": str(broken_dir)})
    every = int(flat.get("fed.evaluate-every", 1))
    crash = CrashMidRound(crash_round=3, num_nodes=len(nodes), evaluate_every=every)
    grid = InProcessGrid(client_app, nodes, broken)
    with pytest.raises(RuntimeError, match="killed mid-round"):
        run_server(broken, {node: crash for node in nodes}, grid=grid)
    assert load_checkpoint(broken_dir).server_round == 2
    assert [row["round"] for row in load_json(broken_dir / "metrics.json")] == [0, 1, 2]
    assert not [p.name for p in broken_dir.iterdir() if p.name.startswith(".")]  # no temp

    # all-processes: new ClientApp contexts, so no node holds the prototypes any more;
    # server-only: the nodes keep theirs, and get them again anyway.
    resume = dict(flat, **{"output-dir": "", "resume-from": str(broken_dir)})
    resumed = run_server(resume, nodes=nodes, grid=None if restart == "all-processes" else grid)

    expected, got = load_state(tmp_path / "whole"), load_state(broken_dir)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    rows_expected = load_json(tmp_path / "whole" / "metrics.json")
    rows_got = load_json(broken_dir / "metrics.json")
    assert [r["round"] for r in rows_got] == [0, 1, 2, 3, 4]
    # The same rows, except that the first resumed round sends the prototypes again to
    # every node (it cannot know which kept them): more bytes down, and nothing else.
    resent = ("bytes-down", "train/bytes-down", "evaluate/bytes-down")
    assert rows_got[3]["bytes-down"] >= rows_expected[3]["bytes-down"]
    if not extra:  # without a refresh due in round 3, the uninterrupted run sent none
        assert rows_got[3]["bytes-down"] > rows_expected[3]["bytes-down"]
    for row in (rows_got[3], rows_expected[3]):
        for key in resent:
            row.pop(key, None)  # no evaluate phase in a round that does not evaluate
    assert rows_got == rows_expected
    assert load_json(broken_dir / "dropped.json") == load_json(tmp_path / "whole" / "dropped.json")
    # No second prototype round (unless a refresh is due), and rounds 3-4 asked the same
    # nodes in the same order.
    assert (("query", 10) in resumed.sent) == bool(extra)
    assert resumed.sent == uninterrupted.sent[-len(resumed.sent) :]
    if extra:  # the held-out node evaluated, never trained, and is summarised apart
        assert ("train", 13) not in uninterrupted.sent
        assert ("evaluate", 13) in resumed.sent
        assert "evaluate/held-out-accuracy" in rows_got[-1]
        # Clients and server evaluated in rounds 0, 2 and 4 only; every round was recorded.
        evaluated = [int(r["round"]) for r in rows_got if "server/accuracy" in r]
        assert evaluated == [0, 2, 4]
        assert [int(r["round"]) for r in rows_got if "evaluate/global-accuracy" in r] == [2, 4]
    assert load_checkpoint(broken_dir).server_round == 4


def test_resume_refuses_a_changed_config(tiny_run_config: dict, tmp_path: Path) -> None:
    saved = RunConfig.from_flat(tiny_run_config).to_flat()
    write_checkpoint(tmp_path, Checkpoint(1, {"head.bias": np.zeros(3)}, {}, [], saved))
    changed = dict(tiny_run_config, **{"train.lr": 0.5, "resume-from": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.01 -> 0\.5"):
        load_resume_point(RunConfig.from_flat(changed))
    more_rounds = dict(tiny_run_config, **{"num-server-rounds": 9, "resume-from": str(tmp_path)})
    assert load_resume_point(RunConfig.from_flat(more_rounds)) is not None


def test_resume_from_a_folder_without_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=CHECKPOINT):
        load_checkpoint(tmp_path)


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "prompt.shared": rng.standard_normal((4, 8)).astype(np.float32),
        "proto.count": np.arange(5, dtype=np.int64),
    }
    rows = [{"round": 0.0, "server/accuracy": 0.1, "evaluate/client-accuracies": [0.5, 1 / 3]}]
    write_checkpoint(tmp_path, Checkpoint(3, arrays, {"x": [1, 2]}, rows, {"seed": 0}))
    back = load_checkpoint(tmp_path)
    assert (back.server_round, back.strategy, back.rows, back.config) == (
        3,
        {"x": [1, 2]},
        rows,
        {"seed": 0},
    )
    for key, value in arrays.items():
        assert back.arrays[key].dtype == value.dtype
        np.testing.assert_array_equal(back.arrays[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


def test_strategy_state_survives_json_and_restores_the_sampler() -> None:
    before = PEPFedPT(seed=7)
    before._rng.random()  # some rounds have sampled already
    before._proto_version = 2
    before._node_counts = {10: [1, 2], 11: [0, 3]}
    before._node_proto_version = {10: 2, 11: 2}
    before.held_out_nodes = {13}
    before.partitions = {0: {"node-id": 10, "held-out": False, "class-counts": [1, 2]}}
    before.dropped = [(1, 12, "error reply: boom")]
    before.round_metrics = {1: {"train/train-loss": 2.0, "evaluate/client-accuracies": [0.5]}}

    after = PEPFedPT(seed=0)
    after.restore(json.loads(json.dumps(before.checkpoint())))

    nodes = list(range(20))
    assert after._rng.sample(nodes, 5) == before._rng.sample(nodes, 5)
    assert after._proto_version == 2
    assert after._node_counts == before._node_counts
    assert after.held_out_nodes == {13}
    assert after.partitions == before.partitions
    assert after._node_proto_version == {}  # restarted nodes get the prototypes again
    assert after.dropped == before.dropped
    assert after.round_metrics == before.round_metrics


def test_a_checkpoint_writes_each_nodes_counts_once_and_restores_them_all() -> None:
    before = PEPFedPT(seed=7)
    before.partitions = {
        0: {"node-id": 10, "held-out": False, "class-counts": [1, 2]},
        1: {"node-id": 14, "held-out": False, "class-counts": [4, 0]},  # 11 came back as 14
        2: {"node-id": 13, "held-out": True, "class-counts": [5, 5]},
    }
    before._node_counts = {10: [1, 2], 11: [4, 0], 14: [4, 0], 12: [0, 3]}
    before.held_out_nodes = {13}
    written = json.loads(json.dumps(before.checkpoint()))
    # 10 and 14 are in their partition entries; 11 (replaced) and 12 (no partition id) not.
    assert written["node-counts"] == {"11": [4, 0], "12": [0, 3]}
    after = PEPFedPT(seed=0)
    after.restore(written)
    assert after._node_counts == before._node_counts
    assert 13 not in after._node_counts  # a held-out node's counts are never verified ones


def test_config_differences_ignores_what_a_resume_may_change() -> None:
    saved = {"seed": 0, "num-server-rounds": 2, "output-dir": "/a", "fed.round-timeout": 1.0}
    now = {"seed": 0, "num-server-rounds": 4, "output-dir": "", "resume-from": "/a"}
    assert config_differences(saved, now) == []
    assert config_differences({"seed": 0}, {"seed": 1}) == ["seed: 0 -> 1"]


def test_a_run_saved_before_a_key_existed_resumes_at_that_keys_default() -> None:
    current = RunConfig().to_flat()
    saved = {k: v for k, v in current.items() if not k.startswith("dp.")}
    assert config_differences(saved, current) == []
    changed = {**current, "dp.mode": "server-fixed"}
    assert config_differences(saved, changed) == ["dp.mode: 'off' -> 'server-fixed'"]


def test_random_state_json_round_trip_is_python_compatible() -> None:
    state = random.Random(5).getstate()
    version, internal, gauss = json.loads(json.dumps([state[0], list(state[1]), state[2]]))
    assert (version, tuple(internal), gauss) == state


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, Checkpoint(2, {"a": np.ones(2)}, {}, [], {}))
    with pytest.raises(TypeError):
        atomic_write(tmp_path / CHECKPOINT, object())  # type: ignore[arg-type]  # dies in write
    assert load_checkpoint(tmp_path).server_round == 2
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


class _Connected:
    """The one grid call sampling makes: which nodes are connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _strategy_with_partitions(node_of: dict[int, int]) -> PEPFedPT:
    strategy = PEPFedPT(seed=3, min_available_nodes=1)
    for pid, node in node_of.items():
        strategy.partitions[pid] = {"node-id": node, "held-out": False, "class-counts": [1]}
        strategy._node_counts[node] = [1]
    return strategy


def test_nodes_are_ordered_by_partition_then_nodes_without_one_by_id() -> None:
    strategy = _strategy_with_partitions({0: 900, 1: 5, 2: 77})
    assert strategy.in_identity_order([5, 3, 77, 900, 1]) == [900, 5, 77, 1, 3]


def test_the_same_seed_samples_the_same_partitions_whatever_the_node_ids() -> None:
    one = _strategy_with_partitions({pid: 100 + pid for pid in range(8)})
    other = _strategy_with_partitions({pid: 9_000 - 13 * pid for pid in range(8)})
    grid_one, grid_other = _Connected(list(one._node_counts)), _Connected(list(other._node_counts))
    partition_of = [
        {node: pid for pid, entry in s.partitions.items() for node in [entry["node-id"]]}
        for s in (one, other)
    ]
    for _ in range(5):  # five rounds of half the clients
        picked = [
            [partition_of[i][node] for node in s._sample(grid, 0.5, 1, verified_only=True)]
            for i, (s, grid) in enumerate(((one, grid_one), (other, grid_other)))
        ]
        assert picked[0] == picked[1]
        assert len(picked[0]) == 4


@pytest.mark.integration
def test_an_evaluation_only_run_resumed_under_new_node_ids_evaluates_the_same_clients(
    flat: dict, tmp_path: Path, task_identity: None
) -> None:
    """fed.fraction-train = 0: no round trains, so only the admission of late nodes can
    tell the resumed run which partition (and which held-out client) each new id is."""
    flat.update(
        {
            "fed.fraction-train": 0.0,
            "fed.fraction-evaluate": 0.67,
            "fed.min-evaluate-nodes": 1,
            "data.held-out-fraction": 0.125,
        }
    )
    renumbered = {node + 10: config for node, config in WITH_HELD_OUT.items()}
    partition = {
        node: int(config["partition-id"])
        for nodes in (WITH_HELD_OUT, renumbered)
        for node, config in nodes.items()
    }
    uninterrupted = run_server(
        dict(flat, **{"output-dir": str(tmp_path / "whole")}), nodes=WITH_HELD_OUT
    )
    evaluated = [partition[node] for kind, node in uninterrupted.sent if kind == "evaluate"]
    per_round = len(evaluated) // 4  # rounds 1-4 evaluate on the clients
    assert per_round * 4 == len(evaluated) and per_round == 3  # 2 of 3 clients + the held-out one

    broken_dir = tmp_path / "broken"
    seen = {"evaluated": 0}

    def crash_in_round_3(reply: Message) -> Message:
        if reply.metadata.message_type == "evaluate":
            seen["evaluated"] += 1
            if seen["evaluated"] > 2 * per_round:
                raise RuntimeError("server process killed mid-round")
        return reply

    with pytest.raises(RuntimeError, match="killed mid-round"):
        run_server(
            dict(flat, **{"output-dir": str(broken_dir)}),
            {node: crash_in_round_3 for node in WITH_HELD_OUT},
            nodes=WITH_HELD_OUT,
        )
    assert load_checkpoint(broken_dir).server_round == 2

    resume = dict(flat, **{"output-dir": "", "resume-from": str(broken_dir)})
    resumed = run_server(resume, nodes=renumbered)
    assert [kind for kind, _ in resumed.sent[:4]] == ["query"] * 4  # every new id admitted
    again = [partition[node] for kind, node in resumed.sent if kind == "evaluate"]
    assert again == evaluated[-2 * per_round :]
    rows_expected = load_json(tmp_path / "whole" / "metrics.json")
    rows_got = load_json(broken_dir / "metrics.json")
    for row in (*rows_got, *rows_expected):  # the admission's queries, prototypes sent again
        for key in [key for key in row if key.endswith(("bytes-down", "bytes-up"))]:
            del row[key]
    assert rows_got == rows_expected
    assert "evaluate/held-out-accuracy" in rows_got[-1]
