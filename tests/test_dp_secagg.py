"""Client-side central DP under SecAgg+: each node clips its update before it is masked,
the server noises the totals, and ε is accounted from what the totals allow. Real apps,
in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from helpers.run_helpers import (
    NODES,
    CrashMidRound,
    dp_rows_whole_and_resumed,
    load_json,
    load_state,
    run_server,
)

from pep_fedpt.config import RunConfig
from pep_fedpt.methods.registry import method_for
from strategies import wire
from strategies.privacy_ledger import largest_share_bound
from strategies.secagg import (
    MESSAGE_TYPE,
    SECURE_KEYS,
    SECURE_PER_CLASS,
    SUM_SCALE,
    secure_update,
)


def test_a_node_clips_its_whole_update_before_weighting_and_counts_itself_clipped() -> None:
    config = ConfigRecord(
        {SECURE_KEYS: ["a", "b"], SECURE_PER_CLASS: [0, 0], SUM_SCALE: 10, KEY_CLIPPING_NORM: 1.0}
    )
    sent = {"a": np.array([1.0, 1.0]), "b": np.array([2.0])}
    # update (3, 0 | 4): norm 5, clipped to a bound of 1 is (0.6, 0 | 0.8); n = 5 weighs it
    trained = {"a": np.array([4.0, 1.0]), "b": np.array([6.0])}
    metrics = {wire.NUM_EXAMPLES: 5, wire.CLASS_COUNTS: [2, 3], wire.TRAIN_LOSS: 0.5}
    ints, floats = secure_update(config, trained, metrics, sent)
    np.testing.assert_array_equal(ints, [5, 2, 3, 1])  # n, counts, then the norm bit
    np.testing.assert_allclose(floats, [0.25, 0.3, 0.0, 0.4])  # n loss, then 5 * Δ / 10
    # A bound the update stays within: nothing scaled, the norm bit 0.
    config[KEY_CLIPPING_NORM] = 6.0
    ints, floats = secure_update(config, trained, metrics, sent)
    np.testing.assert_array_equal(ints, [5, 2, 3, 0])
    np.testing.assert_allclose(floats, [0.25, 1.5, 0.0, 2.0])


def test_the_largest_share_the_totals_allow_is_max_count_over_the_smallest_total() -> None:
    counts = np.array([300, 40, 0])  # class 2 held by nobody: no share to take
    # Every node weighs n_k <= 100 of 340 examples.
    assert largest_share_bound(340, counts, False, 100) == pytest.approx(100 / 340)
    # Per class, class 1's 40 examples may all be one node's.
    assert largest_share_bound(340, counts, True, 100) == 1.0
    assert largest_share_bound(340, counts, True, 20) == pytest.approx(20 / 40)
    assert largest_share_bound(0, np.zeros(3), True, 20) == 1.0  # nothing released


def _run(tiny_run_config: dict, tmp_path: Path, name: str, **keys: object) -> Path:
    flat = {
        **tiny_run_config,
        "method": "fedavg-vpt-deep",
        "num-server-rounds": 2,
        "output-dir": str(tmp_path / name),
        "fed.secure-aggregation": "secaggplus",
        "fed.secagg-max-count": 400,  # the tiny partitions hold fewer examples
        **keys,
    }
    grid = run_server(flat)
    # Only masked vectors left the nodes: no plain train message was ever sent.
    assert {kind for kind, _ in grid.sent} == {"query.secagg", "evaluate"}
    return tmp_path / name


@pytest.mark.integration
def test_client_side_dp_under_secagg_clips_before_masking_and_noises_the_totals(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    plain = load_state(_run(tiny_run_config, tmp_path, "plain"))
    never = {"dp.mode": "client-fixed", "dp.noise-multiplier": 0.0, "dp.clipping-norm": 1e6}
    out = _run(tiny_run_config, tmp_path, "never-clipped", **never)
    for key, value in load_state(out).items():  # a clip of 1 and zero noise change nothing
        np.testing.assert_allclose(value, plain[key], rtol=0, atol=1e-7, err_msg=key)
    rows = load_json(out / "metrics.json")[1:]
    assert [(r["dp/clipping-norm"], r["dp/noise-std"]) for r in rows] == [(1e6, 0.0)] * 2
    # Every node weighs at most max-count = 400 examples of the total, so a node's share
    # is 400 / n (or 1); the plain run would know each share, this one only the bound.
    n = [r["train/num-examples"] for r in rows]
    np.testing.assert_allclose([r["dp/largest-share"] for r in rows], [min(1, 400 / m) for m in n])

    cfg = RunConfig.from_flat({**tiny_run_config, "method": "fedavg-vpt-deep"})
    initial = method_for(cfg).build_server(cfg, torch.device("cpu")).initial_arrays()
    bound = 1e-3
    bites = {**never, "dp.clipping-norm": bound}
    first = load_state(
        _run(tiny_run_config, tmp_path, "clipped", **bites, **{"num-server-rounds": 1})
    )
    moved = np.sqrt(sum(float(np.sum((first[k] - initial[k]) ** 2)) for k in initial))
    assert 0 < moved <= bound * (1 + 1e-4)  # a weighted mean of clipped updates
    noisy = {**bites, "num-server-rounds": 1, "dp.noise-multiplier": 1.0}
    noised = load_state(_run(tiny_run_config, tmp_path, "noisy", **noisy))
    again = load_state(_run(tiny_run_config, tmp_path, "noisy-again", **noisy))
    for key in noised:  # the noise is drawn from the run's seed
        np.testing.assert_array_equal(noised[key], again[key], err_msg=key)
    noise = np.concatenate([(noised[k] - first[k]).ravel() for k in initial])
    assert np.std(noise) == pytest.approx(bound / 3, rel=0.1)  # sigma C / 3 nodes
    row = load_json(tmp_path / "noisy" / "metrics.json")[-1]
    assert row["dp/noise-std"] == pytest.approx(bound / 3) and row["dp/epsilon"] > 0


@pytest.mark.integration
def test_client_adaptive_dp_under_secagg_moves_the_bound_by_the_secure_count(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    keys = {
        "dp.mode": "client-adaptive",
        "dp.noise-multiplier": 0.0,
        "dp.clipped-count-stddev": 0.0,
        "dp.clipping-norm": 1e-6,  # every update is clipped: f = 1 against the target 0.5
    }
    rows = load_json(_run(tiny_run_config, tmp_path, "adaptive", **keys) / "metrics.json")[1:]
    bounds = [row["dp/clipping-norm"] for row in rows]
    np.testing.assert_allclose(bounds, [1e-6, 1e-6 * np.exp(0.2 * 0.5)])


class CrashInSecureRound(CrashMidRound):
    """A ServerApp process that dies in round ``crash_round`` during the secure sum."""

    def __call__(self, reply: Message) -> Message:
        secure = reply.metadata.message_type == MESSAGE_TYPE
        if secure and self.evaluated == self.evaluates_before:
            raise RuntimeError("server process killed mid-round")
        return super().__call__(reply)


@pytest.mark.integration
def test_a_noisy_secure_adaptive_run_resumed_after_a_crash_ends_as_an_uninterrupted_one(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    flat = {
        **tiny_run_config,
        "method": "fedavg-vpt-deep",
        "num-server-rounds": 3,
        "fed.secure-aggregation": "secaggplus",
        "fed.secagg-max-count": 400,
        "dp.mode": "client-adaptive",
        "dp.noise-multiplier": 0.5,
        "dp.clipped-count-stddev": 1.0,
        "dp.clipping-norm": 0.05,
    }
    crash = CrashInSecureRound(crash_round=3, num_nodes=len(NODES))
    rows = dp_rows_whole_and_resumed(flat, tmp_path, crash)
    assert rows["broken"] == rows["whole"]
    assert len({bound for bound, _, _ in rows["whole"]}) == 3  # the bound moved every round
