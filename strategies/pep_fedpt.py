"""PEPFedPT: FedAvg plus a prototype round and per-class aggregation of class prompts.

What the server adds to FedAvg (Message API):

1. Before round 1 (and every ``prototype_refresh_every`` rounds if set), a prototype round:
   every connected node gets a QUERY and returns its per-class feature sums and counts;
   μ_c = Σ_k S_{k,c} / Σ_k n_{k,c}. The prototypes travel to each node once per version.
2. Each round: the shared prompt and head are averaged by n_k; each class prompt row by
   n_{k,c}, keeping its previous value when no sampled client holds the class.
3. Every reply is checked (error, keys, shapes, finiteness, counts) before it is used; a
   bad one is dropped with a log line naming the node and the reason. A node's class
   counts must match those it reported in the prototype round: its data does not change
   within a run, and inflated counts would let one node outweigh all others. Below
   ``min_train_nodes`` valid replies the round keeps the previous global state.
4. Held-out clients (their prototype reply says ``held-out = 1``) never train: they stay
   out of the prototypes and of train sampling, and their evaluate replies are
   summarised apart (``held-out-accuracy``, mean, worst).
5. ``checkpoint()`` / ``restore()`` carry everything beyond the global arrays that the
   rest of a run depends on (sampler RNG, prototype version, known counts, held-out
   nodes, partitions, refusals, metrics), and ``start(..., start_round=t)`` continues a
   run at round t.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies import wire
from strategies.aggregation import prototype_means
from strategies.base import PromptFedAvg

CLASS_PROMPT_AGGREGATIONS = ("per-class", "fedavg")


class PEPFedPT(PromptFedAvg):
    """Federated prompt tuning with class prompts mixed by global prototypes.

    What is PEP-FedPT's own; the rest (census, sampling, checks, resume) is
    ``PromptFedAvg``'s.

    Parameters beyond FedAvg's
    --------------------------
    class_prompt_aggregation : "per-class" (default) or "fedavg"
        Average each class prompt by the clients' counts of that class, or plainly by n_k.
    prototype_refresh_every : int (default 0)
        Recompute the prototypes every R rounds (0: only before round 1), so that clients
        that join late contribute.
    seed : int (default 0)
        Seeds client sampling, so that a run can be repeated.
    wire_dtype : "float32" (default) or "float16"
        The float arrays of train and evaluate messages (``PromptFedAvg``).
    """

    counts_only = False  # the census also collects the per-class feature sums
    census_name = "prototype round"

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        class_prompt_aggregation: str = "per-class",
        prototype_refresh_every: int = 0,
        seed: int = 0,
        wire_dtype: str = "float32",
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            seed=seed,
            wire_dtype=wire_dtype,
        )
        if class_prompt_aggregation not in CLASS_PROMPT_AGGREGATIONS:
            raise ValueError(
                f"class_prompt_aggregation = {class_prompt_aggregation!r} is not accepted; "
                f"use one of: {', '.join(CLASS_PROMPT_AGGREGATIONS)}"
            )
        if prototype_refresh_every < 0:
            raise ValueError(f"prototype_refresh_every = {prototype_refresh_every} must be >= 0")
        self.class_prompt_aggregation = class_prompt_aggregation
        self.prototype_refresh_every = prototype_refresh_every

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t├──> Class prompts aggregated: %s", self.class_prompt_aggregation)
        log(INFO, "\t└──> Prototype refresh every: %s rounds", self.prototype_refresh_every)

    # ------------------------------------------------------------------ prototypes
    def has_census(self, arrays: ArrayRecord) -> bool:
        return wire.PROTO_MEAN in arrays

    def prototype_round(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Ask every connected node for per-class feature sums; return state with new μ."""
        return self.census_round(grid, arrays, server_round)

    def census_state(
        self,
        arrays: ArrayRecord,
        sums: Sequence[np.ndarray | None],
        counts: Sequence[np.ndarray],
    ) -> ArrayRecord:
        """The census state (global counts) plus μ_c = Σ_k S_{k,c} / Σ_k n_{k,c}."""
        state = super().census_state(arrays, sums, counts)
        means, _ = prototype_means(sums, counts)  # type: ignore[arg-type]
        state[wire.PROTO_MEAN] = Array(means)
        return state

    def extra_content(self, content: RecordDict, arrays: ArrayRecord, node_id: int) -> None:
        """The prototypes (and global counts), only to nodes that lack this version."""
        if self._node_proto_version.get(node_id) != self._proto_version:
            content[wire.PROTO] = ArrayRecord(
                {key: arrays[key] for key in (wire.PROTO_MEAN, wire.PROTO_COUNT)}
            )
            self._node_proto_version[node_id] = self._proto_version

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        every = self.prototype_refresh_every
        if every and server_round > 1 and (server_round - 1) % every == 0:
            arrays = self.prototype_round(grid, arrays, server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
        """Class prompts per class by n_{k,c} (if so configured); the rest FedAvg by n_k."""
        if wire.is_class_prompt(key) and self.class_prompt_aggregation == "per-class":
            return np.asarray(metrics[wire.CLASS_COUNTS], dtype=np.float64)
        return super().merge_weight(key, metrics)
