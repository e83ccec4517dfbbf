"""``fed.wire-dtype = "float16"``: train and evaluate arrays travel in half precision both
ways (half the bytes), the server checks the replies' dtype against the setting, still sums
in float64 and keeps its state float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, Message
from helpers.run_helpers import load_json, load_state, recorder, run_server

from pep_fedpt.config import ConfigError, RunConfig
from server_app.synthetic_replies import build, pep_strategy
from strategies import wire
from strategies.pep_fedpt import PEPFedPT
from strategies.validation import record_arrays


def _run(flat: dict, tmp_path: Path, wire_dtype: str) -> tuple[list[dict], dict, list[Message]]:
    out = tmp_path / wire_dtype
    config = {**flat, "fed.wire-dtype": wire_dtype, "output-dir": str(out)}
    trains: list[Message] = []
    run_server(config, tamper={n: recorder(trains) for n in (10, 11, 12)})
    return load_json(out / "metrics.json"), load_state(out), trains


@pytest.mark.integration
def test_half_precision_on_the_wire_halves_the_bytes_and_keeps_the_state_float32(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    rows32, state32, trains32 = _run(tiny_run_config, tmp_path, "float32")
    rows16, state16, trains16 = _run(tiny_run_config, tmp_path, "float16")

    for reply in trains16:
        dtypes = {array.dtype for array in reply.content[wire.ARRAYS].values()}
        assert dtypes == {"float16"}
    assert {a.dtype for a in trains32[0].content[wire.ARRAYS].values()} == {"float32"}
    first32, first16 = rows32[1], rows16[1]
    assert first16["train/bytes-up"] * 2 == first32["train/bytes-up"]
    assert first16["evaluate/bytes-down"] * 2 == first32["evaluate/bytes-down"]
    # Train messages also carry the prototypes once: proto.mean halves, the int64
    # proto.count (10 classes) does not.
    assert 2 * first16["train/bytes-down"] - first32["train/bytes-down"] == 3 * 10 * 8
    assert rows16[0]["bytes-up"] == rows32[0]["bytes-up"]  # the census: float32 sums

    assert sorted(state16) == sorted(state32)
    for key, value in state16.items():
        assert value.dtype == state32[key].dtype, key
        if value.dtype.kind == "f":
            assert value.dtype == np.float32
            # half precision rounds what travels, to about 3 decimal digits
            np.testing.assert_allclose(value, state32[key], rtol=2e-2, atol=2e-3, err_msg=key)
    assert np.isfinite(first16["server/accuracy"])


def _in_half(reply: Message) -> Message:
    arrays = reply.content[wire.ARRAYS]
    for key in list(arrays):
        arrays[key] = Array(arrays[key].numpy().astype(np.float16))
    return reply


def test_the_strategy_takes_half_precision_replies_only_when_that_is_the_wire_dtype() -> None:
    global_state, known, replies = build(5, seed=6, dim=16, num_classes=10)
    reference, _ = pep_strategy(global_state, known).aggregate_train(1, replies)
    assert reference is not None

    _, _, half = build(5, seed=6, dim=16, num_classes=10)
    half = [_in_half(reply) for reply in half]
    plain = pep_strategy(global_state, known)
    plain.aggregate_train(1, half)
    assert [node for _, node, _ in plain.dropped] == [1000, 1001, 1002, 1003, 1004]
    assert "float16, but the wire dtype (fed.wire-dtype) accepts float32" in plain.dropped[0][2]

    strategy = PEPFedPT(min_train_nodes=2, wire_dtype="float16")
    strategy._global, strategy._node_counts = global_state, dict(known)
    state, metrics = strategy.aggregate_train(1, half)
    assert state is not None and metrics is not None and metrics["valid-replies"] == 5
    expected = record_arrays(reference)
    for key, value in record_arrays(state).items():
        assert value.dtype == expected[key].dtype, key
        np.testing.assert_allclose(value, expected[key], rtol=1e-3, atol=1e-4, err_msg=key)
    # and a float32 reply is not what a float16 run sends
    strategy.aggregate_train(1, replies[:1])
    assert strategy.dropped[-1][1] == 1000
    assert "accepts float16" in strategy.dropped[-1][2]


def test_an_unknown_wire_dtype_is_refused_naming_the_accepted_ones(
    tiny_run_config: dict,
) -> None:
    with pytest.raises(ConfigError, match=r"fed\.wire-dtype = 'bfloat16' is not accepted"):
        RunConfig.from_flat({**tiny_run_config, "fed.wire-dtype": "bfloat16"})
    with pytest.raises(ValueError, match="wire_dtype = 'int8' is not accepted; use one of"):
        PEPFedPT(wire_dtype="int8")


@pytest.mark.integration
@pytest.mark.parametrize("method", ["sgpt", "pfedpg", "local"])
def test_every_method_sends_and_takes_half_precision_and_keeps_float32(
    method: str, tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    rows, state, trains = _run({**tiny_run_config, "method": method}, tmp_path, "float16")
    assert trains and rows[1]["train/valid-replies"] == len(trains)
    for reply in trains:
        assert {a.dtype for a in reply.content[wire.ARRAYS].values()} == {"float16"}
    sent_up = sum(a.nbytes for m in trains for a in record_arrays(m.content[wire.ARRAYS]).values())
    assert rows[1]["train/bytes-up"] == sent_up
    for key, value in state.items():
        assert value.dtype in (np.float32, np.int64), key
        assert np.all(np.isfinite(value)), key
