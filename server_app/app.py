"""ServerApp for PEP-FedPT and the baselines.

Looks up ``cfg.method``'s registration (``pep_fedpt.methods.registry``), builds its seeded
initial state and its strategy (a ``PromptFedAvg`` subclass), and runs the strategy's
rounds (``PromptFedAvg.rounds``) in its own loop: after each finished round it evaluates
the global state on the data set's central test split (every ``fed.evaluate-every``-th
round and the last; the method's server side) and records the round on disk (with a
checkpoint of the whole server state); at the end it prints a summary table. With
``resume-from`` set it continues a run from its checkpoint at the next round, as if it had
never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.app.typing import MetricRecordValues
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from pep_fedpt.config import ConfigError, DPConfig, RunConfig
from pep_fedpt.engine import pick_device
from pep_fedpt.methods.registry import method_for
from pep_fedpt.output_dir import refuse_to_overwrite
from server_app.checkpoint import Checkpoint, load_checkpoint, resume_refusal
from server_app.results import RunRecorder, resolve_output_dir
from strategies import PromptFedAvg
from strategies.base import evaluation_round
from strategies.dp import DPWrapper, dp_wrapper

app = ServerApp()


def build_strategy(cfg: RunConfig) -> PromptFedAvg:
    """The strategy of ``cfg.method``, from its registration."""
    strategy: PromptFedAvg = method_for(cfg).build_strategy(cfg)
    return strategy


def load_resume_point(cfg: RunConfig) -> Checkpoint | None:
    """The checkpoint named by ``resume-from``, refused if the run config changed meaning."""
    if not cfg.resume_from:
        return None
    checkpoint = load_checkpoint(Path(cfg.resume_from))
    refusal = resume_refusal(cfg.resume_from, checkpoint.config, cfg.to_flat())
    if refusal:
        raise ConfigError(refusal)
    return checkpoint


def central_dp(cfg: RunConfig, strategy: PromptFedAvg) -> Callable[[int], DPWrapper] | None:
    """What builds ``dp.mode``'s wrapper around ``strategy`` from a round's sample size
    (None: off), refused at once for a method the wrapper cannot protect."""
    dp = cfg.dp
    if dp.mode == "off":
        return None
    refusal = strategy.dp_refusal(dp.client_side)
    if refusal:
        raise ConfigError(f"dp.mode = {dp.mode!r} cannot protect method {cfg.method!r}: {refusal}")

    def build(sampled: int) -> DPWrapper:
        nodes = dp.num_sampled_clients or max(sampled, 1)
        _check_adaptive_noise(dp, nodes)
        wrapper = dp_wrapper(
            strategy,
            dp.mode,
            noise_multiplier=dp.noise_multiplier,
            clipping_norm=dp.clipping_norm,
            num_sampled_clients=nodes,
            target_clipped_quantile=dp.target_clipped_quantile,
            clip_norm_lr=dp.clip_norm_lr,
            clipped_count_stddev=None if dp.clipped_count_stddev < 0 else dp.clipped_count_stddev,
        )
        log(
            INFO,
            "pep-fedpt: central DP (%s): each update clipped to %s, Gaussian noise of std "
            "%.4g (sigma %s x bound / %d sampled nodes) on each aggregate; epsilon with "
            "this run's weights in every round's dp/epsilon (docs/privacy.md)",
            dp.mode,
            f"{dp.clipping_norm:g}" + (" at first, then adaptive" if dp.adaptive else ""),
            wrapper.noise_multiplier * dp.clipping_norm / nodes,
            f"{wrapper.noise_multiplier:.4g}",
            nodes,
        )
        return wrapper

    return build


def _check_adaptive_noise(dp: DPConfig, nodes: int) -> None:
    """Flower's adaptive wrappers pay for the noisy clipped count out of the noise
    multiplier, which needs sigma < 2 x the count's std: said here in the run's keys."""
    if not dp.adaptive or dp.noise_multiplier == 0:
        return
    own = dp.clipped_count_stddev >= 0
    stddev = dp.clipped_count_stddev if own else nodes / 20
    if dp.noise_multiplier >= 2 * stddev:
        source = "" if own else f" (Flower's default: {nodes} sampled nodes / 20)"
        raise ConfigError(
            f"dp.noise-multiplier = {dp.noise_multiplier:g} with adaptive clipping needs "
            f"dp.clipped-count-stddev > {dp.noise_multiplier / 2:g}; it is {stddev:g}{source}: "
            "raise dp.clipped-count-stddev or lower dp.noise-multiplier"
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    method = method_for(cfg)  # refuses what the method cannot run before any file is touched
    strategy: PromptFedAvg = method.build_strategy(cfg)
    dp = central_dp(cfg, strategy)
    resume = load_resume_point(cfg)
    if resume is not None and not cfg.output_dir:
        out = Path(cfg.resume_from)  # continue in the run's own folder
    else:
        out = resolve_output_dir(cfg, context.run_id)
    refuse_to_overwrite(out, cfg)
    device = pick_device()
    server = method.build_server(cfg, device)  # the method's initial state and evaluation
    start: dict[str, np.ndarray] = server.initial_arrays() if resume is None else resume.arrays
    if dp is not None and not start:
        raise ConfigError(
            f"dp.mode = {cfg.dp.mode!r}: method {cfg.method!r} trains nothing, so there is "
            "no update to clip or noise; use dp.mode = 'off'"
        )
    strategy.wait_timeout = cfg.fed.wait_timeout
    strategy.evaluate_every = cfg.fed.evaluate_every
    recorder = RunRecorder(out, cfg, rows=resume.rows if resume else None)
    strategy.on_client_error = recorder.record_client_error
    log(INFO, "pep-fedpt: results go to %s", out)
    if resume is not None:
        strategy.restore(resume.strategy)
        log(INFO, "pep-fedpt: resuming %s after round %d", cfg.resume_from, resume.server_round)
    recorded_partitions: dict[int, dict[str, int | bool | list[int]]] = {}
    recorded_at: float | None = None  # when the previous round was recorded (monotonic)
    for end in strategy.rounds(
        grid,
        ArrayRecord({k: Array(v) for k, v in start.items()}),
        num_rounds=cfg.fed.num_rounds,
        timeout=cfg.fed.round_timeout,
        start_round=1 if resume is None else resume.server_round + 1,
        dp=dp,
        dp_delta=cfg.dp.target_delta,
    ):
        state = {key: array.numpy() for key, array in end.arrays.items()}
        # A round without evaluation is still recorded: its checkpoint is what a resume reads.
        scores: dict[str, MetricRecordValues] = {}
        if evaluation_round(end.server_round, cfg.fed.evaluate_every, cfg.fed.num_rounds):
            scores = dict(server.evaluate(state))  # the method's central evaluation
            log(INFO, "pep-fedpt: round %d central evaluation: %s", end.server_round, scores)
        if "dp/epsilon" in end.metrics:
            log(
                INFO,
                "pep-fedpt: round %d: central DP spent epsilon = %.4g at delta = %g so far",
                end.server_round,
                end.metrics["dp/epsilon"],
                cfg.dp.target_delta,
            )
        row = {f"server/{k}": v for k, v in scores.items()}
        row.update(end.metrics)
        recorder.record_round(
            end.server_round,
            row,
            state,
            end.dropped,
            end.checkpoint,
            node_replies=end.node_replies,
            partitions=end.partitions,
        )
        # A round's wall time, from the previous round's record to this one's, measured
        # here: a log line's arrival through `flwr run --stream` lags by up to 0.5 s.
        now = time.monotonic()
        if recorded_at is not None:
            log(INFO, "pep-fedpt: round %d took %.3f s", end.server_round, now - recorded_at)
        recorded_at = now
        for line in recorder.newly_failing_lines():
            log(WARNING, "pep-fedpt: %s", line)
        if end.partitions and end.partitions != recorded_partitions:
            recorder.record_partition(end.partitions, server.classes)
            recorded_partitions = end.partitions
    # summary.md and accuracy.png are already written, after every round; the table once.
    table = recorder.summary_table()
    print(
        f"\npep-fedpt summary ({cfg.method}, {cfg.data.dataset}):\n{table}\nresults: {out}\n",
        flush=True,
    )
    for line in recorder.failing_lines():
        log(WARNING, "pep-fedpt: %s", line)
    log(INFO, "pep-fedpt: results written to %s (summary.md, accuracy.png)", out)
    unchanged = unchanged_run_line(strategy, len(recorder.dropped))
    if unchanged:
        recorder.record_failure(unchanged)
        log(ERROR, "pep-fedpt: %s", unchanged)
        raise RunUnchangedError(unchanged)


class RunUnchangedError(RuntimeError):
    """A run sent train messages but no round's replies changed the global state."""


def unchanged_run_line(strategy: PromptFedAvg, dropped: int) -> str | None:
    """The line that fails a run in which train messages went out and not one round
    changed the global state (every reply refused, failed or too few), else None."""
    if strategy.updated_rounds:
        return None
    sent = [r for r, m in strategy.round_metrics.items() if r > 0 and m.get("train/bytes-down")]
    if not sent:
        return None  # no round trained (fed.fraction-train = 0): nothing was to change
    return (
        f"NO ROUND CHANGED THE GLOBAL STATE: train messages went out in {len(sent)} round(s) "
        f"and every round kept the state it started with ({dropped} replies refused, the "
        "reasons in dropped.json); the results are those of the initial state"
    )
