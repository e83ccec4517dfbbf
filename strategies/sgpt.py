"""SGPT's server (Deng et al., CVPR 2024): FedAvg plus group-weighted group prompts and keys.

The shared prompt and head are averaged by n_k, as in FedAvg. Each group's prompts
(``prompt.group.<l>``) and key (``prompt.keys``) are averaged row by row over the clients
weighted by how many of their train examples selected that group (``group-counts`` in the
train reply), then mixed with the previous global row by the momentum m:
new = m · previous + (1 − m) · mean. A group no sampled client selected keeps its previous
rows. A train reply without valid group counts (shape, integers, non-negative, adding up
to num-examples) is dropped whole, with a log line naming the node and the reason.

The state also keeps ``group.count``: every group's selections so far (the sum of all
accepted group counts, zeros after the prototype round), sent with each message so that clients
can balance the groups while training (``pep_fedpt.groups.select_groups``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies import wire
from strategies.aggregation import RunningMean
from strategies.base import PromptFedAvg
from strategies.tally import PrototypeTally
from strategies.validation import check_group_counts


class SGPT(PromptFedAvg):
    """Shared and group prompt tuning: what is SGPT's own is the group rows' aggregation.

    Parameters beyond ``PromptFedAvg``'s (which pass through ``**kwargs``)
    ---------------------------------------------------------------------
    group_momentum : float in [0, 1) (default 0.5, SGPT's code)
        Weight of the previous global group prompts and keys in the new ones.
    """

    def __init__(self, *, group_momentum: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (np.isfinite(group_momentum) and 0.0 <= group_momentum < 1.0):
            raise ValueError(f"group_momentum = {group_momentum!r} must be in [0, 1)")
        self.group_momentum = group_momentum
        self._group_counts: list[np.ndarray] = []

    def summary(self) -> None:
        super().summary()
        log(
            INFO, "\t└──> Group prompts and keys: by group counts, momentum %s", self.group_momentum
        )

    def prototype_state(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """The prototype round's state plus ``group.count``: no group selected yet."""
        state = super().prototype_state(arrays, tally)
        num_groups = arrays[wire.GROUP_KEYS].shape[0]
        state[wire.GROUP_COUNT] = Array(np.zeros(num_groups, dtype=np.int64))
        return state

    def extra_content(self, content: RecordDict, arrays: ArrayRecord, node_id: int) -> None:
        """The selections so far (G ints), for the balanced training-time selection: a
        record of their own, or, when a client-side DP wrapper sent a clipping bound,
        in the config (Flower's clipping mods take a train message with one ArrayRecord)."""
        counts = arrays[wire.GROUP_COUNT]
        config = content.config_records[wire.CONFIG]
        if KEY_CLIPPING_NORM in config:
            selected = [int(c) for c in counts.numpy()]
            content[wire.CONFIG] = ConfigRecord({**config, wire.GROUP_COUNT: selected})
        else:
            content[wire.GROUP] = ArrayRecord({wire.GROUP_COUNT: counts})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's aggregate with group rows by group counts (``aggregate_valid``)."""
        self._group_counts = []  # check_train_metrics adds each accepted reply's
        return super().aggregate_train(server_round, replies)

    def aggregate_valid(
        self,
        server_round: int,
        valid: list[Message],
        metrics: MetricRecord,
        running: Mapping[str, RunningMean],
    ) -> ArrayRecord | None:
        """The merged state, with ``group.count`` grown by the accepted replies' counts
        (it stays when the round keeps the previous state)."""
        state = super().aggregate_valid(server_round, valid, metrics, running)
        if state is not None and self._group_counts:
            before = np.asarray(state[wire.GROUP_COUNT].numpy(), dtype=np.int64)
            state[wire.GROUP_COUNT] = Array(before + np.sum(self._group_counts, axis=0))
        return state

    def check_train_metrics(self, metrics: MetricRecord, node: int) -> str | None:
        """Group counts: one non-negative integer per group, adding up to num-examples."""
        state = self.global_arrays
        if state is None or wire.GROUP_KEYS not in state:
            return f"the global state has no {wire.GROUP_KEYS}: not an SGPT state"
        num_groups = state[wire.GROUP_KEYS].shape[0]
        return check_group_counts(
            metrics.get(wire.GROUP_COUNTS), metrics.get(wire.NUM_EXAMPLES), num_groups
        )

    def prepare_merge(self, metrics: Sequence[MetricRecord]) -> None:
        self._group_counts = [np.asarray(m[wire.GROUP_COUNTS], dtype=np.int64) for m in metrics]

    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
        """Group prompts and keys per group by n_{k,g}; the rest FedAvg by n_k."""
        if wire.is_grouped(key):
            return np.asarray(metrics[wire.GROUP_COUNTS], dtype=np.float64)
        return super().merge_weight(key, metrics)

    def merge_result(self, key: str, running: RunningMean) -> np.ndarray:
        """Group rows: m · previous + (1 − m) · their group-weighted mean."""
        if wire.is_grouped(key):
            return running.result(self.group_momentum)
        return super().merge_result(key, running)
