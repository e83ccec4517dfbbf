"""pFedPG: the generator's math against hand-computed values and finite differences, and
rounds through the real apps (per-client prompts, the exact generator update, bad replies,
held-out clients, the strategy's checkpoint)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from helpers.run_helpers import NODES, load_json, load_state, on, recorder, run_server

from client_app.app import app as client_app
from pep_fedpt.config import RunConfig
from pep_fedpt.methods import client_for, initial_arrays
from server_app.app import RunUnchangedError
from server_app.inprocess import InProcessGrid, incoming_message
from strategies import PFedPG, wire
from strategies import prompt_generator as gen
from strategies.pfedpg import descriptor_key

# ---------------------------------------------------------------- the generator's math


def _params(base, w_q, w_k, w_v) -> gen.GeneratorParams:
    return gen.GeneratorParams(*(np.asarray(x, dtype=np.float64) for x in (base, w_q, w_k, w_v)))


def test_one_token_forward_and_update_by_hand() -> None:
    """T = 1: the softmax is 1, so P = B + B W_v and only B, W_v learn."""
    params = _params([[1.0, 2.0]], [[0.3, -0.1], [0.2, 0.4]], [[1.0, 0.0], [0.0, 1.0]],
                     [[0.5, 0.0], [0.0, -1.0]])  # fmt: skip
    e = np.array([0.5, -0.5])
    np.testing.assert_allclose(gen.forward(params, e), [[1.5, 0.0]])  # (1, 2) + (0.5, -2)

    # ΔP = (0.2, -0.4), lr 0.5; upstream −ΔP = G = (−0.2, 0.4):
    # ∂W_v = Bᵀ G = [[−0.2, 0.4], [−0.4, 0.8]]; ∂B = G + G W_vᵀ = (−0.3, 0.0)
    new, new_e = gen.update(params, e, np.array([[0.2, -0.4]]), lr=0.5)
    np.testing.assert_allclose(new.base, [[1.15, 2.0]])
    np.testing.assert_allclose(new.w_v, [[0.6, -0.2], [0.2, -1.4]])
    np.testing.assert_array_equal(new.w_q, params.w_q)  # no attention path with one token
    np.testing.assert_array_equal(new.w_k, params.w_k)
    np.testing.assert_allclose(new_e, e)


def test_two_token_attention_by_hand() -> None:
    """d = 1, T = 2, D = 2, e = 1: scores (ln 3, 0) and (0, 0), so A = [[¾, ¼], [½, ½]]."""
    params = _params([[1.0, 0.0], [0.0, 1.0]], [[math.log(3), 0.0]], [[1.0], [0.0]],
                     [[0.0, 2.0], [4.0, 0.0]])  # fmt: skip
    e = np.array([1.0])
    # V = B W_v = [[0, 2], [4, 0]]; A V = [[1, 1.5], [2, 1]]; P = B + A V
    np.testing.assert_allclose(gen.forward(params, e), [[2.0, 1.5], [2.0, 2.0]], rtol=1e-6)

    # L = P[0, 0] = 1 + 4 a_01, a_01 = σ(s_01 − s_00), s_00 = e W_q[0, 0] K_0:
    # ∂L/∂s_00 = −4 · ¼ · ¾ = −¾, so ∂L/∂e = −¾ · W_q[0, 0] K_0 = −¾ ln 3 and
    # ∂L/∂W_q[0, 0] = −¾ · e K_0 = −¾; W_q[0, 1] makes row 1's query: no effect on L.
    upstream = np.array([[1.0, 0.0], [0.0, 0.0]])
    grads, d_e = gen.gradients(params, e, upstream)
    np.testing.assert_allclose(d_e, [-0.75 * math.log(3)])
    np.testing.assert_allclose(grads.w_q, [[-0.75, 0.0]], atol=1e-15)

    # ΔP = −upstream (the client moved P[0, 0] down by 1): e ← e − lr ∂L/∂e
    _, new_e = gen.update(params, e, -upstream, lr=0.1)
    np.testing.assert_allclose(new_e, [1.0 + 0.075 * math.log(3)], rtol=1e-6)


def _random_params(rng: np.random.Generator, t: int = 3, width: int = 4, d: int = 2):
    return _params(
        rng.normal(size=(t, width)),
        rng.normal(size=(d, t * d)),
        rng.normal(size=(width, d)),
        rng.normal(size=(width, width)),
    )


def test_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    params, e = _random_params(rng), rng.normal(size=2)
    upstream = rng.normal(size=(3, 4))

    def loss(p: gen.GeneratorParams, desc: np.ndarray) -> float:  # L = <P, upstream>, float64
        _, _, v, a = gen._attention(p, desc)
        return float(((p.base + a @ v) * upstream).sum())

    grads, d_e = gen.gradients(params, e, upstream)
    eps = 1e-6
    for name in ("base", "w_q", "w_k", "w_v"):
        value, numeric = getattr(params, name), np.zeros_like(getattr(params, name))
        for idx in np.ndindex(value.shape):
            shifted = []
            for sign in (1, -1):
                x = value.copy()
                x[idx] += sign * eps
                shifted.append(loss(gen.GeneratorParams(**{**params.__dict__, name: x}), e))
            numeric[idx] = (shifted[0] - shifted[1]) / (2 * eps)
        np.testing.assert_allclose(getattr(grads, name), numeric, atol=1e-7, err_msg=name)
    numeric_e = [
        (loss(params, e + eps * unit) - loss(params, e - eps * unit)) / (2 * eps)
        for unit in np.eye(2)
    ]
    np.testing.assert_allclose(d_e, numeric_e, atol=1e-7)


def test_a_step_moves_the_prompt_towards_the_trained_one() -> None:
    rng = np.random.default_rng(4)
    params, e = _random_params(rng), rng.normal(size=2)
    before = gen.forward(params, e).astype(np.float64)
    target = before + 0.1 * rng.normal(size=before.shape)
    new, new_e = gen.update(params, e, target - before, lr=0.01)
    after = gen.forward(new, new_e).astype(np.float64)
    assert np.linalg.norm(after - target) < np.linalg.norm(before - target)


def test_round_update_averages_shared_gradients_and_keeps_idle_descriptors() -> None:
    rng = np.random.default_rng(5)
    params = _random_params(rng)
    descriptors = {pid: rng.normal(size=2).astype(np.float32) for pid in (0, 4, 7)}
    deltas = {7: rng.normal(size=(3, 4)), 0: rng.normal(size=(3, 4))}
    new, new_desc = gen.round_update(params, descriptors, deltas, lr=0.3)
    singles = {pid: gen.update(params, descriptors[pid], deltas[pid], 0.3) for pid in deltas}
    for name in ("base", "w_q", "w_k", "w_v"):  # θ − lr · mean_k g_k
        mean = np.mean([getattr(singles[p][0], name) for p in deltas], axis=0)
        np.testing.assert_allclose(getattr(new, name), mean, rtol=1e-12, err_msg=name)
    for pid in deltas:
        np.testing.assert_array_equal(new_desc[pid], singles[pid][1])
    np.testing.assert_array_equal(new_desc[4], descriptors[4])
    with pytest.raises(KeyError, match="no descriptor"):
        gen.round_update(params, descriptors, {9: deltas[0]}, 0.3)
    bad, _ = gen.round_update(params, descriptors, {0: np.full((3, 4), np.nan)}, 0.3)
    assert not bad.is_finite()


def test_initial_generator_gives_every_client_the_base_prompt() -> None:
    base = np.arange(6, dtype=np.float32).reshape(3, 2)
    params = gen.init_params(base, descriptor_dim=4, seed=0)
    for pid in (0, 1):
        np.testing.assert_array_equal(gen.forward(params, gen.init_descriptor(4, 0, pid)), base)
    assert not np.array_equal(gen.init_descriptor(4, 0, 0), gen.init_descriptor(4, 0, 1))
    with pytest.raises(ValueError, match=r"descriptor has shape \(3,\), expected \(4,\)"):
        gen.forward(params, np.zeros(3))
    arrays = params.arrays()
    arrays["w-v"] = np.zeros((2, 5))
    with pytest.raises(ValueError, match=r"'w-v' has shape \(2, 5\), expected \(2, 2\)"):
        gen.GeneratorParams.from_arrays(arrays)


# ---------------------------------------------------------------- rounds through the apps


class RecordingClientApp:
    """The real ClientApp, keeping (type, node, arrays) of every message it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, int, dict[str, np.ndarray]]] = []

    def __call__(self, message: Message, context: Context) -> Message:
        arrays = message.content.get(wire.ARRAYS)
        numpy = {k: v.numpy() for k, v in arrays.items()} if arrays is not None else {}
        self.received.append((message.metadata.message_type, context.node_id, numpy))
        return client_app(message, context)

    def of(self, kind: str) -> list[tuple[int, dict[str, np.ndarray]]]:
        return [(node, arrays) for k, node, arrays in self.received if k == kind]


def _census_generator(cfg: RunConfig, pids: list[int]) -> tuple[gen.GeneratorParams, dict]:
    """The generator and descriptors the census round creates (the test's own copy)."""
    client = client_for(cfg, pids[0], 8)
    start = initial_arrays(cfg, client.backbone, 10)
    params = gen.init_params(start[wire.SHARED_PROMPT], cfg.prompt.descriptor_dim, cfg.seed)
    descriptors = {p: gen.init_descriptor(cfg.prompt.descriptor_dim, cfg.seed, p) for p in pids}
    return gen.GeneratorParams.from_arrays(params.arrays()), descriptors


def _expected_round(
    params: gen.GeneratorParams,
    descriptors: dict,
    sent: dict[int, np.ndarray],
    replies: list[Message],
    lr: float,
) -> tuple[gen.GeneratorParams, dict]:
    """The update recomputed from the recorded replies: ΔP = P̃ − P_sent per partition."""
    deltas = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        trained = reply.content[wire.ARRAYS][wire.SHARED_PROMPT].numpy().astype(np.float64)
        deltas[NODES[node]["partition-id"]] = trained - sent[node]
    new, new_desc = gen.round_update(params, descriptors, deltas, lr)
    return gen.GeneratorParams.from_arrays(new.arrays()), new_desc


def _generator_state(state: dict[str, np.ndarray]) -> tuple[gen.GeneratorParams, dict]:
    return PFedPG.generator(state), PFedPG.descriptors(state)


def _assert_same(got: tuple[gen.GeneratorParams, dict], expected: tuple) -> None:
    for name in gen.PARAM_NAMES:
        np.testing.assert_allclose(
            got[0].arrays()[name], expected[0].arrays()[name], rtol=1e-6, atol=1e-7, err_msg=name
        )
    assert sorted(got[1]) == sorted(expected[1])
    for pid, value in expected[1].items():
        np.testing.assert_allclose(got[1][pid], value, rtol=1e-6, atol=1e-7, err_msg=str(pid))


@pytest.fixture
def flat(tiny_run_config: dict) -> dict:
    return {
        **tiny_run_config,
        "method": "pfedpg",
        "num-server-rounds": 2,
        "prompt.descriptor-dim": 8,
        "fed.generator-lr": 0.5,
        # A head that is not zero and a larger step, so that round 1 moves the prompts.
        "prompt.head-init": "normal",
        "train.lr": 0.1,
    }


def _run(flat: dict, tamper: dict[int, Callable[[Message], Message]] | None = None, nodes=NODES):
    app = RecordingClientApp()
    grid = InProcessGrid(app, nodes, flat)  # type: ignore[arg-type]  # flat and nodes come into _run untyped; they are the run config and node configs InProcessGrid takes
    run_server(flat, tamper=tamper, grid=grid)
    return app, grid


@pytest.mark.integration
def test_two_rounds_personal_prompts_and_the_exact_generator_update(
    flat: dict, tmp_path, task_identity
) -> None:
    trains: list[Message] = []
    evaluates: list[Message] = []
    tamper = {}
    for node in NODES:
        keep_train, keep_eval = recorder(trains), recorder(evaluates, MessageType.EVALUATE)
        tamper[node] = lambda r, t=keep_train, e=keep_eval: e(t(r))
    app, grid = _run(flat, tamper)
    cfg = RunConfig.from_flat(flat)
    lr = cfg.fed.generator_lr
    assert [k for k, _ in grid.sent] == (["query"] * 3 + (["train"] * 3 + ["evaluate"] * 3) * 2)

    train_msgs = app.of(MessageType.TRAIN)
    for _, arrays in train_msgs:  # only the prompt goes out: each node keeps its own head
        assert set(arrays) == {wire.SHARED_PROMPT}
    state0 = _census_generator(cfg, [0, 1, 2])
    # Round 1: W_v starts at zero, so every client gets the base (= initial) prompt.
    first = {node: arrays[wire.SHARED_PROMPT] for node, arrays in train_msgs[:3]}
    for prompt in first.values():
        np.testing.assert_array_equal(prompt, state0[0].base.astype(np.float32))

    state1 = _expected_round(*state0, first, trains[:3], lr)
    moved = max(
        np.abs(m.content[wire.ARRAYS][wire.SHARED_PROMPT].numpy() - state0[0].base).max()
        for m in trains[:3]
    )
    second = {node: arrays[wire.SHARED_PROMPT] for node, arrays in train_msgs[3:]}
    for node, prompt in second.items():  # round 2: generated from each client's descriptor
        pid = NODES[node]["partition-id"]
        np.testing.assert_allclose(
            prompt, gen.forward(state1[0], state1[1][pid]), rtol=1e-5, atol=1e-6
        )
    # After one step the client-specific part is small but real: a few % of |ΔP|.
    prompts = list(second.values())
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(prompts[i] - prompts[j]).max() > 0.01 * moved, "the same prompt"

    state = load_state(tmp_path / "run")
    state2 = _expected_round(*state1, second, trains[3:], lr)
    _assert_same(_generator_state(state), state2)
    # The state's prompt is the mean descriptor's, its head the n_k-mean of uploaded heads.
    np.testing.assert_allclose(
        state[wire.SHARED_PROMPT],
        gen.forward(state2[0], gen.mean_descriptor(state2[1])),
        rtol=1e-5,
        atol=1e-6,
    )
    sizes = [m.content[wire.METRICS][wire.NUM_EXAMPLES] for m in trains[3:]]
    heads = [m.content[wire.ARRAYS][wire.HEAD_WEIGHT].numpy() for m in trains[3:]]
    mean = sum(n * h.astype(np.float64) for n, h in zip(sizes, heads, strict=True)) / sum(sizes)
    np.testing.assert_allclose(state[wire.HEAD_WEIGHT], mean, rtol=1e-5, atol=1e-7)

    # Each node evaluates the prompt generated for it with its own (kept) head.
    eval_msgs = dict(app.of(MessageType.EVALUATE)[3:])
    for reply in evaluates[3:]:
        node = reply.metadata.src_node_id
        pid = NODES[node]["partition-id"]
        np.testing.assert_allclose(
            eval_msgs[node][wire.SHARED_PROMPT],
            gen.forward(state2[0], state2[1][pid]),
            rtol=1e-5,
            atol=1e-6,
        )
        own = {k: a.numpy() for k, a in grid.contexts[node].state["pep-fedpt.personal"].items()}
        assert set(own) == {wire.HEAD_WEIGHT, wire.HEAD_BIAS}
        last = next(m for m in trains[3:] if m.metadata.src_node_id == node)
        np.testing.assert_array_equal(
            own[wire.HEAD_WEIGHT], last.content[wire.ARRAYS][wire.HEAD_WEIGHT].numpy()
        )
        expected = client_for(cfg, pid, 8).evaluate({**eval_msgs[node], **own})
        assert reply.content[wire.METRICS][wire.CORRECT] == expected["correct"]


def _nan_prompt(reply: Message) -> Message:
    arrays = reply.content[wire.ARRAYS]
    bad = arrays[wire.SHARED_PROMPT].numpy().copy()
    bad[0, 0] = np.nan
    arrays[wire.SHARED_PROMPT] = Array(bad)
    return reply


def test_a_nan_reply_never_reaches_the_generator(flat: dict, tmp_path, task_identity) -> None:
    flat = {**flat, "num-server-rounds": 1}
    trains: list[Message] = []
    tamper = {10: on(MessageType.TRAIN, _nan_prompt), 11: recorder(trains), 12: recorder(trains)}
    app, _ = _run(flat, tamper)
    cfg = RunConfig.from_flat(flat)
    out = tmp_path / "run"
    (dropped,) = load_json(out / "dropped.json")
    assert dropped["node"] == 10 and "non-finite" in dropped["reason"]

    state0 = _census_generator(cfg, [0, 1, 2])
    sent = {node: arrays[wire.SHARED_PROMPT] for node, arrays in app.of(MessageType.TRAIN)}
    expected = _expected_round(*state0, sent, trains, cfg.fed.generator_lr)
    got = _generator_state(load_state(out))
    _assert_same(got, expected)
    np.testing.assert_array_equal(got[1][0], state0[1][0])  # node 10's descriptor: as it was
    assert all(np.all(np.isfinite(v)) for v in load_state(out).values())


def test_nan_replies_below_min_train_nodes_leave_the_generator_unchanged(
    flat: dict, tmp_path, task_identity
) -> None:
    flat = {**flat, "num-server-rounds": 1, "fed.min-train-nodes": 3}
    with pytest.raises(RunUnchangedError):  # its only round kept the state
        _run(flat, {10: on(MessageType.TRAIN, _nan_prompt)})
    state0 = _census_generator(RunConfig.from_flat(flat), [0, 1, 2])
    got = _generator_state(load_state(tmp_path / "run"))
    for name in gen.PARAM_NAMES:
        np.testing.assert_array_equal(got[0].arrays()[name], state0[0].arrays()[name])
    for pid, value in state0[1].items():
        np.testing.assert_array_equal(got[1][pid], value)


def test_a_reply_for_another_partition_is_dropped(flat: dict, tmp_path, task_identity) -> None:
    def claim_partition_5(reply: Message) -> Message:
        reply.content[wire.METRICS][wire.PARTITION_ID] = 5
        return reply

    _run({**flat, "num-server-rounds": 1}, {11: on(MessageType.TRAIN, claim_partition_5)})
    (dropped,) = load_json(tmp_path / "run" / "dropped.json")
    assert dropped["node"] == 11 and "made for 1" in dropped["reason"]


def test_held_out_clients_get_the_mean_descriptor_prompt(
    flat: dict, tmp_path, task_identity
) -> None:
    nodes = {**NODES, 13: {"partition-id": 6, "num-partitions": 8}}  # 6 is held out
    flat = {**flat, "num-server-rounds": 1, "data.held-out-fraction": 0.125}
    app, grid = _run(flat, nodes=nodes)
    assert ("train", 13) not in grid.sent
    state = load_state(tmp_path / "run")
    assert descriptor_key(6) not in state and descriptor_key(0) in state
    assert "pep-fedpt.personal" not in grid.contexts[13].state
    (message,) = [arrays for node, arrays in app.of(MessageType.EVALUATE) if node == 13]
    params, descriptors = _generator_state(state)
    np.testing.assert_allclose(
        message[wire.SHARED_PROMPT],
        gen.forward(params, gen.mean_descriptor(descriptors)),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(message[wire.HEAD_WEIGHT], state[wire.HEAD_WEIGHT])
    np.testing.assert_array_equal(message[wire.SHARED_PROMPT], state[wire.SHARED_PROMPT])
    row = load_json(tmp_path / "run" / "metrics.json")[-1]
    assert math.isfinite(row["evaluate/held-out-accuracy"])


def test_strategy_checkpoint_keeps_which_node_is_which_partition() -> None:
    before = PFedPG(seed=3, descriptor_dim=4)
    before.node_partitions = {10: 0, 17: 1}
    after = PFedPG(seed=3, descriptor_dim=4)
    after.restore(json.loads(json.dumps(before.checkpoint())))
    assert after.node_partitions == {10: 0, 17: 1}


def test_a_node_that_comes_back_under_a_new_id_keeps_its_descriptor(task_identity) -> None:
    """Node 42 answers an evaluation as partition 0 (whose node was 10): from then on it is
    partition 0's node, and nodes without a descriptor get the mean descriptor's prompt."""
    params = gen.init_params(np.ones((1, 2), np.float32), descriptor_dim=2, seed=0)
    state = {f"pfedpg.{k}": v for k, v in params.arrays().items()}
    state[descriptor_key(0)] = np.ones(2, np.float32)
    strategy = PFedPG(descriptor_dim=2)
    strategy.node_partitions = {10: 0}
    strategy._global = ArrayRecord({k: Array(v) for k, v in state.items()})
    metrics = {wire.NUM_EXAMPLES: 4, wire.CORRECT: 1, wire.PARTITION_ID: 0, wire.HELD_OUT: 0}
    asked = incoming_message(RecordDict(), MessageType.EVALUATE, dst_node_id=42)
    reply = Message(RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=asked)
    strategy.aggregate_evaluate(1, [reply])
    assert strategy.node_partitions == {42: 0}
    assert strategy.prompt_for(state, 42)[0] == 0
    assert strategy.prompt_for(state, 10)[0] == -1


def test_without_partition_ids_the_census_says_what_is_missing(flat: dict, task_identity) -> None:
    def anonymous(reply: Message) -> Message:
        del reply.content[wire.METRICS][wire.PARTITION_ID]
        return reply

    tamper = {node: on(MessageType.QUERY, anonymous) for node in NODES}
    with pytest.raises(RuntimeError, match="no training node reported its 'partition-id'"):
        _run(flat, tamper)
