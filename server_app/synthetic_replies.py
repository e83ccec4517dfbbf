"""Fake but valid train replies for the strategies: many replies of the ViT-B/16 CIFAR-100
PEP-FedPT state (wire keys and shapes of ``pep_fedpt.state.trainable_arrays``), with class
counts from a Dirichlet label split, as Flower hands them to ``aggregate_train``, and a
strategy that has seen every node's counts.

What it is for: the aggregation tests merge these replies and ``bench/probes/aggregate.py``
times the same ones, so that a speed figure and a correctness check are about one input.
Numpy and Flower only (no torch), like ``server_app/inprocess.py`` beside it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server_app.inprocess import incoming_message
from strategies import wire
from strategies.pep_fedpt import PEPFedPT

# ViT-B/16 on CIFAR-100 with conf/cifar100-dir0.3.toml's prompts.
DIM, DEPTH, NUM_CLASSES = 768, 12, 100
SHARED_LENGTH, CLASS_LENGTH = 10, 1
CCMP_BLOCKS = range(1, DEPTH)  # "2-L", 0-based
TRAIN_PER_CLASS = 400  # 500 CIFAR-100 train images per class, 20% kept as local test


def state_shapes(dim: int = DIM, num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """The trainable keys of the PEP-FedPT state and their shapes."""
    shapes: dict[str, tuple[int, ...]] = {wire.SHARED_PROMPT: (SHARED_LENGTH, dim)}
    for block in CCMP_BLOCKS:
        shapes[wire.class_prompt_key(block)] = (num_classes, CLASS_LENGTH, dim)
    shapes[wire.HEAD_WEIGHT] = (num_classes, dim)
    shapes[wire.HEAD_BIAS] = (num_classes,)
    return shapes


def class_counts(
    num_clients: int, num_classes: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(K, C) train counts: each class split over the clients by Dirichlet(alpha)."""
    shares = [rng.dirichlet([alpha] * num_clients) for _ in range(num_classes)]
    counts = np.stack([rng.multinomial(TRAIN_PER_CLASS, p) for p in shares], axis=1)
    for k in np.flatnonzero(counts.sum(axis=1) == 0):  # every client holds something
        counts[k, rng.integers(num_classes)] = 1
    return counts.astype(np.int64)


def build(
    num_clients: int, seed: int, dim: int = DIM, num_classes: int = NUM_CLASSES
) -> tuple[ArrayRecord, dict[int, list[int]], list[Message]]:
    """The global state, every node's census counts and one train reply per node (node
    ids 1000, 1001, ...), as Flower hands them to ``aggregate_train``."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    rng = np.random.default_rng(seed)
    shapes = state_shapes(dim, num_classes)
    base = {k: rng.standard_normal(s).astype(np.float32) * 0.02 for k, s in shapes.items()}
    counts = class_counts(num_clients, num_classes, 0.3, rng)
    global_state = ArrayRecord({k: Array(v) for k, v in base.items()})
    means = rng.standard_normal((num_classes, dim)).astype(np.float32)
    global_state[wire.PROTO_MEAN] = Array(means)
    global_state[wire.PROTO_COUNT] = Array(counts.sum(axis=0))
    replies: list[Message] = []
    known: dict[int, list[int]] = {}
    for k in range(num_clients):
        node = 1000 + k
        known[node] = counts[k].tolist()
        arrays = ArrayRecord(
            {
                key: Array(value + rng.standard_normal(value.shape).astype(np.float32) * 1e-3)
                for key, value in base.items()
            }
        )
        metrics = MetricRecord(
            {
                wire.NUM_EXAMPLES: int(counts[k].sum()),
                wire.CLASS_COUNTS: counts[k].tolist(),
                wire.TRAIN_LOSS: float(rng.uniform(1.0, 4.0)),
            }
        )
        incoming = incoming_message(
            RecordDict(), MessageType.TRAIN, dst_node_id=node, message_id=f"m{node}"
        )
        replies.append(
            Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=incoming)
        )
    return global_state, known, replies


def pep_strategy(global_state: ArrayRecord, known: dict[int, list[int]]) -> PEPFedPT:
    """A ``PEPFedPT`` that holds ``global_state`` and has verified every node's counts, as
    after its prototype round."""
    strategy = PEPFedPT(min_train_nodes=2)
    strategy._global = global_state
    strategy._node_counts = dict(known)
    return strategy
