"""SecAgg+ over the Message API: the engine (strategies/secagg/) against real ClientApps
(client_app/secagg.py) in one process, with hand-computed sums."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client_app import secagg as client_secagg
from server_app.inprocess import InProcessGrid
from strategies.secagg import (
    ACTION,
    MASKED,
    RECORD,
    VECTOR_RECORD,
    SecAggError,
    SecAggParams,
    SecAggServer,
    secure_aggregation,
)

# Node id -> (ints, floats) it contributes.
VECTORS = {
    11: ([3, 0, 5], [0.5, -1.25]),
    12: ([1, 2, 0], [2.0, 0.25]),
    13: ([0, 4, 1], [-0.75, 1.0]),
    14: ([6, 1, 1], [1.5, -3.0]),
}
PARAMS = SecAggParams(threshold=3, clipping_range=4.0, bits=20, max_count=10)


def _vector(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray]:
    ints, floats = VECTORS[context.node_id]
    return np.array(ints, dtype=np.int64), np.array(floats)


def _facts(config: ConfigRecord, context: Context) -> dict[str, int]:
    return {"held-out": int(context.node_id == 14 and bool(config.get("hold-14", False)))}


@pytest.fixture(autouse=True)
def _identity(task_identity: None) -> None:
    """Messages built outside a run need Flower's task identity."""


app = ClientApp()


@app.query(ACTION)
def secure_sum(msg: Message, context: Context) -> Message:
    return client_secagg.answer(msg, context, _vector, _facts)


def _grid(tamper: dict[int, Callable[[Message], Message | None]] | None = None) -> InProcessGrid:
    return InProcessGrid(app, {n: {} for n in VECTORS}, {}, tamper)


def _server(grid: InProcessGrid, params: SecAggParams = PARAMS, **kwargs) -> SecAggServer:
    seen: list[Message] = kwargs.pop("seen", [])

    def exchange(messages: list[Message], stage: str) -> list[Message]:
        replies = list(grid.send_and_receive(messages))
        seen.extend(replies)
        return replies

    return SecAggServer(params, 3, 2, ConfigRecord(kwargs.pop("task", {})), exchange, **kwargs)


def drop_at(stage: str) -> Callable[[Message], Message | None]:
    """A node that answers every stage before ``stage``, then vanishes."""
    lost = False

    def tamper(reply: Message) -> Message | None:
        nonlocal lost
        content = reply.content if reply.has_content() else None
        if content is not None and _reply_stage(content) == stage:
            lost = True
        return None if lost else reply

    return tamper


def _reply_stage(content) -> str:
    """Which stage a reply answers, from what it carries."""
    record = content.config_records.get(RECORD, {})
    if "pk1" in record:
        return "setup"
    if "ctxts" in record:
        return "share_keys"
    if VECTOR_RECORD in content.array_records:
        return "collect_masked_vectors"
    return "unmask"


def test_the_server_gets_the_exact_integer_sum_and_the_float_sum_within_one_step_per_node() -> None:
    result = _server(_grid()).run(VECTORS)
    np.testing.assert_array_equal(result.ints, [10, 7, 7])
    assert result.ints.dtype == np.int64
    # 0.5 + 2.0 - 0.75 + 1.5 = 3.25; -1.25 + 0.25 + 1.0 - 3.0 = -3.0; error < 4 x 8/2^20.
    np.testing.assert_allclose(result.floats, [3.25, -3.0], atol=4 * PARAMS.step)
    assert result.contributors == [11, 12, 13, 14]
    assert result.dropped == []


def test_every_reply_the_server_pulls_carries_masked_values_only() -> None:
    seen: list[Message] = []
    _server(_grid(), seen=seen).run(VECTORS)
    masked = [r for r in seen if VECTOR_RECORD in r.content.array_records]
    assert len(masked) == 4
    for reply in masked:
        value = reply.content.array_records[VECTOR_RECORD][MASKED].numpy()
        ints, _ = VECTORS[reply.metadata.src_node_id]
        # A plain count vector is at most 10; masks spread values over [0, 2^62).
        assert (value[:3] != np.array(ints)).all()
        assert value.max() > 2**40
        assert len(reply.content.array_records) == 1 and not reply.content.metric_records
    # No other reply carries any array at all.
    assert sum(len(r.content.array_records) for r in seen) == 4


def test_a_node_lost_after_sharing_its_keys_leaves_the_sum_of_the_others() -> None:
    grid = _grid({13: drop_at("collect_masked_vectors")})
    result = _server(grid).run(VECTORS)
    np.testing.assert_array_equal(result.ints, [10, 3, 6])  # without node 13's [0, 4, 1]
    np.testing.assert_allclose(result.floats, [4.0, -4.0], atol=3 * PARAMS.step)
    assert result.contributors == [11, 12, 14]
    assert [node for node, _ in result.dropped] == [13]
    assert "collect_masked_vectors" in result.dropped[0][1]


def test_a_node_lost_after_sending_its_masked_vector_still_counts() -> None:
    result = _server(_grid({12: drop_at("unmask")})).run(VECTORS)
    np.testing.assert_array_equal(result.ints, [10, 7, 7])
    assert result.contributors == [11, 12, 13, 14]


def test_fewer_nodes_than_the_threshold_abort_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = _grid({12: drop_at("collect_masked_vectors"), 13: drop_at("collect_masked_vectors")})
    with pytest.raises(SecAggError, match=r"2 node\(s\) left, fewer than the threshold 3"):
        _server(grid).run(VECTORS)


def test_a_node_whose_count_exceeds_max_count_is_left_out_with_its_reason() -> None:
    params = SecAggParams(threshold=3, clipping_range=4.0, bits=20, max_count=5)
    result = _server(_grid(), params).run(VECTORS)  # node 14 holds a 6
    np.testing.assert_array_equal(result.ints, [4, 6, 6])
    assert [node for node, _ in result.dropped] == [14]
    assert "outside 0..5 (the secagg max_count)" in result.dropped[0][1]


def test_select_keeps_a_node_out_of_the_sum_by_its_setup_facts() -> None:
    server = _server(
        _grid(), task={"hold-14": True}, select=lambda node, facts: not facts["held-out"]
    )
    result = server.run(VECTORS)
    np.testing.assert_array_equal(result.ints, [4, 6, 6])
    assert result.contributors == [11, 12, 13]
    assert result.facts[14]["held-out"] == 1


def test_a_sparse_neighbour_graph_gives_the_same_sum() -> None:
    params = SecAggParams(threshold=2, clipping_range=4.0, bits=20, max_count=10, num_shares=3)
    result = _server(_grid({11: drop_at("collect_masked_vectors")}), params).run(VECTORS)
    np.testing.assert_array_equal(result.ints, [7, 7, 2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 1}, "threshold = 1 is not accepted"),
        ({"bits": 31}, "bits = 31 is not accepted; use an integer in 1..30"),
        ({"clipping_range": 0.0}, "clipping_range = 0.0 is not accepted"),
        ({"update_clipping_range": -1.0}, "update_clipping_range = -1.0 is not accepted"),
        ({"max_count": 0}, "max_count = 0 is not accepted"),
        ({"num_shares": 4}, "num_shares = 4 is not accepted"),
        ({"threshold": 5, "num_shares": 3}, "threshold = 5 exceeds num_shares = 3"),
    ],
)
def test_bad_parameters_are_refused_naming_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SecAggParams(**kwargs)


def test_the_strategy_option_accepts_off_and_secaggplus_only() -> None:
    assert secure_aggregation("off", None) is None
    assert secure_aggregation("secaggplus", None) == SecAggParams()
    with pytest.raises(ValueError, match="'secagg' is not accepted; use one of: off, secaggplus"):
        secure_aggregation("secagg", None)


def test_too_few_shares_in_the_unmask_stage_abort_with_a_clear_error() -> None:
    grid = _grid({12: drop_at("unmask"), 13: drop_at("unmask")})
    with pytest.raises(SecAggError, match=r"share\(s\) of node 1\d.s secrets came back, fewer"):
        _server(grid).run(VECTORS)
