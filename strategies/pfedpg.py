"""PFedPG: pFedPG's server (Yang et al., ICCV 2023) on the ``PromptFedAvg`` base.

The server learns a prompt generator (``strategies.prompt_generator``) and one descriptor
per training client; there is no global prompt. Per round:

1. configure_train: each sampled node gets the prompt generated from its own descriptor
   (prompts only: its classification head stays on the node).
2. The node trains prompt and head locally and replies with its trained prompt P̃ (and
   head); the server takes ΔP = P̃ − P_sent against the prompt it sent that node.
3. aggregate_train: one pFedHN-style step, φ ← φ + lr · mean_k J_kᵀ ΔP_k, and every
   replying client's descriptor by its own ΔP. Replies pass the base class's checks first;
   a dropped reply (error, NaN, bad shape or counts, a node without a descriptor, a
   partition id other than the one its prompt was made for) never reaches the generator,
   and an update that would leave the generator non-finite is refused whole.
4. Evaluation: each node gets its generated prompt and evaluates it with its own head.

Clients are identified by the partition id they report (prototype round, evaluate and
train replies), not by node id, so descriptors survive a SuperNode that reconnects under a
new node id. A node with no descriptor (held out, or never seen in the prototype round)
gets the prompt
of the mean descriptor and the n_k-weighted mean of the heads the clients uploaded; that
pair is also the state's ``prompt.*`` / ``head.*``, which the server's central evaluation
uses. Generator parameters and descriptors are arrays of the state (``pfedpg.*``), so the
checkpoint carries them and a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
)
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies import prompt_generator as gen
from strategies import wire
from strategies.aggregation import RunningMean
from strategies.base import PromptFedAvg
from strategies.tally import PrototypeTally
from strategies.validation import record_arrays, reply_arrays

PREFIX = "pfedpg."
DESCRIPTOR_PREFIX = "pfedpg.descriptor."
HEAD_KEYS = (wire.HEAD_WEIGHT, wire.HEAD_BIAS)


def descriptor_key(partition_id: int) -> str:
    return f"{DESCRIPTOR_PREFIX}{partition_id}"


def prompt_keys(state: Mapping[str, Any]) -> list[str]:
    """The (M, D) prompt arrays the generator makes, in the order it stacks their tokens."""
    return sorted(k for k in state if k.startswith("prompt.") and len(state[k].shape) == 2)


class PFedPG(PromptFedAvg):
    """Client-specific prompts from a server-side generator (pFedPG).

    Parameters beyond ``PromptFedAvg``'s (which pass through ``**kwargs``)
    ---------------------------------------------------------------------
    generator_lr : float (default 1.0)
        Step size of the generator and descriptor update (plain gradient descent).
    descriptor_dim : int (default 64)
        d, the width of a client descriptor and of the generator's attention.
    """

    kept_state = "the generator"

    def __init__(
        self, *, generator_lr: float = 1.0, descriptor_dim: int = 64, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not (np.isfinite(generator_lr) and generator_lr > 0):
            raise ValueError(f"generator_lr = {generator_lr!r} must be a finite number > 0")
        if descriptor_dim < 1:
            raise ValueError(f"descriptor_dim = {descriptor_dim!r} must be >= 1")
        self.generator_lr = float(generator_lr)
        self.descriptor_dim = int(descriptor_dim)
        self.node_partitions: dict[int, int] = {}  # node id -> partition id with a descriptor
        self._sent: dict[int, tuple[int, np.ndarray]] = {}  # node -> (pid, prompt) this round
        # The global state of the messages being built, as numpy (once per phase).
        self._phase_state: tuple[ArrayRecord | None, dict[str, np.ndarray]] = (None, {})

    # ------------------------------------------------------------------ state
    def checkpoint(self) -> dict[str, Any]:
        state = super().checkpoint()
        state["node-partitions"] = {str(n): p for n, p in self.node_partitions.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        pairs = state.get("node-partitions", {}).items()
        self.node_partitions = {int(n): int(p) for n, p in pairs}

    def prototype_state(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """The base state plus the generator (B = the initial prompts) and one descriptor
        per training partition the prototype round found."""
        state = super().prototype_state(arrays, tally)
        keys = prompt_keys(state)
        if not keys:
            raise ValueError("pFedPG needs at least one (M, D) prompt array in the state")
        base = np.concatenate([state[k].numpy() for k in keys], axis=0)
        params = gen.init_params(base, self.descriptor_dim, self.seed)
        for name, value in params.arrays().items():
            state[PREFIX + name] = Array(value)
        for pid, entry in self.partitions.items():
            if entry["held-out"]:
                continue
            self.node_partitions[int(entry["node-id"])] = pid
            if descriptor_key(pid) not in state:
                state[descriptor_key(pid)] = Array(
                    gen.init_descriptor(self.descriptor_dim, self.seed, pid)
                )
        if not self.descriptors(record_arrays(state)):
            raise RuntimeError(
                f"prototype round: no training node reported its {wire.PARTITION_ID!r}; "
                "pFedPG keeps one descriptor per partition and needs it to tell clients apart"
            )
        return state

    def has_prototypes(self, arrays: ArrayRecord) -> bool:
        return super().has_prototypes(arrays) and PREFIX + gen.PARAM_NAMES[0] in arrays

    def server_only(self, key: str) -> bool:
        """The generator and descriptors (``pfedpg.*``) never leave the server."""
        return super().server_only(key) or key.startswith(PREFIX)

    # ------------------------------------------------------------------ generator views
    @staticmethod
    def generator(state: Mapping[str, np.ndarray]) -> gen.GeneratorParams:
        return gen.GeneratorParams.from_arrays({n: state[PREFIX + n] for n in gen.PARAM_NAMES})

    @staticmethod
    def descriptors(state: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
        """Partition id -> descriptor, from the state's ``pfedpg.descriptor.<pid>``."""
        return {
            int(k.removeprefix(DESCRIPTOR_PREFIX)): np.asarray(v)
            for k, v in state.items()
            if k.startswith(DESCRIPTOR_PREFIX)
        }

    def prompt_for(self, state: Mapping[str, np.ndarray], node_id: int) -> tuple[int, np.ndarray]:
        """(partition id, generated prompt) of a node; (-1, mean-descriptor prompt) for a
        node without a descriptor."""
        descriptors = self.descriptors(state)
        pid = self.node_partitions.get(node_id, -1)
        descriptor = descriptors.get(pid)
        if descriptor is None:
            pid, descriptor = -1, gen.mean_descriptor(descriptors)
        return pid, gen.forward(self.generator(state), descriptor)

    @staticmethod
    def split(state: Mapping[str, Any], prompt: np.ndarray) -> dict[str, np.ndarray]:
        """The stacked (T, D) prompt back into the state's prompt arrays."""
        out, start = {}, 0
        for key in prompt_keys(state):
            length = state[key].shape[0]
            out[key] = prompt[start : start + length]
            start += length
        return out

    def dp_refusal(self, client_side: bool) -> str | None:
        return (
            "each node trains the prompt generated for it, not the arrays the wrapper clips "
            "against, and the replies update the server-side generator (pfedpg.*), which "
            "the wrapper never noises; pFedPG has no differential privacy here"
        )

    # ------------------------------------------------------------------ messages
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = {}  # the prompts of this round's train messages
        return super().configure_train(server_round, arrays, config, grid)

    def node_arrays(
        self, arrays: ArrayRecord, trainable: ArrayRecord, node_id: int, message_type: str
    ) -> ArrayRecord:
        """The prompt generated for this node; evaluate messages add the mean head (for a
        node that has none of its own yet). Train messages carry no head: the node keeps
        its own."""
        if self._phase_state[0] is not arrays:
            self._phase_state = (arrays, record_arrays(arrays))
        state = self._phase_state[1]
        pid, prompt = self.prompt_for(state, node_id)
        record = ArrayRecord({k: Array(v) for k, v in self.split(state, prompt).items()})
        if message_type == MessageType.TRAIN:
            self._sent[node_id] = (pid, prompt)
        else:
            for key in HEAD_KEYS:
                record[key] = arrays[key]
        return record

    # ------------------------------------------------------------------ train
    def check_train_metrics(self, metrics: MetricRecord, node: int) -> str | None:
        """The reply must come from a node whose prompt was made from a descriptor, and
        must not name another partition than that descriptor's."""
        pid = self._sent.get(node, (-1, None))[0]
        if pid < 0:
            return (
                f"node {node} has no descriptor (not a training partition in the prototype "
                "round); its prompt was the mean descriptor's, so its update is not used"
            )
        reported = metrics.get(wire.PARTITION_ID, pid)
        if reported != pid:
            return f"{wire.PARTITION_ID} = {reported!r}, but the prompt was made for {pid}"
        return None

    def aggregate_valid(
        self,
        server_round: int,
        valid: list[Message],
        metrics: MetricRecord,
        running: Mapping[str, RunningMean],
    ) -> ArrayRecord | None:
        """One generator step from the valid replies' ΔP (None: the update is not finite);
        the heads by n_k (their running sums); the state's prompt: the mean descriptor's."""
        whole = self.global_arrays
        assert whole is not None  # aggregate_train checked it
        previous = record_arrays(whole)
        keys = prompt_keys(previous)
        deltas: dict[int, np.ndarray] = {}
        for msg in valid:
            pid, sent = self._sent[self.sender(msg)]
            trained = np.concatenate([reply_arrays(msg.content)[k].numpy() for k in keys])
            deltas[pid] = trained.astype(np.float64) - sent
        params, descriptors = gen.round_update(
            self.generator(previous), self.descriptors(previous), deltas, self.generator_lr
        )
        params = gen.GeneratorParams.from_arrays(params.arrays())  # as stored: float32
        if not (params.is_finite() and all(np.all(np.isfinite(d)) for d in descriptors.values())):
            log(
                WARNING,
                "round %d: the generator update is not finite; the generator stays as it was",
                server_round,
            )
            return None

        state = ArrayRecord({key: whole[key] for key in whole})
        for name, value in params.arrays().items():
            state[PREFIX + name] = Array(value)
        for pid, descriptor in descriptors.items():
            state[descriptor_key(pid)] = Array(descriptor)
        for key in HEAD_KEYS:
            state[key] = Array(running[key].result())
        fallback = gen.forward(params, gen.mean_descriptor(descriptors))
        for key, value in self.split(previous, fallback).items():
            state[key] = Array(value)
        log(
            INFO,
            "round %d: generator updated from %d clients (partitions %s)",
            server_round,
            len(deltas),
            sorted(deltas),
        )
        return state

    # ------------------------------------------------------------------ evaluate
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The base summary; and a node that names a partition with a descriptor is that
        partition's from now on (a SuperNode that came back under a new node id)."""
        replies = list(replies)
        record = super().aggregate_evaluate(server_round, replies)
        whole = self.global_arrays
        if whole is None:
            return record
        known = set(self.descriptors(record_arrays(whole)))
        for msg in replies:
            if msg.has_error() or not isinstance(msg.content.get(wire.METRICS), MetricRecord):
                continue
            metrics = msg.content[wire.METRICS]
            pid = metrics.get(wire.PARTITION_ID)
            if isinstance(pid, int) and not metrics.get(wire.HELD_OUT, 0) and pid in known:
                node = self.sender(msg)
                for other in [n for n, p in self.node_partitions.items() if p == pid]:
                    del self.node_partitions[other]  # one node per partition: the latest
                self.node_partitions[node] = pid
        return record
