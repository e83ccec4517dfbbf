"""Reply checks: which replies a phase may use, each refusal logged with its node.

``ReplyChecks`` is a part of ``PromptFedAvg`` (strategies/base.py). A check says why a
reply cannot be used (None: it can); ``_judge`` turns an error reply or a check that raises
into such a reason, ``_accepted`` keeps the replies that pass and logs and lists the
others in ``dropped``, and ``_accepted_train`` adds the min-train-nodes rule. Replies are
judged in node-identity order (``_in_node_order``), so what a round keeps depends on the
set of replies, not on the order they arrived in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from strategies import wire
from strategies.errors import one_line
from strategies.parts import PartsBase
from strategies.validation import record_arrays

# Which float dtypes a train reply may carry, per ``wire_dtype`` (strategies.options.WIRE_DTYPES).
REPLY_DTYPES = {
    "float32": (np.dtype(np.float32), np.dtype(np.float64)),
    "float16": (np.dtype(np.float16),),
}


class ReplyChecks(PartsBase):
    """Judge replies, keep the usable ones, log and list the rest."""

    @property
    def reply_dtypes(self) -> tuple[np.dtype, ...]:
        """The float dtypes a train reply's arrays may have (``wire_dtype``)."""
        return REPLY_DTYPES[str(self.wire_dtype)]

    def _judge(
        self, msg: Message, node: int, check: Callable[[RecordDict, int], str | None]
    ) -> str | None:
        """Why node ``node``'s reply cannot be used (None: it can): an error reply, or
        what ``check(content, node)`` says; a check that raises names the exception."""
        if msg.has_error():
            # The node may have lost its state (restart): resend the prototypes next time.
            self._node_proto_version.pop(node, None)
            return f"error reply: {one_line(msg.error.reason or '')}"
        try:
            return check(msg.content, node)
        except Exception as exc:  # a malformed reply must never stop the round
            return f"malformed reply: {exc!r}"

    def _accepted(
        self,
        replies: Iterable[Message],
        server_round: int,
        check: Callable[[RecordDict, int], str | None],
    ) -> list[Message]:
        """Replies that pass ``check(content, node)``; every other one is logged with its
        node and reason."""
        accepted = []
        for msg in replies:
            node = self._sender(msg)
            reason = self._judge(msg, node, check)
            if reason is None:
                accepted.append(msg)
            else:
                self.dropped.append((server_round, node, reason))
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
        return accepted

    def _accepted_train(
        self,
        server_round: int,
        replies: list[Message],
        check: Callable[[RecordDict, int], str | None],
        kept: str,
        refused: int = 0,
    ) -> tuple[list[Message] | None, MetricRecord]:
        """The valid train replies and the round's reply counts (``refused``: replies an
        earlier pass already dropped); ``None`` (logged, round remembered) when fewer than
        min-train-nodes are valid and ``kept`` stays as it was."""
        valid = self._accepted(replies, server_round, check)
        self._count_used(valid, "trained")
        metrics = MetricRecord(
            {"valid-replies": len(valid), "dropped-replies": refused + len(replies) - len(valid)}
        )
        if len(valid) >= max(self.min_train_nodes, 1):
            return valid, metrics
        log(
            WARNING,
            "round %d: %d valid replies, fewer than min-train-nodes = %d; %s stays as it was",
            server_round,
            len(valid),
            self.min_train_nodes,
            kept,
        )
        self.remember_metrics(server_round, "train", metrics)
        return None, metrics

    def _in_node_order(self, replies: Iterable[Message]) -> list[Message]:
        """The replies sorted by the client they answer for (``in_identity_order``), so
        that checks, logs and sums run in the same order however the replies arrived and
        whatever ids the nodes got this run."""
        replies = list(replies)
        rank = {
            node: i
            for i, node in enumerate(self.in_identity_order({self._sender(m) for m in replies}))
        }
        return sorted(replies, key=lambda msg: rank[self._sender(msg)])

    @staticmethod
    def _sent_arrays(msg: Message | None) -> dict[str, np.ndarray] | None:
        """The arrays of a train message as sent (views, in the wire dtype), or None when
        it carried none (LocalOnly's nodes that keep their own state) or none was sent."""
        if msg is None or not msg.has_content():
            return None
        record = msg.content.get(wire.ARRAYS)
        return record_arrays(record) if isinstance(record, ArrayRecord) else None
