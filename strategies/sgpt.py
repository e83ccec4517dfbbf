"""SGPT's server (Deng et al., CVPR 2024): FedAvg plus group-weighted group prompts and keys.

The shared prompt and head are averaged by n_k, as in FedAvg. Each group's prompts
(``prompt.group.<l>``) and key (``prompt.keys``) are averaged row by row over the clients
weighted by how many of their train examples selected that group (``group-counts`` in the
train reply), then mixed with the previous global row by the momentum m:
new = m · previous + (1 − m) · mean. A group no sampled client selected keeps its previous
rows. A train reply without valid group counts (shape, integers, non-negative, adding up
to num-examples) is dropped whole, with a log line naming the node and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

import numpy as np
from flwr.app import MetricRecord
from flwr.supercore import log

from strategies import wire
from strategies.aggregation import group_weighted_mean
from strategies.base import PromptFedAvg
from strategies.validation import check_group_counts


class SGPT(PromptFedAvg):
    """Shared and group prompt tuning: what is SGPT's own is the group rows' aggregation.

    Parameters beyond FedAvg's
    --------------------------
    group_momentum : float in [0, 1) (default 0.5, SGPT's code)
        Weight of the previous global group prompts and keys in the new ones.
    seed : int (default 0)
        Seeds client sampling, so that a run can be repeated.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        group_momentum: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            seed=seed,
        )
        if not (np.isfinite(group_momentum) and 0.0 <= group_momentum < 1.0):
            raise ValueError(f"group_momentum = {group_momentum!r} must be in [0, 1)")
        self.group_momentum = group_momentum
        self._group_counts: list[np.ndarray] = []

    def summary(self) -> None:
        super().summary()
        log(
            INFO, "\t└──> Group prompts and keys: by group counts, momentum %s", self.group_momentum
        )

    def check_train_metrics(self, metrics: MetricRecord) -> str | None:
        """Group counts: one non-negative integer per group, adding up to num-examples."""
        if self._global is None or wire.GROUP_KEYS not in self._global:
            return f"the global state has no {wire.GROUP_KEYS}: not an SGPT state"
        num_groups = self._global[wire.GROUP_KEYS].shape[0]
        return check_group_counts(
            metrics.get(wire.GROUP_COUNTS), metrics.get(wire.NUM_EXAMPLES), num_groups
        )

    def prepare_merge(self, metrics: Sequence[MetricRecord]) -> None:
        self._group_counts = [np.asarray(m[wire.GROUP_COUNTS], dtype=np.int64) for m in metrics]

    def merge(
        self,
        key: str,
        values: Sequence[np.ndarray],
        sizes: Sequence[float],
        class_counts: Sequence[np.ndarray],
        previous: np.ndarray,
    ) -> np.ndarray:
        """Group prompts and keys per group by n_{k,g}, with momentum; the rest FedAvg."""
        if wire.is_grouped(key):
            if len(self._group_counts) != len(values):
                raise RuntimeError("merge of group rows without the replies' group counts")
            return group_weighted_mean(values, self._group_counts, previous, self.group_momentum)
        return super().merge(key, values, sizes, class_counts, previous)
