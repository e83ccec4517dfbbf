"""This project's round loop (``PromptFedAvg.rounds``, and ``start`` over it), the SecAgg+
training round it alone can run, and the checkpoint of everything beyond the arrays.

``RoundLoop`` is a part of ``PromptFedAvg`` (strategies/base.py). Flower's own
``Strategy.start`` runs the strategy too (the prototype round and late-node admission run
from ``configure_train``); this loop adds a round 0 after the prototype round, resume at
``start_round``, bytes per phase for every exchange, and the SecAgg+ training round
(several exchanges). ``rounds`` yields each finished round, so that the ServerApp
evaluates and records it in its own loop.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, MetricRecordValues
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from flwr.supercore import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies import wire
from strategies.dp import DPWrapper, dp_checkpoint, dp_restore
from strategies.parts import PartsBase
from strategies.privacy_ledger import (
    PrivacyLedger,
    account_round,
    largest_share,
    largest_share_bound,
    replay,
)
from strategies.records import PartitionEntry, partition_json
from strategies.secagg import SecAggError, SecureUpdate, secure_train
from strategies.validation import record_arrays


@dataclass(frozen=True)
class RoundEnd:
    """What one finished round leaves its caller (round 0: the initial state after the
    prototype round): all that the ServerApp records, read at the round's end."""

    server_round: int
    arrays: ArrayRecord  # the whole global state, server arrays included
    train_metrics: MetricRecord | None  # the aggregated train replies (None: no round 0)
    evaluate_metrics: MetricRecord | None  # the aggregated client evaluation, if any
    metrics: dict[str, float | list[float]]  # "train/...", "evaluate/...", bytes per phase
    dropped: list[tuple[int, int, str]]  # every refused reply so far: (round, node, reason)
    node_replies: dict[int, dict[str, Any]]  # per node: sent, failed, last-failure
    # partition id -> node id, held-out flag, class counts (from the prototype round, a
    # refresh or a late node's admission), as JSON-shaped dicts
    partitions: dict[int, dict[str, int | bool | list[int]]]
    checkpoint: dict[str, Any]  # ``RoundLoop.checkpoint()`` at the round's end


class RoundLoop(PartsBase):
    """``start`` (resumable), the secure training round, ``checkpoint``/``restore``."""

    # Central DP from ``rounds(dp=...)``: the wrapper its rounds go through, its ledger, and
    # the state a restored checkpoint gives the wrapper once it is built.
    dp_wrapper: DPWrapper | None = None
    dp_ledger: PrivacyLedger | None = None
    _dp_restored: dict[str, Any] | None = None

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
        """Flower's ``Strategy.start`` over ``rounds``: ``evaluate_fn`` after every round
        (round 0 too, from the state after the prototype round), the results in a
        ``Result`` that starts with the initial arrays (so a run whose rounds all kept the
        state still returns one). Its calls and log lines follow Flower's
        ``Strategy.start`` of flwr 1.42.0.
        """
        result = Result(arrays=initial_arrays)
        t_start = time.time()
        for end in self.rounds(
            grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, start_round
        ):
            result.arrays = end.arrays
            if end.train_metrics is not None:
                result.train_metrics_clientapp[end.server_round] = end.train_metrics
            if end.evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[end.server_round] = end.evaluate_metrics
            if evaluate_fn:
                log(INFO, "Global evaluation")
                res = evaluate_fn(end.server_round, end.arrays)
                log(INFO, "\t└──> MetricRecord: %s", res)
                if res is not None:
                    result.evaluate_metrics_serverapp[end.server_round] = res
        log(INFO, "")
        log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
        log(INFO, "")
        log(INFO, "Final results:")
        log(INFO, "")
        for line in io.StringIO(str(result)):
            log(INFO, "\t%s", line.strip("\n"))
        log(INFO, "")
        return result

    def rounds(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        start_round: int = 1,
        dp: Callable[[int], DPWrapper] | None = None,
        dp_delta: float = 1e-5,
    ) -> Iterator[RoundEnd]:
        """This project's round loop, one ``RoundEnd`` per finished round, so that the
        caller evaluates and records each round in its own loop: round 0 (the initial
        state after the prototype round, whose ``proto.count`` a central evaluation
        needs) unless resuming, then rounds ``start_round..num_rounds``, carrying the
        whole global state (server arrays included).

        Flower's own ``Strategy.start`` runs this strategy too (and so do Flower's wrappers,
        such as its DP fixed-clipping ones): the prototype round and late-node admission
        run from ``configure_train``. This loop adds resume at ``start_round`` (Flower's
        loop always starts at round 1), every exchange through ``_exchange`` (bytes per
        phase, each node's replies, progress lines while it waits), and the SecAgg+
        training round (several exchanges).

        ``dp`` builds one of Flower's central-DP wrappers (``strategies.dp.dp_wrapper``)
        around this strategy from the number of nodes a training round samples, counted
        once the prototype round is done: every training round then goes through the
        wrapper, which clips each update and noises the aggregate of the trainable arrays
        (the server arrays never pass through it); each round's privacy cost is composed
        into ε at ``dp_delta`` (``strategies.privacy_ledger``).
        """
        if start_round < 1:
            raise ValueError(f"start_round = {start_round} must be >= 1")
        self.timeout = timeout
        self.num_rounds = num_rounds
        self._own_loop = True
        try:
            arrays = self.ensure_prototypes(grid, initial_arrays)
            if dp is not None:
                self._start_dp(grid, dp, dp_delta)
            log(INFO, "Starting %s strategy:", self.__class__.__name__)
            log_strategy_start_info(num_rounds, arrays, train_config, evaluate_config)
            if start_round > 1:
                log(INFO, "\t└──> Resuming at round %d", start_round)
            self.summary()
            log(INFO, "")
            train_config = ConfigRecord() if train_config is None else train_config
            evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
            if start_round == 1:
                yield self._round_end(0, arrays, None, None)
            for current_round in range(start_round, num_rounds + 1):
                arrays, train_metrics, evaluate_metrics = self._one_round(
                    grid, current_round, arrays, train_config, evaluate_config
                )
                yield self._round_end(current_round, arrays, train_metrics, evaluate_metrics)
        finally:
            self._own_loop = False
            self.dp_wrapper = None
            self.dp_ledger = None

    def _start_dp(self, grid: Grid, dp: Callable[[int], DPWrapper], delta: float) -> None:
        """The DP wrapper, from the nodes a training round samples now, and its ledger
        (a resumed run's earlier rounds composed again); the bound and the noise's
        generator as the checkpoint left them, or the generator seeded."""
        sampled = self.train_sample_size(grid)
        self.dp_wrapper = dp(sampled)
        population = len(set(grid.get_node_ids()) - self.held_out_nodes)
        self.dp_ledger = PrivacyLedger(delta, max(population, sampled))
        replay(self.dp_ledger, self.round_metrics)
        if self.dp_ledger.missing:
            log(WARNING, "central DP: no epsilon computed: %s", self.dp_ledger.missing)
        if self._dp_restored is not None:
            dp_restore(self.dp_wrapper, self._dp_restored)
        else:  # Flower's noise draws from NumPy's global generator
            np.random.seed(self.seed)

    def _one_round(
        self,
        grid: Grid,
        current_round: int,
        arrays: ArrayRecord,
        train_config: ConfigRecord,
        evaluate_config: ConfigRecord,
    ) -> tuple[ArrayRecord, MetricRecord | None, MetricRecord | None]:
        """Train, then evaluate on the clients: the round's global state and the
        aggregated train and evaluate metrics."""
        log(INFO, "")
        log(INFO, "[ROUND %s/%s]", current_round, self.num_rounds)
        agg_arrays: ArrayRecord | None
        train_metrics: MetricRecord | None
        if self.secagg is not None:  # only the weighted totals reach the server
            config = train_config
            if self.dp_wrapper is not None:  # client-side: the nodes clip before masking
                config = ConfigRecord(
                    {**train_config, KEY_CLIPPING_NORM: self.dp_wrapper.clipping_norm}
                )
            train_messages = self.configure_train(current_round, arrays, config, grid)
            agg_arrays, train_metrics = self.secure_train_round(
                grid, current_round, list(train_messages)
            )
        elif self.dp_wrapper is not None:  # its loop carries the trainable arrays only
            agg_arrays, train_metrics = self._dp_train_round(
                grid, current_round, arrays, train_config
            )
        else:
            train_messages = self.configure_train(current_round, arrays, train_config, grid)
            train_replies = self._exchange(grid, train_messages, current_round, "train")
            agg_arrays, train_metrics = self.aggregate_train(current_round, train_replies)
        if agg_arrays is not None:
            arrays = agg_arrays
        if train_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", train_metrics)
        evaluate_replies = self._exchange(
            grid,
            self.configure_evaluate(current_round, arrays, evaluate_config, grid),
            current_round,
            "evaluate",
        )
        evaluate_metrics = self.aggregate_evaluate(current_round, evaluate_replies)
        if evaluate_metrics is not None:
            log(INFO, "\t└──> Aggregated MetricRecord: %s", evaluate_metrics)
        return arrays, train_metrics, evaluate_metrics

    def _dp_train_round(
        self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> tuple[ArrayRecord, MetricRecord | None]:
        """A training round through the DP wrapper, which carries the trainable arrays only
        (the server arrays never pass its clipping or noise): the new whole state; the
        round's bound, noise and privacy cost (``privacy_ledger``) kept as ``dp/...``."""
        dp = self.dp_wrapper
        assert dp is not None  # the loop calls this with a wrapper only
        bound = dp.clipping_norm  # an adaptive wrapper moves it once the round is in
        sent = dp.configure_train(server_round, self.trainable_state(arrays), config, grid)
        replies = self._exchange(grid, sent, server_round, "train")
        new, metrics = dp.aggregate_train(server_round, replies)
        if new is None:  # Flower's wrappers skip a round with an error reply: no release
            entry: dict[str, MetricRecordValues] = {"clipping-norm": bound, "noise-std": 0.0}
        else:
            refused = {node for r, node, _ in self.dropped if r == server_round}
            accepted = [
                reply.content.metric_records[wire.METRICS]
                for reply in replies
                if reply.has_content() and self._sender(reply) not in refused
            ]
            keys = [key for key in new if not self.server_only(key)]
            assert self.dp_ledger is not None  # built with the wrapper
            share = largest_share(accepted, keys, self.merge_weight)
            entry = account_round(self.dp_ledger, dp, bound, share)
        self.remember_metrics(server_round, "dp", MetricRecord(entry))
        return self.global_state(arrays if new is None else new), metrics

    def _round_end(
        self,
        server_round: int,
        arrays: ArrayRecord,
        train_metrics: MetricRecord | None,
        evaluate_metrics: MetricRecord | None,
    ) -> RoundEnd:
        return RoundEnd(
            server_round=server_round,
            arrays=arrays,
            train_metrics=train_metrics,
            evaluate_metrics=evaluate_metrics,
            metrics=dict(self.round_metrics.get(server_round, {})),
            dropped=list(self.dropped),
            node_replies={node: dict(entry) for node, entry in self.node_replies.items()},
            partitions={pid: partition_json(entry) for pid, entry in self.partitions.items()},
            checkpoint=self.checkpoint(),
        )

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
            **({} if self.dp_wrapper is None else {"dp": dp_checkpoint(self.dp_wrapper)}),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Undo ``checkpoint``: the next sample, version and check are as if never stopped."""
        version, internal, gauss_next = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss_next))
        self._proto_version = int(state["proto-version"])
        self.held_out_nodes = {int(n) for n in state["held-out-nodes"]}
        self.partitions = {
            int(pid): cast(PartitionEntry, dict(e)) for pid, e in state["partitions"].items()
        }
        self._node_counts = self._partition_counts()
        self._node_counts.update({int(n): list(c) for n, c in state["node-counts"].items()})
        self._node_proto_version = {}
        self.dropped = [(int(r), int(n), str(why)) for r, n, why in state["dropped"]]
        self.round_metrics = {int(r): dict(m) for r, m in state["round-metrics"].items()}
        self.node_replies = {int(n): dict(e) for n, e in state.get("node-replies", {}).items()}
        # A checkpoint from before this was kept: its rounds are taken as having updated.
        done = [int(r) for r in state["round-metrics"] if int(r) > 0]
        self.updated_rounds = [int(r) for r in state.get("updated-rounds", done)]
        self._dp_restored = state.get("dp")

    def secure_train_round(
        self, grid: Grid, server_round: int, messages: list[Message]
    ) -> tuple[ArrayRecord, MetricRecord]:
        """One training round under SecAgg+ (strategies/secagg/): the new state from the
        totals, or, with too few nodes left (SecAggError, logged), the previous state.
        Under client-side DP the nodes clip their updates before masking, and the totals
        get the wrapper's noise (and move an adaptive bound by the count of clipped
        nodes), as the wrapper treats a plain aggregate."""
        assert self._global is not None  # configure_train set it
        assert self.secagg is not None  # the loop calls this under secure aggregation only
        dp = self.dp_wrapper
        previous = record_arrays(self._global)
        keys = {key: self.secure_per_class(key) for key in previous if not self.server_only(key)}
        if not messages:
            return self._as_given(self._global), MetricRecord({"valid-replies": 0})
        try:
            update = secure_train(
                self.secagg,
                messages,
                previous,
                keys,
                self.num_classes(self._global),
                lambda sent, _: self._exchange(grid, sent, server_round, "train"),
                clipping_norm=None if dp is None else dp.clipping_norm,
            )
        except SecAggError as exc:
            log(WARNING, "round %d: %s; %s stays as it was", server_round, exc, self.kept_state)
            metrics = MetricRecord({"valid-replies": 0, "dropped-replies": len(messages)})
            self.remember_metrics(server_round, "train", metrics)
            if dp is not None:  # nothing was released
                no_release = MetricRecord({"clipping-norm": dp.clipping_norm, "noise-std": 0.0})
                self.remember_metrics(server_round, "dp", no_release)
            return self._as_given(self._global), metrics
        lost = update.result.dropped
        self.dropped.extend((server_round, node, why) for node, why in lost)
        trained = update.arrays
        if dp is not None:
            trained = self._secure_dp_release(server_round, dp, update, any(keys.values()))
        state = ArrayRecord({k: self._global[k] for k in self._global if self.server_only(k)})
        for key, value in trained.items():
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

    def _secure_dp_release(
        self, server_round: int, dp: DPWrapper, update: SecureUpdate, per_class: bool
    ) -> dict[str, np.ndarray]:
        """The secure round's new trainable arrays (float32) with the DP wrapper's noise,
        its adaptive bound moved by the securely summed count of clipped nodes; the release
        accounted with the largest share the totals allow (``largest_share_bound``), since
        no node's own weight reaches the server."""
        assert self.secagg is not None and self.dp_ledger is not None  # built with dp
        bound = dp.clipping_norm  # what the nodes clipped to, before an adaptive update
        # The wrapper's own steps one by one: its aggregate_train would aggregate replies,
        # and under secure aggregation there are none, only the totals.
        if isinstance(dp, DifferentialPrivacyAdaptiveBase) and update.clipped is not None:
            nodes = max(len(update.result.contributors), 1)
            dp._geometric_update(dp._noisy_fraction(update.clipped, nodes))
        arrays = ArrayRecord({key: Array(value) for key, value in update.arrays.items()})
        noised = dp._add_noise_to_aggregated_arrays(arrays)
        counts = update.result.ints[1 : 1 + update.num_classes]
        share = largest_share_bound(update.num_examples, counts, per_class, self.secagg.max_count)
        entry = account_round(self.dp_ledger, dp, bound, share)
        self.remember_metrics(server_round, "dp", MetricRecord(entry))
        return {key: np.asarray(array.numpy(), dtype=np.float32) for key, array in noised.items()}
