"""The evaluate phase: which nodes evaluate in a round, and the round's evaluation metrics.

``EvaluatePhase`` is a part of ``PromptFedAvg`` (strategies/base.py). Held-out nodes are
sampled apart at the same fraction; a round that does not evaluate (``evaluation_round``)
still draws its sample, so that which nodes train later does not depend on
``fed.evaluate-every``. The aggregated record holds the accuracy summaries
(strategies/summaries.py) and the per-client accuracies in partition-id order.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies import wire
from strategies.parts import PartsBase
from strategies.summaries import ccmp_summary, evaluation_summary, validation_summary
from strategies.validation import check_evaluate_reply, integer, optional_count, reply_metrics


def evaluation_round(server_round: int, every: int, num_rounds: int) -> bool:
    """Whether round ``server_round`` of ``num_rounds`` evaluates, clients and server alike:
    every ``every``-th round, the initial state (round 0) and always the last round."""
    if every < 1:
        raise ValueError(f"every = {every}: evaluate every 1 or more rounds")
    return server_round % every == 0 or server_round == num_rounds


class EvaluatePhase(PartsBase):
    """``configure_evaluate`` and ``aggregate_evaluate``."""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The evaluate messages of round ``server_round``, from the global state that
        ``arrays`` (whole, or its trainable arrays only) and ``server_arrays`` make."""
        arrays = self.ensure_prototypes(grid, arrays)
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = self._sample(
            grid, self.fraction_evaluate, self.min_evaluate_nodes, exclude=self.held_out_nodes
        )
        if self.held_out_nodes:  # sampled apart, at the same fraction, at least one
            held = self.in_identity_order(self.held_out_nodes & set(grid.get_node_ids()))
            size = min(len(held), max(int(len(held) * self.fraction_evaluate), 1))
            node_ids = self.in_identity_order(node_ids + self._rng.sample(held, size))
        if not evaluation_round(server_round, self.evaluate_every, self.num_rounds):
            # Drawn and not sent: the sampler's stream, and so which nodes train in later
            # rounds, is the same whatever fed.evaluate-every is.
            log(INFO, "configure_evaluate: none this round (every %d)", self.evaluate_every)
            return []
        log(INFO, "configure_evaluate: sampled %d nodes", len(node_ids))
        return self._messages(arrays, config, node_ids, MessageType.EVALUATE, server_round)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        valid = self._accepted(list(replies), server_round, lambda c, _: check_evaluate_reply(c))
        self._count_used(valid, "evaluated")
        if not valid:
            return None
        metrics = [reply_metrics(msg.content) for msg in valid]
        correct = [integer(m[wire.CORRECT]) for m in metrics]
        totals = [integer(m[wire.NUM_EXAMPLES]) for m in metrics]
        held_out = [
            bool(m.get(wire.HELD_OUT, 0)) or self._sender(msg) in self.held_out_nodes
            for m, msg in zip(metrics, valid, strict=True)
        ]
        summary = evaluation_summary(correct, totals, held_out)
        summary.update(
            validation_summary(
                [optional_count(m, wire.VAL_CORRECT) for m in metrics],
                [optional_count(m, wire.VAL_NUM_EXAMPLES) for m in metrics],
                held_out,
            )
        )
        summary.update(
            ccmp_summary(
                [optional_count(m, wire.CCMP_PRIOR_CORRECT) for m in metrics],
                [optional_count(m, wire.CCMP_UNIFORM_CORRECT) for m in metrics],
                totals,
                held_out,
            )
        )
        record = MetricRecord({key: float(value) for key, value in summary.items()})
        # Per client, in partition-id order where the replies carry it, so that e.g. one
        # client per DomainNet domain gives the per-domain accuracies.
        pids = [integer(m.get(wire.PARTITION_ID, -1)) for m in metrics]
        order = sorted(range(len(valid)), key=lambda i: pids[i])
        for flag, prefix in ((False, ""), (True, "held-out-")):
            chosen = [i for i in order if held_out[i] == flag]
            if chosen:
                record[f"{prefix}client-accuracies"] = [
                    correct[i] / totals[i] if totals[i] else 0.0 for i in chosen
                ]
                record[f"{prefix}client-partition-ids"] = [pids[i] for i in chosen]
        self.remember_metrics(server_round, "evaluate", record)
        return record
