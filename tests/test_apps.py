"""ClientApp and ServerApp through the real Message API, in one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, RecordDict

from client_app.app import app as client_app
from pep_fedpt.config import RunConfig
from pep_fedpt.data import ImageSpec
from pep_fedpt.methods import client_for, initial_arrays
from pep_fedpt.models import PromptedViT
from server_app.app import app as server_app
from server_app.inprocess import InProcessGrid, incoming_message
from strategies import wire
from strategies.validation import check_prototype_reply, check_train_reply


def node_context(flat: dict, partition_id: int = 0, num_partitions: int = 3) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=flat,
    )


def test_client_app_answers_query_train_and_evaluate(tiny_run_config: dict, task_identity) -> None:
    cfg = RunConfig.from_flat(tiny_run_config)
    ctx = node_context(tiny_run_config)
    query = RecordDict({wire.CONFIG: ConfigRecord({wire.CFG_TASK: wire.TASK_PROTOTYPES})})
    reply = client_app(incoming_message(query, MessageType.QUERY), ctx)
    client = client_for(cfg, 0, 3)
    num_classes, dim = 10, 64
    assert check_prototype_reply(reply.content, num_classes, dim) is None
    sums = reply.content[wire.PROTO][wire.PROTO_SUM].numpy()
    counts = reply.content[wire.PROTO][wire.PROTO_COUNT].numpy()
    assert counts.tolist() == client.data.train_counts.tolist()
    held = counts > 0
    # the sums are sums of z(x) over each class: their means lie in the feature range
    assert np.allclose(sums[~held], 0)

    arrays = initial_arrays(cfg, client.backbone, num_classes)
    prototypes = np.where(held[:, None], sums / np.maximum(counts, 1)[:, None], 0).astype(
        np.float32
    )
    train = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: _array(v) for k, v in arrays.items()}),
            wire.CONFIG: ConfigRecord({wire.CFG_SERVER_ROUND: 1, wire.CFG_PROTO_VERSION: 1}),
            wire.PROTO: ArrayRecord(
                {wire.PROTO_MEAN: _array(prototypes), wire.PROTO_COUNT: _array(counts)}
            ),
        }
    )
    reply = client_app(incoming_message(train, MessageType.TRAIN), ctx)
    expected = {k: v.shape for k, v in arrays.items()}
    assert check_train_reply(reply.content, expected, num_classes) is None
    trained = reply.content[wire.ARRAYS]
    assert not np.allclose(trained[wire.HEAD_WEIGHT].numpy(), arrays[wire.HEAD_WEIGHT])

    # Evaluate without the prototypes in the message: the node kept them in context.state.
    evaluate = RecordDict(
        {
            wire.ARRAYS: trained,
            wire.CONFIG: ConfigRecord({wire.CFG_SERVER_ROUND: 1, wire.CFG_PROTO_VERSION: 1}),
        }
    )
    reply = client_app(incoming_message(evaluate, MessageType.EVALUATE), ctx)
    metrics = reply.content[wire.METRICS]
    assert metrics[wire.NUM_EXAMPLES] == len(client.data.test)
    assert 0 <= metrics[wire.CORRECT] <= metrics[wire.NUM_EXAMPLES]

    # A newer prototype version that never reached this node is an error, not a silent guess.
    stale = RecordDict(
        {wire.ARRAYS: trained, wire.CONFIG: ConfigRecord({wire.CFG_PROTO_VERSION: 2})}
    )
    reply = client_app(incoming_message(stale, MessageType.EVALUATE), ctx)
    assert reply.has_error()
    assert "RuntimeError: this node holds prototypes v1, the server uses v2" in reply.error.reason


def test_client_app_names_missing_node_config(tiny_run_config: dict, task_identity) -> None:
    ctx = Context(
        run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=tiny_run_config
    )
    query = RecordDict({wire.CONFIG: ConfigRecord({wire.CFG_TASK: wire.TASK_PROTOTYPES})})
    reply = client_app(incoming_message(query, MessageType.QUERY), ctx)
    assert reply.has_error()
    assert "ValueError: node config lacks ['partition-id', 'num-partitions']" in reply.error.reason


@pytest.mark.integration
def test_server_app_runs_rounds_and_writes_results(
    tiny_run_config: dict, task_identity, tmp_path, monkeypatch
) -> None:
    calls = {"query_features": 0}
    original = PromptedViT.query_features

    def counting(self, images):
        calls["query_features"] += 1
        return original(self, images)

    monkeypatch.setattr(PromptedViT, "query_features", counting)
    flat = {**tiny_run_config, "num-server-rounds": 2, "seed": 11}
    grid = InProcessGrid(
        client_app, {100 + i: {"partition-id": i, "num-partitions": 3} for i in range(3)}, flat
    )
    server_app(
        grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat)
    )

    kinds = [kind for kind, _ in grid.sent]
    assert kinds == ["query"] * 3 + (["train"] * 3 + ["evaluate"] * 3) * 2
    out = tmp_path / "run"
    rows = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert {"server/accuracy", "evaluate/global-accuracy", "evaluate/worst-client-accuracy"} <= set(
        rows[2]
    )
    state = np.load(out / "state.npz")
    assert state[wire.PROTO_MEAN].shape == (10, 64)
    assert state[wire.PROTO_COUNT].sum() == sum(
        client_for(RunConfig.from_flat(flat), i, 3).data.train_counts.sum() for i in range(3)
    )
    assert "| round |" in (out / "summary.md").read_text()
    # z(x) once per example however many rounds: one frozen forward per batch of 128 of
    # every client's train and test split and of the central test split.
    cfg = RunConfig.from_flat(flat)
    sizes = [
        len(s)
        for i in range(3)
        for s in (client_for(cfg, i, 3).data.train, client_for(cfg, i, 3).data.test)
    ]
    sizes.append(round(1797 * 0.2))  # the central split: 20% of the digits, stratified
    assert calls["query_features"] == sum(-(-n // 128) for n in sizes)


def _array(value: np.ndarray):
    from flwr.app import Array

    return Array(np.ascontiguousarray(value))


def test_image_spec_is_hashable_for_process_caches() -> None:
    assert hash(ImageSpec(16, (0.5,) * 3, (0.5,) * 3)) is not None
