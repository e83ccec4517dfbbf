"""This project's round loop (``PromptFedAvg.start``), the SecAgg+ training round it
alone can run, and the checkpoint of everything beyond the arrays.

``RoundLoop`` is a part of ``PromptFedAvg`` (strategies/base.py). Flower's own
``Strategy.start`` runs the strategy too (the prototype round and late-node admission run
from ``configure_train``); this loop adds the prototype round before the central
evaluation of round 0, resume at ``start_round``, bytes per phase for every exchange, and
the SecAgg+ training round (several exchanges).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from flwr.supercore import log

from strategies import wire
from strategies.secagg import SecAggError, secure_train
from strategies.validation import record_arrays


class RoundLoop:
    """``start`` (resumable), the secure training round, ``checkpoint``/``restore``."""

    # Set by PromptFedAvg.__init__.
    secagg: Any
    timeout: float
    num_rounds: int
    kept_state: str
    dropped: list[tuple[int, int, str]]
    round_metrics: dict[int, dict[str, float | list[float]]]
    node_replies: dict[int, dict[str, Any]]
    updated_rounds: list[int]
    held_out_nodes: set[int]
    partitions: dict[int, dict[str, int | bool | list[int]]]
    _own_loop: bool
    _global: ArrayRecord | None
    _proto_version: int
    _node_proto_version: dict[int, int]
    _node_counts: dict[int, list[int]]

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        start_round: int = 1,
    ) -> Result:
        """This project's round loop: the prototype round (unless the state already holds
        its result), then rounds ``start_round..num_rounds``, carrying the whole global
        state (server arrays included) from round to round.

        Flower's own ``Strategy.start`` runs this strategy too (and so do Flower's wrappers,
        such as its DP fixed-clipping ones, whose ``start`` is Flower's): the prototype
        round and late-node admission run from ``configure_train``. This loop adds what the
        ServerApp needs beyond that: the prototype round before ``evaluate_fn(0, ...)``
        (the central evaluation needs its ``proto.count``); a resumed run starts at
        ``start_round`` (Flower's loop always starts at round 1 and evaluates round 0
        again); every exchange goes through ``_exchange`` (bytes per phase, each node's
        replies, progress lines while it waits; Flower calls ``grid.send_and_receive``
        itself); the SecAgg+ training round (several exchanges); and ``Result`` starts
        with the initial arrays, so a run whose rounds all kept the state still returns
        one. Its calls and log lines follow Flower's ``Strategy.start`` of flwr 1.42.0.
        """
        if start_round < 1:
            raise ValueError(f"start_round = {start_round} must be >= 1")
        self.timeout = timeout
        self.num_rounds = num_rounds
        self._own_loop = True
        try:
            return self._run_rounds(
                grid,
                self.ensure_prototypes(grid, initial_arrays),
                num_rounds,
                train_config,
                evaluate_config,
                evaluate_fn,
                start_round,
            )
        finally:
            self._own_loop = False

    def _run_rounds(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        num_rounds: int,
        train_config: ConfigRecord | None,
        evaluate_config: ConfigRecord | None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
        start_round: int,
    ) -> Result:
        """``start``'s loop over rounds ``start_round..num_rounds`` from the whole state
        ``arrays`` (prototypes included)."""

        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        log_strategy_start_info(num_rounds, arrays, train_config, evaluate_config)
        if start_round > 1:
            log(INFO, "\t└──> Resuming at round %d", start_round)
        self.summary()
        log(INFO, "")
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result(arrays=arrays)
        t_start = time.time()
        if evaluate_fn and start_round == 1:
            res = evaluate_fn(0, arrays)
            log(INFO, "Initial global evaluation results: %s", res)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res

        for current_round in range(start_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
            train_messages = self.configure_train(current_round, arrays, train_config, grid)
            if self.secagg is not None:  # only the weighted totals reach the server
                agg_arrays, agg_train_metrics = self.secure_train_round(
                    grid, current_round, list(train_messages)
                )
            else:
                train_replies = self._exchange(grid, train_messages, current_round, "train")
                agg_arrays, agg_train_metrics = self.aggregate_train(current_round, train_replies)
            if agg_arrays is not None:
                result.arrays = arrays = agg_arrays
            if agg_train_metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_train_metrics)
                result.train_metrics_clientapp[current_round] = agg_train_metrics

            evaluate_replies = self._exchange(
                grid,
                self.configure_evaluate(current_round, arrays, evaluate_config, grid),
                current_round,
                "evaluate",
            )
            agg_evaluate_metrics = self.aggregate_evaluate(current_round, evaluate_replies)
            if agg_evaluate_metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_evaluate_metrics)
                result.evaluate_metrics_clientapp[current_round] = agg_evaluate_metrics

            if evaluate_fn:
                log(INFO, "Global evaluation")
                res = evaluate_fn(current_round, arrays)
                log(INFO, "\t└──> MetricRecord: %s", res)
                if res is not None:
                    result.evaluate_metrics_serverapp[current_round] = res

        log(INFO, "")
        log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
        log(INFO, "")
        log(INFO, "Final results:")
        log(INFO, "")
        for line in io.StringIO(str(result)):
            log(INFO, "\t%s", line.strip("\n"))
        log(INFO, "")
        return result

    def checkpoint(self) -> dict[str, Any]:
        """Everything beyond the global arrays that the rest of the run depends on (JSON).

        Per-node prototype versions are left out on purpose: after a restart the nodes may
        be fresh processes without prototypes, so a restored strategy sends them again.
        """
        version, internal, gauss_next = self._rng.getstate()
        in_partitions = self._partition_counts()
        return {
            "rng": [version, list(internal), gauss_next],
            "proto-version": self._proto_version,
            # The counts a partition entry already holds for its node are not written twice.
            "node-counts": {
                str(node): counts
                for node, counts in self._node_counts.items()
                if counts != in_partitions.get(node)
            },
            "held-out-nodes": sorted(self.held_out_nodes),
            "partitions": {str(pid): entry for pid, entry in self.partitions.items()},
            "dropped": [list(entry) for entry in self.dropped],
            "round-metrics": {str(r): metrics for r, metrics in self.round_metrics.items()},
            "node-replies": {str(node): entry for node, entry in self.node_replies.items()},
            "updated-rounds": list(self.updated_rounds),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Undo ``checkpoint``: the next sample, version and check are as if never stopped."""
        version, internal, gauss_next = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss_next))
        self._proto_version = int(state["proto-version"])
        self.held_out_nodes = {int(n) for n in state["held-out-nodes"]}
        self.partitions = {int(pid): dict(e) for pid, e in state["partitions"].items()}
        self._node_counts = self._partition_counts()
        self._node_counts.update({int(n): list(c) for n, c in state["node-counts"].items()})
        self._node_proto_version = {}
        self.dropped = [(int(r), int(n), str(why)) for r, n, why in state["dropped"]]
        self.round_metrics = {int(r): dict(m) for r, m in state["round-metrics"].items()}
        self.node_replies = {int(n): dict(e) for n, e in state.get("node-replies", {}).items()}
        # A checkpoint from before this was kept: its rounds are taken as having updated.
        done = [int(r) for r in state["round-metrics"] if int(r) > 0]
        self.updated_rounds = [int(r) for r in state.get("updated-rounds", done)]

    def secure_train_round(
        self, grid: Grid, server_round: int, messages: list[Message]
    ) -> tuple[ArrayRecord, MetricRecord]:
        """One training round under SecAgg+ (strategies/secagg.py): the new state from the
        totals, or, with too few nodes left (SecAggError, logged), the previous state."""
        assert self._global is not None  # configure_train set it
        previous = record_arrays(self._global)
        keys = {key: self.secure_per_class(key) for key in previous if not self.server_only(key)}
        if not messages:
            return self._as_given(self._global), MetricRecord({"valid-replies": 0})
        try:
            update = secure_train(
                self.secagg,  # type: ignore[arg-type]
                messages,
                previous,
                keys,
                self.num_classes(self._global),
                lambda sent, _: self._exchange(grid, sent, server_round, "train"),
            )
        except SecAggError as exc:
            log(WARNING, "round %d: %s; %s stays as it was", server_round, exc, self.kept_state)
            metrics = MetricRecord({"valid-replies": 0, "dropped-replies": len(messages)})
            self.remember_metrics(server_round, "train", metrics)
            return self._as_given(self._global), metrics
        lost = update.result.dropped
        self.dropped.extend((server_round, node, why) for node, why in lost)
        state = ArrayRecord({k: self._global[k] for k in self._global if self.server_only(k)})
        for key, value in update.arrays.items():
            state[key] = Array(value)
        metrics = MetricRecord(
            {
                "valid-replies": len(update.result.contributors),
                "dropped-replies": len(lost),
                wire.TRAIN_LOSS: update.train_loss,
                wire.NUM_EXAMPLES: update.num_examples,
            }
        )
        self.remember_metrics(server_round, "train", metrics)
        self._note_updated(server_round)
        return self._as_given(state), metrics
