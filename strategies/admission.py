"""Node admission: the prototype round, late nodes, and the registry of what each node
verified (class counts, partition, held out).

``NodeAdmission`` is a part of ``PromptFedAvg`` (strategies/base.py). The first
prototype round asks every connected node for its class counts (and, unless
``counts_only``, its per-class feature sums) and folds each valid reply into a
``PrototypeTally`` as it arrives; ``admit_late_nodes`` asks the nodes that round did not
verify (connected later, or whose reply was dropped) before they may train. What it
keeps: ``_node_counts`` (the counts train replies must repeat), ``partitions`` and
``held_out_nodes``, the prototype version and which version each node holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from logging import INFO, WARNING
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies import wire
from strategies.parts import PartsBase
from strategies.prototype_answers import PrototypeAnswer, fold_answer
from strategies.records import PartitionEntry
from strategies.secagg import secure_prototypes
from strategies.tally import PrototypeTally
from strategies.validation import check_prototype_reply, integer, record_arrays, reply_metrics


class NodeAdmission(PartsBase):
    """The prototype round, late-node admission and the registry of verified nodes."""

    def ensure_prototypes(
        self, grid: Grid, arrays: ArrayRecord, server_round: int = 0
    ) -> ArrayRecord:
        """The whole global state (``global_state``) with the prototype round's result:
        the state as it is when it already holds one (a resumed run), else after a
        prototype round counted in round ``server_round`` (0: the initial state's row)."""
        state = self.global_state(arrays)
        if self.has_prototypes(state):
            if self._proto_version == 0:
                # Annotated: mypy infers no type from a Protocol base's declaration.
                self._proto_version: int = 1
            return state
        return self._keep_server_arrays(self.prototype_round(grid, state, server_round))

    def proto_version(self) -> int:
        """The version of the prototype round's result that train/evaluate messages name
        (``proto-version``): 0 before the first prototype round, then one more for each
        prototype round or admission of late nodes that changed it."""
        return self._proto_version

    def prototypes_to_send(self, node_id: int) -> bool:
        """Whether a message to node ``node_id`` must carry the prototype round's result
        (the node holds no copy of this version); True notes it as sent, so ask once per
        message. A node whose reply is an error is sent it again."""
        if self._node_proto_version.get(node_id) == self._proto_version:
            return False
        self._node_proto_version[node_id] = self._proto_version
        return True

    def has_prototypes(self, arrays: ArrayRecord) -> bool:
        """Hook: whether the state already holds the prototype round's result (a resumed
        run)."""
        return wire.PROTO_COUNT in arrays

    def prototype_round(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Ask every connected node for its class counts (and, unless ``counts_only``, its
        per-class feature sums); return the state with the round's result.

        Each valid reply is folded into a ``PrototypeTally`` as it arrives and dropped, so
        the ServerApp holds one reply (a pull's batch) at a time, not one per node; the
        tally sums exactly, and what else the round keeps is settled by the order the
        messages were sent in, so the result is the same whatever order the replies came
        in. Two nodes that report one partition id both count (with a warning); the
        partition entry is the one sent later's.
        """
        num_classes = self.num_classes(arrays)
        node_ids = self._wait_for_nodes(grid, self.min_available_nodes)
        tally = PrototypeTally(num_classes, self._prototype_dim(arrays))
        held_out: set[int] = set()
        partitions: dict[int, tuple[int, PartitionEntry]] = {}
        counted: dict[int, tuple[int, list[int]]] = {}  # node -> (sent index, its counts)

        def take(answer: PrototypeAnswer) -> None:
            reported = [int(n) for n in answer.proto[wire.PROTO_COUNT]]
            if fold_answer(answer, reported, partitions, held_out, tally, "prototype round"):
                counted[answer.node] = (answer.sent_index, reported)

        if self.secagg is not None:  # only the totals reach the server
            outcome = secure_prototypes(
                self.secagg,
                node_ids,
                num_classes,
                self._prototype_dim(arrays),
                self._prototype_config(server_round),
                lambda messages, _: self._exchange(grid, messages, server_round, "query"),
            )
            tally.add_total(outcome.sums, outcome.counts, len(outcome.contributors))
            # Contributors may train; their counts stay unknown (docs/privacy.md).
            counted = {node: (i, []) for i, node in enumerate(outcome.contributors)}
            self.dropped.extend((server_round, n, why) for n, why in outcome.result.dropped)
            held_out, partitions = outcome.held_out, outcome.partitions
        else:
            self._ask_for_prototypes(grid, arrays, node_ids, server_round, take)
        if not tally.clients:
            raise RuntimeError(
                f"prototype round: none of {len(node_ids)} nodes sent a valid reply from a "
                f"training client ({len(held_out)} held out); see the log lines above"
            )
        for node, (_, counts) in sorted(counted.items(), key=lambda item: item[1][0]):
            self._node_counts[node] = counts  # in the order sent, as a checkpoint lists them
        self.held_out_nodes = held_out
        self.partitions = {pid: entry for pid, (_, entry) in sorted(partitions.items())}
        state = self.prototype_state(arrays, tally)
        total = np.asarray(state[wire.PROTO_COUNT].numpy())
        log(
            INFO,
            "prototype round: %d nodes (+%d held out), %d examples, %d/%d classes held",
            tally.clients,
            len(held_out),
            int(total.sum()),
            int((total > 0).sum()),
            num_classes,
        )
        self._proto_version += 1
        return state

    def admit_late_nodes(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Verify the counts of every connected node the prototype round did not, before it
        can train: a SuperNode that connected later, or one whose prototype reply was
        dropped. Without this, a node could claim any counts in its train replies and
        carry the aggregate.

        Each such node gets the prototype QUERY. A node that reports a partition known
        before this query (a SuperNode back under a new node id) must repeat that
        partition's counts, and adds nothing; a new partition's counts (and feature sums)
        are folded into the global ones (``fold_prototypes``: sums, so folding is exact),
        and the prototype version moves on. Replies are folded as they arrive, as in
        ``prototype_round`` (so two late nodes that report one new partition both count,
        with a warning). A node still unverified afterwards is not sampled to train, and
        its train replies are refused (``check_known_counts``).
        """
        late = [
            node
            for node in sorted(grid.get_node_ids())
            if node not in self._node_counts and node not in self.held_out_nodes
        ]
        if not late:
            return arrays
        if self.secagg is not None:  # a plain query would show their counts and sums
            log(
                WARNING,
                "round %d: %d node(s) outside the secure prototype round stay out of training "
                "until the next one (a refresh, fed.prototype-refresh-every): a plain query "
                "would show their counts and sums",
                server_round,
                len(late),
            )
            return arrays
        log(INFO, "round %d: %d node(s) without verified class counts", server_round, len(late))
        tally = PrototypeTally(self.num_classes(arrays), self._prototype_dim(arrays))
        known_before = dict(self.partitions)
        partitions: dict[int, tuple[int, PartitionEntry]] = {}
        verified: list[tuple[int, int, list[int], int | None]] = []  # (index, node, counts, pid)
        refused: list[tuple[int, int, str]] = []
        held_out: set[int] = set()

        def take(answer: PrototypeAnswer) -> None:
            index, node, pid, is_held_out, proto = answer
            reported = [int(n) for n in proto[wire.PROTO_COUNT]]
            known = known_before.get(pid) if pid is not None else None
            if known is not None and not is_held_out and not known["held-out"]:
                if reported != known["class-counts"]:
                    reason = (
                        f"reports partition {pid} with other {wire.PROTO_COUNT} than the "
                        f"prototype round's (sum {sum(reported)} vs "
                        f"{sum(known['class-counts'])})"
                    )
                    refused.append((index, node, reason))
                    log(WARNING, "round %d: refused node %d: %s", server_round, node, reason)
                    return
                verified.append((index, node, reported, pid))  # back under a new node id
                return
            if fold_answer(answer, reported, partitions, held_out, tally, "late nodes"):
                verified.append((index, node, reported, None))

        self._ask_for_prototypes(grid, arrays, late, server_round, take)
        # Everything the round keeps, in the order sent (as if the replies came so).
        self.dropped.extend((server_round, node, why) for _, node, why in sorted(refused))
        for _, node, reported, known_pid in sorted(verified, key=lambda entry: entry[0]):
            if known_pid is not None:
                self.partitions[known_pid]["node-id"] = node
            self._node_counts[node] = reported
        if partitions:
            self.partitions.update({pid: entry for pid, (_, entry) in partitions.items()})
            self.partitions = dict(sorted(self.partitions.items()))
        self.held_out_nodes |= held_out
        if not tally.clients:
            return arrays
        log(
            INFO,
            "round %d: %d late node(s) folded into the prototype round's result",
            server_round,
            tally.clients,
        )
        self._proto_version += 1
        return self.fold_prototypes(arrays, tally)

    def fold_prototypes(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """Hook: the state with late nodes' counts (and sums), ``tally``, added to the
        prototype round's result (default: the global class counts). The tally is the
        hook's to add to (PEPFedPT adds the earlier means x counts)."""
        total = np.asarray(arrays[wire.PROTO_COUNT].numpy(), dtype=np.int64) + tally.counts
        state = ArrayRecord({key: arrays[key] for key in arrays})
        state[wire.PROTO_COUNT] = Array(total.astype(np.int64))
        return state

    def _prototype_dim(self, arrays: ArrayRecord) -> int | None:
        """D of the feature sums the prototype round asks for (None: counts only)."""
        return None if self.counts_only else int(arrays[wire.HEAD_WEIGHT].shape[1])

    def _ask_for_prototypes(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        node_ids: Sequence[int],
        server_round: int,
        take: Callable[[PrototypeAnswer], None],
    ) -> None:
        """Send the prototype QUERY to ``node_ids`` and hand ``take`` each valid reply as
        it arrives: (sent index, node id, partition id or None, held out, its ``proto``
        arrays, views of the reply's bytes that live only during the call). Invalid replies
        are logged at once and listed in ``dropped`` in the order sent."""
        if self.secagg is not None:  # a plain reply would show the node's counts and sums
            raise RuntimeError(
                "a plain prototype query under secure_aggregation = 'secaggplus' is refused "
                "(late nodes join at the next secure prototype refresh; docs/privacy.md)"
            )
        num_classes = self.num_classes(arrays)
        dim = self._prototype_dim(arrays)
        config = self._prototype_config(server_round)
        messages = [
            Message(
                content=RecordDict({wire.CONFIG: config}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in node_ids
        ]
        self._set_outgoing(messages)
        what = "class counts" if self.counts_only else "class feature sums"
        log(INFO, "prototype round: asking %d nodes for %s", len(messages), what)
        refused: list[tuple[int, int, str]] = []

        def check(content: RecordDict, _: int) -> str | None:
            return check_prototype_reply(content, num_classes, dim)

        def consume(msg: Message) -> bool:
            index, node = self._sent_as(msg)
            reason = self._judge(msg, node, check)
            if reason is not None:
                refused.append((index, node, reason))
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
                return False
            metrics = reply_metrics(msg.content)
            pid = integer(metrics[wire.PARTITION_ID]) if wire.PARTITION_ID in metrics else None
            held_out = bool(metrics.get(wire.HELD_OUT, 0))
            proto = cast(ArrayRecord, msg.content[wire.PROTO])  # check_prototype_reply saw it
            take(PrototypeAnswer(index, node, pid, held_out, record_arrays(proto)))
            return False  # consumed: the reply is not kept

        self._exchange(grid, messages, server_round, "query", consume)
        self.dropped.extend((server_round, node, why) for _, node, why in sorted(refused))

    def _prototype_config(self, server_round: int) -> ConfigRecord:
        """The prototype QUERY's config (task, round, and counts-only where so)."""
        config = ConfigRecord(
            {wire.CFG_TASK: wire.TASK_PROTOTYPES, wire.CFG_SERVER_ROUND: server_round}
        )
        if self.counts_only:
            config[wire.CFG_COUNTS_ONLY] = True
        return config

    def num_classes(self, arrays: ArrayRecord) -> int:
        """Hook: C, the length of every reply's class counts: the head's rows (a method
        without a classification head overrides this)."""
        return int(arrays[wire.HEAD_WEIGHT].shape[0])

    def prototype_state(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """Hook: the state after a prototype round: ``arrays`` plus the global class counts
        (``tally``: the training nodes' exact feature-sum total, unless ``counts_only``,
        and their class counts; ``tally.means()`` gives the prototypes)."""
        state = ArrayRecord({key: arrays[key] for key in arrays})
        state[wire.PROTO_COUNT] = Array(tally.counts)
        return state

    def refreshes_prototypes(self, server_round: int) -> bool:
        """Hook: whether round ``server_round`` opens with a new prototype round, counted
        in that round (default: never; PEPFedPT: every ``prototype_refresh_every``)."""
        return False

    def _prototypes_apart(
        self, grid: Grid, messages: list[Message], server_round: int
    ) -> list[Message]:
        """Send the prototypes that train messages would carry in a QUERY of their own
        (task ``keep-prototypes``), before the train messages, which then carry one
        ArrayRecord only.

        Flower's client-side DP (``DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping``,
        which put ``clipping_norm`` in the config) runs ``fixedclipping_mod`` or
        ``adaptiveclipping_mod`` on the node, and both mods refuse a train message with
        more than one ArrayRecord. A node whose query
        fails gets no train message this round (it would lack the prototypes).
        """
        queries: list[Message] = []
        for msg in messages:
            if wire.PROTO not in msg.content:
                continue
            content = RecordDict(
                {
                    wire.CONFIG: ConfigRecord(
                        {
                            wire.CFG_TASK: wire.TASK_KEEP_PROTOTYPES,
                            wire.CFG_SERVER_ROUND: server_round,
                            wire.CFG_PROTO_VERSION: self._proto_version,
                        }
                    ),
                    wire.PROTO: msg.content[wire.PROTO],
                }
            )
            del msg.content[wire.PROTO]
            queries.append(
                Message(
                    content=content,
                    message_type=MessageType.QUERY,
                    dst_node_id=msg.metadata.dst_node_id,
                )
            )
        if not queries:
            return messages
        self._set_outgoing(queries)
        kept_by = self._kept_by(grid, queries, server_round)
        failed = {q.metadata.dst_node_id for q in queries} - kept_by
        for node in sorted(failed):
            self._node_proto_version.pop(node, None)
            log(
                WARNING,
                "round %d: node %d did not keep the prototypes; not trained",
                server_round,
                node,
            )
        kept = [msg for msg in messages if msg.metadata.dst_node_id not in failed]
        self._set_outgoing(kept)
        return kept

    def _kept_by(self, grid: Grid, queries: list[Message], server_round: int) -> set[int]:
        """The nodes that answered a ``keep-prototypes`` query with content."""
        replies = self._exchange(grid, queries, server_round, "query")
        return {self._sender(reply) for reply in replies if reply.has_content()}

    def _partition_counts(self) -> dict[int, list[int]]:
        """The verified counts that ``partitions`` holds: its training nodes' class counts."""
        return {
            int(entry["node-id"]): list(entry["class-counts"])
            for entry in self.partitions.values()
            if not entry["held-out"]
        }

    def in_identity_order(self, nodes: Iterable[int]) -> list[int]:
        """``nodes`` sorted by the client each one is: its partition id where the prototype
        round (or late-node admission) learnt one, then nodes without one by node id.

        Sampling draws over this order, never over raw node ids: Flower gives SuperNodes
        new random ids in every simulation and a restarted SuperNode a new id, so the same
        seed would pick other clients in another run or after a resume, while a node's
        partition is its data and stays.
        """
        partition_of = {int(entry["node-id"]): pid for pid, entry in self.partitions.items()}

        def identity(node: int) -> tuple[int, int]:
            pid = partition_of.get(node)
            return (0, pid) if pid is not None else (1, node)

        return sorted(nodes, key=identity)
