"""SecAgg+ driven from a Message-API strategy: the server learns the sum of the nodes'
vectors, never one node's.

Flower's SecAgg+ (``SecAggPlusWorkflow``, ``secaggplus_mod``) runs only inside a
``LegacyContext``. This module drives the same four stages (setup, share keys, collect
masked vectors, unmask) over any ``Grid`` with ``query.secagg`` messages, using Flower's
own primitives (Shamir sharing, ECDH key agreement, Fernet encryption, its mask generator
and quantiser); ``client_app/secagg.py`` answers them.

What is summed: per node, a vector of ``ints`` integers in [0, max_count] (summed exactly)
followed by ``floats`` floats, clipped to [-clipping_range, clipping_range] and
stochastically quantised to ``bits`` bits (each node's error below one step,
2 clipping_range / 2^bits, per element; zero in expectation).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING

import numpy as np
from flwr.app import (
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore import log
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from strategies import wire
from strategies.options import SECURE_AGGREGATIONS as MODES
from strategies.records import PartitionEntry

ACTION = "secagg"
MESSAGE_TYPE = f"{MessageType.QUERY}.{ACTION}"
# Records of a secagg message: the protocol's fields (Flower's ``Key`` names) in
# ConfigRecord ``secagg``, the masked vector in ArrayRecord ``secagg-vector``; the task the
# vector is computed for in ``config``, the node's public facts in ``metrics``.
RECORD = "secagg"
VECTOR_RECORD = "secagg-vector"
MASKED = "masked"
INTS = "ints"  # setup: how many integers lead the vector
FLOATS = "floats"  # setup: how many floats follow them

# Masks and sums live modulo 2^62: int64 additions wrap modulo 2^64, a multiple of it, so
# sums of any number of masked vectors stay right after the final mask.
MOD_BITS = 62
MAX_BITS = 30  # Flower's stochastic rounding holds values in int32


class SecAggError(RuntimeError):
    """The protocol cannot finish: too few nodes left to reconstruct the sum safely."""


@dataclass(frozen=True)
class SecAggParams:
    """SecAgg+'s parameters.

    threshold : shares needed to reconstruct a node's secrets (>= 2): the protocol aborts
        once fewer nodes than this are left, and a coalition of fewer than this many
        nodes (the server included) cannot unmask one node's vector.
    clipping_range : every float a node contributes is clipped to [-c, c].
    bits : quantisation width (1..30): floats map to integers in [0, 2^bits].
    max_count : the largest integer a node may contribute (counts above it are refused
        on the node).
    num_shares : neighbours per node, itself included (SecAgg+'s sparse graph, odd);
        0: every node is every node's neighbour (SecAgg).
    update_clipping_range : the clipping range of a training round, whose floats are a
        node's changes of each value (small, so a tight range keeps the step small);
        ``clipping_range`` is the prototype round's, a bound on one feature value.
    """

    threshold: int = 2
    clipping_range: float = 64.0
    bits: int = 24
    max_count: int = 100_000
    num_shares: int = 0
    update_clipping_range: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int) or self.threshold < 2:
            raise ValueError(
                f"secagg threshold = {self.threshold!r} is not accepted; use an integer >= 2 "
                "(1 would let any single node's shares reveal its secrets)"
            )
        if not (isinstance(self.clipping_range, int | float) and 0 < self.clipping_range < 1e30):
            raise ValueError(
                f"secagg clipping_range = {self.clipping_range!r} is not accepted; use a "
                "positive finite number"
            )
        if not (
            isinstance(self.update_clipping_range, int | float)
            and 0 < self.update_clipping_range < 1e30
        ):
            raise ValueError(
                f"secagg update_clipping_range = {self.update_clipping_range!r} is not "
                "accepted; use a positive finite number"
            )
        if not isinstance(self.bits, int) or not 1 <= self.bits <= MAX_BITS:
            raise ValueError(
                f"secagg bits = {self.bits!r} is not accepted; use an integer in 1..{MAX_BITS}"
            )
        if not isinstance(self.max_count, int) or not 1 <= self.max_count < 1 << 40:
            raise ValueError(
                f"secagg max_count = {self.max_count!r} is not accepted; use an integer in "
                "1..2^40 - 1"
            )
        ok_shares = self.num_shares == 0 or (self.num_shares >= 3 and self.num_shares % 2 == 1)
        if not isinstance(self.num_shares, int) or not ok_shares:
            raise ValueError(
                f"secagg num_shares = {self.num_shares!r} is not accepted; use 0 (every node) "
                "or an odd integer >= 3"
            )
        if self.num_shares and self.threshold > self.num_shares:
            raise ValueError(
                f"secagg threshold = {self.threshold} exceeds num_shares = {self.num_shares}"
            )

    @property
    def target_range(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        """One quantisation step: each node's largest rounding error per float."""
        return 2 * self.clipping_range / self.target_range

    def check_capacity(self, nodes: int) -> None:
        """ValueError unless the sum of ``nodes`` vectors fits below the modulus."""
        if nodes * max(self.target_range, self.max_count) >= 1 << MOD_BITS:
            raise ValueError(
                f"{nodes} nodes of up to {max(self.target_range, self.max_count)} per element "
                f"overflow the modulus 2^{MOD_BITS}; lower bits or max_count"
            )


def secure_aggregation(mode: str, params: SecAggParams | None) -> SecAggParams | None:
    """The strategy option: None for ``"off"``, the parameters (default ones if None) for
    ``"secaggplus"``; anything else refused naming what is accepted."""
    if mode not in MODES:
        raise ValueError(
            f"secure_aggregation = {mode!r} is not accepted; use one of: {', '.join(MODES)}"
        )
    if mode == "off":
        if params is not None:
            raise ValueError("secagg parameters given but secure_aggregation = 'off'")
        return None
    return params if params is not None else SecAggParams()


@dataclass
class SecureSum:
    """What the server learns: the sum of the contributors' vectors, and who they are."""

    ints: np.ndarray  # int64, exact
    floats: np.ndarray  # float64, within len(contributors) * step per element
    contributors: list[int]
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (node, stage and why)
    facts: dict[int, MetricRecord] = field(default_factory=dict)  # setup replies' metrics
    key_bytes: int = 0  # keys, ciphertexts and shares (ConfigRecord bytes), both ways
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, wall time


# ``exchange(messages, stage)``: push the messages, return the replies that came.
Exchange = Callable[[list[Message], str], list[Message]]


class SecAggServer:
    """One secure sum over a set of nodes (``run``).

    ``select(node, metrics)``: whether a node that answered setup takes part (its setup
    reply's ``metrics``: e.g. a held-out node stays out). ``task``: the ConfigRecord every
    node computes its vector from (sent at setup and with the masked-vector request).
    ``payload``: per node, records its masked-vector request also carries (a train
    message's arrays and prototypes), the task's config taking the place of theirs.
    """

    def __init__(
        self,
        params: SecAggParams,
        ints: int,
        floats: int,
        task: ConfigRecord,
        exchange: Exchange,
        select: Callable[[int, MetricRecord], bool] | None = None,
        rng: random.Random | None = None,
        payload: Mapping[int, RecordDict] | None = None,
    ) -> None:
        if ints < 0 or floats < 0 or ints + floats == 0:
            raise ValueError(f"a vector of {ints} ints and {floats} floats: need at least one")
        self.params = params
        self.ints, self.floats = int(ints), int(floats)
        self.task = task
        self.exchange = exchange
        self.select = select or (lambda node, metrics: True)
        self.rng = rng or random.Random()
        self.payload = dict(payload or {})
        self.mod = 1 << MOD_BITS
        self._result: SecureSum | None = None

    # ------------------------------------------------------------------ messages
    def _send(self, stage: str, per_node: Mapping[int, RecordDict]) -> dict[int, RecordDict | str]:
        """One stage's messages; per node its reply's content, or why it has none."""
        messages = [
            Message(content=content, message_type=MESSAGE_TYPE, dst_node_id=node)
            for node, content in per_node.items()
        ]
        assert self._result is not None
        self._result.key_bytes += sum(_config_bytes(m.content) for m in messages)
        start = time.monotonic()
        replies = self.exchange(messages, stage)
        self._result.seconds[stage] = time.monotonic() - start
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answers: dict[int, RecordDict | str] = {node: "no reply" for node in per_node}
        for reply in replies:
            node = node_of.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            if reply.has_error():
                answers[node] = f"error reply: {reply.error.reason}"
            else:
                self._result.key_bytes += _config_bytes(reply.content)
                answers[node] = reply.content
        return answers

    def _lost(self, stage: str, answers: Mapping[int, RecordDict | str]) -> list[int]:
        """Nodes without a usable reply, each recorded and logged."""
        assert self._result is not None
        lost = [node for node, answer in answers.items() if isinstance(answer, str)]
        for node in lost:
            why = f"secagg {stage}: {answers[node]}"
            self._result.dropped.append((node, why))
            log(WARNING, "secure aggregation: node %d lost at %s", node, why)
        return lost

    def _protocol(
        self, stage: str, extra: Mapping[str, object], node: int | None = None
    ) -> RecordDict:
        record = ConfigRecord({Key.STAGE: stage, **extra})  # type: ignore[dict-item]  # extra: ConfigRecord values
        content = RecordDict(dict(self.payload.get(node, RecordDict()) if node is not None else {}))
        content[RECORD] = record
        content[wire.CONFIG] = self.task
        return content

    def _need(self, stage: str, alive: Iterable[int]) -> None:
        alive = list(alive)
        if len(alive) < self.params.threshold:
            message = (
                f"secure aggregation aborted at {stage}: {len(alive)} node(s) left, fewer than "
                f"the threshold {self.params.threshold}; no sum is revealed"
            )
            log(ERROR, message)
            raise SecAggError(message)

    # ------------------------------------------------------------------ stages
    def run(self, nodes: Iterable[int]) -> SecureSum:
        """The four stages over ``nodes``; SecAggError if too few nodes remain."""
        nodes = sorted(set(nodes))
        p = self.params
        p.check_capacity(len(nodes))
        size = self.ints + self.floats
        self._result = result = SecureSum(
            np.zeros(self.ints, np.int64), np.zeros(self.floats), contributors=[]
        )
        share_num = len(nodes) if not p.num_shares else min(p.num_shares, len(nodes))
        if share_num < p.threshold:
            raise SecAggError(
                f"secure aggregation needs at least threshold = {p.threshold} nodes, "
                f"got {len(nodes)}"
            )
        setup = {
            Key.SAMPLE_NUMBER: len(nodes),
            Key.SHARE_NUMBER: share_num,
            Key.THRESHOLD: p.threshold,
            Key.CLIPPING_RANGE: float(p.clipping_range),
            Key.TARGET_RANGE: p.target_range,
            Key.MOD_RANGE: self.mod,
            Key.MAX_WEIGHT: float(p.max_count),
            INTS: self.ints,
            FLOATS: self.floats,
        }
        log(INFO, "secure aggregation: %d nodes, threshold %d", len(nodes), p.threshold)

        # Stage 0: public keys, and each node's public facts (held out or not).
        answers = self._send(Stage.SETUP, {n: self._protocol(Stage.SETUP, setup) for n in nodes})
        self._lost(Stage.SETUP, answers)
        keys: dict[int, list[bytes]] = {}
        for node, content in answers.items():
            if isinstance(content, str):
                continue
            facts = content.metric_records.get(wire.METRICS, MetricRecord())
            result.facts[node] = facts
            if not self.select(node, facts):
                continue
            record = content.config_records[RECORD]
            keys[node] = [_bytes(record, Key.PUBLIC_KEY_1), _bytes(record, Key.PUBLIC_KEY_2)]
        self._need(Stage.SETUP, keys)
        order = sorted(keys)
        self.rng.shuffle(order)
        neighbours = _neighbours(order, share_num)

        # Stage 1: every node gets its neighbours' public keys, returns encrypted shares.
        answers = self._send(
            Stage.SHARE_KEYS,
            {
                n: self._protocol(
                    Stage.SHARE_KEYS, {str(m): keys[m] for m in sorted(neighbours[n])}
                )
                for n in sorted(keys)
            },
        )
        self._lost(Stage.SHARE_KEYS, answers)
        shared = sorted(n for n, a in answers.items() if not isinstance(a, str))
        self._need(Stage.SHARE_KEYS, shared)
        forward: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in shared}
        for src in shared:
            record = _reply_record(answers[src])
            for dst, text in zip(
                _ints(record, Key.DESTINATION_LIST),
                _bytes_list(record, Key.CIPHERTEXT_LIST),
                strict=True,
            ):
                if dst in forward and dst in neighbours[src]:
                    forward[dst][0].append(src)
                    forward[dst][1].append(text)

        # Stage 2: each node's shares from its neighbours; back comes its masked vector.
        answers = self._send(
            Stage.COLLECT_MASKED_VECTORS,
            {
                n: self._protocol(
                    Stage.COLLECT_MASKED_VECTORS,
                    {Key.SOURCE_LIST: forward[n][0], Key.CIPHERTEXT_LIST: forward[n][1]},
                    n,
                )
                for n in shared
            },
        )
        total = np.zeros(size, dtype=np.int64)
        for node, content in answers.items():
            if isinstance(content, str):
                continue
            reason = _masked_problem(content, size, self.mod)
            if reason is not None:
                answers[node] = reason
                continue
            total += content.array_records[VECTOR_RECORD][MASKED].numpy()
        self._lost(Stage.COLLECT_MASKED_VECTORS, answers)
        masked = sorted(n for n, a in answers.items() if not isinstance(a, str))
        dead = sorted(set(shared) - set(masked))
        self._need(Stage.COLLECT_MASKED_VECTORS, masked)

        # Stage 3: shares of the contributors' mask seeds and of the lost nodes' keys.
        answers = self._send(
            Stage.UNMASK,
            {
                n: self._protocol(
                    Stage.UNMASK,
                    {
                        Key.ACTIVE_NODE_ID_LIST: sorted(neighbours[n] & set(masked)),
                        Key.DEAD_NODE_ID_LIST: sorted(neighbours[n] & set(dead)),
                    },
                )
                for n in masked
            },
        )
        self._lost(Stage.UNMASK, answers)
        shares: dict[int, list[bytes]] = {n: [] for n in shared}
        for content in answers.values():
            if isinstance(content, str):
                continue
            record = content.config_records[RECORD]
            for owner, share in zip(
                _ints(record, Key.NODE_ID_LIST), _bytes_list(record, Key.SHARE_LIST), strict=True
            ):
                if owner in shares:
                    shares[owner].append(share)
        short = [n for n in shared if len(shares[n]) < p.threshold]
        if short:
            message = (
                f"secure aggregation aborted at {Stage.UNMASK}: {len(shares[short[0]])} "
                f"share(s) of node {short[0]}'s secrets came back, fewer than the threshold "
                f"{p.threshold}; no sum is revealed"
            )
            log(ERROR, message)
            raise SecAggError(message)
        shape: list[tuple[int, ...]] = [(size,)]
        # Any threshold shares rebuild a secret; Flower's combine_shares costs the square
        # of the shares it gets (0.38 s for 40, 1.7 s for 100), so it gets no more.
        for owner in masked:  # its own mask, from its reconstructed seed
            seed = combine_shares(shares[owner][: p.threshold])
            total -= pseudo_rand_gen(seed, self.mod, shape)[0]
        for owner in dead:  # the masks its neighbours added against it, from its key
            secret = bytes_to_private_key(combine_shares(shares[owner][: p.threshold]))
            for other in sorted(neighbours[owner] & set(masked)):
                key = generate_shared_key(secret, bytes_to_public_key(keys[other][0]))
                mask = pseudo_rand_gen(key, self.mod, shape)[0]
                total = total + mask if owner > other else total - mask
        total &= self.mod - 1

        result.contributors = masked
        result.ints = total[: self.ints].copy()
        quantised = total[self.ints :]
        floats = dequantize([quantised], p.clipping_range, p.target_range)[0]
        result.floats = floats - (len(masked) - 1) * p.clipping_range
        log(
            INFO,
            "secure aggregation: sum of %d nodes (%d lost after sharing keys)",
            len(masked),
            len(dead),
        )
        return result


def _neighbours(order: list[int], share_num: int) -> dict[int, set[int]]:
    """Each node's neighbours (itself included): the ``share_num`` nodes around it in
    ``order`` (a random ring), or all of them."""
    if share_num >= len(order):
        return {n: set(order) for n in order}
    half = share_num // 2
    return {
        n: {order[(i + k) % len(order)] for k in range(-half, half + 1)}
        for i, n in enumerate(order)
    }


def _number(value: object, name: str) -> float:
    if not isinstance(value, int | float):
        raise ValueError(f"{name} = {value!r} is not a number")
    return float(value)


def _reply_record(answer: RecordDict | str) -> ConfigRecord:
    """The protocol record of a reply kept as usable (``_send`` left no reason in it)."""
    assert not isinstance(answer, str), answer
    return answer.config_records[RECORD]


def _bytes(record: ConfigRecord, key: str) -> bytes:
    value = record[key]
    if not isinstance(value, bytes):
        raise ValueError(f"secure aggregation: {key} is {type(value).__name__}, not bytes")
    return value


def _bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"secure aggregation: {key} is not a list of bytes")
    return [bytes(v) for v in value if isinstance(v, bytes)]


def _ints(record: ConfigRecord, key: str) -> list[int]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"secure aggregation: {key} is not a list of ints")
    return [int(v) for v in value if isinstance(v, int)]


def _masked_problem(content: RecordDict, size: int, mod: int) -> str | None:
    """Why a masked-vector reply cannot be summed (None: it can)."""
    record = content.array_records.get(VECTOR_RECORD)
    if record is None or MASKED not in record:
        return f"reply lacks the masked vector ({VECTOR_RECORD}/{MASKED})"
    value = record[MASKED].numpy()
    if value.dtype != np.int64 or value.shape != (size,):
        return (
            f"masked vector of dtype {value.dtype}, shape {value.shape}; expected int64 ({size},)"
        )
    if size and (value.min() < 0 or value.max() >= mod):
        return f"masked vector outside [0, 2^{MOD_BITS})"
    return None


def _config_bytes(content: RecordDict) -> int:
    """Bytes of the bytes values (keys, ciphertexts, shares) in a content's ConfigRecords."""
    total = 0
    for record in content.config_records.values():
        for value in record.values():
            if isinstance(value, bytes):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) for v in value if isinstance(v, bytes))
    return total


# ---------------------------------------------------------------- the prototype round
# The task config's key for the factor a node divides its feature sums by before they are
# clipped (the server multiplies the total back): max_count, so that a node's S_{k,c} /
# max_count is a mean-sized number whatever its counts, and clipping_range bounds one
# feature value |z_d|.
SUM_SCALE = "sum-scale"


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
TASK_TRAIN = "train"  # a masked-vector request that trains first (config key "task")
SECURE_KEYS = "secagg-keys"  # the trainable keys, in the vector's order
SECURE_PER_CLASS = "secagg-per-class"  # per key, 1: rows weighted by n_{k,c}; 0: by n_k


def secure_update(
    config: ConfigRecord,
    arrays: Mapping[str, np.ndarray],
    metrics: Mapping[str, object],
    reference: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """A node's training round as a vector (the node's side): integers n_k and n_{k,c};
    floats n_k loss, then per key n_k (θ - θ_sent) (or row c times n_{k,c}), all over
    sum-scale (max_count). Updates, not values: they are small, so a tight clipping range
    (a bound on one node's change of one value) keeps the quantisation step small."""
    n = metrics[wire.NUM_EXAMPLES]
    counts = np.asarray(metrics[wire.CLASS_COUNTS], dtype=np.int64)
    if not isinstance(n, int) or int(counts.sum()) != n:
        raise ValueError(f"{wire.NUM_EXAMPLES} = {n!r} is not the sum of the class counts")
    scale = _number(config[SUM_SCALE], SUM_SCALE)
    loss = _number(metrics.get(wire.TRAIN_LOSS, 0.0), wire.TRAIN_LOSS)
    parts = [np.array([n * loss / scale])]
    keys = config[SECURE_KEYS]
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ValueError(f"{SECURE_KEYS} is not a list of key names")
    for key, per_class in zip(map(str, keys), _ints(config, SECURE_PER_CLASS), strict=True):
        value = np.asarray(arrays[key], dtype=np.float64)
        value = value - np.asarray(reference[key], dtype=np.float64)
        if per_class:
            if value.shape[:1] != counts.shape:
                raise ValueError(f"{key} has {value.shape[:1]} rows, not one per class")
            weight = counts.reshape(-1, *([1] * (value.ndim - 1))).astype(np.float64)
            parts.append((weight * value / scale).reshape(-1))
        else:
            parts.append((n * value / scale).reshape(-1))
    return np.concatenate([[n], counts]).astype(np.int64), np.concatenate(parts)


@dataclass
class SecureUpdate:
    """A secure training round's outcome: the new values of the trainable keys."""

    arrays: dict[str, np.ndarray]
    num_examples: int
    train_loss: float
    result: SecureSum


def secure_train(
    params: SecAggParams,
    messages: list[Message],
    previous: Mapping[str, np.ndarray],
    per_class: Mapping[str, bool],
    num_classes: int,
    exchange: Exchange,
) -> SecureUpdate:
    """A training round under SecAgg+ (the server's side): each train message goes out
    with the masked-vector request; the server learns Σ n_k, Σ n_{k,c}, Σ n_k loss and the
    weighted sums of the updates only, and divides: per key θ + Σ n_k Δ_k / Σ n_k, or per
    class row P_c + Σ n_{k,c} Δ_{k,c} / Σ n_{k,c} (θ, P: the state as sent; rows no node
    holds keep ``previous``). Every node gets the same arrays (``node_arrays`` is not
    overridden under secure aggregation)."""
    keys = list(per_class)
    config = ConfigRecord(dict(messages[0].content.config_records[wire.CONFIG]))
    config[wire.CFG_TASK] = TASK_TRAIN
    config[SECURE_KEYS] = keys
    config[SECURE_PER_CLASS] = [int(per_class[key]) for key in keys]
    config[SUM_SCALE] = params.max_count
    payload = {m.metadata.dst_node_id: m.content for m in messages}
    floats = 1 + sum(int(previous[key].size) for key in keys)
    params = dataclasses.replace(params, clipping_range=params.update_clipping_range)
    server = SecAggServer(params, 1 + num_classes, floats, config, exchange, payload=payload)
    result = server.run(payload)
    n, counts = int(result.ints[0]), result.ints[1:]
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
    return SecureUpdate(arrays, n, loss, result)
