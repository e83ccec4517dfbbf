"""Results on disk, written as each round finishes so that a crash loses no finished round.

``<output-dir>/``: ``config.json`` (the run config), ``metrics.json`` and ``metrics.csv``
(one row per round), ``state.npz`` (the latest global state: prompts, head, prototypes,
counts), ``initial-state.npz`` (the state of round 0: the seeded start), ``dropped.json``
(every refused reply and why), ``summary.md`` (what ran, the clients that failed, a table
of rounds) and ``accuracy.png``; ``partition.json`` and ``partition.png`` (each client's
training class counts, as the clients reported them in the prototype round), and, written
last each round, ``checkpoint.npz`` (what a resumed run needs; see ``checkpoint.py``). A
fresh run never writes into a folder that already holds files (``pep_fedpt.output_dir``).
See docs/results.md.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsInt

import numpy as np

from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import RunConfig
from pep_fedpt.methods.registry import get_method
from pep_fedpt.partitioners import get_partitioner
from server_app.base_new import base_new_metrics, clip_description
from server_app.checkpoint import Checkpoint, write_checkpoint
from server_app.metric_keys import ACCURACIES
from server_app.plots import accuracy_plot, partition_heatmap

SUMMARY_COLUMNS = (
    ("round", "round"),
    ("train/train-loss", "train loss"),
    *((a.key, a.column) for a in ACCURACIES),
)
# FedMVP's base->new columns: shown only when a run logs them, so that every other
# method's summary stays as it was.
BASE_NEW_COLUMNS = (
    ("server/local-accuracy", "local acc"),
    ("server/base-accuracy", "base acc"),
    ("server/new-accuracy", "new acc"),
    ("server/hm", "HM"),
)
# FedMVP's leave-one-domain-out columns, likewise.
DOMAIN_COLUMNS = (
    ("server/local-accuracy", "local acc"),
    ("server/target-accuracy", "target acc"),
)
# Every client error's full text (Ray's traceback included, colour codes stripped); the
# other result files and the console keep its one-line form (strategies.errors.one_line).
CLIENT_ERRORS = "client-errors.log"
# A metrics.json row: "round" and the round's metrics (numbers, or lists of numbers).
Row = dict[str, Any]
INITIAL_STATE = "initial-state.npz"  # the state of round 0, kept for bench/prompt_drift.py
# What config.json records beyond the run config (RunConfig.from_flat refuses them).
RECORDED_ONLY = ("model.pretrain-steps-done", "model.pretrain-steps-planned")


def resolve_output_dir(cfg: RunConfig, run_id: int) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path.home() / ".cache" / "pep-fedpt" / "runs" / f"{stamp}-run{run_id}"


class RunRecorder:
    """Collects one row of metrics per round and rewrites the result files each time."""

    def __init__(
        self,
        directory: Path,
        cfg: RunConfig,
        rows: list[Row] | None = None,
    ) -> None:
        """``rows``: the metrics of the rounds a resumed run has already done."""
        self.directory = directory
        self.cfg = cfg
        self.config = cfg.to_flat()
        self.rows: list[Row] = list(rows or [])
        self.dropped: list[tuple[int, int, str]] = []
        self.node_replies: dict[int, dict[str, Any]] = {}
        self.partitions: dict[int, dict[str, Any]] = {}
        self._announced: set[int] = set()  # nodes newly_failing_lines has named
        self.failure: str | None = None  # why the run as a whole failed (record_failure)
        directory.mkdir(parents=True, exist_ok=True)
        # The steps a local: backbone's pre-training actually did: the config alone fixes
        # them, unless model.pretrain-minutes stopped it (then they are this host's).
        recorded: dict[str, Any] = dict(self.config)
        self.backbone = _backbone_record(cfg)
        if self.backbone is not None:
            done, planned = RECORDED_ONLY
            recorded[done] = self.backbone.get("steps-done")
            recorded[planned] = self.backbone.get("steps")
        atomic_write(directory / "config.json", json.dumps(recorded, indent=2).encode())

    def record_round(
        self,
        server_round: int,
        metrics: Mapping[str, object],
        state: Mapping[str, np.ndarray],
        dropped: list[tuple[int, int, str]],
        strategy_state: dict[str, Any] | None = None,
        node_replies: Mapping[int, Mapping[str, Any]] | None = None,
        partitions: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> None:
        """Write every result file (``summary.md`` and ``accuracy.png`` included, so that a
        stopped run has both); then, if given the strategy's state, the checkpoint.

        ``node_replies``: per node, messages ``sent``, how many ``failed`` and the
        ``last-failure`` (``PromptFedAvg.node_replies``); ``partitions``: the prototype round's
        partition id -> ``node-id``, to name a failing node's partition.
        The checkpoint goes last and alone carries what a resume reads, so a crash between
        two of these writes never mixes rounds in a resumed run.
        """
        # A round recorded again (a run resumed from its round-0 checkpoint) replaces its row.
        self.rows = [row for row in self.rows if row["round"] < server_round]
        # Base->new runs (FedMVP): Local and HM from the row's Base, New and client results.
        self.rows.append({"round": float(server_round), **metrics, **base_new_metrics(metrics)})
        self.dropped = list(dropped)
        self.node_replies = {int(n): dict(e) for n, e in (node_replies or {}).items()}
        self.partitions = {int(p): dict(e) for p, e in (partitions or {}).items()}
        atomic_write(self.directory / "metrics.json", json.dumps(self.rows, indent=2).encode())
        atomic_write(self.directory / "metrics.csv", self._csv().encode())
        buffer = io.BytesIO()
        np.savez(buffer, **state)  # type: ignore[arg-type]  # numpy's stub checks **kwds against allow_pickle
        atomic_write(self.directory / "state.npz", buffer.getvalue())
        if server_round == 0:  # the initial state, so that a run's drift needs no rebuild
            atomic_write(self.directory / INITIAL_STATE, buffer.getvalue())
        reasons = [{"round": r, "node": n, "reason": why} for r, n, why in dropped]
        atomic_write(self.directory / "dropped.json", json.dumps(reasons, indent=2).encode())
        self.write_summary()
        self.plot_accuracy()
        if strategy_state is not None:
            checkpoint = Checkpoint(
                server_round, dict(state), strategy_state, self.rows, self.config
            )
            write_checkpoint(self.directory, checkpoint)

    def record_partition(
        self, partitions: Mapping[int, Mapping[str, Any]], classes: Sequence[str]
    ) -> None:
        """partition.json and partition.png from the prototype round's per-client reports.

        ``partitions``: partition id -> ``node-id``, ``held-out``, ``class-counts``.
        """
        ids = sorted(partitions)
        entries = [
            {
                "partition-id": pid,
                "node-id": int(partitions[pid]["node-id"]),
                "held-out": bool(partitions[pid]["held-out"]),
                "num-examples": int(sum(partitions[pid]["class-counts"])),
                "train-class-counts": [int(n) for n in partitions[pid]["class-counts"]],
            }
            for pid in ids
        ]
        data = self.cfg.data
        document = {
            "dataset": data.dataset,
            "partitioner": data.partitioner,
            "seed": self.cfg.seed,
            "classes": list(classes),
            "partitions": entries,
        }
        atomic_write(self.directory / "partition.json", json.dumps(document, indent=2).encode())
        # Under secure aggregation no node's counts reach the server: nothing to draw.
        if not entries or not any(e["train-class-counts"] for e in entries):
            return
        counts = np.array([e["train-class-counts"] for e in entries])
        title = f"{data.dataset}, {data.partitioner} partition: training examples per class"
        png = partition_heatmap(counts, ids, [bool(e["held-out"]) for e in entries], classes, title)
        atomic_write(self.directory / "partition.png", png)

    def plot_accuracy(self) -> None:
        """accuracy.png: every logged accuracy against rounds."""
        title = f"{self.cfg.method} on {self.cfg.data.dataset}"
        atomic_write(self.directory / "accuracy.png", accuracy_plot(self.rows, title))

    def _csv(self) -> str:
        keys = sorted({k for row in self.rows for k, v in row.items() if not isinstance(v, list)})
        keys.remove("round")
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["round", *keys])
        for row in self.rows:
            writer.writerow([int(row["round"]), *(row.get(k, "") for k in keys)])
        return out.getvalue()

    def summary_table(self) -> str:
        """A Markdown table of the headline metrics, one line per round (and FedMVP's
        Local / Base / New / HM, or Local / Target, where the rows hold them)."""
        columns = [*SUMMARY_COLUMNS]
        for extra in (BASE_NEW_COLUMNS, DOMAIN_COLUMNS):
            if any(key in row for row in self.rows for key, _ in extra[1:]):
                columns += extra
        columns.append(("dropped", "dropped replies"))
        dropped_in: dict[int, int] = {}
        for server_round, _, _ in self.dropped:
            dropped_in[server_round] = dropped_in.get(server_round, 0) + 1
        header = "| " + " | ".join(title for _, title in columns) + " |"
        lines = [header, "|" + "---|" * len(columns)]
        for row in self.rows:
            cells = []
            for key, _ in columns:
                value = row.get(key)
                if key == "round":
                    cells.append(str(int(row["round"])))
                elif key == "dropped":
                    cells.append(str(dropped_in.get(int(row["round"]), 0)))
                elif isinstance(value, float | int):
                    cells.append(f"{value:.4f}")
                else:
                    cells.append("-")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def failing_clients(self) -> list[dict[str, Any]]:
        """Every node with a failed message (error reply or none), the useless ones first.

        ``never-worked``: it failed messages and never answered a train or evaluate
        message with content, so it never contributed to the run.
        """
        partition_of = {int(e["node-id"]): pid for pid, e in self.partitions.items()}
        failing = [
            {
                "node": node,
                "partition-id": partition_of.get(node),
                "sent": int(entry["sent"]),
                "failed": int(entry["failed"]),
                "never-worked": int(entry.get("answered-work", 0)) == 0,
                "trained": entry.get("trained"),
                "evaluated": entry.get("evaluated"),
                "last-failure": str(entry["last-failure"]),
            }
            for node, entry in sorted(self.node_replies.items())
            if int(entry["failed"]) > 0
        ]
        return sorted(failing, key=lambda f: (not f["never-worked"], f["node"]))

    def failing_lines(self) -> list[str]:
        """One console line per node that never answered a train or evaluate message."""
        return [
            f"node {f['node']} ({_partition_text(f['partition-id'])}) never trained or "
            f"evaluated: {f['failed']} of {f['sent']} messages failed; "
            f"last: {f['last-failure']}"
            for f in self.failing_clients()
            if f["never-worked"]
        ]

    def newly_failing_lines(self) -> list[str]:
        """For the console during a run: each node that has not yet trained or evaluated
        although sent work, said once (the end of the run names them again)."""
        lines = []
        for f in self.failing_clients():
            if f["never-worked"] and f["node"] not in self._announced:
                self._announced.add(f["node"])
                lines.append(
                    f"node {f['node']} ({_partition_text(f['partition-id'])}) has not trained "
                    f"or evaluated so far: {f['failed']} of {f['sent']} messages failed; "
                    f"last: {f['last-failure']}"
                )
        return lines

    def record_client_error(self, server_round: int, node: int, phase: str, text: str) -> None:
        """Append one client error's full text to client-errors.log."""
        with open(self.directory / CLIENT_ERRORS, "a", encoding="utf-8") as log_file:
            heading = f"=== round {server_round} {phase}, node {node} ==="
            log_file.write(f"{heading}\n{text.rstrip()}\n\n")

    def record_failure(self, line: str) -> None:
        """Say at the top of summary.md that the run failed, and why."""
        self.failure = line
        self.write_summary()

    def write_summary(self) -> None:
        """summary.md: what ran (method, data, partition, seeds), where, how it went."""
        cfg, data = self.cfg, self.cfg.data
        done = int(self.rows[-1]["round"]) if self.rows else 0
        lines = [
            f"# {cfg.method} on {data.dataset}",
            "",
            *([f"**RUN FAILED: {self.failure}**", ""] if self.failure else []),
            f"- method: {cfg.method}",
            f"- data set: {data.dataset}"
            + (f" ({data.data_dir})" if data.data_dir else "")
            + (f", subsample {data.subsample:g}" if data.subsample < 1.0 else ""),
            f"- partition: {partition_description(cfg)}"
            + (f", {len(self.partitions)} clients reported" if self.partitions else ""),
            f"- seeds: run seed {cfg.seed}, data split seed {data.split_seed}"
            + (
                f", pre-training seed {cfg.model.pretrain_seed}"
                if cfg.model.pretrained.startswith("local:")
                else ""
            ),
            f"- model: {_model_description(cfg)}" + _backbone_text(self.backbone),
            f"- rounds: {done} of {cfg.fed.num_rounds} done",
            f"- dropped replies: {len(self.dropped)}"
            + (" (reasons in dropped.json)" if self.dropped else ""),
            *_privacy_lines(cfg, self.rows),
            f"- results: {self.directory}",
            "",
        ]
        failing = self.failing_clients()
        if failing:
            lines += [
                "## Clients with failed messages",
                "",
                "A client that never trained or evaluated did not contribute to this run. "
                "Trained / evaluated: how many of its train / evaluate replies passed every "
                "check (0: it never did); the full text of each client error is in "
                f"{CLIENT_ERRORS}.",
                "",
                "| node | partition | failed / sent | trained | evaluated | "
                "never trained or evaluated | last failure |",
                "|---|---|---|---|---|---|---|",
            ]
            for f in failing:
                reason = f["last-failure"].replace("|", "\\|").replace("\n", " ")
                lines.append(
                    f"| {f['node']} | {_partition_text(f['partition-id'])} | "
                    f"{f['failed']} / {f['sent']} | {_times(f['trained'])} | "
                    f"{_times(f['evaluated'])} | {'**yes**' if f['never-worked'] else 'no'} "
                    f"| {reason} |"
                )
            lines.append("")
        lines += ["## Rounds", "", self.summary_table(), ""]
        atomic_write(self.directory / "summary.md", "\n".join(lines).encode())


def _times(count: SupportsInt | None) -> str:
    """How often a node's replies passed, in words: "no", "1 time", "3 times" ("-": not
    counted, a run resumed from a checkpoint written before these counts)."""
    if count is None:
        return "-"
    number = int(count)
    return "no" if number == 0 else f"{number} time{'s' if number > 1 else ''}"


def _privacy_lines(cfg: RunConfig, rows: list[dict[str, Any]]) -> list[str]:
    """Central DP's line for summary.md: the mode, and the ε the rounds so far spent."""
    if cfg.dp.mode == "off":
        return []
    dp = cfg.dp
    text = (
        f"- central DP: {dp.mode}, noise multiplier {dp.noise_multiplier:g}, "
        f"clipping norm {dp.clipping_norm:g}" + (" at first" if dp.adaptive else "")
    )
    spent = [row["dp/epsilon"] for row in rows if "dp/epsilon" in row]
    if spent:
        text += (
            f"; epsilon = {spent[-1]:.4g} at delta = {dp.target_delta:g} after "
            f"{len(spent)} rounds (docs/privacy.md: how it is counted)"
        )
    elif dp.noise_multiplier == 0:
        text += "; no noise, so no privacy guarantee"
    return [text]


def _backbone_text(info: dict[str, Any] | None) -> str:
    """The backbone's pre-training steps for summary.md, loudly when a cap cut them."""
    if info is None or "steps-done" not in info:
        return ""
    done, planned = int(info["steps-done"]), int(info["steps"])
    text = f", pre-trained {done} steps, train accuracy {float(info['train-accuracy']):.3f}"
    if done < planned:
        text += f" (**stopped by model.pretrain-minutes before the recipe's {planned} steps**)"
    return text


def _backbone_record(cfg: RunConfig) -> dict[str, Any] | None:
    """The .json of the run's local: backbone, if it is one and is pre-trained."""
    if not cfg.model.pretrained.startswith("local:") or get_method(cfg.method).clip:
        return None
    from pep_fedpt.pretrain import backbone_record

    return backbone_record(cfg.model, cfg.data)


def _model_description(cfg: RunConfig) -> str:
    if get_method(cfg.method).clip:
        return clip_description(cfg)[0]
    return f"{cfg.model.name} ({cfg.model.pretrained} weights)"


def _partition_text(partition_id: int | None) -> str:
    return "partition unknown" if partition_id is None else f"partition {partition_id}"


def partition_description(cfg: RunConfig) -> str:
    """The partitioner and its parameters, in words."""
    data = cfg.data
    if get_method(cfg.method).clip:  # the protocol decides who holds what
        return clip_description(cfg)[1]
    text = get_partitioner(data.partitioner).describe(data)
    if data.held_out_fraction:
        text += f", {data.held_out_fraction:g} of clients held out"
    return text
