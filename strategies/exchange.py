"""The exchange with the grid: push one phase's messages, poll for the replies, and
keep what the run reports about them (no strategy state).

``GridExchange`` is a part of ``PromptFedAvg`` (strategies/base.py): it pushes a phase's
messages and polls for the replies (``_exchange``: progress lines while it waits, a pause
that grows with the phase's age), counts the arrays' bytes per round and phase
(``round_metrics``), keeps each node's sent/failed/answered counts (``node_replies``),
finds the node each reply answers for (``sender``) and waits for the minimum of
connected nodes. It reads only the strategy's settings (``timeout``, ``wire_dtype``,
``wait_timeout``, the ``min_*_nodes``) and the records it keeps itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import Array, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies import traffic
from strategies.errors import one_line, strip_ansi
from strategies.parts import PartsBase
from strategies.validation import array_view


class GridExchange(PartsBase):
    """Push, poll, progress lines, bytes per phase and each node's reply log."""

    # Replies are polled every poll_seconds[0] s while they arrive; while none do, the pause
    # grows with the phase's age (poll_fraction of it) up to poll_seconds[1], so a reply
    # waits at most about 5% of its phase to be seen (a pause that doubled to 1 s cost a
    # short round up to 0.75 s per phase). Flower's in-memory grid polls every 0.1 s, its
    # gRPC grid every 3 s. A progress line every progress_seconds while a phase waits.
    poll_seconds = (0.05, 1.0)

    poll_fraction = 0.05

    progress_seconds = 10.0

    # Replies pulled per pull_messages call: a phase that consumes its replies on arrival
    # (the prototype round) holds at most this many at once.
    pull_batch = 100

    def _exchange(
        self,
        grid: Grid,
        messages: Iterable[Message],
        server_round: int,
        phase: str,
        consume: Callable[[Message], bool] | None = None,
    ) -> list[Message]:
        """Send one phase's messages and wait for the replies, counting the array bytes.

        As ``grid.send_and_receive`` (every reply, or what came within ``self.timeout``),
        but by ``push_messages`` and polling ``pull_messages``, so that a person watching
        sees the replies arrive (``round 3 train: 2/3 replies, 41 s``) instead of a silent
        minute. Each node's failures (error replies, no reply) are kept in
        ``node_replies``, so that a node that never once answered can be named.

        ``consume``: called with each reply as it arrives (its bytes already counted);
        a reply it returns False for is not kept, so that a phase that folds its replies
        into a running total (the prototype round) holds one at a time. Returns the kept
        replies in the order sent.
        """
        messages = self._to_wire_dtype(list(messages))
        arrived: list[tuple[str, int, str | None]] = []  # (answers, source, error or None)
        received = 0

        def take(reply: Message) -> bool:
            nonlocal received
            received += traffic.content_nbytes(reply.content) if reply.has_content() else 0
            error = None
            if reply.has_error():
                error = one_line(reply.error.reason or "")
                if self.on_client_error is not None:
                    full = strip_ansi(reply.error.reason or "")
                    self.on_client_error(server_round, self._sender(reply), phase, full)
            arrived.append((reply.metadata.reply_to_message_id, reply.metadata.src_node_id, error))
            return consume is None or consume(reply)

        batch = self.pull_batch if consume is not None else max(len(messages), 1)
        replies = self._push_and_pull(grid, messages, server_round, phase, take, batch)
        self._count_bytes(server_round, phase, traffic.messages_nbytes(messages), received)
        self._note_node_replies(server_round, phase, messages, arrived)
        return replies

    def _to_wire_dtype(self, messages: list[Message]) -> list[Message]:
        """Every float32 array of the messages in ``wire_dtype`` (no-op for float32).

        In place, in the messages' own records (never the global state's): an array
        that several messages share (the trainable state, the prototypes) is cast once.
        """
        if self.wire_dtype == np.float32:
            return messages
        cast: dict[int, Array] = {}
        for msg in messages:
            if not msg.has_content():
                continue
            for record in msg.content.array_records.values():
                for key, array in list(record.items()):
                    if array.dtype != "float32":
                        continue
                    if id(array) not in cast:
                        value = array_view(array).astype(self.wire_dtype)
                        cast[id(array)] = Array(value)
                    record[key] = cast[id(array)]
        return messages

    def next_poll_pause(self, got_replies: bool, elapsed: float, polling: float = 0.0) -> float:
        """Seconds until the next poll of a phase ``elapsed`` s old: the shortest pause
        while replies come in, else a pause that grows with the phase, capped; and never
        shorter than the last poll took (``polling``: its pulls and what was done with the
        replies), so that polling holds the SuperLink at most half the time (a prototype
        round of 10,000 nodes pulls in 100 batches per poll)."""
        low, high = self.poll_seconds
        pause = low if got_replies else min(max(low, self.poll_fraction * elapsed), high)
        return max(pause, polling)

    def _push_and_pull(
        self,
        grid: Grid,
        messages: list[Message],
        server_round: int,
        phase: str,
        take: Callable[[Message], bool],
        batch: int,
    ) -> list[Message]:
        """Push the messages, then pull until every one is answered or the timeout; each
        reply goes to ``take`` as it arrives and is kept if it returns True. Replies are
        pulled for at most ``batch`` messages at a time, so that a phase whose replies
        are consumed holds no more than that many at once."""
        if not messages:
            return []
        pushed = [message_id for message_id in grid.push_messages(messages) if message_id]
        self._set_outgoing(messages)  # the grid gave them their ids: look them up anew
        pending = set(pushed)
        start = last_line = time.monotonic()
        deadline = start + self.timeout
        replies: list[Message] = []
        arrived = 0
        while pending:
            waiting = [i for i in pushed if i in pending]
            got_any = False
            polled_at = time.monotonic()
            for first in range(0, len(waiting), batch):
                for reply in grid.pull_messages(waiting[first : first + batch]):
                    pending.discard(reply.metadata.reply_to_message_id)
                    arrived += 1
                    got_any = True
                    if take(reply):
                        replies.append(reply)
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            if now - last_line >= self.progress_seconds:
                log(
                    INFO,
                    "round %d %s: %d/%d replies, %.0f s",
                    server_round,
                    phase,
                    arrived,
                    len(messages),
                    now - start,
                )
                last_line = now
            pause = self.next_poll_pause(got_any, now - start, now - polled_at)
            time.sleep(min(pause, deadline - now))
        elapsed = time.monotonic() - start
        log(
            INFO if not pending else WARNING,
            "round %d %s: %d/%d replies in %.1f s%s",
            server_round,
            phase,
            arrived,
            len(messages),
            elapsed,
            f" (fed.round-timeout = {self.timeout:g} s; the others are dropped)" if pending else "",
        )
        # In the order sent, not of arrival: aggregation sums in a fixed order, so that a
        # run (and a resumed one) is repeatable to the bit.
        order = {message_id: i for i, message_id in enumerate(pushed)}
        replies.sort(key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))
        return replies

    def _note_node_replies(
        self,
        server_round: int,
        phase: str,
        sent: list[Message],
        arrived: list[tuple[str, int, str | None]],
    ) -> None:
        """Per node: messages sent, how many failed (error or no reply), how many train or
        evaluate messages it answered with content, and its last failure. ``arrived``: per
        reply, the id of the message it answers, its source node and its error (None:
        content); taken in the order sent, whatever order they came in."""
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        order = {message_id: i for i, message_id in enumerate(node_of)}
        answered: set[int] = set()
        for message_id, source, error in sorted(
            arrived, key=lambda a: (order.get(a[0], len(order)), a[1])
        ):
            node = node_of.get(message_id, source)
            answered.add(node)
            entry = self._node_entry(node)
            if error is not None:
                entry["failed"] += 1
                entry["last-failure"] = f"round {server_round} {phase}: {error}"
            elif phase in ("train", "evaluate"):
                entry["answered-work"] += 1
        for node in set(node_of.values()) - answered:
            entry = self._node_entry(node)
            entry["failed"] += 1
            entry["last-failure"] = (
                f"round {server_round} {phase}: no reply within {self.timeout:g} s"
            )
        for node in node_of.values():
            self._node_entry(node)["sent"] += 1

    def _node_entry(self, node: int) -> dict[str, Any]:
        entry = self.node_replies.setdefault(
            node, {"sent": 0, "failed": 0, "answered-work": 0, "last-failure": ""}
        )
        entry.setdefault("trained", 0)  # an entry from a checkpoint written before these
        entry.setdefault("evaluated", 0)
        return entry

    def _count_used(self, valid: Iterable[Message], what: str) -> None:
        """Per node, how many of its train (``trained``) or evaluate (``evaluated``)
        replies passed every check, so that results say plainly which node did which."""
        for msg in valid:
            self._node_entry(self._sender(msg))[what] += 1

    def _count_bytes(self, server_round: int, phase: str, down: int, up: int) -> None:
        """Add ``down`` and ``up`` array bytes to the round's ``<phase>/bytes-down|up`` and
        its ``bytes-down|up`` totals."""
        entry = self.round_metrics.setdefault(server_round, {})
        for key, nbytes in ((traffic.BYTES_DOWN, down), (traffic.BYTES_UP, up)):
            for name in (f"{phase}/{key}", key):  # byte counts: ints, set only here
                entry[name] = int(cast(int, entry.get(name, 0))) + nbytes

    def remember_metrics(self, server_round: int, phase: str, metrics: MetricRecord) -> None:
        """Keep ``metrics`` in ``round_metrics[server_round]`` as ``<phase>/<key>``."""
        entry = self.round_metrics.setdefault(server_round, {})
        for key, value in metrics.items():
            entry[f"{phase}/{key}"] = value  # type: ignore[assignment]  # list[int] kept as it came

    def _set_outgoing(self, messages: list[Message]) -> None:
        """The messages of the phase in flight; who each reply answers for is looked up
        from them (by message id, which the grid gives a message when it is pushed)."""
        self._outgoing = messages
        # Annotated: mypy infers no type from a Protocol base's declaration (StrategyParts).
        self._sent_ids: dict[str, tuple[int, int]] | None = None

    def _sent_as(self, reply: Message) -> tuple[int, int]:
        """(index among the messages sent, node) of the message ``reply`` answers.

        The node is not always ``src_node_id``: when a node dies, the SuperLink itself
        answers with a "node unavailable" error whose source is the SuperLink. The grid
        gives every sent message its id in place, and every reply names the id it
        answers. A dict built once per phase: a linear search per reply was O(N^2).
        """
        if self._sent_ids is None:
            self._sent_ids = {
                msg.metadata.message_id: (i, msg.metadata.dst_node_id)
                for i, msg in enumerate(self._outgoing)
            }
        found = self._sent_ids.get(reply.metadata.reply_to_message_id)
        return found if found is not None else (len(self._sent_ids), reply.metadata.src_node_id)

    def _sender(self, reply: Message) -> int:
        """The node a reply answers for (``_sent_as``)."""
        return self._sent_as(reply)[1]

    def sender(self, reply: Message) -> int:
        """The node a reply of the phase in flight answers for: the destination of the
        message it replies to (``src_node_id`` is the SuperLink's when a node died)."""
        return self._sender(reply)

    def _wait_for_nodes(self, grid: Grid, minimum: int) -> list[int]:
        """The connected node ids, once at least ``minimum`` are connected.

        Logs progress (at once, when the count changes, every 10 s) and gives up after
        ``wait_timeout`` seconds with a TimeoutError that says what it waited for, so that
        a deployment short of SuperNodes fails instead of waiting forever.
        """
        start = time.monotonic()
        logged_at, logged_count = -math.inf, -1
        while len(nodes := sorted(grid.get_node_ids())) < minimum:
            waited = time.monotonic() - start
            keys = ", ".join(
                f"{name}={getattr(self, name)}"
                for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
                if getattr(self, name) == minimum
            )
            if waited >= self.wait_timeout:
                raise TimeoutError(
                    f"waited {waited:.0f} s for nodes: {len(nodes)} connected, {minimum} "
                    f"required ({keys}); start more SuperNodes, lower those minimums or "
                    f"raise the wait timeout (wait_timeout = {self.wait_timeout:g} s)"
                )
            if len(nodes) != logged_count or waited - logged_at >= 10.0:
                log(
                    INFO,
                    "waiting for nodes: %d connected, %d required (%s); %.0f of %.0f s",
                    len(nodes),
                    minimum,
                    keys,
                    waited,
                    self.wait_timeout,
                )
                logged_at, logged_count = waited, len(nodes)
            time.sleep(min(1.0, max(self.wait_timeout - waited, 0.01)))
        return nodes
