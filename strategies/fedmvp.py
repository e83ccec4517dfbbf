"""FedMVP's server (Singha et al., ICCV 2025) on the ``PromptFedAvg`` base.

The global state is the PromptFormer and its low-rank adapters (every array ``fedmvp.*``);
CLIP itself is frozen and never travels. Per round:

1. configure_train / configure_evaluate: the state, and in each message's config the
   adapter switch (``adapters-on``) the server holds for the destination's partition.
   A client trains (and evaluates) with its adapters exactly when the switch is on, so a
   client resumed after a restart, or a held-out client (never trained: always off),
   behaves as in an uninterrupted run.
2. The client trains and replies with its arrays, ``partition-id`` and its switch after
   training (on once its loss fell below sigma; the client decides, the server records).
3. aggregate_train: the base's checks (keys, shapes, finiteness, known counts), then this
   class's (``adapters-on`` is 0 or 1, ``partition-id`` the sender's own); a bad
   reply is dropped with a log line. Every key is averaged over the valid replies with
   equal weights (the paper) or by n_k (``aggregation = "num-examples"``). A client that
   did not train a key (the cross-attention once its adapters are on, the adapters before)
   returns it unchanged, as the released code's plain average of state dicts does.
   The switches of the accepted replies are kept per partition id (and checkpointed);
   a round below min-train-nodes keeps the state and the switches as they were.

FedMVP has no classification head, so the classes of the prototype-round counts are given:
``num_classes`` (the data set's). Communicated bytes per round come from the base.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from strategies import wire
from strategies.base import PromptFedAvg
from strategies.options import FEDMVP_AGGREGATIONS as AGGREGATIONS
from strategies.tally import PrototypeTally
from strategies.validation import integer


class FedMVP(PromptFedAvg):
    """PromptFormer and adapter averaging, with each client's adapter switch kept here.

    Parameters beyond ``PromptFedAvg``'s
    ------------------------------------
    num_classes : int
        C, the data set's classes: the length of every reply's class counts.
    aggregation : str (default "equal")
        "equal": every valid reply weighs the same (the paper); "num-examples": by n_k.
    member_of : sequence of int (default empty)
        Several data sets in one federation (coop-nine): the member set of each partition
        id. Evaluation then adds ``mean-member-accuracy``, the mean over the members of the
        mean accuracy of each member's clients (the paper's Local of the nine sets).
    The base's ``wire_dtype`` ("float16": half the bytes each way) applies as for every
    method; the state is kept and averaged in float32.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        aggregation: str = "equal",
        member_of: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.member_of = tuple(int(m) for m in member_of)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes = {num_classes!r} must be an integer >= 1")
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation = {aggregation!r} is not accepted; use one of: "
                f"{', '.join(AGGREGATIONS)}"
            )
        self._classes = num_classes
        self.aggregation = aggregation
        self.adapters_on: dict[int, bool] = {}  # partition id -> switch, from train replies
        self.node_partitions: dict[int, int] = {}  # node id -> partition id
        self._switches: list[tuple[int, bool]] = []  # this round's accepted (pid, switch)
        self._warned_nodes: set[int] = set()

    def summary(self) -> None:
        super().summary()
        weights = "equal weights" if self.aggregation == "equal" else "n_k weights"
        log(INFO, "\t└──> FedMVP: PromptFormer and adapters averaged with %s", weights)

    # ------------------------------------------------------------------ state
    def num_classes(self, arrays: ArrayRecord) -> int:
        return self._classes

    def checkpoint(self) -> dict[str, Any]:
        state = super().checkpoint()
        state["adapters-on"] = {str(pid): on for pid, on in sorted(self.adapters_on.items())}
        state["node-partitions"] = {str(n): p for n, p in sorted(self.node_partitions.items())}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.adapters_on = {int(p): bool(on) for p, on in state["adapters-on"].items()}
        self.node_partitions = {int(n): int(p) for n, p in state["node-partitions"].items()}

    def prototype_state(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """The base state; and which partition every node that answered holds."""
        for pid, entry in self.partitions.items():
            self.node_partitions[int(entry["node-id"])] = pid
        return super().prototype_state(arrays, tally)

    # ------------------------------------------------------------------ messages
    def switch_for(self, node_id: int) -> bool:
        """The adapter switch of the partition ``node_id`` holds (off when unknown)."""
        pid = self.node_partitions.get(node_id)
        if pid is None:
            if node_id not in self._warned_nodes:
                self._warned_nodes.add(node_id)
                log(
                    WARNING,
                    "FedMVP: node %d reported no partition id in the prototype round; "
                    "its adapters stay off until it replies with one",
                    node_id,
                )
            return False
        return self.adapters_on.get(pid, False)

    def extra_content(self, content: RecordDict, arrays: ArrayRecord, node_id: int) -> None:
        """This node's adapter switch, in a config of its own (the base shares one)."""
        shared = cast(ConfigRecord, content[wire.CONFIG])  # the base's _messages put it there
        config = ConfigRecord(dict(shared))
        config[wire.ADAPTERS_ON] = int(self.switch_for(node_id))
        content[wire.CONFIG] = config

    # ------------------------------------------------------------------ train
    def check_train_metrics(self, metrics: MetricRecord, node: int) -> str | None:
        """``adapters-on`` is 0 or 1 and ``partition-id`` a non-negative integer."""
        switch = metrics.get(wire.ADAPTERS_ON)
        if switch not in (0, 1) or not isinstance(switch, int) or isinstance(switch, bool):
            return f"{wire.ADAPTERS_ON} = {switch!r}: a FedMVP train reply needs 0 or 1"
        pid = metrics.get(wire.PARTITION_ID)
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            return f"{wire.PARTITION_ID} = {pid!r}: a FedMVP train reply needs an integer >= 0"
        known = self.node_partitions.get(node)
        if known is not None and pid != known:
            return f"{wire.PARTITION_ID} = {pid}, but node {node} holds partition {known}"
        return None

    def prepare_merge(self, metrics: Sequence[MetricRecord]) -> None:
        self._switches = [
            (integer(m[wire.PARTITION_ID]), bool(m[wire.ADAPTERS_ON])) for m in metrics
        ]

    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
        """Every valid reply alike (equal weights), or its n_k (``aggregation``)."""
        if self.aggregation == "equal":
            return 1.0
        return super().merge_weight(key, metrics)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The base's average; then the accepted replies' switches are the partitions'."""
        self._switches = []
        state, metrics = super().aggregate_train(server_round, replies)
        if self._switches:
            for pid, on in self._switches:
                if on and not self.adapters_on.get(pid, False):
                    log(INFO, "round %d: partition %d switched its adapters on", server_round, pid)
                self.adapters_on[pid] = on
            entry = self.round_metrics.setdefault(server_round, {})
            entry["train/adapters-on"] = float(sum(self.adapters_on.values()))
            if metrics is not None:
                metrics["adapters-on"] = sum(self.adapters_on.values())
        self._switches = []
        return state, metrics

    # ------------------------------------------------------------------ evaluate
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The base summary; a node that names its partition is that partition's from now
        on (a SuperNode that came back under a new node id)."""
        replies = list(replies)
        for msg in replies:
            if msg.has_error() or not isinstance(msg.content.get(wire.METRICS), MetricRecord):
                continue
            pid = msg.content[wire.METRICS].get(wire.PARTITION_ID)
            if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
                node = self.sender(msg)
                for other in [n for n, p in self.node_partitions.items() if p == pid]:
                    del self.node_partitions[other]
                self.node_partitions[node] = pid
        record = super().aggregate_evaluate(server_round, replies)
        return self._member_local(server_round, record)

    def _member_local(self, server_round: int, record: MetricRecord | None) -> MetricRecord | None:
        """coop-nine: ``mean-member-accuracy``, the mean over the member sets of the mean
        accuracy of each set's (not held-out) clients."""
        if record is None or not self.member_of or "client-accuracies" not in record:
            return record
        by_member: dict[int, list[float]] = {}
        # Both lists as aggregate_evaluate wrote them: accuracies, and partition ids.
        accuracies = cast("list[float]", record["client-accuracies"])
        pids = cast("list[int]", record["client-partition-ids"])
        for accuracy, pid in zip(accuracies, pids, strict=True):
            if 0 <= int(pid) < len(self.member_of):
                by_member.setdefault(self.member_of[int(pid)], []).append(float(accuracy))
        if by_member:
            means = [sum(v) / len(v) for v in by_member.values()]
            extra = MetricRecord({"mean-member-accuracy": sum(means) / len(means)})
            record["mean-member-accuracy"] = extra["mean-member-accuracy"]
            self.remember_metrics(server_round, "evaluate", extra)
        return record
