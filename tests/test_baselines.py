"""The baselines (method doc §7): one in-process round each through the real apps, and the
proximal term and the prior correction against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType
from helpers.run_helpers import load_json, load_state, recorder, run_server

from pep_fedpt.ccmp import smoothed_prior
from pep_fedpt.config import RunConfig
from pep_fedpt.corrections import prior_corrected_logits, proximal_term
from pep_fedpt.data import load_central_data
from pep_fedpt.data.client_data import subset_targets
from pep_fedpt.methods import build_model, client_for, initial_arrays
from pep_fedpt.methods.registry import METHODS, all_methods, get_method
from pep_fedpt.models import cached_backbone, image_spec
from pep_fedpt.state import trainable_arrays
from strategies import LocalOnly, PromptFedAvg, wire

# FedMVP, zero-shot CLIP and PromptFL (CLIP models): tests/test_fedmvp_*
CLIP_METHODS = ("fedmvp", "zeroshot-clip", "promptfl", "fedtpg")
BASELINES = [m for m in METHODS if m not in ("pep-fedpt", *CLIP_METHODS)]
# The tiny ViT has 3 blocks; prompt.ccmp-blocks = "2-L" puts a deep prompt in blocks 2, 3.
DEEP = {wire.deep_prompt_key(1), wire.deep_prompt_key(2)}
HEAD = {wire.HEAD_WEIGHT, wire.HEAD_BIAS}
# SGPT: G group prompts in the same blocks, plus the G keys (more in tests/test_sgpt.py).
GROUPS = {wire.group_prompt_key(1), wire.group_prompt_key(2)}
TRAINABLE = {
    "fedavg-vpt-shallow": {wire.SHARED_PROMPT} | HEAD,
    "fedavg-vpt-deep": {wire.SHARED_PROMPT} | DEEP | HEAD,
    "fedprox-vpt": {wire.SHARED_PROMPT} | DEEP | HEAD,
    "head-only": HEAD,
    "fedavg-vpt-prior": {wire.SHARED_PROMPT} | DEEP | HEAD,
    "local": {wire.SHARED_PROMPT} | DEEP | HEAD,
    "sgpt": {wire.SHARED_PROMPT, wire.GROUP_KEYS} | GROUPS | HEAD,
    "pfedpg": {wire.SHARED_PROMPT} | HEAD,  # the generated VPT-shallow prompt, own head
}


def test_every_method_has_a_client_and_a_strategy() -> None:
    registered = {m.name for m in all_methods() if m.client and m.strategy}
    assert registered == set(METHODS) == {"pep-fedpt", *CLIP_METHODS, *TRAINABLE}
    assert get_method("local").strategy_class() is LocalOnly
    assert issubclass(get_method("pep-fedpt").strategy_class(), PromptFedAvg)


@pytest.mark.parametrize("method", BASELINES)
def test_model_of_each_method_has_its_prompts(method: str, tiny_run_config: dict) -> None:
    cfg = RunConfig.from_flat({**tiny_run_config, "method": method})
    backbone = cached_backbone(cfg.model, cfg.seed, "cpu", cfg.data)
    arrays = trainable_arrays(build_model(backbone, cfg, 10))
    assert set(arrays) == TRAINABLE[method]
    for key in DEEP & set(arrays):
        assert arrays[key].shape == (cfg.prompt.class_length, 64)  # (M, D)


def _run(flat: dict, tmp_path) -> tuple[object, list[Message], list[Message]]:
    trains: list[Message] = []
    evaluates: list[Message] = []
    both = {}
    for node in (10, 11, 12):
        keep_train = recorder(trains, MessageType.TRAIN)
        keep_eval = recorder(evaluates, MessageType.EVALUATE)
        both[node] = lambda reply, t=keep_train, e=keep_eval: e(t(reply))
    grid = run_server(flat, tamper=both)
    return grid, trains, evaluates


@pytest.mark.parametrize("method", BASELINES)
def test_one_round_of_each_baseline(
    method: str, tiny_run_config: dict, task_identity, tmp_path
) -> None:
    flat = {**tiny_run_config, "method": method}
    grid, trains, evaluates = _run(flat, tmp_path)
    assert [kind for kind, _ in grid.sent] == ["query"] * 3 + ["train"] * 3 + ["evaluate"] * 3

    out = tmp_path / "run"
    state = load_state(out)
    # no prototypes; SGPT keeps its groups' selections so far, pfedpg its generator
    extra = {wire.GROUP_COUNT} if method == "sgpt" else set()
    generator = {k for k in state if k.startswith("pfedpg.")}
    assert bool(generator) == (method == "pfedpg")
    assert set(state) - generator == TRAINABLE[method] | {wire.PROTO_COUNT} | extra
    rows = load_json(out / "metrics.json")
    assert [row["round"] for row in rows] == [0, 1]
    for key in ("server/accuracy", "server/loss", "train/train-loss", "evaluate/global-accuracy"):
        assert math.isfinite(rows[1][key]), key
    assert rows[1]["train/valid-replies"] == 3

    cfg = RunConfig.from_flat(flat)
    counts = sum(client_for(cfg, p, 8).data.train_counts for p in range(3))
    assert state[wire.PROTO_COUNT].tolist() == counts.tolist()
    updates = [{k: a.numpy() for k, a in m.content[wire.ARRAYS].items()} for m in trains]
    sizes = [m.content[wire.METRICS][wire.NUM_EXAMPLES] for m in trains]
    backbone = cached_backbone(cfg.model, cfg.seed, "cpu", cfg.data)
    initial = initial_arrays(cfg, backbone, 10)

    if method in ("fedavg-vpt-deep", "fedavg-vpt-prior"):
        # Round 0 evaluates the initial state, whose zero head gives equal logits: plain
        # VPT predicts class 0, the prior-corrected one the globally most frequent class.
        labels = subset_targets(load_central_data(cfg.data, image_spec(backbone)).test)
        guess = int(np.argmax(counts)) if method == "fedavg-vpt-prior" else 0
        assert rows[0]["server/accuracy"] == pytest.approx(np.mean(labels == guess))

    if method != "local":
        # FedAvg: the n_k-weighted mean of the replies (SGPT's group rows: test_sgpt.py;
        # pfedpg: only its heads, its prompts come from the generator: test_pfedpg.py)
        averaged = HEAD if method == "pfedpg" else TRAINABLE[method]
        for key in (k for k in averaged if not wire.is_grouped(k)):
            mean = sum(
                n * u[key].astype(np.float64) for n, u in zip(sizes, updates, strict=True)
            ) / sum(sizes)
            np.testing.assert_allclose(state[key], mean, rtol=1e-5, atol=1e-7)
        return

    # local: the global state stays the initial one ...
    for key in TRAINABLE[method]:
        np.testing.assert_array_equal(state[key], initial[key])
    # ... while each node trained, kept and evaluated its own state.
    for reply in evaluates:
        node = reply.metadata.src_node_id
        own = {k: a.numpy() for k, a in grid.contexts[node].state["pep-fedpt.personal"].items()}
        assert not np.allclose(own[wire.HEAD_WEIGHT], initial[wire.HEAD_WEIGHT])
        pid = grid.contexts[node].node_config["partition-id"]
        expected = client_for(cfg, pid, 8).evaluate(own)
        assert reply.content[wire.METRICS][wire.CORRECT] == expected["correct"]


def test_baseline_census_asks_for_counts_only(tiny_run_config: dict, task_identity) -> None:
    queries: list[Message] = []
    flat = {**tiny_run_config, "method": "head-only"}
    run_server(flat, tamper={10: recorder(queries, MessageType.QUERY)})
    (reply,) = queries
    assert set(reply.content[wire.PROTO].keys()) == {wire.PROTO_COUNT}


def test_proximal_term_against_a_hand_computed_value() -> None:
    params = [torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([[0.5]])]
    anchors = [torch.tensor([0.0, 0.0]), torch.tensor([[1.5]])]
    # (0.1 / 2) * ((1 - 0)² + (2 - 0)² + (0.5 - 1.5)²) = 0.05 * 6
    term = proximal_term(params, anchors, mu=0.1)
    assert term.item() == pytest.approx(0.3)
    term.backward()  # d/dθ = μ (θ − θ_global)
    assert params[0].grad.tolist() == pytest.approx([0.1, 0.2])
    assert proximal_term(params, anchors, mu=0.0).item() == 0.0


def test_prior_correction_against_hand_computed_values() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    # counts (3, 1, 0), smoothing 1: π = (4, 2, 1) / 7
    log_prior = smoothed_prior(torch.tensor([3, 1, 0]), 1.0).log()
    corrected = prior_corrected_logits(logits, log_prior)
    expected = [1 + math.log(4 / 7), 2 + math.log(2 / 7), 3 + math.log(1 / 7)]
    assert corrected[0].tolist() == pytest.approx(expected, rel=1e-6)
    # a strong prior flips the decision
    flipped = prior_corrected_logits(torch.tensor([[1.0, 1.1]]), torch.tensor([0.0, -1.0]))
    assert int(flipped.argmax()) == 0


def test_fedprox_with_mu_zero_trains_like_fedavg_vpt_deep(tiny_run_config: dict) -> None:
    """The proximal term is the only difference: μ = 0 gives FedAvg-VPT-deep's update."""
    results = []
    for method, mu in (("fedprox-vpt", 0.0), ("fedavg-vpt-deep", 0.01), ("fedprox-vpt", 10.0)):
        cfg = RunConfig.from_flat({**tiny_run_config, "method": method, "train.proximal-mu": mu})
        client = client_for(cfg, 0, 8)
        start = initial_arrays(cfg, client.backbone, 10)
        arrays, _ = client.train(start, None, 1)
        results.append((arrays, start))
    (prox0, start), (deep, _), (prox10, _) = results
    for key in prox0:
        np.testing.assert_allclose(prox0[key], deep[key], rtol=1e-5, atol=1e-6)
    # a large μ pulls the update back toward the global state
    moved = sum(np.abs(deep[k] - start[k]).sum() for k in deep)
    moved_prox = sum(np.abs(prox10[k] - start[k]).sum() for k in prox10)
    assert moved_prox < moved


def test_prior_corrected_client_evaluation_uses_its_own_prior(tiny_run_config: dict) -> None:
    """With the initial zero head every logit is equal: FedAvg-VPT predicts class 0, the
    prior-corrected baseline the client's most frequent class, with loss −mean log π(y)."""
    results = {}
    for method in ("fedavg-vpt-deep", "fedavg-vpt-prior"):
        cfg = RunConfig.from_flat({**tiny_run_config, "method": method})
        client = client_for(cfg, 1, 8)
        results[method] = client.evaluate(initial_arrays(cfg, client.backbone, 10))
    labels = subset_targets(client.data.test)
    prior = smoothed_prior(torch.as_tensor(client.data.train_counts), 1.0).double().numpy()
    plain, corrected = results["fedavg-vpt-deep"], results["fedavg-vpt-prior"]
    assert plain["correct"] == int((labels == 0).sum())
    assert plain["loss"] == pytest.approx(math.log(10), rel=1e-5)
    assert corrected["correct"] == int((labels == int(np.argmax(prior))).sum())
    assert corrected["loss"] == pytest.approx(-np.mean(np.log(prior[labels])), rel=1e-5)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("method", "restart"),
    [
        ("fedavg-vpt-deep", "all-processes"),
        ("fedprox-vpt", "server-only"),
        # local-only resumes only with its nodes' context.state (their own prompts) intact
        ("local", "server-only"),
        # pfedpg: the generator is in the checkpoint, the heads on the nodes (as local's)
        ("pfedpg", "server-only"),
    ],
)
def test_a_baseline_resumes_as_if_never_stopped(
    method: str, restart: str, tiny_run_config: dict, tmp_path, task_identity
) -> None:
    from helpers.run_helpers import NODES, CrashMidRound

    from client_app.app import app as client_app
    from server_app.checkpoint import load_checkpoint
    from server_app.inprocess import InProcessGrid

    flat = {
        **tiny_run_config,
        "method": method,
        "num-server-rounds": 3,
        "fed.fraction-train": 0.67,
    }
    whole = run_server({**flat, "output-dir": str(tmp_path / "whole")})
    broken_dir = tmp_path / "broken"
    broken = {**flat, "output-dir": str(broken_dir)}
    grid = InProcessGrid(client_app, NODES, broken)
    crash = CrashMidRound(crash_round=2, num_nodes=len(NODES))
    with pytest.raises(RuntimeError, match="killed mid-round"):
        run_server(broken, {node: crash for node in NODES}, grid=grid)
    assert load_checkpoint(broken_dir).server_round == 1
    resume = {**flat, "output-dir": "", "resume-from": str(broken_dir)}
    resumed = run_server(resume, grid=None if restart == "all-processes" else grid)

    expected, got = load_state(tmp_path / "whole"), load_state(broken_dir)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert load_json(broken_dir / "metrics.json") == load_json(tmp_path / "whole" / "metrics.json")
    assert not any(kind == "query" for kind, _ in resumed.sent)  # no second census
    assert resumed.sent == whole.sent[-len(resumed.sent) :]


def test_local_held_out_clients_evaluate_the_initial_state(
    tiny_run_config: dict, task_identity
) -> None:
    from helpers.run_helpers import NODES

    nodes = {**NODES, 13: {"partition-id": 6, "num-partitions": 8}}  # 6 is held out
    flat = {**tiny_run_config, "method": "local", "data.held-out-fraction": 0.125}
    evaluates: list[Message] = []
    grid = run_server(flat, tamper={13: recorder(evaluates, MessageType.EVALUATE)}, nodes=nodes)
    assert ("train", 13) not in grid.sent
    assert "pep-fedpt.personal" not in grid.contexts[13].state
    assert "pep-fedpt.personal" in grid.contexts[10].state
    cfg = RunConfig.from_flat(flat)
    client = client_for(cfg, 6, 8)
    (reply,) = evaluates
    expected = client.evaluate(initial_arrays(cfg, client.backbone, 10))
    assert reply.content[wire.METRICS][wire.CORRECT] == expected["correct"]
    assert reply.content[wire.METRICS][wire.HELD_OUT] == 1
