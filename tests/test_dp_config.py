"""Central DP from the run config (``dp.*``): the ServerApp wraps its strategy in Flower's
wrapper and the ClientApp clips when a bound arrives. Real apps, in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import MessageType
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT
from helpers.run_helpers import (
    NODES,
    CrashMidRound,
    dp_rows_whole_and_resumed,
    load_json,
    load_state,
    run_server,
)

from client_app.app import central_dp_clipping
from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.methods.registry import method_for
from server_app.app import build_strategy, central_dp
from server_app.inprocess import Scalar, incoming_message
from strategies import wire
from strategies.dp import DPWrapper
from strategies.privacy_ledger import PrivacyLedger, account_round, largest_share


@pytest.mark.parametrize(
    ("flat", "says"),
    [
        (
            {"dp.mode": "local"},
            r"dp\.mode = 'local' is not accepted; use one of: off, server-fixed",
        ),
        (
            {"dp.noise-multiplier": -1.0},
            r"dp\.noise-multiplier = -1\.0 must be a finite number >= 0",
        ),
        ({"dp.clipping-norm": 0.0}, r"dp\.clipping-norm = 0\.0 must be a finite number > 0"),
        ({"dp.num-sampled-clients": -2}, r"dp\.num-sampled-clients = -2 must be >= 0"),
        ({"dp.target-clipped-quantile": 1.5}, r"dp\.target-clipped-quantile = 1\.5 must be in"),
        ({"dp.target-delta": 0.0}, r"dp\.target-delta = 0\.0 must be in \(0, 1\)"),
        (
            {"dp.mode": "client-fixed", "fed.aggregation": "median"},
            r"dp\.mode = 'client-fixed' needs fed\.aggregation = 'mean'",
        ),
        (
            {"dp.mode": "server-fixed", "fed.secure-aggregation": "secaggplus"},
            r"dp\.mode = 'server-fixed' cannot run with fed\.secure-aggregation = 'secaggplus'",
        ),
    ],
)
def test_a_bad_dp_value_is_refused_when_the_config_is_read(flat: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        RunConfig.from_flat(flat)


def test_dp_off_by_default_builds_no_wrapper() -> None:
    cfg = RunConfig()
    assert cfg.dp.mode == "off"
    assert central_dp(cfg, build_strategy(cfg)) is None


@pytest.mark.parametrize("method", ["local", "pfedpg"])
def test_a_method_dp_cannot_protect_is_refused_before_any_round(method: str) -> None:
    cfg = RunConfig.from_flat({"method": method, "dp.mode": "server-fixed"})
    with pytest.raises(
        ConfigError, match=rf"dp\.mode = 'server-fixed' cannot protect method '{method}'"
    ):
        central_dp(cfg, build_strategy(cfg))


@pytest.mark.parametrize("mode", ["server-fixed", "client-adaptive"])
def test_sgpt_runs_under_either_side(mode: str) -> None:
    cfg = RunConfig.from_flat({"method": "sgpt", "prompt.num-groups": 4, "dp.mode": mode})
    assert central_dp(cfg, build_strategy(cfg)) is not None


def _wrapper(cfg: RunConfig, sampled: int) -> DPWrapper:
    build = central_dp(cfg, build_strategy(cfg))
    assert build is not None
    return build(sampled)


def test_the_wrapper_is_calibrated_to_the_strategys_sample_unless_told() -> None:
    cfg = RunConfig.from_flat({"dp.mode": "client-fixed", "dp.noise-multiplier": 0.8})
    wrapper = _wrapper(cfg, 7)
    assert (wrapper.num_sampled_clients, wrapper.noise_multiplier) == (7, 0.8)
    told = RunConfig.from_flat({"dp.mode": "client-fixed", "dp.num-sampled-clients": 20})
    assert _wrapper(told, 7).num_sampled_clients == 20


def test_adaptive_noise_that_the_count_cannot_pay_for_names_both_keys() -> None:
    # sigma' = (sigma^-2 - (2 s)^-2)^-1/2 needs sigma < 2 s; Flower's s = 10 nodes / 20 = 0.5.
    cfg = RunConfig.from_flat({"dp.mode": "server-adaptive", "dp.noise-multiplier": 1.0})
    build = central_dp(cfg, build_strategy(cfg))
    assert build is not None
    with pytest.raises(
        ConfigError,
        match=r"dp\.noise-multiplier = 1 with adaptive clipping needs dp\.clipped-count-stddev "
        r"> 0\.5; it is 0\.5 \(Flower's default: 10 sampled nodes / 20\)",
    ):
        build(10)
    # s = 1: sigma' = (1 - 1/4)^-1/2 = 1.1547
    own = RunConfig.from_flat({**cfg.to_flat(), "dp.clipped-count-stddev": 1.0})
    wrapper = _wrapper(own, 10)
    assert wrapper.noise_multiplier == pytest.approx(1 / np.sqrt(0.75))


def _train_message(sent: dict[str, np.ndarray], config: dict[str, float]) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in sent.items()}),
            wire.CONFIG: ConfigRecord(config),
        }
    )
    return incoming_message(content, MessageType.TRAIN)


def _trained_to(new: dict[str, np.ndarray]) -> ClientAppCallable:
    def call_next(msg: Message, context: Context) -> Message:
        content = RecordDict(
            {
                wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in new.items()}),
                wire.METRICS: MetricRecord({"num-examples": 5}),
            }
        )
        return Message(content, reply_to=msg)

    return call_next


def test_the_client_clips_its_update_to_the_bound_it_was_sent(task_identity: None) -> None:
    sent = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([2.0], np.float32)}
    # update (3, 0 | 4): norm 5, so a bound of 1 scales it by 1/5 to (0.6, 0 | 0.8)
    new = {"a": np.array([4.0, 1.0], np.float32), "b": np.array([6.0], np.float32)}
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    msg = _train_message(sent, {KEY_CLIPPING_NORM: 1.0})
    reply = central_dp_clipping(msg, context, _trained_to(new))
    arrays = reply.content[wire.ARRAYS]
    np.testing.assert_allclose(arrays["a"].numpy(), [1.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), [2.8], rtol=1e-6)
    assert reply.content[wire.METRICS][KEY_NORM_BIT] == 1  # clipped: the adaptive count
    # Without a bound in the config the update leaves as trained.
    plain = central_dp_clipping(_train_message(sent, {}), context, _trained_to(new))
    np.testing.assert_array_equal(plain.content[wire.ARRAYS]["a"].numpy(), new["a"])
    assert KEY_NORM_BIT not in plain.content[wire.METRICS]


def test_the_server_app_refuses_a_dp_run_it_cannot_protect_before_sending_anything(
    tiny_run_config: dict, task_identity: None
) -> None:
    flat = {**tiny_run_config, "method": "local", "dp.mode": "client-adaptive"}
    with pytest.raises(ConfigError, match="cannot protect method 'local'"):
        run_server(flat)
    assert not Path(str(flat["output-dir"])).exists()


def _two_rounds(tiny_run_config: dict, tmp_path: Path, name: str, **dp: object) -> dict:
    return {
        **tiny_run_config,
        "num-server-rounds": 2,
        "output-dir": str(tmp_path / name),
        **{f"dp.{key.replace('_', '-')}": value for key, value in dp.items()},
    }


@pytest.mark.integration
def test_dp_without_noise_and_a_bound_never_reached_ends_as_the_plain_run(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    run_server(_two_rounds(tiny_run_config, tmp_path, "plain"))
    plain = load_state(tmp_path / "plain")
    for mode in ("client-fixed", "server-adaptive"):
        flat = _two_rounds(
            tiny_run_config, tmp_path, mode, mode=mode, noise_multiplier=0.0, clipping_norm=1e6
        )
        run_server(flat)
        state = load_state(tmp_path / mode)
        assert sorted(state) == sorted(plain)
        for key in plain:  # a clip that does not bite rebuilds sent + (reply - sent)
            np.testing.assert_allclose(state[key], plain[key], rtol=0, atol=1e-6, err_msg=key)
        rows = load_json(tmp_path / mode / "metrics.json")
        bounds = [row["dp/clipping-norm"] for row in rows[1:]]
        # Adaptive: nothing was clipped, so the bound shrank by exp(-0.2 * 0.5) a round.
        expected = [1e6, 1e6] if mode == "client-fixed" else [1e6, 1e6 * np.exp(-0.1)]
        np.testing.assert_allclose(bounds, expected)
        assert [row["dp/noise-std"] for row in rows[1:]] == [0.0, 0.0]
        summary = (tmp_path / mode / "summary.md").read_text()
        assert f"- central DP: {mode}, noise multiplier 0, clipping norm 1e+06" in summary
        assert "no noise, so no privacy guarantee" in summary


@pytest.mark.integration
def test_a_bound_that_bites_keeps_the_round_within_it_and_noise_is_seeded(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    base = {**tiny_run_config, "method": "fedavg-vpt-deep"}
    cfg = RunConfig.from_flat(base)
    initial = method_for(cfg).build_server(cfg, torch.device("cpu")).initial_arrays()
    bound = 1e-3
    clipped = {**base, "output-dir": str(tmp_path / "clipped"), "dp.mode": "client-fixed"}
    clipped.update({"dp.noise-multiplier": 0.0, "dp.clipping-norm": bound})
    run_server(clipped)
    state = load_state(tmp_path / "clipped")
    moved = np.sqrt(sum(float(np.sum((state[k] - initial[k]) ** 2)) for k in initial))
    assert 0 < moved <= bound * (1 + 1e-5)  # a weighted mean of updates within the bound
    # Noise: sigma * bound / 3 nodes on every value, drawn from the run's seed.
    noisy = {**clipped, "dp.noise-multiplier": 1.0}
    for name in ("noisy-1", "noisy-2"):
        run_server({**noisy, "output-dir": str(tmp_path / name)})
    first, second = load_state(tmp_path / "noisy-1"), load_state(tmp_path / "noisy-2")
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    noise = np.concatenate([(first[k] - state[k]).ravel() for k in initial])
    assert np.std(noise) == pytest.approx(bound / 3, rel=0.1)
    row = load_json(tmp_path / "noisy-1" / "metrics.json")[-1]
    assert row["dp/noise-std"] == pytest.approx(bound / 3)
    summary = (tmp_path / "noisy-1" / "summary.md").read_text()
    assert f"epsilon = {row['dp/epsilon']:.4g} at delta = 1e-05 after 1 rounds" in summary


@pytest.mark.integration
def test_adaptive_noise_is_calibrated_to_the_bound_the_updates_were_clipped_to(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    """Flower's adaptive wrappers move the bound before they noise the aggregate; ours noise
    it for the bound the round's updates were clipped to, as the ledger accounts."""
    base = {
        **tiny_run_config,
        "method": "fedavg-vpt-deep",
        "num-server-rounds": 1,
        "dp.mode": "server-adaptive",
        "dp.clipping-norm": 1e-3,  # every update is clipped: the bound grows by about e
        "dp.clip-norm-lr": 2.0,
        "dp.clipped-count-stddev": 1.0,
    }
    run_server({**base, "output-dir": str(tmp_path / "quiet"), "dp.noise-multiplier": 0.0})
    run_server({**base, "output-dir": str(tmp_path / "noisy"), "dp.noise-multiplier": 1.0})
    quiet, noisy = load_state(tmp_path / "quiet"), load_state(tmp_path / "noisy")
    row = load_json(tmp_path / "noisy" / "metrics.json")[-1]
    assert row["dp/clipping-norm"] == 1e-3
    # sigma' = (1 - (2 * 1.0)^-2)^-1/2 (Flower's split of sigma = 1 with the count's noise)
    expected = 1e-3 / np.sqrt(0.75) / 3
    assert row["dp/noise-std"] == pytest.approx(expected)
    noise = np.concatenate([(noisy[k] - quiet[k]).ravel() for k in quiet])
    assert np.std(noise) == pytest.approx(expected, rel=0.1)


@pytest.mark.integration
def test_a_noisy_adaptive_run_resumed_after_a_crash_ends_as_an_uninterrupted_one(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    """The adaptive bound and the noise's generator are in the checkpoint: a resume draws
    the same noise and uses the same bound as a run that never stopped."""
    flat = {
        **tiny_run_config,
        "num-server-rounds": 3,
        "fed.fraction-train": 0.67,  # 2 of 3 nodes: the sampler's state matters too
        "dp.mode": "server-adaptive",
        "dp.noise-multiplier": 0.5,
        "dp.clipped-count-stddev": 1.0,
        "dp.clipping-norm": 0.05,
    }
    rows = dp_rows_whole_and_resumed(flat, tmp_path, CrashMidRound(3, num_nodes=len(NODES)))
    assert rows["broken"] == rows["whole"]
    assert all(noise > 0 for _, noise, _ in rows["whole"])
    assert len({bound for bound, _, _ in rows["whole"]}) == 3  # the bound moved every round
    # epsilon grows with every release; the resumed run composed rounds 1-2 again from its
    # checkpoint before round 3's
    epsilons = [eps for _, _, eps in rows["whole"]]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3


def test_the_largest_share_is_a_nodes_biggest_weight_over_all_weights_of_a_value() -> None:
    replies = [
        MetricRecord({"num-examples": 1, "class-counts": [2, 0, 0]}),
        MetricRecord({"num-examples": 3, "class-counts": [2, 2, 0]}),
    ]

    def weight(key: str, metrics: MetricRecord) -> float | np.ndarray:
        if key == "class":
            return np.asarray(metrics["class-counts"], dtype=np.float64)
        return float(metrics["num-examples"])  # type: ignore[arg-type]  # an int here

    # FedAvg by n_k: 3 of 4.
    assert largest_share(replies, ["shared"], weight) == 0.75
    # Per class: class 0 is shared 2:2, class 1 is the second node's alone (share 1);
    # class 2, which nobody holds, weighs nothing.
    assert largest_share(replies, ["shared", "class"], weight) == 1.0


def test_epsilon_of_t_equal_releases_is_that_of_one_with_sqrt_t_less_noise() -> None:
    # RDP of the Gaussian mechanism, alpha / (2 z^2), adds up over releases: T releases of
    # noise z cost what one of z / sqrt(T) costs.
    four = PrivacyLedger(delta=1e-5, population=10)
    for _ in range(4):
        four.compose(2.0, 10)
    one = PrivacyLedger(delta=1e-5, population=10)
    one.compose(1.0, 10)
    assert four.epsilon() == pytest.approx(one.epsilon(), rel=1e-9)
    assert 0 < one.epsilon() < float("inf")  # type: ignore[operator]  # a number: dp-accounting is installed
    # A release without noise is not private at all.
    one.compose(0.0, 10)
    assert one.epsilon() == float("inf")


def test_unequal_weights_cost_more_epsilon_than_flowers_equal_share_assumes(
    task_identity: None,
) -> None:
    cfg = RunConfig.from_flat({"dp.mode": "server-fixed", "dp.noise-multiplier": 4.0})
    wrapper = _wrapper(cfg, 4)
    equal = [MetricRecord({"num-examples": 5}) for _ in range(4)]
    skewed = [MetricRecord({"num-examples": n}) for n in (17, 1, 1, 1)]
    strategy = build_strategy(cfg)
    costs = {}
    for name, replies in (("equal", equal), ("skewed", skewed)):
        ledger = PrivacyLedger(delta=1e-5, population=4)
        share = largest_share(replies, ["head.weight"], strategy.merge_weight)
        row = account_round(ledger, wrapper, 0.1, share)
        costs[name] = row
    # Equal shares of 1/4: z = sigma = 4. One node with 17 of 20 examples: z = 4 / (4 x 0.85).
    assert costs["equal"]["update-noise-multiplier"] == pytest.approx(4.0)
    assert costs["skewed"]["update-noise-multiplier"] == pytest.approx(4.0 / 3.4)
    assert costs["skewed"]["epsilon"] > costs["equal"]["epsilon"]  # type: ignore[operator]  # numbers
    assert costs["equal"]["noise-std"] == pytest.approx(4.0 * 0.1 / 4)


# Two clients of digits' base classes (tests/test_fedmvp_apps.py's small CLIP run).
TWO: dict[int, dict[str, Scalar]] = {
    10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)
}


def _clip_run(tmp_path: Path, method: str, name: str, **extra: Scalar) -> dict[str, Scalar]:
    flat = RunConfig().to_flat()
    flat.update(
        {
            "method": method,
            "num-server-rounds": 2,
            "output-dir": str(tmp_path / name),
            "cache-dir": str(tmp_path / "features"),
            "fedmvp.classes-per-client": 2,
            "fedmvp.shots": 4,
            "train.batch-size": 8,
            **extra,
        }
    )
    return flat


@pytest.mark.integration
@pytest.mark.parametrize("method", ["promptfl", "fedtpg"])
def test_clip_text_prompt_methods_run_under_client_side_dp_as_without(
    method: str, tmp_path: Path, task_identity: None
) -> None:
    run_server(_clip_run(tmp_path, method, "plain"), nodes=TWO)
    dp = {"dp.mode": "client-fixed", "dp.noise-multiplier": 0.0, "dp.clipping-norm": 1e6}
    run_server(_clip_run(tmp_path, method, "dp", **dp), nodes=TWO)
    plain, clipped = load_state(tmp_path / "plain"), load_state(tmp_path / "dp")
    assert sorted(clipped) == sorted(plain) and plain
    for key in plain:
        np.testing.assert_allclose(clipped[key], plain[key], rtol=0, atol=1e-6, err_msg=key)
    assert "dp/clipping-norm" in load_json(tmp_path / "dp" / "metrics.json")[-1]


@pytest.mark.integration  # builds the CLIP server: seconds, not the unit tier's milliseconds
def test_zeroshot_clip_trains_nothing_and_dp_says_so(tmp_path: Path, task_identity: None) -> None:
    flat = _clip_run(tmp_path, "zeroshot-clip", "run", **{"dp.mode": "server-fixed"})
    with pytest.raises(ConfigError, match="method 'zeroshot-clip' trains nothing"):
        run_server(flat, nodes=TWO)
