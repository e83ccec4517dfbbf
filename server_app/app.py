"""ServerApp for PEP-FedPT and the baselines.

Looks up ``cfg.method``'s registration (``pep_fedpt.methods.registry``), builds its seeded
initial state and its strategy (a ``PromptFedAvg`` subclass), evaluates the global state
on the data set's central test split after every ``fed.evaluate-every``-th round and the
last (the method's server side; the PromptedViT one uses the global prior), records each
finished round on disk (with a checkpoint of the whole server state) and prints a summary
table. With ``resume-from``
set it continues a run from its checkpoint at the next round, as if it had never stopped.
"""

from __future__ import annotations

import time
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.app.typing import MetricRecordValues
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.engine import pick_device
from pep_fedpt.methods.registry import method_for
from pep_fedpt.output_dir import refuse_to_overwrite
from server_app.checkpoint import Checkpoint, load_checkpoint, resume_refusal
from server_app.results import RunRecorder, resolve_output_dir
from strategies import PromptFedAvg
from strategies.base import evaluation_round

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


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flat(context.run_config)
    method = method_for(cfg)  # refuses what the method cannot run before any file is touched
    resume = load_resume_point(cfg)
    if resume is not None and not cfg.output_dir:
        out = Path(cfg.resume_from)  # continue in the run's own folder
    else:
        out = resolve_output_dir(cfg, context.run_id)
    refuse_to_overwrite(out, cfg)
    device = pick_device()
    server = method.build_server(cfg, device)  # the method's initial state and evaluation
    strategy = build_strategy(cfg)
    strategy.wait_timeout = cfg.fed.wait_timeout
    strategy.evaluate_every = cfg.fed.evaluate_every
    recorder = RunRecorder(out, cfg, rows=resume.rows if resume else None)
    strategy.on_client_error = recorder.record_client_error
    log(INFO, "pep-fedpt: results go to %s", out)
    recorded_partitions: list[object] = [None]  # the prototype round's partition, once drawn
    recorded_at: list[float] = []  # when the previous round was recorded (monotonic clock)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """The method's central evaluation (``MethodServer.evaluate``); then record the
        round."""
        state = {key: array.numpy() for key, array in arrays.items()}
        evaluates = evaluation_round(server_round, cfg.fed.evaluate_every, cfg.fed.num_rounds)
        # A round without evaluation is still recorded: its checkpoint is what a resume reads.
        scores: dict[str, MetricRecordValues] = dict(server.evaluate(state)) if evaluates else {}
        metrics = MetricRecord(scores)
        row = {f"server/{k}": v for k, v in metrics.items()}
        row.update(strategy.round_metrics.get(server_round, {}))
        recorder.record_round(
            server_round,
            row,
            state,
            strategy.dropped,
            strategy.checkpoint(),
            node_replies=strategy.node_replies,
            partitions=strategy.partitions,
        )
        # A round's wall time, from the previous round's record to this one's, measured
        # here: a log line's arrival through `flwr run --stream` lags by up to 0.5 s.
        now = time.monotonic()
        if recorded_at:
            log(INFO, "pep-fedpt: round %d took %.3f s", server_round, now - recorded_at[0])
        recorded_at[:] = [now]
        for line in recorder.newly_failing_lines():
            log(WARNING, "pep-fedpt: %s", line)
        if strategy.partitions and strategy.partitions is not recorded_partitions[0]:
            recorder.record_partition(strategy.partitions, server.classes)
            recorded_partitions[0] = strategy.partitions
        return metrics

    if resume is None:
        start: dict[str, np.ndarray] = server.initial_arrays()
    else:
        start = resume.arrays
        strategy.restore(resume.strategy)
        log(INFO, "pep-fedpt: resuming %s after round %d", cfg.resume_from, resume.server_round)
    arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=cfg.fed.num_rounds,
        timeout=cfg.fed.round_timeout,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=evaluate_global,
        start_round=1 if resume is None else resume.server_round + 1,
    )
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
