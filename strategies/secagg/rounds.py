"""The rounds under SecAgg+: the prototype round (``secure_prototypes``) and a training round
(``secure_train`` on the server, ``secure_update`` on the node), each one secure sum."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, adaptive_clip_inputs_inplace

from strategies import wire
from strategies.records import PartitionEntry
from strategies.secagg.params import (
    SECURE_KEYS,
    SECURE_PER_CLASS,
    SUM_SCALE,
    TASK_TRAIN,
    Exchange,
    SecAggParams,
    SecureSum,
    read_ints,
    read_number,
)
from strategies.secagg.server import SecAggServer

# ---------------------------------------------------------------- the prototype round


@dataclass
class SecurePrototypes:
    """A secure prototype round's outcome, in the shapes ``prototype_round`` keeps."""

    sums: np.ndarray | None  # Σ_k S_{k,c} (C, D) float64; None for a counts-only round
    counts: np.ndarray  # Σ_k n_{k,c} (C,) int64, exact
    contributors: list[int]
    held_out: set[int]
    # partition id -> (index of the node in the sorted node list, its entry)
    partitions: dict[int, tuple[int, PartitionEntry]]
    result: SecureSum


def secure_prototypes(
    params: SecAggParams,
    node_ids: Iterable[int],
    num_classes: int,
    dim: int | None,
    task: ConfigRecord,
    exchange: Exchange,
) -> SecurePrototypes:
    """The prototype round under SecAgg+: the server learns Σ_k n_{k,c} and Σ_k S_{k,c}
    (``dim`` None: counts only) over the training nodes, and each node's partition id and
    held-out flag (from setup), never one node's counts or sums."""
    nodes = sorted(set(node_ids))
    task = ConfigRecord(dict(task))
    task[SUM_SCALE] = params.max_count
    floats = 0 if dim is None else num_classes * dim

    def trains(node: int, facts: MetricRecord) -> bool:
        return not facts.get(wire.HELD_OUT, 0)

    server = SecAggServer(params, num_classes, floats, task, exchange, select=trains)
    result = server.run(nodes)
    index = {node: i for i, node in enumerate(nodes)}
    held_out = {node for node, facts in result.facts.items() if facts.get(wire.HELD_OUT, 0)}
    partitions: dict[int, tuple[int, PartitionEntry]] = {}
    for node in sorted(set(result.contributors) | held_out):
        pid = result.facts[node].get(wire.PARTITION_ID)
        if isinstance(pid, int) and not isinstance(pid, bool) and pid >= 0:
            # Per-node counts stay unknown under secure aggregation: none is kept.
            entry: PartitionEntry = {
                "node-id": node,
                "held-out": node in held_out,
                "class-counts": [],
            }
            partitions[pid] = (index[node], entry)
    sums = None if dim is None else (result.floats * params.max_count).reshape(num_classes, dim)
    return SecurePrototypes(sums, result.ints, result.contributors, held_out, partitions, result)


# ---------------------------------------------------------------- the training round


def secure_update(
    config: ConfigRecord,
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, object],
    reference: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """A node's training round as a vector (the node's side): integers n_k and n_{k,c};
    floats n_k loss, then per key n_k (θ - θ_sent) (or row c times n_{k,c}), all over
    sum-scale (max_count). Updates, not values: they are small, so a tight clipping range
    (a bound on one node's change of one value) keeps the quantisation step small.

    Under client-side DP (a clipping norm in the config) the update of all keys together
    is first clipped to that norm, as Flower's ``adaptiveclipping_mod`` clips a plain
    reply, and the norm bit (1: clipped) ends the integers, so the server learns only how
    many nodes were clipped."""
    n = metrics[wire.NUM_EXAMPLES]
    counts = np.asarray(metrics[wire.CLASS_COUNTS], dtype=np.int64)
    if not isinstance(n, int) or int(counts.sum()) != n:
        raise ValueError(f"{wire.NUM_EXAMPLES} = {n!r} is not the sum of the class counts")
    scale = read_number(config[SUM_SCALE], SUM_SCALE)
    loss = read_number(metrics.get(wire.TRAIN_LOSS, 0.0), wire.TRAIN_LOSS)
    parts = [np.array([n * loss / scale])]
    keys = config[SECURE_KEYS]
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ValueError(f"{SECURE_KEYS} is not a list of key names")
    updates = {
        str(key): np.asarray(arrays[str(key)], dtype=np.float64)
        - np.asarray(reference[str(key)], dtype=np.float64)
        for key in keys
    }
    ints = [n, *counts.tolist()]
    if KEY_CLIPPING_NORM in config:
        bound = read_number(config[KEY_CLIPPING_NORM], KEY_CLIPPING_NORM)
        ints.append(int(adaptive_clip_inputs_inplace(list(updates.values()), bound)))
    for key, per_class in zip(map(str, keys), read_ints(config, SECURE_PER_CLASS), strict=True):
        value = updates[key]
        if per_class:
            if value.shape[:1] != counts.shape:
                raise ValueError(f"{key} has {value.shape[:1]} rows, not one per class")
            weight = counts.reshape(-1, *([1] * (value.ndim - 1))).astype(np.float64)
            parts.append((weight * value / scale).reshape(-1))
        else:
            parts.append((n * value / scale).reshape(-1))
    return np.asarray(ints, dtype=np.int64), np.concatenate(parts)


@dataclass
class SecureUpdate:
    """A secure training round's outcome: the new values of the trainable keys."""

    arrays: dict[str, np.ndarray]
    num_examples: int
    train_loss: float
    result: SecureSum
    num_classes: int  # result.ints holds n, then this many class totals
    clipped: int | None = None  # under client-side DP: how many updates were clipped


def secure_train(
    params: SecAggParams,
    messages: list[Message],
    previous: Mapping[str, np.ndarray],
    per_class: Mapping[str, bool],
    num_classes: int,
    exchange: Exchange,
    clipping_norm: float | None = None,
) -> SecureUpdate:
    """A training round under SecAgg+ (the server's side): each train message goes out
    with the masked-vector request; the server learns Σ n_k, Σ n_{k,c}, Σ n_k loss and the
    weighted sums of the updates only, and divides: per key θ + Σ n_k Δ_k / Σ n_k, or per
    class row P_c + Σ n_{k,c} Δ_{k,c} / Σ n_{k,c} (θ, P: the state as sent; rows no node
    holds keep ``previous``). Every node gets the same arrays (``node_arrays`` is not
    overridden under secure aggregation).

    ``clipping_norm``: client-side DP's bound, which every node clips its update to before
    it is weighted and masked; the sum then also counts the nodes that were clipped."""
    keys = list(per_class)
    config = ConfigRecord(dict(messages[0].content.config_records[wire.CONFIG]))
    config[wire.CFG_TASK] = TASK_TRAIN
    config[SECURE_KEYS] = keys
    config[SECURE_PER_CLASS] = [int(per_class[key]) for key in keys]
    config[SUM_SCALE] = params.max_count
    ints = 1 + num_classes
    if clipping_norm is not None:
        config[KEY_CLIPPING_NORM] = float(clipping_norm)
        ints += 1
    payload = {m.metadata.dst_node_id: m.content for m in messages}
    floats = 1 + sum(int(previous[key].size) for key in keys)
    params = dataclasses.replace(params, clipping_range=params.update_clipping_range)
    server = SecAggServer(params, ints, floats, config, exchange, payload=payload)
    result = server.run(payload)
    n, counts = int(result.ints[0]), result.ints[1 : 1 + num_classes]
    totals = result.floats * params.max_count
    # The arrays as they went out (in the wire dtype): what each node's update is from.
    sent = messages[0].content.array_records[wire.ARRAYS]
    arrays: dict[str, np.ndarray] = {}
    offset = 1
    for key in keys:
        before = np.asarray(previous[key])
        base = np.asarray(sent[key].numpy(), dtype=np.float64)
        part = totals[offset : offset + before.size].reshape(before.shape)
        offset += before.size
        value = np.array(before, dtype=np.float64)
        if per_class[key]:
            held = counts > 0
            rows = counts[held].reshape(-1, *([1] * (before.ndim - 1)))
            value[held] = base[held] + part[held] / rows
        elif n > 0:
            value = base + part / n
        arrays[key] = value.astype(np.float32)
    loss = float(totals[0] / n) if n > 0 else float("nan")
    clipped = None if clipping_norm is None else int(result.ints[-1])
    return SecureUpdate(arrays, n, loss, result, num_classes, clipped)
