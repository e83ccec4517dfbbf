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

from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.supercore import log

from strategies import wire
from strategies.base import PromptFedAvg
from strategies.options import CLASS_PROMPT_AGGREGATIONS
from strategies.tally import PrototypeTally


class PEPFedPT(PromptFedAvg):
    """Federated prompt tuning with class prompts mixed by global prototypes.

    What is PEP-FedPT's own; the rest (prototype round, sampling, checks, resume) is
    ``PromptFedAvg``'s.

    Parameters beyond ``PromptFedAvg``'s (which pass through ``**kwargs``: fractions,
    minimum node counts, ``seed``)
    ---------------------------------------------------------------------------------
    class_prompt_aggregation : "per-class" (default) or "fedavg"
        Average each class prompt by the clients' counts of that class, or plainly by n_k.
    prototype_refresh_every : int (default 0)
        Recompute the prototypes every R rounds (0: only before round 1), so that clients
        that join late contribute.
    """

    counts_only = False  # the prototype round also collects the per-class feature sums

    def __init__(
        self,
        *,
        class_prompt_aggregation: str = "per-class",
        prototype_refresh_every: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
    def has_prototypes(self, arrays: ArrayRecord) -> bool:
        return wire.PROTO_MEAN in arrays

    def prototype_state(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """The base state (global counts) plus μ_c = Σ_k S_{k,c} / Σ_k n_{k,c}."""
        state = super().prototype_state(arrays, tally)
        means, _ = tally.means()
        state[wire.PROTO_MEAN] = Array(means)
        return state

    def fold_prototypes(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """Late nodes' feature sums folded into μ (and their counts into the global ones):
        the earlier μ_c n_c added exactly to the late nodes' tally."""
        tally.add_means(arrays[wire.PROTO_MEAN].numpy(), arrays[wire.PROTO_COUNT].numpy())
        means, total = tally.means()
        state = ArrayRecord({key: arrays[key] for key in arrays})
        state[wire.PROTO_MEAN] = Array(means)
        state[wire.PROTO_COUNT] = Array(total)
        return state

    def extra_content(self, content: RecordDict, arrays: ArrayRecord, node_id: int) -> None:
        """The prototypes (and global counts), only to nodes that lack this version."""
        if self.prototypes_to_send(node_id):
            content[wire.PROTO] = ArrayRecord(
                {key: arrays[key] for key in (wire.PROTO_MEAN, wire.PROTO_COUNT)}
            )

    # ------------------------------------------------------------------ train
    def refreshes_prototypes(self, server_round: int) -> bool:
        """Every ``prototype_refresh_every`` rounds after round 1 (0: never)."""
        every = self.prototype_refresh_every
        return bool(every and server_round > 1 and (server_round - 1) % every == 0)

    def secure_per_class(self, key: str) -> bool:
        """Under secure aggregation too, class prompts per class by n_{k,c}."""
        return wire.is_class_prompt(key) and self.class_prompt_aggregation == "per-class"

    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
        """Class prompts per class by n_{k,c} (if so configured); the rest FedAvg by n_k."""
        if wire.is_class_prompt(key) and self.class_prompt_aggregation == "per-class":
            return np.asarray(metrics[wire.CLASS_COUNTS], dtype=np.float64)
        return super().merge_weight(key, metrics)
