"""What the parts of ``PromptFedAvg`` use of one another, declared once.

``PromptFedAvg`` (strategies/base.py) is made of parts, one concern each: ``RoundLoop``
(loop.py), ``NodeAdmission`` (admission.py), ``EvaluatePhase`` (evaluate.py),
``TrainAggregation`` (train.py), ``ReplyChecks`` (replies.py), ``GlobalState`` (state.py),
``NodeMessages`` (messages.py) and ``GridExchange`` (exchange.py). A part calls methods
that another part (or the base, or Flower's ``FedAvg``) defines and reads attributes that
``PromptFedAvg.__init__`` sets. ``StrategyParts`` lists them, and every part derives from
it for the type checker only (``PartsBase``): so each part sees the others' members, and
mypy checks every real definition against its declaration here. At run time
``PartsBase`` is ``object``: the declarations never shadow a real method in the method
resolution order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from strategies.records import Partitions
from strategies.secagg import SecAggParams

Check = Callable[[RecordDict, int], str | None]


class StrategyParts(Protocol):
    """The attributes and methods the parts of ``PromptFedAvg`` share."""

    # Options and state, set by PromptFedAvg.__init__ (``wait_timeout`` also by the
    # ServerApp; the fractions and the minimums are FedAvg's).
    counts_only: bool
    secagg: SecAggParams | None
    timeout: float
    wait_timeout: float
    num_rounds: int
    kept_state: str
    wire_dtype: np.dtype
    reply_aggregation: str
    trim_fraction: float
    max_update_norm: float
    update_norm_factor: float
    evaluate_every: int
    seed: int
    # FedAvg's, set by its __init__. The values are for mypy only (PartsBase is object at
    # run time): without one, a Protocol attribute that no class before FedAvg assigns
    # counts as abstract.
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_available_nodes: int = 2
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    on_client_error: Callable[[int, int, str, str], None] | None
    server_arrays: ArrayRecord
    dropped: list[tuple[int, int, str]]
    round_metrics: dict[int, dict[str, float | list[float]]]
    node_replies: dict[int, dict[str, Any]]
    updated_rounds: list[int]
    held_out_nodes: set[int]
    partitions: Partitions
    _own_loop: bool
    _global: ArrayRecord | None
    _caller_holds_server_arrays: bool
    _proto_version: int
    _node_proto_version: dict[int, int]
    _node_counts: dict[int, list[int]]
    _rng: random.Random
    _outgoing: list[Message]
    _sent_ids: dict[str, tuple[int, int]] | None

    # Flower's Strategy: the body says it is not abstract here (FedAvg defines it).
    def summary(self) -> None:
        return None

    # PromptFedAvg (base.py).
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...
    def server_only(self, key: str) -> bool: ...

    # NodeMessages (messages.py).
    def train_sample_size(self, grid: Grid) -> int: ...
    def _sample(
        self,
        grid: Grid,
        fraction: float,
        minimum: int,
        exclude: set[int] | None = None,
        verified_only: bool = False,
    ) -> list[int]: ...
    def _messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        node_ids: list[int],
        message_type: str,
        server_round: int,
    ) -> list[Message]: ...

    # TrainAggregation (train.py).
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]: ...
    def secure_per_class(self, key: str) -> bool: ...
    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray: ...
    def _note_updated(self, server_round: int) -> None: ...

    # EvaluatePhase (evaluate.py).
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None: ...

    # NodeAdmission (admission.py).
    def ensure_prototypes(
        self, grid: Grid, arrays: ArrayRecord, server_round: int = 0
    ) -> ArrayRecord: ...
    def num_classes(self, arrays: ArrayRecord) -> int: ...
    def in_identity_order(self, nodes: Iterable[int]) -> list[int]: ...
    def _partition_counts(self) -> dict[int, list[int]]: ...

    # GlobalState (state.py).
    def global_state(self, arrays: ArrayRecord) -> ArrayRecord: ...
    def trainable_state(self, arrays: ArrayRecord) -> ArrayRecord: ...
    def _keep_server_arrays(self, state: ArrayRecord) -> ArrayRecord: ...
    def _as_given(self, state: ArrayRecord) -> ArrayRecord: ...

    # ReplyChecks (replies.py).
    @property
    def reply_dtypes(self) -> tuple[np.dtype, ...]: ...
    def _judge(self, msg: Message, node: int, check: Check) -> str | None: ...
    def _accepted(
        self, replies: Iterable[Message], server_round: int, check: Check
    ) -> list[Message]: ...
    def _accepted_train(
        self,
        server_round: int,
        replies: list[Message],
        check: Check,
        kept: str,
        refused: int = 0,
    ) -> tuple[list[Message] | None, MetricRecord]: ...
    def _in_node_order(self, replies: Iterable[Message]) -> list[Message]: ...
    @staticmethod
    def _sent_arrays(msg: Message | None) -> dict[str, np.ndarray] | None: ...

    # GridExchange (exchange.py).
    def _exchange(
        self,
        grid: Grid,
        messages: Iterable[Message],
        server_round: int,
        phase: str,
        consume: Callable[[Message], bool] | None = None,
    ) -> list[Message]: ...
    def _wait_for_nodes(self, grid: Grid, minimum: int) -> list[int]: ...
    def _set_outgoing(self, messages: list[Message]) -> None: ...
    def _sent_as(self, reply: Message) -> tuple[int, int]: ...
    def _sender(self, reply: Message) -> int: ...
    def _count_used(self, valid: Iterable[Message], what: str) -> None: ...
    def remember_metrics(self, server_round: int, phase: str, metrics: MetricRecord) -> None: ...


# The base of every part: the Protocol for the type checker, object at run time (a
# Protocol in the bases would put its declarations before FedAvg's methods).
if TYPE_CHECKING:
    PartsBase = StrategyParts
else:
    PartsBase = object
