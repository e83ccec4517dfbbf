"""Results on disk, written as each round finishes so that a crash loses no finished round.

``<output-dir>/``: ``config.json`` (the run config), ``metrics.json`` and ``metrics.csv``
(one row per round), ``state.npz`` (the latest global state: prompts, head, prototypes,
counts), ``initial-state.npz`` (the state of round 0: the seeded start), ``dropped.json``
(every refused reply and why) and ``summary.md``;
``partition.json`` and ``partition.png`` (each client's training class counts, as the
clients reported them in the prototype round), at the end ``accuracy.png``, and, written
last each round, ``checkpoint.npz`` (what a resumed run needs; see ``checkpoint.py``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import RunConfig
from server_app.base_new import base_new_metrics
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
INITIAL_STATE = "initial-state.npz"  # the state of round 0, kept for bench/prompt_drift.py


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
        rows: list[dict[str, float | list[float]]] | None = None,
    ) -> None:
        """``rows``: the metrics of the rounds a resumed run has already done."""
        self.directory = directory
        self.cfg = cfg
        self.config = cfg.to_flat()
        self.rows: list[dict[str, float | list[float]]] = list(rows or [])
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "config.json", json.dumps(self.config, indent=2).encode())

    def record_round(
        self,
        server_round: int,
        metrics: Mapping[str, float | list[float]],
        state: Mapping[str, np.ndarray],
        dropped: list[tuple[int, int, str]],
        strategy_state: dict[str, Any] | None = None,
    ) -> None:
        """Write every result file; then, if given the strategy's state, the checkpoint.

        The checkpoint goes last and alone carries what a resume reads, so a crash between
        two of these writes never mixes rounds in a resumed run.
        """
        # A round recorded again (a run resumed from its round-0 checkpoint) replaces its row.
        self.rows = [row for row in self.rows if row["round"] < server_round]
        # Base->new runs (FedMVP): Local and HM from the row's Base, New and client results.
        self.rows.append({"round": float(server_round), **metrics, **base_new_metrics(metrics)})
        atomic_write(self.directory / "metrics.json", json.dumps(self.rows, indent=2).encode())
        atomic_write(self.directory / "metrics.csv", self._csv().encode())
        buffer = io.BytesIO()
        np.savez(buffer, **state)
        atomic_write(self.directory / "state.npz", buffer.getvalue())
        if server_round == 0:  # the initial state, so that a run's drift needs no rebuild
            atomic_write(self.directory / INITIAL_STATE, buffer.getvalue())
        reasons = [{"round": r, "node": n, "reason": why} for r, n, why in dropped]
        atomic_write(self.directory / "dropped.json", json.dumps(reasons, indent=2).encode())
        if strategy_state is not None:
            checkpoint = Checkpoint(
                server_round, dict(state), strategy_state, self.rows, self.config
            )
            write_checkpoint(self.directory, checkpoint)

    def record_partition(
        self, partitions: Mapping[int, Mapping[str, Any]], classes: list[str]
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
            "classes": classes,
            "partitions": entries,
        }
        atomic_write(self.directory / "partition.json", json.dumps(document, indent=2).encode())
        if not entries:
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
        Local / Base / New / HM where the rows hold them)."""
        columns = SUMMARY_COLUMNS
        for extra in (BASE_NEW_COLUMNS, DOMAIN_COLUMNS):
            if any(key in row for row in self.rows for key, _ in extra[1:]):
                columns = SUMMARY_COLUMNS + extra
        header = "| " + " | ".join(title for _, title in columns) + " |"
        lines = [header, "|" + "---|" * len(columns)]
        for row in self.rows:
            cells = []
            for key, _ in columns:
                value = row.get(key)
                if key == "round":
                    cells.append(str(int(row["round"])))
                elif isinstance(value, float | int):
                    cells.append(f"{value:.4f}")
                else:
                    cells.append("-")
            lines.append("| " + " | ".join(cells) + " |")
        table = "\n".join(lines)
        atomic_write(self.directory / "summary.md", (table + "\n").encode())
        return table
