"""SGPT (method = "sgpt"): key matching, key loss and group-weighted aggregation against
hand-computed values; one round through the real apps; malformed group counts refused."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType
from helpers.reference import group_weighted_mean
from helpers.run_helpers import load_json, load_state, on, recorder, run_server

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.groups import (
    group_counts,
    group_weights,
    key_loss,
    match_scores,
    orthonormal_keys,
    select_groups,
)
from pep_fedpt.methods import build_model, client_for, initial_arrays
from pep_fedpt.models import cached_backbone
from pep_fedpt.state import load_trainable_arrays, trainable_arrays
from server_app.app import RunUnchangedError
from strategies import wire
from strategies.validation import check_group_counts

# The tiny ViT has 3 blocks; group prompts default to prompt.ccmp-blocks = "2-L".
GROUP_PROMPTS = {wire.group_prompt_key(1), wire.group_prompt_key(2)}
GROUP_ROWS = GROUP_PROMPTS | {wire.GROUP_KEYS}
FEDAVG_KEYS = {wire.SHARED_PROMPT, wire.HEAD_WEIGHT, wire.HEAD_BIAS}
BAD = 12

# Queries and keys in 2-D: q3 is negative in x, so its ReLU is (0, 1).
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
KEYS = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
R = 1 / math.sqrt(2)


def test_key_matching_against_hand_computed_values() -> None:
    # cos(ReLU(q), k): q1 = (1, 0) -> (1, 1/√2, -1); q2, ReLU(q3) = (0, 1) -> (0, 1/√2, 0)
    expected = [[1.0, R, -1.0], [0.0, R, 0.0], [0.0, R, 0.0]]
    assert match_scores(QUERIES, KEYS).tolist() == [pytest.approx(row) for row in expected]
    assert select_groups(QUERIES, KEYS).tolist() == [0, 1, 1]
    assert group_weights(QUERIES, KEYS).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert group_counts(QUERIES, KEYS).tolist() == [1, 2, 0]
    # A query with no positive entry scores 0 everywhere: the lowest group wins the tie.
    assert select_groups(torch.tensor([[-1.0, -2.0]]), KEYS).tolist() == [0]


def test_balanced_training_selection_against_hand_computed_values() -> None:
    # selections so far (3, 1, 0): frequencies (3/4, 1/4, 0) + ε scale the distance 1 − cos
    selected = torch.tensor([3, 1, 0])
    # q1: (0, 1 − 1/√2, 2) · (.7505, .2505, .0005) -> group 1 (distance 0);
    # q2, q3: (1, 1 − 1/√2, 1) · (...) = (.7505, .0734, .0005) -> the unused group 3
    assert select_groups(QUERIES, KEYS, selected).tolist() == [0, 2, 2]
    assert group_counts(QUERIES, KEYS, selected).tolist() == [1, 0, 2]
    assert group_weights(QUERIES, KEYS, selected).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    # the key loss follows that choice: (1 − 1, 1 − 0, 1 − 0) / 3
    assert key_loss(QUERIES, KEYS, selected).item() == pytest.approx(2 / 3)
    # no history yet: the nearest key
    assert select_groups(QUERIES, KEYS, torch.zeros(3)).tolist() == [0, 1, 1]


def test_key_loss_against_hand_computed_values() -> None:
    keys = KEYS.clone().requires_grad_(True)
    loss = key_loss(QUERIES, keys)
    # mean of 1 − cos to the chosen key: (1 − 1, 1 − 1/√2, 1 − 1/√2) / 3
    assert loss.item() == pytest.approx(2 * (1 - R) / 3)
    loss.backward()
    assert keys.grad is not None
    assert keys.grad[2].abs().sum().item() == 0.0  # no query chose key 3: it does not move
    # d(1 − cos(u, k))/dk at k = (1, 0), u = (1, 0) is 0; key 2 is pulled toward (0, 1):
    # −(2/3) · d cos((0, 1), k)/dk at k = (1, 1) = −(2/3) · (−1/(2√2), 1/(2√2))
    assert keys.grad[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    assert keys.grad[1].tolist() == pytest.approx([R / 3, -R / 3])


def test_keys_start_orthonormal() -> None:
    keys = orthonormal_keys(5, 16, torch.Generator().manual_seed(0))
    np.testing.assert_allclose((keys @ keys.T).numpy(), np.eye(5), atol=1e-6)
    with pytest.raises(ValueError, match="7 groups need 1 <= G <= embedding width 4"):
        orthonormal_keys(7, 4)


def test_group_weighted_mean_against_a_hand_computed_example() -> None:
    previous = np.array([[10.0], [20.0], [30.0]])
    a, b = np.array([[1.0], [2.0], [3.0]]), np.array([[3.0], [4.0], [5.0]])
    counts = [np.array([2, 0, 1]), np.array([2, 0, 3])]
    # g1: (2·1 + 2·3) / 4 = 2; g2: nobody selected it, keeps 20; g3: (1·3 + 3·5) / 4 = 4.5
    plain = group_weighted_mean([a, b], counts, previous)
    assert plain[:, 0].tolist() == pytest.approx([2.0, 20.0, 4.5])
    # momentum 0.5: (10 + 2) / 2, 20 (kept whatever m), (30 + 4.5) / 2
    moved = group_weighted_mean([a, b], counts, previous, momentum=0.5)
    assert moved[:, 0].tolist() == pytest.approx([6.0, 20.0, 17.25])
    assert moved.dtype == np.float32
    with pytest.raises(ValueError, match=r"momentum = 1.0 must be in \[0, 1\)"):
        group_weighted_mean([a, b], counts, previous, momentum=1.0)


@pytest.mark.parametrize(
    ("counts", "num_examples", "reason"),
    [
        ([2, 0, 3], 5, None),
        (None, 5, "reply lacks group-counts"),
        ([2, 3], 5, "group-counts has shape (2,), expected (3,)"),
        ([6, -1, 0], 5, "non-negative integers"),
        ([2.0, float("nan"), 3.0], 5, "non-negative integers"),
        ([2, 0, 4], 5, "group-counts add up to 6, not 5"),
        ([2, 0, 3], "5", "is not an integer"),
    ],
)
def test_group_counts_check(counts: object, num_examples: object, reason: str | None) -> None:
    got = check_group_counts(counts, num_examples, 3)
    assert got == reason if reason is None else reason in got


def test_sgpt_config_keys_are_checked(tiny_run_config: dict) -> None:
    with pytest.raises(ConfigError, match=r"prompt\.num-groups = 0 must be >= 1"):
        RunConfig.from_flat({"prompt.num-groups": 0})
    with pytest.raises(ConfigError, match=r"prompt\.key-loss-weight = -1\.0 must be a finite"):
        RunConfig.from_flat({"prompt.key-loss-weight": -1.0})
    with pytest.raises(ConfigError, match=r"fed.group-momentum = 1.0 must be in \[0, 1\)"):
        RunConfig.from_flat({"fed.group-momentum": 1.0})
    cfg = RunConfig.from_flat({**tiny_run_config, "method": "sgpt", "prompt.group-blocks": "5"})
    backbone = cached_backbone(cfg.model, cfg.seed, "cpu", cfg.data)
    with pytest.raises(ConfigError, match=r"prompt.group-blocks = '5': '5' is outside blocks"):
        build_model(backbone, cfg, 10)


def test_sgpt_model_state_and_group_blocks(tiny_run_config: dict) -> None:
    flat = {**tiny_run_config, "method": "sgpt", "prompt.num-groups": 4}
    cfg = RunConfig.from_flat({**flat, "prompt.group-blocks": "3"})
    backbone = cached_backbone(cfg.model, cfg.seed, "cpu", cfg.data)
    model = build_model(backbone, cfg, 10)
    arrays = trainable_arrays(model)
    assert set(arrays) == {wire.group_prompt_key(2), wire.GROUP_KEYS} | FEDAVG_KEYS
    assert arrays[wire.group_prompt_key(2)].shape == (4, 1, 64)  # (G, M_c, D)
    assert arrays[wire.GROUP_KEYS].shape == (4, 64)
    # the wire round trip reaches the same parameters
    changed = {k: v + 1.0 for k, v in arrays.items()}
    load_trainable_arrays(model, changed)
    for key, value in trainable_arrays(model).items():
        np.testing.assert_array_equal(value, changed[key], err_msg=key)
    # a sample's prompts are its group's: the model with one-hot weights e_g equals the
    # model whose every group holds group g's prompt
    images = torch.randn(2, 3, 16, 16)
    onehot = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 2)
    with torch.no_grad():
        picked = model(images, onehot)
        model.class_prompts.copy_(model.class_prompts[:, 2:3].expand_as(model.class_prompts))
        uniform = model(images, torch.full((2, 4), 0.25))
    torch.testing.assert_close(picked, uniform)


def _numpy(reply: Message) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in reply.content[wire.ARRAYS].items()}


def _expected_state(
    replies: list[Message], previous: dict[str, np.ndarray], momentum: float
) -> dict[str, np.ndarray]:
    """SGPT's aggregate, written out loop by loop: FedAvg by n_k; group rows by n_{k,g}
    with momentum, rows nobody selected kept."""
    updates = [_numpy(r) for r in replies]
    sizes = [r.content[wire.METRICS][wire.NUM_EXAMPLES] for r in replies]
    counts = [r.content[wire.METRICS][wire.GROUP_COUNTS] for r in replies]
    expected = {}
    for key in FEDAVG_KEYS:
        total = sum(n * u[key].astype(np.float64) for n, u in zip(sizes, updates, strict=True))
        expected[key] = total / sum(sizes)
    for key in GROUP_ROWS:
        rows = previous[key].astype(np.float64).copy()
        for g in range(rows.shape[0]):
            held = sum(c[g] for c in counts)
            if held:
                mean = sum(c[g] * u[key][g] for c, u in zip(counts, updates, strict=True)) / held
                rows[g] = momentum * rows[g] + (1 - momentum) * mean
        expected[key] = rows
    return expected


def _initial(cfg: RunConfig) -> dict[str, np.ndarray]:
    return initial_arrays(cfg, cached_backbone(cfg.model, cfg.seed, "cpu", cfg.data), 10)


@pytest.fixture
def flat(tiny_run_config: dict) -> dict:
    # 4 groups on 3 small clients; a sharper momentum than the default checks that m is used
    return {
        **tiny_run_config,
        "method": "sgpt",
        "prompt.num-groups": 4,
        "fed.group-momentum": 0.25,
    }


@pytest.mark.integration
def test_one_round_of_sgpt_aggregates_group_rows_by_group_counts(
    flat: dict, task_identity: None
) -> None:
    trains: list[Message] = []
    grid = run_server(flat, tamper={n: recorder(trains) for n in (10, 11, 12)})
    assert [kind for kind, _ in grid.sent] == ["query"] * 3 + ["train"] * 3 + ["evaluate"] * 3

    out = Path(flat["output-dir"])
    state = load_state(out)
    # no prototypes; group.count: every group's selections so far
    assert set(state) == GROUP_ROWS | FEDAVG_KEYS | {wire.PROTO_COUNT, wire.GROUP_COUNT}
    total = sum(np.asarray(r.content[wire.METRICS][wire.GROUP_COUNTS]) for r in trains)
    assert state[wire.GROUP_COUNT].tolist() == total.tolist()
    assert state[wire.GROUP_COUNT].dtype == np.int64
    for reply in trains:
        metrics = reply.content[wire.METRICS]
        counts = list(metrics[wire.GROUP_COUNTS])
        assert len(counts) == 4 and min(counts) >= 0
        assert sum(counts) == metrics[wire.NUM_EXAMPLES]
    previous = _initial(RunConfig.from_flat(flat))
    expected = _expected_state(trains, previous, momentum=0.25)
    for key, value in expected.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    # the group rows did move: a plain FedAvg would have been a different state
    assert not np.allclose(state[wire.GROUP_KEYS], previous[wire.GROUP_KEYS])

    rows = load_json(out / "metrics.json")
    assert [row["round"] for row in rows] == [0, 1]
    for key in ("server/accuracy", "server/loss", "train/train-loss", "evaluate/global-accuracy"):
        assert math.isfinite(rows[1][key]), key
    assert rows[1]["train/valid-replies"] == 3


def _set_group_counts(
    value: Callable[[list[int]], list[int] | list[float]] | None,
) -> Callable[[Message], Message]:
    def fn(reply: Message) -> Message:
        metrics = reply.content[wire.METRICS]
        if value is None:
            del metrics[wire.GROUP_COUNTS]
        else:
            metrics[wire.GROUP_COUNTS] = value(list(metrics[wire.GROUP_COUNTS]))
        return reply

    return fn


# Through the real apps, a few kinds; test_group_counts_check covers the rest of the check.
MALFORMED = {
    "missing": (None, "reply lacks group-counts"),
    "wrong-length": (lambda c: [*c, 0], "group-counts has shape (5,), expected (4,)"),
    "nan": (lambda c: [float("nan")] + [float(n) for n in c[1:]], "non-negative integers"),
}


@pytest.mark.integration
@pytest.mark.parametrize("fault", sorted(MALFORMED))
def test_malformed_group_counts_are_refused_and_change_nothing(
    fault: str, flat: dict, task_identity: None, caplog: pytest.LogCaptureFixture
) -> None:
    change, reason = MALFORMED[fault]
    good: list[Message] = []
    tamper = {
        10: recorder(good),
        11: recorder(good),
        BAD: on(MessageType.TRAIN, _set_group_counts(change)),
    }
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_server(flat, tamper)

    out = Path(flat["output-dir"])
    dropped = load_json(out / "dropped.json")
    assert [(d["round"], d["node"]) for d in dropped] == [(1, BAD)]
    assert reason in dropped[0]["reason"]
    lines = [r.getMessage() for r in caplog.records if "dropped reply" in r.getMessage()]
    assert lines == [f"round 1: dropped reply from node {BAD}: {dropped[0]['reason']}"]
    # the global state never sees the refused reply: it is the aggregate of the other two
    state = load_state(out)
    expected = _expected_state(good, _initial(RunConfig.from_flat(flat)), momentum=0.25)
    for key, value in expected.items():
        np.testing.assert_allclose(state[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.integration
def test_with_every_group_count_malformed_the_global_state_stays_as_it_was(
    flat: dict, task_identity: None
) -> None:
    bad = on(MessageType.TRAIN, _set_group_counts(lambda c: [-n for n in c]))
    with pytest.raises(RunUnchangedError):  # and the run says so: no round changed it
        run_server(flat, {n: bad for n in (10, 11, 12)})
    state = load_state(Path(flat["output-dir"]))
    for key, value in _initial(RunConfig.from_flat(flat)).items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    assert state[wire.GROUP_COUNT].tolist() == [0, 0, 0, 0]


def test_client_balances_groups_by_the_servers_selections_so_far(flat: dict) -> None:
    """Groups 1-3 chosen before, group 4 never: SGPT's balanced selection sends every
    training example to group 4 (its scaled distance is ε-small), and the reply says so."""
    cfg = RunConfig.from_flat(flat)
    client = client_for(cfg, 0, 8)
    start = _initial(cfg)
    arrays, metrics = client.train(start, np.array([5, 5, 5, 0]), 1)
    assert metrics[wire.GROUP_COUNTS] == [0, 0, 0, metrics[wire.NUM_EXAMPLES]]
    # only group 4's prompts were trained (with momentum SGD and weight decay, every other
    # group's prompt moves too, but by weight decay alone: far less)
    moved = np.abs(arrays[wire.group_prompt_key(1)] - start[wire.group_prompt_key(1)])
    assert moved[3].max() > 10 * moved[:3].max()
    with pytest.raises(ValueError, match=r"group\.count must be 4 non-negative counts"):
        client.train(start, np.array([1, -1, 0, 0]), 1)
