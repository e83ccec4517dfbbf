"""Held-out clients end to end, the accuracy summaries, and the partition/accuracy files."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from helpers.data import CIFAR10_ARCHIVE

from client_app.app import app as client_app
from pep_fedpt.data.partition import held_out_partitions
from server_app.app import app as server_app
from server_app.inprocess import InProcessGrid
from strategies import wire
from strategies.summaries import evaluation_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_evaluation_summary_hand_computed() -> None:
    summary = evaluation_summary(
        [3, 5, 0, 2, 6], [4, 10, 0, 8, 8], [False, False, False, True, True]
    )
    assert summary == pytest.approx(
        {
            "global-accuracy": 8 / 14,
            "mean-client-accuracy": (3 / 4 + 5 / 10) / 2,
            "worst-client-accuracy": 0.5,
            "num-clients": 2.0,  # the client without test examples is left out
            "held-out-accuracy": 8 / 16,
            "held-out-mean-client-accuracy": (2 / 8 + 6 / 8) / 2,
            "held-out-worst-client-accuracy": 0.25,
            "held-out-num-clients": 2.0,
        }
    )
    assert set(evaluation_summary([1], [2], [False])) == {
        "global-accuracy",
        "mean-client-accuracy",
        "worst-client-accuracy",
        "num-clients",
    }
    assert evaluation_summary([1], [4], [True]) == {
        "held-out-accuracy": 0.25,
        "held-out-mean-client-accuracy": 0.25,
        "held-out-worst-client-accuracy": 0.25,
        "held-out-num-clients": 1.0,
    }
    with pytest.raises(ValueError, match="one flag per client"):
        evaluation_summary([1], [2], [])


# digits: per class 178, 182, 177, 183 examples (classes 0..3). The server's central split
# takes round(0.2 n) (36, 36, 35, 37), each client's local test round(0.2 pool) of the
# rest (28, 29, 28, 29); pathological s = 1 (first-deterministic) gives client k class k.
HAND_TRAIN_COUNTS = [114, 117, 114, 117]


@pytest.mark.integration
def test_held_out_clients_end_to_end(
    task_identity: None, tiny_run_config: dict, tmp_path: Path
) -> None:
    flat = dict(tiny_run_config)
    flat.update(
        {
            "num-server-rounds": 2,
            "data.partitioner": "pathological",
            "data.classes-per-client": 1,
            "data.held-out-fraction": 0.25,
        }
    )
    held = held_out_partitions(4, 0.25, flat["seed"])
    assert len(held) == 1
    (held_pid,) = held
    nodes = {100 + k: {"partition-id": k, "num-partitions": 4} for k in range(4)}
    replies: list[tuple[int, dict]] = []

    def spy(node_id: int):
        def record(reply: Message) -> Message:
            if reply.metadata.message_type == MessageType.EVALUATE and not reply.has_error():
                replies.append((node_id, dict(reply.content[wire.METRICS])))
            return reply

        return record

    grid = InProcessGrid(client_app, nodes, flat, tamper={n: spy(n) for n in nodes})
    server_app(
        grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat)
    )

    held_node = 100 + held_pid
    trained = {node for kind, node in grid.sent if kind == MessageType.TRAIN}
    assert trained == set(nodes) - {held_node}  # two rounds, never the held-out node
    assert (MessageType.QUERY, held_node) in grid.sent
    assert (MessageType.EVALUATE, held_node) in grid.sent

    out = Path(flat["output-dir"])
    rows = json.loads((out / "metrics.json").read_text())
    last = rows[-1]
    final = [m for node, m in replies[-4:]]
    assert sorted(node for node, _ in replies[-4:]) == sorted(nodes)
    held_reply = next(m for node, m in replies[-4:] if node == held_node)
    assert held_reply["held-out"] == 1
    assert last["evaluate/held-out-accuracy"] == pytest.approx(
        held_reply["correct"] / held_reply["num-examples"]
    )
    assert last["evaluate/held-out-num-clients"] == 1.0
    trainers = [m for m in final if m["held-out"] == 0]
    assert last["evaluate/num-clients"] == 3.0
    assert last["evaluate/global-accuracy"] == pytest.approx(
        sum(m["correct"] for m in trainers) / sum(m["num-examples"] for m in trainers)
    )
    accuracies = [m["correct"] / m["num-examples"] for m in trainers]
    assert last["evaluate/mean-client-accuracy"] == pytest.approx(np.mean(accuracies))
    assert last["evaluate/worst-client-accuracy"] == pytest.approx(min(accuracies))
    by_pid = {nodes[node]["partition-id"]: m for node, m in replies[-4:]}
    assert last["evaluate/client-partition-ids"] == sorted(set(range(4)) - {held_pid})
    assert last["evaluate/held-out-client-partition-ids"] == [held_pid]
    assert last["evaluate/client-accuracies"] == pytest.approx(
        [by_pid[p]["correct"] / by_pid[p]["num-examples"] for p in sorted(set(range(4)) - held)]
    )
    assert "server/accuracy" in last

    partition = json.loads((out / "partition.json").read_text())
    assert partition["dataset"] == "digits" and partition["partitioner"] == "pathological"
    assert len(partition["classes"]) == 10
    for k, entry in enumerate(partition["partitions"]):
        expected = [0] * 10
        expected[k] = HAND_TRAIN_COUNTS[k]
        assert entry["partition-id"] == k and entry["node-id"] == 100 + k
        assert entry["held-out"] == (k == held_pid)
        assert entry["train-class-counts"] == expected
        assert entry["num-examples"] == HAND_TRAIN_COUNTS[k]
    for name in ("partition.png", "accuracy.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert "held-out acc" in (out / "summary.md").read_text()

    # The held-out client itself refuses to train, whoever asks it.
    message = Message(
        content=RecordDict({wire.CONFIG: ConfigRecord({wire.CFG_SERVER_ROUND: 1})}),
        message_type=MessageType.TRAIN,
        dst_node_id=held_node,
    )
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "is held out" in reply.error.reason


def extract_cifar10_subset(target: Path, per_class: dict[str, int]) -> Path:
    """The first ``per_class[split]`` JPEGs of every class of the shared archive."""
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"{CIFAR10_ARCHIVE} is absent: the shared CIFAR-10 JPEG archive")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR10_ARCHIVE) as archive:
        for member in archive:
            parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
            if not member.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) < per_class[parts[1]]:
                taken[key] = taken.get(key, 0) + 1
                archive.extract(member, target, filter="data")
    return target / "cifar10"


@pytest.mark.integration
def test_cifar10_jpeg_run_with_held_out_client(
    task_identity: None, tiny_run_config: dict, tmp_path: Path
) -> None:
    """Real images end to end: the shared archive's layout, Dirichlet split, a held-out client."""
    root = extract_cifar10_subset(tmp_path / "data", {"train": 12, "test": 4})
    flat = dict(tiny_run_config)
    flat.update(
        {
            "data.dataset": "cifar10-folder",
            "data.data-dir": str(root),
            "data.alpha": 1.0,
            "data.min-partition-size": 5,
            "data.held-out-fraction": 0.34,
        }
    )
    nodes = {k + 1: {"partition-id": k, "num-partitions": 3} for k in range(3)}
    grid = InProcessGrid(client_app, nodes, flat)
    server_app(
        grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat)
    )

    (held_pid,) = held_out_partitions(3, 0.34, flat["seed"])
    assert (MessageType.TRAIN, held_pid + 1) not in grid.sent
    out = Path(flat["output-dir"])
    partition = json.loads((out / "partition.json").read_text())
    assert partition["classes"][0] == "airplane"
    counts = np.array([p["train-class-counts"] for p in partition["partitions"]])
    assert counts.shape == (3, 10)
    # The pool is the 120 training images; every client gives round(0.2 n_c) of each
    # class it holds to its local test split, so at most 120 remain for training.
    assert 0.7 * 120 <= counts.sum() < 120
    row = json.loads((out / "metrics.json").read_text())[-1]
    for key in ("evaluate/global-accuracy", "evaluate/held-out-accuracy", "server/accuracy"):
        assert 0.0 <= row[key] <= 1.0
    assert (out / "accuracy.png").is_file() and (out / "partition.png").is_file()


def test_partition_json_from_reports(tmp_path: Path) -> None:
    """partition.json lists the reports by partition id, with hand-summed sizes."""
    from pep_fedpt.config import RunConfig
    from server_app.results import RunRecorder

    cfg = RunConfig.from_flat({"data.partitioner": "iid", "seed": 3})
    recorder = RunRecorder(tmp_path, cfg)
    reports = {
        2: {"node-id": 7, "held-out": True, "class-counts": [0, 4, 1]},
        0: {"node-id": 9, "held-out": False, "class-counts": [5, 0, 2]},
    }
    recorder.record_partition(reports, ["a", "b", "c"])
    assert json.loads((tmp_path / "partition.json").read_text()) == {
        "dataset": "digits",
        "partitioner": "iid",
        "seed": 3,
        "classes": ["a", "b", "c"],
        "partitions": [
            {
                "partition-id": 0,
                "node-id": 9,
                "held-out": False,
                "num-examples": 7,
                "train-class-counts": [5, 0, 2],
            },
            {
                "partition-id": 2,
                "node-id": 7,
                "held-out": True,
                "num-examples": 5,
                "train-class-counts": [0, 4, 1],
            },
        ],
    }
    assert (tmp_path / "partition.png").read_bytes().startswith(PNG_MAGIC)
    recorder.record_round(1, {"evaluate/global-accuracy": 0.5, "server/accuracy": 0.25}, {}, [])
    recorder.plot_accuracy()
    assert (tmp_path / "accuracy.png").read_bytes().startswith(PNG_MAGIC)
