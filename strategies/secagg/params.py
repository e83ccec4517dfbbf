"""SecAgg+'s parameters, the names its messages carry, what a secure sum returns, and the
readers of its protocol records: what the server's driver (``strategies.secagg.server``),
the rounds (``strategies.secagg.rounds``) and the node (``client_app/secagg.py``) share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord

from strategies.options import SECURE_AGGREGATIONS as MODES

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

# The task config's key for the factor a node divides its feature sums by before they are
# clipped (the server multiplies the total back): max_count, so that a node's S_{k,c} /
# max_count is a mean-sized number whatever its counts, and clipping_range bounds one
# feature value |z_d|.
SUM_SCALE = "sum-scale"
TASK_TRAIN = "train"  # a masked-vector request that trains first (config key "task")
SECURE_KEYS = "secagg-keys"  # the trainable keys, in the vector's order
SECURE_PER_CLASS = "secagg-per-class"  # per key, 1: rows weighted by n_{k,c}; 0: by n_k


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


def read_number(value: object, name: str) -> float:
    if not isinstance(value, int | float):
        raise ValueError(f"{name} = {value!r} is not a number")
    return float(value)


def read_bytes(record: ConfigRecord, key: str) -> bytes:
    value = record[key]
    if not isinstance(value, bytes):
        raise ValueError(f"secure aggregation: {key} is {type(value).__name__}, not bytes")
    return value


def read_bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise ValueError(f"secure aggregation: {key} is not a list of bytes")
    return [bytes(v) for v in value if isinstance(v, bytes)]


def read_ints(record: ConfigRecord, key: str) -> list[int]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"secure aggregation: {key} is not a list of ints")
    return [int(v) for v in value if isinstance(v, int)]
