"""The train phase's aggregation: every reply checked, bounded and summed in one round.

``TrainAggregation`` is a part of ``PromptFedAvg`` (strategies/base.py). ``aggregate_train``
checks each reply (structure, counts, update norm, the method's own check) in node-id
order and adds each valid one to float64 running sums (``merge_weight`` per key), never
copying or stacking a reply; ``aggregate_valid`` (a hook, in base.py) makes the new state
from the sums. ``merge`` computes the same from replies given as arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.supercore import log

from strategies import wire
from strategies.aggregation import RunningMean, scratch_buffer
from strategies.dp import DPWrapper
from strategies.parts import PartsBase
from strategies.privacy_ledger import PrivacyLedger, account_round, largest_share, unaccountable
from strategies.robust import robust_value
from strategies.validation import (
    check_known_counts,
    check_train_reply,
    check_update_norm,
    norm_bound,
    number,
    record_arrays,
    reply_arrays,
    reply_metrics,
    update_norm,
)


class TrainAggregation(PartsBase):
    """``aggregate_train`` and ``merge``: checked replies into running sums."""

    # Flower's DP wrapper around this strategy in a loop that is not ``rounds`` (a Flower
    # user's own ServerApp), with the bound its updates are clipped to this round, read
    # when the round was configured; each such round's ε is taken at ``dp_delta``.
    dp_pending: tuple[DPWrapper, float] | None = None
    dp_delta: float = 1e-5
    dp_outer_ledger: PrivacyLedger | None = None  # those rounds' releases
    _dp_said = False  # why no ε is computed has been logged

    def merge(
        self,
        previous: Mapping[str, np.ndarray],
        updates: Sequence[Mapping[str, np.ndarray]],
        metrics: Sequence[MetricRecord],
    ) -> dict[str, np.ndarray]:
        """The new global value of every key of ``updates`` from these valid replies, as
        ``aggregate_train`` computes it (which adds each reply as soon as it is checked)."""
        running = self._running_sums(previous, list(updates[0]) if updates else [])
        for update, one_reply in zip(updates, metrics, strict=True):
            self._add_to_sums(running, update, one_reply)
        self.prepare_merge(metrics)
        return {key: self.merge_result(key, sums) for key, sums in running.items()}

    @staticmethod
    def _running_sums(
        previous: Mapping[str, np.ndarray], keys: Iterable[str]
    ) -> dict[str, RunningMean]:
        """One float64 running sum per key: memory is one state whatever the replies."""
        keys = list(keys)
        scratch = scratch_buffer(max((previous[key].size for key in keys), default=1))
        return {key: RunningMean(previous[key], scratch) for key in keys}

    def _add_to_sums(
        self,
        running: Mapping[str, RunningMean],
        update: Mapping[str, np.ndarray],
        metrics: MetricRecord,
    ) -> None:
        """Add one valid reply's arrays (views of its bytes, never copied) to the sums:
        all of them or, if any shape or weight is refused (ValueError), none."""
        pending = [
            (sums, update[key], self.merge_weight(key, metrics)) for key, sums in running.items()
        ]
        checked = [(sums, value, sums.check(value, weight)) for sums, value, weight in pending]
        for sums, value, weight in checked:
            sums.add_checked(value, weight)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply, then bound its update norm, then add it to the running sums,
        in node-id order: the result depends on the set of valid replies only, and no
        reply is ever copied or stacked, nor its decoded arrays kept between the passes.

        Two passes: the norm bound relative to the round (``update_norm_factor`` × the
        median update norm) needs every reply's norm before any reply is accepted. The
        first pass checks the reply's structure and counts and takes its norm against the
        arrays sent to its node; the second refuses an update beyond the bound, runs the
        method's own check and adds what passes.
        """
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        previous = record_arrays(self._global)
        expected = {k: v.shape for k, v in previous.items() if not self.server_only(k)}
        num_classes = self.num_classes(self._global)
        replies = self._in_node_order(replies)
        running = self._running_sums(previous, expected)
        norms_of: dict[int, float | None] = {}  # per node; its arrays are decoded again
        sent_to = {msg.metadata.dst_node_id: msg for msg in self._outgoing}

        def check(content: RecordDict, node: int) -> str | None:
            arrays: dict[str, np.ndarray] = {}
            reason = check_train_reply(
                content, expected, num_classes, decoded=arrays, dtypes=self.reply_dtypes
            )
            if reason:  # only a reply that passes has the records read below
                return reason
            reason = check_known_counts(
                content[wire.METRICS][wire.CLASS_COUNTS], self._node_counts.get(node)
            )
            if reason is None:
                sent = self._sent_arrays(sent_to.get(node))
                norms_of[node] = None if sent is None else update_norm(arrays, sent)
            return reason

        checked = self._accepted(replies, server_round, check)
        norms = [norm for norm in norms_of.values() if norm is not None]
        bound, why = norm_bound(norms, self.max_update_norm, self.update_norm_factor)

        def screen(content: RecordDict, node: int) -> str | None:
            norm, metrics = norms_of[node], reply_metrics(content)
            reason = None if norm is None else check_update_norm(norm, bound, why)
            reason = reason or self.check_train_metrics(metrics, node)
            if reason is None:  # views of the reply's bytes again: nothing kept per reply
                self._add_to_sums(running, record_arrays(reply_arrays(content)), metrics)
            return reason

        valid, metrics = self._accepted_train(
            server_round, checked, screen, self.kept_state, refused=len(replies) - len(checked)
        )
        if valid is None:
            return self._as_given(self._global), metrics
        state = self.aggregate_valid(server_round, valid, metrics, running)
        if state is None:  # the method refused the update: the round keeps the state
            self.remember_metrics(server_round, "train", metrics)
            return self._as_given(self._global), metrics
        client_metrics = [reply_metrics(msg.content) for msg in valid]
        sizes = [number(m[wire.NUM_EXAMPLES]) for m in client_metrics]
        losses = [number(m.get(wire.TRAIN_LOSS, 0.0)) for m in client_metrics]
        metrics[wire.TRAIN_LOSS] = float(np.average(losses, weights=sizes))
        metrics[wire.NUM_EXAMPLES] = int(sum(sizes))
        if norms:
            metrics["median-update-norm"] = float(sorted(norms)[(len(norms) - 1) // 2])
        if self.dp_pending is not None:
            cost = self._account_dp(server_round, client_metrics, list(expected))
            for key, value in cost.items():
                metrics[f"dp-{key}"] = value
        self.remember_metrics(server_round, "train", metrics)
        self._note_updated(server_round)
        return self._as_given(state), metrics

    def _account_dp(
        self, server_round: int, accepted: list[MetricRecord], keys: list[str]
    ) -> dict[str, MetricRecordValues]:
        """The round's privacy cost under a DP wrapper in a loop of the user's own (``rounds``
        accounts its own rounds): ``account_round`` on the accepted replies' weights, into
        one ledger for the strategy's life (without ``dp-accounting``, no ε in it); empty
        under a wrapper whose noise cannot be accounted so. Why no ε is said once."""
        assert self.dp_pending is not None  # the caller checked
        wrapper, bound = self.dp_pending
        unfit = unaccountable(wrapper)
        if unfit is None and self.dp_outer_ledger is None:
            population = max(len(self._node_counts), wrapper.num_sampled_clients)
            self.dp_outer_ledger = PrivacyLedger(self.dp_delta, population)
        ledger = self.dp_outer_ledger
        why = unfit or (ledger.missing if ledger is not None else None)
        if why is not None and not self._dp_said:
            log(WARNING, "central DP: no epsilon computed: %s", why)
            self._dp_said = True
        if unfit is not None or ledger is None:
            return {}
        share = largest_share(accepted, keys, self.merge_weight)
        return account_round(ledger, wrapper, bound, share)

    def _note_updated(self, server_round: int) -> None:
        """This round changed the global state (a run in which none did fails loudly)."""
        if server_round not in self.updated_rounds:
            self.updated_rounds.append(server_round)

    # ------------------------------------------------------------------ hooks
    def check_train_metrics(self, metrics: MetricRecord, node: int) -> str | None:
        """Hook: a method's own check of node ``node``'s train reply metrics, after the
        base's checks passed (None: usable; else the reason, logged with the node)."""
        return None

    def prepare_merge(self, metrics: Sequence[MetricRecord]) -> None:
        """Hook: read what the method needs beyond the merged arrays from the valid
        replies' metrics (in node-id order, the order they were merged in); called once
        every valid reply is in the running sums, before ``merge_result``."""

    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
        """Hook: how much one valid reply's value of ``key`` weighs in its new global
        value: a number (every row alike; FedAvg's n_k, the default) or one weight per row
        (PEP-FedPT's n_{k,c} for class prompts)."""
        return number(metrics[wire.NUM_EXAMPLES])

    def merge_result(self, key: str, running: RunningMean) -> np.ndarray:
        """Hook: the new global value of ``key`` from the running weighted sum of the valid
        replies (default: the weighted mean; rows nobody weighed keep their value)."""
        return running.result()

    def secure_per_class(self, key: str) -> bool:
        """Hook: under secure aggregation, whether key ``key``'s rows are weighted by each
        node's class counts n_{k,c} (True) or the whole array by n_k (False, FedAvg)."""
        return False

    def aggregate_valid(
        self,
        server_round: int,
        valid: list[Message],
        metrics: MetricRecord,
        running: Mapping[str, RunningMean],
    ) -> ArrayRecord | None:
        """Hook: the new state from the round's valid train replies (at least
        min-train-nodes, in node-id order), or None to keep the previous one. ``running``:
        every trainable key's running weighted sum of those replies (``merge_weight``).
        Default: each key's ``merge_result``, the server-only keys kept. ``metrics`` (the
        round's reply counts) may be added to."""
        assert self._global is not None  # aggregate_train checked it
        state = ArrayRecord(
            {key: self._global[key] for key in self._global if self.server_only(key)}
        )
        self.prepare_merge([reply_metrics(msg.content) for msg in valid])
        if self.reply_aggregation != "mean":
            replies = [record_arrays(reply_arrays(msg.content)) for msg in valid]
            metrics_of = [reply_metrics(msg.content) for msg in valid]
            for key, sums in running.items():
                state[key] = Array(
                    robust_value(
                        [reply[key] for reply in replies],
                        [self.merge_weight(key, m) for m in metrics_of],
                        sums.previous,
                        self.reply_aggregation,
                        self.trim_fraction,
                    )
                )
            return state
        for key, sums in running.items():
            state[key] = Array(self.merge_result(key, sums))
        return state
