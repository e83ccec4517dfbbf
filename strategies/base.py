"""PromptFedAvg: the FedAvg base every prompt-tuning method here subclasses (FL-bench style).

What it adds to Flower's FedAvg (Message API), for every method:

1. Before round 1, the prototype round: every connected node gets a QUERY (task
   ``prototypes``; with ``counts-only`` set it skips the feature sums) and returns its
   per-class train counts, its partition id and whether it is held out. The global counts
   become ``proto.count`` in the state (the global prior); the node's counts are later
   used to check its train replies. (One name for this round everywhere: for the
   baselines it collects only the counts, for PEP-FedPT the feature sums too.)
2. Seeded sampling of train and evaluate nodes; held-out nodes never train and are
   evaluated (and summarised) apart.
3. Every reply is checked (error, keys, shapes, finiteness, counts) before it is used; a
   bad one is dropped with a log line naming the node (``_sender``) and the reason. Below
   ``min_train_nodes`` valid replies the round keeps the previous global state.
4. Aggregation key by key into running float64 sums (``merge``): each valid reply weighs
   ``merge_weight(key, metrics)`` (by default n_k: FedAvg; or one weight per row), and
   ``merge_result`` turns the sum into the new value. Replies are checked and merged in
   node-id order, so the result depends on the set of replies, not their arrival order.
5. ``checkpoint()`` / ``restore()`` and ``start(..., start_round=t)`` resume a run.
6. Communicated bytes (``strategies.traffic``: the arrays' nbytes) per round in
   ``round_metrics``: ``bytes-down`` / ``bytes-up`` and per phase ``query/``, ``train/``,
   ``evaluate/``. A prototype round counts in the round it runs before: the first one in
   round 0 (the row of the initial state), a PEP-FedPT prototype refresh in the round it
   opens.

Override points (a method overrides these, never the private helpers):

``counts_only``            class attribute: the prototype round asks only for class counts
                           (False: the per-class feature sums too; PEPFedPT).
``has_prototypes(arrays)`` whether a state already holds the prototype round's result (a
                           resumed run skips the round; PFedPG also needs its generator).
``prototype_state(arrays, tally)``
                           the state after a prototype round (PEPFedPT: + ``proto.mean``;
                           SGPT: + ``group.count``; PFedPG: + generator and descriptors).
                           ``tally``: a ``strategies.aggregation.PrototypeTally``, the
                           training nodes' class counts and exact feature-sum total (the
                           replies are folded in as they arrive, never kept).
``refreshes_prototypes(server_round)``
                           whether a round opens with a new prototype round (default:
                           never; PEPFedPT: every ``prototype_refresh_every`` rounds).
``fold_prototypes(arrays, tally)``
                           the state with late nodes' tally added to an earlier prototype
                           round's result (default: the counts; PEPFedPT: + ``proto.mean``).
``server_only(key)``       whether a state key stays on the server: never sent as a
                           trainable array, never expected in a train reply (default: the
                           wire's global-only keys; PFedPG: + ``pfedpg.*``).
``node_arrays(arrays, trainable, node_id, message_type)``
                           the arrays one node's train/evaluate message carries (default:
                           the trainable state; LocalOnly: none for a node with its own
                           state; PFedPG: the prompt generated for that node).
``extra_content(content, arrays, node_id)``
                           records a message carries beyond the arrays (PEPFedPT: the
                           prototypes; SGPT: ``group.count``).
``check_train_metrics(metrics, node)``
                           a method's own check of a train reply, after the base's (SGPT:
                           its group counts; PFedPG: the reply's partition).
``merge_weight(key, metrics)``
                           how much one valid reply's value of a key weighs in its running
                           sum: a number or one weight per row (FedAvg's n_k; PEPFedPT:
                           n_{k,c} for class prompts; SGPT: n_{k,g} for group rows).
``secure_per_class(key)``  under secure aggregation, whether a key's rows are weighted by
                           n_{k,c} (PEPFedPT's class prompts) or the array by n_k.
``prepare_merge(metrics)`` / ``merge_result(key, running)``
                           the default ``aggregate_valid``'s new value of each key from its
                           running sum (the weighted mean; SGPT: with momentum).
``aggregate_valid(server_round, valid, metrics, running)``
                           the new state from the round's valid train replies (default: the
                           merged running sums; PFedPG: the generator update), or None to
                           keep the previous state.
``checkpoint()`` / ``restore(state)``, ``summary()``
                           what a method keeps beyond the arrays; its start-up log lines.

Constructors: a method's own arguments keyword-only, the base's through ``**kwargs``.

What a method (and a caller) may read; every other ``_``-name is the base's own, and a
test fails if a subclass in ``strategies/`` reads one:

``global_arrays``          the whole global state of the round in flight (what
                           ``configure_train`` built its messages from; None before).
``server_arrays``          the server-made arrays of the global state (``server_only``
                           keys: the prototypes, ``proto.count``, SGPT's ``group.count``,
                           pFedPG's generator), kept by the strategy.
``global_state(arrays)`` / ``trainable_state(arrays)``
                           the whole state from the arrays a loop carries, and back.
``ensure_prototypes(grid, arrays)``
                           the whole state with a prototype round's result (running one if
                           it has none yet).
``sender(reply)``          the node a reply answers for.
``proto_version()`` / ``prototypes_to_send(node_id)``
                           the prototype version messages name; whether a message to a node
                           must carry the prototypes (noted as sent).

Round loops. ``start`` is this project's loop (the ServerApp's: the whole state carried
from round to round, the prototype round before the central evaluation of round 0,
resume at ``start_round``, bytes per phase, SecAgg+ training rounds). Flower's own
``Strategy.start``, and Flower's wrappers whose ``start`` is it (the DP fixed-clipping
ones), run the strategy too: ``configure_train`` runs the prototype round when the state
lacks its result, and late-node admission, whatever loop calls it, and
``aggregate_train`` returns the state in the form the loop gave it (the trainable arrays
only, when that is what the loop carries), the server arrays staying in
``server_arrays``. SecAgg+ is refused outside ``start``.
"""

from __future__ import annotations

import inspect
import io
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from flwr.supercore import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies import traffic, wire
from strategies.aggregation import (
    ROBUST_AGGREGATIONS,
    PrototypeTally,
    RunningMean,
    ccmp_summary,
    evaluation_summary,
    robust_value,
    scratch_buffer,
    validation_summary,
)
from strategies.errors import one_line, strip_ansi
from strategies.secagg import SecAggError, SecAggParams, secure_prototypes, secure_train
from strategies.secagg import secure_aggregation as secure_aggregation_params
from strategies.validation import (
    array_view,
    check_evaluate_reply,
    check_known_counts,
    check_prototype_reply,
    check_train_reply,
    check_update_norm,
    norm_bound,
    record_arrays,
    update_norm,
)

# What ``wire_dtype`` may be, and which float dtypes a train reply may then carry.
WIRE_DTYPES = ("float32", "float16")
REPLY_DTYPES = {
    "float32": (np.dtype(np.float32), np.dtype(np.float64)),
    "float16": (np.dtype(np.float16),),
}

# Hooks of earlier versions and their names now: a subclass that still defines one would
# silently never be called, so it is refused when the class is defined.
RENAMED_HOOKS = {
    "census_state": "prototype_state",
    "census_round": "prototype_round",
    "has_census": "has_prototypes",
    "census_name": "nothing (the log always says 'prototype round')",
}


# One valid prototype-round reply: (sent index, node id, partition id or None, held out,
# the reply's ``proto`` arrays).
PrototypeAnswer = tuple[int, int, int | None, bool, dict[str, np.ndarray]]


def evaluation_round(server_round: int, every: int, num_rounds: int) -> bool:
    """Whether round ``server_round`` of ``num_rounds`` evaluates, clients and server alike:
    every ``every``-th round, the initial state (round 0) and always the last round."""
    if every < 1:
        raise ValueError(f"every = {every}: evaluate every 1 or more rounds")
    return server_round % every == 0 or server_round == num_rounds


def _keep_later(
    partitions: dict[int, tuple[int, dict[str, int | bool | list[int]]]],
    pid: int,
    index: int,
    node: int,
    held_out: bool,
    counts: list[int],
    where: str,
) -> None:
    """Record node ``node`` (sent as message ``index``) for partition ``pid``: of two
    nodes that report one partition, the one sent later is kept (the order replies
    arrive in does not matter), and a warning names both in the order sent."""
    earlier = partitions.get(pid)
    if earlier is not None:
        first, second = sorted([(earlier[0], int(earlier[1]["node-id"])), (index, node)])
        log(
            WARNING,
            "%s: nodes %d and %d both report partition-id %d; check their --node-config",
            where,
            first[1],
            second[1],
            pid,
        )
        if earlier[0] > index:
            return
    partitions[pid] = (index, {"node-id": node, "held-out": held_out, "class-counts": counts})


class PromptFedAvg(FedAvg):
    """FedAvg over the trainable prompts and head, with a prototype round and reply checks.

    Parameters beyond FedAvg's
    --------------------------
    seed : int (default 0)
        Seeds client sampling, so that a run can be repeated.
    wire_dtype : "float32" (default) or "float16"
        The float arrays of train and evaluate messages, both ways: the server casts what
        it sends and accepts replies in this dtype only (float32 also accepts float64).
        It still sums in float64 and keeps its state float32.
    secure_aggregation : "off" (default) or "secaggplus"
        SecAgg+ (strategies/secagg.py): the prototype round's counts and feature sums
        and the training rounds' counts and weighted updates travel masked, and the
        server learns their totals only (docs/privacy.md); ``secagg`` (a
        ``SecAggParams``: threshold, clipping ranges, bit width, max count per node)
        tunes it. A method whose aggregation needs single replies refuses it.
    max_update_norm : float (default 1e4; 0: no bound)
        A train reply whose update norm ‖reply − the arrays sent to it‖₂ exceeds this is
        refused (``fed.max-update-norm``).
    update_norm_factor : float (default 100; 0: no bound)
        A train reply whose update norm exceeds this many times the round's median update
        norm (of the replies that passed every other check) is refused
        (``fed.update-norm-factor``).
    reply_aggregation : "mean" (default), "median" or "trimmed-mean"
        How the valid replies make the new value of each key: the weighted mean
        (``merge_weight``), or the coordinate-wise median or trimmed mean
        (``strategies.aggregation.robust_value``; ``trim_fraction`` of each end left out),
        which one reply cannot carry away however large. Only for methods whose new
        state is the merge of the replies (no own ``merge_result`` or ``aggregate_valid``).
    """

    # The prototype round asks only for class counts; PEP-FedPT also wants the feature sums.
    counts_only = True
    # What a round below min-train-nodes valid replies keeps (its log line says so).
    kept_state = "the global state"
    # Seconds a round waits for its minimum of connected nodes before it fails.
    wait_timeout: float = 600.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass written against the old hook names or signatures."""
        super().__init_subclass__(**kwargs)
        for old, new in RENAMED_HOOKS.items():
            if old in vars(cls):
                raise TypeError(
                    f"{cls.__name__}.{old}: this hook is now {new}; strategies/base.py's "
                    "docstring lists the override points"
                )
        for hook in ("prototype_state", "fold_prototypes"):
            method = vars(cls).get(hook)
            if method is not None and len(inspect.signature(method).parameters) != 3:
                raise TypeError(
                    f"{cls.__name__}.{hook} must take (self, arrays, tally): the replies' "
                    "sums and counts come folded into a PrototypeTally, no longer as lists"
                )
        check = vars(cls).get("check_train_metrics")
        if check is not None and len(inspect.signature(check).parameters) != 3:
            raise TypeError(
                f"{cls.__name__}.check_train_metrics must take (self, metrics, node): the "
                "node whose reply it checks comes with the metrics"
            )

    # Replies are polled every poll_seconds[0] s while they arrive; while none do, the pause
    # grows with the phase's age (poll_fraction of it) up to poll_seconds[1], so a reply
    # waits at most about 5% of its phase to be seen (a pause that doubled to 1 s cost a
    # short round up to 0.75 s per phase). Flower's in-memory grid polls every 0.1 s, its
    # gRPC grid every 3 s. A progress line every progress_seconds while a phase waits.
    poll_seconds = (0.05, 1.0)
    poll_fraction = 0.05
    progress_seconds = 10.0
    # Replies pulled per pull_messages call: a phase that consumes its replies on arrival
    # (the prototype round) holds at most this many at once.
    pull_batch = 100

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        seed: int = 0,
        wire_dtype: str = "float32",
        secure_aggregation: str = "off",
        secagg: SecAggParams | None = None,
        max_update_norm: float = 1e4,
        update_norm_factor: float = 100.0,
        reply_aggregation: str = "mean",
        trim_fraction: float = 0.1,
    ) -> None:
        if reply_aggregation not in ROBUST_AGGREGATIONS:
            raise ValueError(
                f"reply_aggregation = {reply_aggregation!r} is not accepted; use one of: "
                f"{', '.join(ROBUST_AGGREGATIONS)}"
            )
        own = [
            hook
            for hook in ("merge_result", "aggregate_valid")
            if getattr(type(self), hook) is not getattr(PromptFedAvg, hook)
        ]
        if reply_aggregation != "mean" and own:
            raise ValueError(
                f"reply_aggregation = {reply_aggregation!r}: {type(self).__name__} makes its "
                "new state in "
                f"its own {' and '.join(own)}, which a median or trimmed mean would bypass; "
                "use aggregation = 'mean'"
            )
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"trim_fraction = {trim_fraction!r} must be in [0, 0.5)")
        if wire_dtype not in WIRE_DTYPES:
            raise ValueError(
                f"wire_dtype = {wire_dtype!r} is not accepted; use one of: {', '.join(WIRE_DTYPES)}"
            )
        for name, value in (
            ("max_update_norm", max_update_norm),
            ("update_norm_factor", update_norm_factor),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} = {value!r} must be a finite number >= 0 (0: no bound)")
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=wire.NUM_EXAMPLES,
            arrayrecord_key=wire.ARRAYS,
            configrecord_key=wire.CONFIG,
        )
        self.timeout = 3600.0
        # SecAgg+ parameters, or None: plain replies (strategies/secagg.py).
        self.secagg = secure_aggregation_params(secure_aggregation, secagg)
        if self.secagg is not None:
            self._check_secure_hooks()
            if reply_aggregation != "mean":  # a masked reply has no coordinates for a median
                raise ValueError(
                    f"reply_aggregation = {reply_aggregation!r} needs every reply in the clear; "
                    "under "
                    "secure_aggregation = 'secaggplus' only the mean exists (its clipping "
                    "ranges bound what one node can add)"
                )
        self.seed = seed
        self.wire_dtype = np.dtype(wire_dtype)
        self.max_update_norm = float(max_update_norm)
        self.update_norm_factor = float(update_norm_factor)
        self.reply_aggregation = reply_aggregation
        self.trim_fraction = float(trim_fraction)
        self._rng = random.Random(seed)
        # Version of the prototype round's result (the prototypes, for PEP-FedPT) and, per
        # node, the version it holds.
        self._proto_version = 0
        self._node_proto_version: dict[int, int] = {}
        # n_{k,c} each node reported in the latest prototype round it answered.
        self._node_counts: dict[int, list[int]] = {}
        self._global: ArrayRecord | None = None
        self._outgoing: list[Message] = []  # the messages of the phase in flight
        # Message id -> (index sent, destination node) of those messages (``_sent_as``).
        self._sent_ids: dict[str, tuple[int, int]] | None = None
        self.dropped: list[tuple[int, int, str]] = []  # (round, node id, reason)
        # Per round, the aggregated client-side metrics ("train/...", "evaluate/..."), so
        # that an evaluate_fn can record each finished round as soon as it ends.
        self.round_metrics: dict[int, dict[str, float | list[float]]] = {}
        # Rounds whose train replies were aggregated into a new state (not kept as it was),
        # so that a run in which none was can say so and fail.
        self.updated_rounds: list[int] = []
        # From the latest prototype round: nodes that never train, and per partition id
        # what its node reported (node id, held-out flag, train class counts).
        self.held_out_nodes: set[int] = set()
        self.partitions: dict[int, dict[str, int | bool | list[int]]] = {}
        # Per node: messages sent, how many failed (error reply or none), how many train or
        # evaluate messages it answered with content, and the last failure.
        self.node_replies: dict[int, dict[str, Any]] = {}
        # Called with (round, node, phase, full error text, colour codes stripped) for every
        # error reply, whose one-line form is all the logs and results keep; the ServerApp
        # writes them to the run's client-errors.log.
        self.on_client_error: Callable[[int, int, str, str], None] | None = None
        # Evaluate messages go out in rounds ``evaluation_round`` picks (the last of
        # ``num_rounds`` always): a run of many cheap rounds need not evaluate each.
        self.evaluate_every = 1
        self.num_rounds = 0
        # The server-made arrays of the global state (``server_only`` keys: the prototype
        # round's result, SGPT's group counts, pFedPG's generator), kept here so that the
        # state a caller's loop carries may hold the trainable arrays only (Flower's own
        # ``Strategy.start`` and the wrappers that delegate to this strategy).
        self.server_arrays = ArrayRecord()
        # Whether the caller's state holds the server arrays (this class's ``start``, a
        # resumed checkpoint): ``aggregate_train`` returns the state in the form it was
        # given, so that Flower's DP wrappers see only the trainable arrays.
        self._caller_holds_server_arrays = True
        # True while this class's own ``start`` runs: the only loop that can run a SecAgg+
        # training round (its several exchanges).
        self._own_loop = False

    # ------------------------------------------------------------------ lifecycle
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        start_round: int = 1,
    ) -> Result:
        """This project's round loop: the prototype round (unless the state already holds
        its result), then rounds ``start_round..num_rounds``, carrying the whole global
        state (server arrays included) from round to round.

        Flower's own ``Strategy.start`` runs this strategy too (and so do Flower's wrappers,
        such as its DP fixed-clipping ones, whose ``start`` is Flower's): the prototype
        round and late-node admission run from ``configure_train``. This loop adds what the
        ServerApp needs beyond that: the prototype round before ``evaluate_fn(0, ...)``
        (the central evaluation needs its ``proto.count``); a resumed run starts at
        ``start_round`` (Flower's loop always starts at round 1 and evaluates round 0
        again); every exchange goes through ``_exchange`` (bytes per phase, each node's
        replies, progress lines while it waits; Flower calls ``grid.send_and_receive``
        itself); the SecAgg+ training round (several exchanges); and ``Result`` starts
        with the initial arrays, so a run whose rounds all kept the state still returns
        one. Its calls and log lines follow Flower's ``Strategy.start`` of flwr 1.42.0.
        """
        if start_round < 1:
            raise ValueError(f"start_round = {start_round} must be >= 1")
        self.timeout = timeout
        self.num_rounds = num_rounds
        self._own_loop = True
        try:
            return self._run_rounds(
                grid,
                self.ensure_prototypes(grid, initial_arrays),
                num_rounds,
                train_config,
                evaluate_config,
                evaluate_fn,
                start_round,
            )
        finally:
            self._own_loop = False

    def _run_rounds(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        num_rounds: int,
        train_config: ConfigRecord | None,
        evaluate_config: ConfigRecord | None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
        start_round: int,
    ) -> Result:
        """``start``'s loop over rounds ``start_round..num_rounds`` from the whole state
        ``arrays`` (prototypes included)."""

        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        log_strategy_start_info(num_rounds, arrays, train_config, evaluate_config)
        if start_round > 1:
            log(INFO, "\t└──> Resuming at round %d", start_round)
        self.summary()
        log(INFO, "")
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result(arrays=arrays)
        t_start = time.time()
        if evaluate_fn and start_round == 1:
            res = evaluate_fn(0, arrays)
            log(INFO, "Initial global evaluation results: %s", res)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res

        for current_round in range(start_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
            train_messages = self.configure_train(current_round, arrays, train_config, grid)
            if self.secagg is not None:  # only the weighted totals reach the server
                agg_arrays, agg_train_metrics = self.secure_train_round(
                    grid, current_round, list(train_messages)
                )
            else:
                train_replies = self._exchange(grid, train_messages, current_round, "train")
                agg_arrays, agg_train_metrics = self.aggregate_train(current_round, train_replies)
            if agg_arrays is not None:
                result.arrays = arrays = agg_arrays
            if agg_train_metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_train_metrics)
                result.train_metrics_clientapp[current_round] = agg_train_metrics

            evaluate_replies = self._exchange(
                grid,
                self.configure_evaluate(current_round, arrays, evaluate_config, grid),
                current_round,
                "evaluate",
            )
            agg_evaluate_metrics = self.aggregate_evaluate(current_round, evaluate_replies)
            if agg_evaluate_metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_evaluate_metrics)
                result.evaluate_metrics_clientapp[current_round] = agg_evaluate_metrics

            if evaluate_fn:
                log(INFO, "Global evaluation")
                res = evaluate_fn(current_round, arrays)
                log(INFO, "\t└──> MetricRecord: %s", res)
                if res is not None:
                    result.evaluate_metrics_serverapp[current_round] = res

        log(INFO, "")
        log(INFO, "Strategy execution finished in %.2fs", time.time() - t_start)
        log(INFO, "")
        log(INFO, "Final results:")
        log(INFO, "")
        for line in io.StringIO(str(result)):
            log(INFO, "\t%s", line.strip("\n"))
        log(INFO, "")
        return result

    # ------------------------------------------------------------------ global state
    def global_state(self, arrays: ArrayRecord) -> ArrayRecord:
        """The whole global state: ``arrays`` (the trainable arrays a loop carries, or the
        whole state) plus the server arrays (``server_arrays``) it lacks. What a central
        evaluation and a checkpoint need; server arrays that ``arrays`` holds win, and
        are kept as the strategy's from then on."""
        own = [key for key in arrays if self.server_only(key)]
        if own:
            self.server_arrays = ArrayRecord(
                {
                    **{key: self.server_arrays[key] for key in self.server_arrays},
                    **{key: arrays[key] for key in own},
                }
            )
        missing = [key for key in self.server_arrays if key not in arrays]
        if not missing:
            return arrays
        state = ArrayRecord({key: arrays[key] for key in arrays})
        for key in missing:
            state[key] = self.server_arrays[key]
        return state

    def trainable_state(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` without its server arrays: what Flower's own loop and wrappers carry
        (a DP wrapper clips every reply against it and adds noise to every array)."""
        return ArrayRecord({key: arrays[key] for key in arrays if not self.server_only(key)})

    def ensure_prototypes(
        self, grid: Grid, arrays: ArrayRecord, server_round: int = 0
    ) -> ArrayRecord:
        """The whole global state (``global_state``) with the prototype round's result:
        the state as it is when it already holds one (a resumed run), else after a
        prototype round counted in round ``server_round`` (0: the initial state's row)."""
        state = self.global_state(arrays)
        if self.has_prototypes(state):
            if self._proto_version == 0:
                self._proto_version = 1
            return state
        return self._keep_server_arrays(self.prototype_round(grid, state, server_round))

    def _keep_server_arrays(self, state: ArrayRecord) -> ArrayRecord:
        """Take ``state``'s server arrays as the strategy's; return ``state``."""
        self.server_arrays = ArrayRecord(
            {key: state[key] for key in state if self.server_only(key)}
        )
        return state

    def _as_given(self, state: ArrayRecord) -> ArrayRecord:
        """A new state in the form the caller's loop carries it: whole (this class's
        ``start``, a resumed state) or its trainable arrays only (Flower's ``start``); its
        server arrays are the strategy's in both cases."""
        self._keep_server_arrays(state)
        return state if self._caller_holds_server_arrays else self.trainable_state(state)

    def proto_version(self) -> int:
        """The version of the prototype round's result that train/evaluate messages name
        (``proto-version``): 0 before the first prototype round, then one more for each
        prototype round or admission of late nodes that changed it."""
        return self._proto_version

    def prototypes_to_send(self, node_id: int) -> bool:
        """Whether a message to node ``node_id`` must carry the prototype round's result
        (the node holds no copy of this version); True notes it as sent, so ask once per
        message. A node whose reply is an error is sent it again."""
        if self._node_proto_version.get(node_id) == self._proto_version:
            return False
        self._node_proto_version[node_id] = self._proto_version
        return True

    def sender(self, reply: Message) -> int:
        """The node a reply of the phase in flight answers for: the destination of the
        message it replies to (``src_node_id`` is the SuperLink's when a node died)."""
        return self._sender(reply)

    @property
    def global_arrays(self) -> ArrayRecord | None:
        """The whole global state of the round in flight, as ``configure_train`` built its
        messages from it (None before the first ``configure_train``); ``aggregate_train``
        makes the new state from it and the replies."""
        return self._global

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self) -> dict[str, Any]:
        """Everything beyond the global arrays that the rest of the run depends on (JSON).

        Per-node prototype versions are left out on purpose: after a restart the nodes may
        be fresh processes without prototypes, so a restored strategy sends them again.
        """
        version, internal, gauss_next = self._rng.getstate()
        in_partitions = self._partition_counts()
        return {
            "rng": [version, list(internal), gauss_next],
            "proto-version": self._proto_version,
            # The counts a partition entry already holds for its node are not written twice.
            "node-counts": {
                str(node): counts
                for node, counts in self._node_counts.items()
                if counts != in_partitions.get(node)
            },
            "held-out-nodes": sorted(self.held_out_nodes),
            "partitions": {str(pid): entry for pid, entry in self.partitions.items()},
            "dropped": [list(entry) for entry in self.dropped],
            "round-metrics": {str(r): metrics for r, metrics in self.round_metrics.items()},
            "node-replies": {str(node): entry for node, entry in self.node_replies.items()},
            "updated-rounds": list(self.updated_rounds),
        }

    def _partition_counts(self) -> dict[int, list[int]]:
        """The verified counts that ``partitions`` holds: its training nodes' class counts."""
        return {
            int(entry["node-id"]): list(entry["class-counts"])  # type: ignore[arg-type]
            for entry in self.partitions.values()
            if not entry["held-out"]
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Undo ``checkpoint``: the next sample, version and check are as if never stopped."""
        version, internal, gauss_next = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss_next))
        self._proto_version = int(state["proto-version"])
        self.held_out_nodes = {int(n) for n in state["held-out-nodes"]}
        self.partitions = {int(pid): dict(e) for pid, e in state["partitions"].items()}
        self._node_counts = self._partition_counts()
        self._node_counts.update({int(n): list(c) for n, c in state["node-counts"].items()})
        self._node_proto_version = {}
        self.dropped = [(int(r), int(n), str(why)) for r, n, why in state["dropped"]]
        self.round_metrics = {int(r): dict(m) for r, m in state["round-metrics"].items()}
        self.node_replies = {int(n): dict(e) for n, e in state.get("node-replies", {}).items()}
        # A checkpoint from before this was kept: its rounds are taken as having updated.
        done = [int(r) for r in state["round-metrics"] if int(r) > 0]
        self.updated_rounds = [int(r) for r in state.get("updated-rounds", done)]

    # ------------------------------------------------------------------ prototype round
    def has_prototypes(self, arrays: ArrayRecord) -> bool:
        """Hook: whether the state already holds the prototype round's result (a resumed
        run)."""
        return wire.PROTO_COUNT in arrays

    def prototype_round(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Ask every connected node for its class counts (and, unless ``counts_only``, its
        per-class feature sums); return the state with the round's result.

        Each valid reply is folded into a ``PrototypeTally`` as it arrives and dropped, so
        the ServerApp holds one reply (a pull's batch) at a time, not one per node; the
        tally sums exactly, and what else the round keeps is settled by the order the
        messages were sent in, so the result is the same whatever order the replies came
        in. Two nodes that report one partition id both count (with a warning); the
        partition entry is the one sent later's.
        """
        num_classes = self.num_classes(arrays)
        node_ids = self._wait_for_nodes(grid, self.min_available_nodes)
        tally = PrototypeTally(num_classes, self._prototype_dim(arrays))
        held_out: set[int] = set()
        partitions: dict[int, tuple[int, dict[str, int | bool | list[int]]]] = {}
        counted: dict[int, tuple[int, list[int]]] = {}  # node -> (sent index, its counts)

        def take(answer: PrototypeAnswer) -> None:
            index, node, pid, is_held_out, proto = answer
            reported = [int(n) for n in proto[wire.PROTO_COUNT]]
            if pid is not None:
                _keep_later(partitions, pid, index, node, is_held_out, reported, "prototype round")
            if is_held_out:
                held_out.add(node)
                return
            tally.add(proto.get(wire.PROTO_SUM), proto[wire.PROTO_COUNT])
            counted[node] = (index, reported)

        if self.secagg is not None:  # only the totals reach the server
            outcome = secure_prototypes(
                self.secagg,
                node_ids,
                num_classes,
                self._prototype_dim(arrays),
                self._prototype_config(server_round),
                lambda messages, _: self._exchange(grid, messages, server_round, "query"),
            )
            tally.add_total(outcome.sums, outcome.counts, len(outcome.contributors))
            # Contributors may train; their counts stay unknown (docs/privacy.md).
            counted = {node: (i, []) for i, node in enumerate(outcome.contributors)}
            self.dropped.extend((server_round, n, why) for n, why in outcome.result.dropped)
            held_out, partitions = outcome.held_out, outcome.partitions
        else:
            self._ask_for_prototypes(grid, arrays, node_ids, server_round, take)
        if not tally.clients:
            raise RuntimeError(
                f"prototype round: none of {len(node_ids)} nodes sent a valid reply from a "
                f"training client ({len(held_out)} held out); see the log lines above"
            )
        for node, (_, counts) in sorted(counted.items(), key=lambda item: item[1][0]):
            self._node_counts[node] = counts  # in the order sent, as a checkpoint lists them
        self.held_out_nodes = held_out
        self.partitions = {pid: entry for pid, (_, entry) in sorted(partitions.items())}
        state = self.prototype_state(arrays, tally)
        total = np.asarray(state[wire.PROTO_COUNT].numpy())
        log(
            INFO,
            "prototype round: %d nodes (+%d held out), %d examples, %d/%d classes held",
            tally.clients,
            len(held_out),
            int(total.sum()),
            int((total > 0).sum()),
            num_classes,
        )
        self._proto_version += 1
        return state

    def admit_late_nodes(self, grid: Grid, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """Verify the counts of every connected node the prototype round did not, before it
        can train: a SuperNode that connected later, or one whose prototype reply was
        dropped. Without this, a node could claim any counts in its train replies and
        carry the aggregate.

        Each such node gets the prototype QUERY. A node that reports a partition known
        before this query (a SuperNode back under a new node id) must repeat that
        partition's counts, and adds nothing; a new partition's counts (and feature sums)
        are folded into the global ones (``fold_prototypes``: sums, so folding is exact),
        and the prototype version moves on. Replies are folded as they arrive, as in
        ``prototype_round`` (so two late nodes that report one new partition both count,
        with a warning). A node still unverified afterwards is not sampled to train, and
        its train replies are refused (``check_known_counts``).
        """
        late = [
            node
            for node in sorted(grid.get_node_ids())
            if node not in self._node_counts and node not in self.held_out_nodes
        ]
        if not late:
            return arrays
        if self.secagg is not None:  # a plain query would show their counts and sums
            log(
                WARNING,
                "round %d: %d node(s) outside the secure prototype round stay out of training "
                "(late nodes cannot be admitted under secure aggregation yet)",
                server_round,
                len(late),
            )
            return arrays
        log(INFO, "round %d: %d node(s) without verified class counts", server_round, len(late))
        tally = PrototypeTally(self.num_classes(arrays), self._prototype_dim(arrays))
        known_before = dict(self.partitions)
        partitions: dict[int, tuple[int, dict[str, int | bool | list[int]]]] = {}
        verified: list[tuple[int, int, list[int], int | None]] = []  # (index, node, counts, pid)
        refused: list[tuple[int, int, str]] = []
        held_out: set[int] = set()

        def take(answer: PrototypeAnswer) -> None:
            index, node, pid, is_held_out, proto = answer
            reported = [int(n) for n in proto[wire.PROTO_COUNT]]
            known = known_before.get(pid) if pid is not None else None
            if known is not None and not is_held_out and not known["held-out"]:
                if reported != known["class-counts"]:
                    reason = (
                        f"reports partition {pid} with other {wire.PROTO_COUNT} than the "
                        f"prototype round's (sum {sum(reported)} vs "
                        f"{sum(known['class-counts'])})"  # type: ignore[arg-type]
                    )
                    refused.append((index, node, reason))
                    log(WARNING, "round %d: refused node %d: %s", server_round, node, reason)
                    return
                verified.append((index, node, reported, pid))  # back under a new node id
                return
            if pid is not None:
                _keep_later(partitions, pid, index, node, is_held_out, reported, "late nodes")
            if is_held_out:
                held_out.add(node)
                return
            tally.add(proto.get(wire.PROTO_SUM), proto[wire.PROTO_COUNT])
            verified.append((index, node, reported, None))

        self._ask_for_prototypes(grid, arrays, late, server_round, take)
        # Everything the round keeps, in the order sent (as if the replies came so).
        self.dropped.extend((server_round, node, why) for _, node, why in sorted(refused))
        for _, node, reported, known_pid in sorted(verified, key=lambda entry: entry[0]):
            if known_pid is not None:
                self.partitions[known_pid]["node-id"] = node
            self._node_counts[node] = reported
        if partitions:
            self.partitions.update({pid: entry for pid, (_, entry) in partitions.items()})
            self.partitions = dict(sorted(self.partitions.items()))
        self.held_out_nodes |= held_out
        if not tally.clients:
            return arrays
        log(
            INFO,
            "round %d: %d late node(s) folded into the prototype round's result",
            server_round,
            tally.clients,
        )
        self._proto_version += 1
        return self.fold_prototypes(arrays, tally)

    def fold_prototypes(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """Hook: the state with late nodes' counts (and sums), ``tally``, added to the
        prototype round's result (default: the global class counts). The tally is the
        hook's to add to (PEPFedPT adds the earlier means x counts)."""
        total = np.asarray(arrays[wire.PROTO_COUNT].numpy(), dtype=np.int64) + tally.counts
        state = ArrayRecord({key: arrays[key] for key in arrays})
        state[wire.PROTO_COUNT] = Array(total.astype(np.int64))
        return state

    def _prototype_dim(self, arrays: ArrayRecord) -> int | None:
        """D of the feature sums the prototype round asks for (None: counts only)."""
        return None if self.counts_only else int(arrays[wire.HEAD_WEIGHT].shape[1])

    def _ask_for_prototypes(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        node_ids: Sequence[int],
        server_round: int,
        take: Callable[[PrototypeAnswer], None],
    ) -> None:
        """Send the prototype QUERY to ``node_ids`` and hand ``take`` each valid reply as
        it arrives: (sent index, node id, partition id or None, held out, its ``proto``
        arrays, views of the reply's bytes that live only during the call). Invalid replies
        are logged at once and listed in ``dropped`` in the order sent."""
        if self.secagg is not None:  # a plain reply would show the node's counts and sums
            raise RuntimeError(
                "a plain prototype query under secure_aggregation = 'secaggplus' is refused "
                "(late nodes cannot be admitted securely yet; docs/privacy.md)"
            )
        num_classes = self.num_classes(arrays)
        dim = self._prototype_dim(arrays)
        config = self._prototype_config(server_round)
        messages = [
            Message(
                content=RecordDict({wire.CONFIG: config}),
                message_type=MessageType.QUERY,
                dst_node_id=node_id,
            )
            for node_id in node_ids
        ]
        self._set_outgoing(messages)
        what = "class counts" if self.counts_only else "class feature sums"
        log(INFO, "prototype round: asking %d nodes for %s", len(messages), what)
        refused: list[tuple[int, int, str]] = []

        def check(content: RecordDict, _: int) -> str | None:
            return check_prototype_reply(content, num_classes, dim)

        def consume(msg: Message) -> bool:
            index, node = self._sent_as(msg)
            reason = self._judge(msg, node, check)
            if reason is not None:
                refused.append((index, node, reason))
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
                return False
            metrics = msg.content[wire.METRICS]
            pid = int(metrics[wire.PARTITION_ID]) if wire.PARTITION_ID in metrics else None
            held_out = bool(metrics.get(wire.HELD_OUT, 0))
            take((index, node, pid, held_out, record_arrays(msg.content[wire.PROTO])))
            return False  # consumed: the reply is not kept

        self._exchange(grid, messages, server_round, "query", consume)
        self.dropped.extend((server_round, node, why) for _, node, why in sorted(refused))

    def _prototype_config(self, server_round: int) -> ConfigRecord:
        """The prototype QUERY's config (task, round, and counts-only where so)."""
        config = ConfigRecord(
            {wire.CFG_TASK: wire.TASK_PROTOTYPES, wire.CFG_SERVER_ROUND: server_round}
        )
        if self.counts_only:
            config[wire.CFG_COUNTS_ONLY] = True
        return config

    def num_classes(self, arrays: ArrayRecord) -> int:
        """Hook: C, the length of every reply's class counts: the head's rows (a method
        without a classification head overrides this)."""
        return int(arrays[wire.HEAD_WEIGHT].shape[0])

    def prototype_state(self, arrays: ArrayRecord, tally: PrototypeTally) -> ArrayRecord:
        """Hook: the state after a prototype round: ``arrays`` plus the global class counts
        (``tally``: the training nodes' exact feature-sum total, unless ``counts_only``,
        and their class counts; ``tally.means()`` gives the prototypes)."""
        state = ArrayRecord({key: arrays[key] for key in arrays})
        state[wire.PROTO_COUNT] = Array(tally.counts)
        return state

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The train messages of round ``server_round``, from the global state that
        ``arrays`` (whole, or its trainable arrays only) and ``server_arrays`` make.

        First what a round needs before it samples, so that any loop that calls this
        (Flower's ``Strategy.start``, a wrapper that delegates here) runs it: the prototype
        round if the state holds no result of one yet (counted in round 0), a prototype
        refresh where ``refreshes_prototypes`` says so, and the admission of late nodes.
        """
        if self.secagg is not None and not self._own_loop:
            raise RuntimeError(
                "secure_aggregation = 'secaggplus' needs PromptFedAvg.start's round loop "
                "(a SecAgg+ training round is several exchanges; a loop that sends the train "
                "messages itself, such as Flower's Strategy.start, would send them in the "
                "clear): call strategy.start(...), or set secure_aggregation = 'off'"
            )
        self._caller_holds_server_arrays = any(self.server_only(key) for key in arrays)
        arrays = self.ensure_prototypes(grid, arrays)
        if self.refreshes_prototypes(server_round):
            arrays = self._keep_server_arrays(self.prototype_round(grid, arrays, server_round))
        if self.fraction_train == 0.0:
            self._global = arrays
            return []
        arrays = self._keep_server_arrays(self.admit_late_nodes(grid, arrays, server_round))
        self._global = arrays
        node_ids = self._sample(
            grid,
            self.fraction_train,
            self.min_train_nodes,
            exclude=self.held_out_nodes,
            verified_only=True,
        )
        log(INFO, "configure_train: sampled %d nodes", len(node_ids))
        messages = self._messages(arrays, config, node_ids, MessageType.TRAIN, server_round)
        if KEY_CLIPPING_NORM in config:
            messages = self._prototypes_apart(grid, messages, server_round)
        return messages

    def refreshes_prototypes(self, server_round: int) -> bool:
        """Hook: whether round ``server_round`` opens with a new prototype round, counted
        in that round (default: never; PEPFedPT: every ``prototype_refresh_every``)."""
        return False

    def _prototypes_apart(
        self, grid: Grid, messages: list[Message], server_round: int
    ) -> list[Message]:
        """Send the prototypes that train messages would carry in a QUERY of their own
        (task ``keep-prototypes``), before the train messages, which then carry one
        ArrayRecord only.

        Flower's client-side DP (``DifferentialPrivacyClientSideFixedClipping``, which puts
        ``clipping_norm`` in the config) runs ``fixedclipping_mod`` on the node, and that
        mod refuses a train message with more than one ArrayRecord. A node whose query
        fails gets no train message this round (it would lack the prototypes).
        """
        queries: list[Message] = []
        for msg in messages:
            if wire.PROTO not in msg.content:
                continue
            content = RecordDict(
                {
                    wire.CONFIG: ConfigRecord(
                        {
                            wire.CFG_TASK: wire.TASK_KEEP_PROTOTYPES,
                            wire.CFG_SERVER_ROUND: server_round,
                            wire.CFG_PROTO_VERSION: self._proto_version,
                        }
                    ),
                    wire.PROTO: msg.content[wire.PROTO],
                }
            )
            del msg.content[wire.PROTO]
            queries.append(
                Message(
                    content=content,
                    message_type=MessageType.QUERY,
                    dst_node_id=msg.metadata.dst_node_id,
                )
            )
        if not queries:
            return messages
        self._set_outgoing(queries)
        kept_by = self._kept_by(grid, queries, server_round)
        failed = {q.metadata.dst_node_id for q in queries} - kept_by
        for node in sorted(failed):
            self._node_proto_version.pop(node, None)
            log(
                WARNING,
                "round %d: node %d did not keep the prototypes; not trained",
                server_round,
                node,
            )
        kept = [msg for msg in messages if msg.metadata.dst_node_id not in failed]
        self._set_outgoing(kept)
        return kept

    def _kept_by(self, grid: Grid, queries: list[Message], server_round: int) -> set[int]:
        """The nodes that answered a ``keep-prototypes`` query with content."""
        replies = self._exchange(grid, queries, server_round, "query")
        return {self._sender(reply) for reply in replies if reply.has_content()}

    def server_only(self, key: str) -> bool:
        """Hook: whether state key ``key`` stays on the server (never sent as a trainable
        array, never expected back in a train reply)."""
        return key in wire.GLOBAL_ONLY_KEYS

    def check_train_metrics(self, metrics: MetricRecord, node: int) -> str | None:
        """Hook: a method's own check of node ``node``'s train reply metrics, after the
        base's checks passed (None: usable; else the reason, logged with the node)."""
        return None

    def prepare_merge(self, metrics: Sequence[MetricRecord]) -> None:
        """Hook: read what the method needs beyond the merged arrays from the valid
        replies' metrics (in node-id order, the order they were merged in); called once
        every valid reply is in the running sums, before ``merge_result``."""

    def merge_weight(self, key: str, metrics: MetricRecord) -> float | np.ndarray:
        """Hook: how much one valid reply's value of ``key`` weighs in its new global
        value: a number (every row alike; FedAvg's n_k, the default) or one weight per row
        (PEP-FedPT's n_{k,c} for class prompts)."""
        return float(metrics[wire.NUM_EXAMPLES])

    def merge_result(self, key: str, running: RunningMean) -> np.ndarray:
        """Hook: the new global value of ``key`` from the running weighted sum of the valid
        replies (default: the weighted mean; rows nobody weighed keep their value)."""
        return running.result()

    def merge(
        self,
        previous: Mapping[str, np.ndarray],
        updates: Sequence[Mapping[str, np.ndarray]],
        metrics: Sequence[MetricRecord],
    ) -> dict[str, np.ndarray]:
        """The new global value of every key of ``updates`` from these valid replies, as
        ``aggregate_train`` computes it (which adds each reply as soon as it is checked)."""
        running = self._running_sums(previous, list(updates[0]) if updates else [])
        for update, reply_metrics in zip(updates, metrics, strict=True):
            self._add_to_sums(running, update, reply_metrics)
        self.prepare_merge(metrics)
        return {key: self.merge_result(key, sums) for key, sums in running.items()}

    @staticmethod
    def _running_sums(
        previous: Mapping[str, np.ndarray], keys: Iterable[str]
    ) -> dict[str, RunningMean]:
        """One float64 running sum per key: memory is one state whatever the replies."""
        keys = list(keys)
        scratch = scratch_buffer(max((previous[key].size for key in keys), default=1))
        return {key: RunningMean(previous[key], scratch) for key in keys}

    def _add_to_sums(
        self,
        running: Mapping[str, RunningMean],
        update: Mapping[str, np.ndarray],
        metrics: MetricRecord,
    ) -> None:
        """Add one valid reply's arrays (views of its bytes, never copied) to the sums:
        all of them or, if any shape or weight is refused (ValueError), none."""
        pending = [
            (sums, update[key], self.merge_weight(key, metrics)) for key, sums in running.items()
        ]
        checked = [(sums, value, sums.check(value, weight)) for sums, value, weight in pending]
        for sums, value, weight in checked:
            sums.add_checked(value, weight)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply, then bound its update norm, then add it to the running sums,
        in node-id order: the result depends on the set of valid replies only, and no
        reply is ever copied or stacked, nor its decoded arrays kept between the passes.

        Two passes: the norm bound relative to the round (``update_norm_factor`` × the
        median update norm) needs every reply's norm before any reply is accepted. The
        first pass checks the reply's structure and counts and takes its norm against the
        arrays sent to its node; the second refuses an update beyond the bound, runs the
        method's own check and adds what passes.
        """
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        previous = record_arrays(self._global)
        expected = {k: v.shape for k, v in previous.items() if not self.server_only(k)}
        num_classes = self.num_classes(self._global)
        replies = self._in_node_order(replies)
        running = self._running_sums(previous, expected)
        norms_of: dict[int, float | None] = {}  # per node; its arrays are decoded again
        sent_to = {msg.metadata.dst_node_id: msg for msg in self._outgoing}

        def check(content: RecordDict, node: int) -> str | None:
            arrays: dict[str, np.ndarray] = {}
            reason = check_train_reply(
                content, expected, num_classes, decoded=arrays, dtypes=self.reply_dtypes
            )
            if reason:  # only a reply that passes has the records read below
                return reason
            reason = check_known_counts(
                content[wire.METRICS][wire.CLASS_COUNTS], self._node_counts.get(node)
            )
            if reason is None:
                sent = self._sent_arrays(sent_to.get(node))
                norms_of[node] = None if sent is None else update_norm(arrays, sent)
            return reason

        checked = self._accepted(replies, server_round, check)
        norms = [norm for norm in norms_of.values() if norm is not None]
        bound, why = norm_bound(norms, self.max_update_norm, self.update_norm_factor)

        def screen(content: RecordDict, node: int) -> str | None:
            norm, metrics = norms_of[node], content[wire.METRICS]
            reason = None if norm is None else check_update_norm(norm, bound, why)
            reason = reason or self.check_train_metrics(metrics, node)
            if reason is None:  # views of the reply's bytes again: nothing kept per reply
                self._add_to_sums(running, record_arrays(content[wire.ARRAYS]), metrics)
            return reason

        valid, metrics = self._accepted_train(
            server_round, checked, screen, self.kept_state, refused=len(replies) - len(checked)
        )
        if valid is None:
            return self._as_given(self._global), metrics
        state = self.aggregate_valid(server_round, valid, metrics, running)
        if state is None:  # the method refused the update: the round keeps the state
            self.remember_metrics(server_round, "train", metrics)
            return self._as_given(self._global), metrics
        client_metrics = [msg.content[wire.METRICS] for msg in valid]
        sizes = [float(m[wire.NUM_EXAMPLES]) for m in client_metrics]
        losses = [float(m.get(wire.TRAIN_LOSS, 0.0)) for m in client_metrics]
        metrics[wire.TRAIN_LOSS] = float(np.average(losses, weights=sizes))
        metrics[wire.NUM_EXAMPLES] = int(sum(sizes))
        if norms:
            metrics["median-update-norm"] = float(sorted(norms)[(len(norms) - 1) // 2])
        self.remember_metrics(server_round, "train", metrics)
        self._note_updated(server_round)
        return self._as_given(state), metrics

    def _note_updated(self, server_round: int) -> None:
        """This round changed the global state (a run in which none did fails loudly)."""
        if server_round not in self.updated_rounds:
            self.updated_rounds.append(server_round)

    @staticmethod
    def _sent_arrays(msg: Message | None) -> dict[str, np.ndarray] | None:
        """The arrays of a train message as sent (views, in the wire dtype), or None when
        it carried none (LocalOnly's nodes that keep their own state) or none was sent."""
        if msg is None or not msg.has_content():
            return None
        record = msg.content.get(wire.ARRAYS)
        return record_arrays(record) if isinstance(record, ArrayRecord) else None

    def aggregate_valid(
        self,
        server_round: int,
        valid: list[Message],
        metrics: MetricRecord,
        running: Mapping[str, RunningMean],
    ) -> ArrayRecord | None:
        """Hook: the new state from the round's valid train replies (at least
        min-train-nodes, in node-id order), or None to keep the previous one. ``running``:
        every trainable key's running weighted sum of those replies (``merge_weight``).
        Default: each key's ``merge_result``, the server-only keys kept. ``metrics`` (the
        round's reply counts) may be added to."""
        assert self._global is not None  # aggregate_train checked it
        state = ArrayRecord(
            {key: self._global[key] for key in self._global if self.server_only(key)}
        )
        self.prepare_merge([msg.content[wire.METRICS] for msg in valid])
        if self.reply_aggregation != "mean":
            replies = [record_arrays(msg.content[wire.ARRAYS]) for msg in valid]
            metrics_of = [msg.content[wire.METRICS] for msg in valid]
            for key, sums in running.items():
                state[key] = Array(
                    robust_value(
                        [reply[key] for reply in replies],
                        [self.merge_weight(key, m) for m in metrics_of],
                        sums.previous,
                        self.reply_aggregation,
                        self.trim_fraction,
                    )
                )
            return state
        for key, sums in running.items():
            state[key] = Array(self.merge_result(key, sums))
        return state

    # Hooks whose override a secure training round cannot honour: it sees no reply, only
    # the weighted totals (``secure_per_class`` stands in for ``merge_weight``).
    SECURE_BLOCKERS = (
        "aggregate_train",
        "aggregate_valid",
        "merge_result",
        "prepare_merge",
        "node_arrays",
        "check_train_metrics",
    )

    def _check_secure_hooks(self) -> None:
        """Refuse secure aggregation for a method whose aggregation needs single replies."""
        cls = type(self)
        found = [h for h in self.SECURE_BLOCKERS if getattr(cls, h) is not getattr(PromptFedAvg, h)]
        if (
            cls.merge_weight is not PromptFedAvg.merge_weight
            and cls.secure_per_class is PromptFedAvg.secure_per_class
        ):
            found.append("merge_weight")
        if found:
            raise ValueError(
                f"secure_aggregation = 'secaggplus' is not available for {cls.__name__}: its "
                f"{', '.join(found)} need each reply, and the server sees only totals"
            )

    def secure_per_class(self, key: str) -> bool:
        """Hook: under secure aggregation, whether key ``key``'s rows are weighted by each
        node's class counts n_{k,c} (True) or the whole array by n_k (False, FedAvg)."""
        return False

    def secure_train_round(
        self, grid: Grid, server_round: int, messages: list[Message]
    ) -> tuple[ArrayRecord, MetricRecord]:
        """One training round under SecAgg+ (strategies/secagg.py): the new state from the
        totals, or, with too few nodes left (SecAggError, logged), the previous state."""
        assert self._global is not None  # configure_train set it
        previous = record_arrays(self._global)
        keys = {key: self.secure_per_class(key) for key in previous if not self.server_only(key)}
        if not messages:
            return self._as_given(self._global), MetricRecord({"valid-replies": 0})
        try:
            update = secure_train(
                self.secagg,  # type: ignore[arg-type]
                messages,
                previous,
                keys,
                self.num_classes(self._global),
                lambda sent, _: self._exchange(grid, sent, server_round, "train"),
            )
        except SecAggError as exc:
            log(WARNING, "round %d: %s; %s stays as it was", server_round, exc, self.kept_state)
            metrics = MetricRecord({"valid-replies": 0, "dropped-replies": len(messages)})
            self.remember_metrics(server_round, "train", metrics)
            return self._as_given(self._global), metrics
        lost = update.result.dropped
        self.dropped.extend((server_round, node, why) for node, why in lost)
        state = ArrayRecord({k: self._global[k] for k in self._global if self.server_only(k)})
        for key, value in update.arrays.items():
            state[key] = Array(value)
        metrics = MetricRecord(
            {
                "valid-replies": len(update.result.contributors),
                "dropped-replies": len(lost),
                wire.TRAIN_LOSS: update.train_loss,
                wire.NUM_EXAMPLES: update.num_examples,
            }
        )
        self.remember_metrics(server_round, "train", metrics)
        self._note_updated(server_round)
        return self._as_given(state), metrics

    def _in_node_order(self, replies: Iterable[Message]) -> list[Message]:
        """The replies sorted by the client they answer for (``in_identity_order``), so
        that checks, logs and sums run in the same order however the replies arrived and
        whatever ids the nodes got this run."""
        replies = list(replies)
        rank = {
            node: i
            for i, node in enumerate(self.in_identity_order({self._sender(m) for m in replies}))
        }
        return sorted(replies, key=lambda msg: rank[self._sender(msg)])

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The evaluate messages of round ``server_round``, from the global state that
        ``arrays`` (whole, or its trainable arrays only) and ``server_arrays`` make."""
        arrays = self.ensure_prototypes(grid, arrays)
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = self._sample(
            grid, self.fraction_evaluate, self.min_evaluate_nodes, exclude=self.held_out_nodes
        )
        if self.held_out_nodes:  # sampled apart, at the same fraction, at least one
            held = self.in_identity_order(self.held_out_nodes & set(grid.get_node_ids()))
            size = min(len(held), max(int(len(held) * self.fraction_evaluate), 1))
            node_ids = self.in_identity_order(node_ids + self._rng.sample(held, size))
        if not evaluation_round(server_round, self.evaluate_every, self.num_rounds):
            # Drawn and not sent: the sampler's stream, and so which nodes train in later
            # rounds, is the same whatever fed.evaluate-every is.
            log(INFO, "configure_evaluate: none this round (every %d)", self.evaluate_every)
            return []
        log(INFO, "configure_evaluate: sampled %d nodes", len(node_ids))
        return self._messages(arrays, config, node_ids, MessageType.EVALUATE, server_round)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        valid = self._accepted(list(replies), server_round, lambda c, _: check_evaluate_reply(c))
        self._count_used(valid, "evaluated")
        if not valid:
            return None
        metrics = [msg.content[wire.METRICS] for msg in valid]
        correct = [int(m[wire.CORRECT]) for m in metrics]
        totals = [int(m[wire.NUM_EXAMPLES]) for m in metrics]
        held_out = [
            bool(m.get(wire.HELD_OUT, 0)) or self._sender(msg) in self.held_out_nodes
            for m, msg in zip(metrics, valid, strict=True)
        ]
        summary = evaluation_summary(correct, totals, held_out)
        summary.update(
            validation_summary(
                [m.get(wire.VAL_CORRECT) for m in metrics],  # type: ignore[misc]
                [m.get(wire.VAL_NUM_EXAMPLES) for m in metrics],  # type: ignore[misc]
                held_out,
            )
        )
        summary.update(
            ccmp_summary(
                [m.get(wire.CCMP_PRIOR_CORRECT) for m in metrics],  # type: ignore[misc]
                [m.get(wire.CCMP_UNIFORM_CORRECT) for m in metrics],  # type: ignore[misc]
                totals,
                held_out,
            )
        )
        record = MetricRecord({key: float(value) for key, value in summary.items()})
        # Per client, in partition-id order where the replies carry it, so that e.g. one
        # client per DomainNet domain gives the per-domain accuracies.
        pids = [int(m.get(wire.PARTITION_ID, -1)) for m in metrics]
        order = sorted(range(len(valid)), key=lambda i: pids[i])
        for flag, prefix in ((False, ""), (True, "held-out-")):
            chosen = [i for i in order if held_out[i] == flag]
            if chosen:
                record[f"{prefix}client-accuracies"] = [
                    correct[i] / totals[i] if totals[i] else 0.0 for i in chosen
                ]
                record[f"{prefix}client-partition-ids"] = [pids[i] for i in chosen]
        self.remember_metrics(server_round, "evaluate", record)
        return record

    # ------------------------------------------------------------------ helpers
    def _exchange(
        self,
        grid: Grid,
        messages: Iterable[Message],
        server_round: int,
        phase: str,
        consume: Callable[[Message], bool] | None = None,
    ) -> list[Message]:
        """Send one phase's messages and wait for the replies, counting the array bytes.

        As ``grid.send_and_receive`` (every reply, or what came within ``self.timeout``),
        but by ``push_messages`` and polling ``pull_messages``, so that a person watching
        sees the replies arrive (``round 3 train: 2/3 replies, 41 s``) instead of a silent
        minute. Each node's failures (error replies, no reply) are kept in
        ``node_replies``, so that a node that never once answered can be named.

        ``consume``: called with each reply as it arrives (its bytes already counted);
        a reply it returns False for is not kept, so that a phase that folds its replies
        into a running total (the prototype round) holds one at a time. Returns the kept
        replies in the order sent.
        """
        messages = self._to_wire_dtype(list(messages))
        arrived: list[tuple[str, int, str | None]] = []  # (answers, source, error or None)
        received = 0

        def take(reply: Message) -> bool:
            nonlocal received
            received += traffic.content_nbytes(reply.content) if reply.has_content() else 0
            error = None
            if reply.has_error():
                error = one_line(reply.error.reason)
                if self.on_client_error is not None:
                    full = strip_ansi(reply.error.reason)
                    self.on_client_error(server_round, self._sender(reply), phase, full)
            arrived.append((reply.metadata.reply_to_message_id, reply.metadata.src_node_id, error))
            return consume is None or consume(reply)

        batch = self.pull_batch if consume is not None else max(len(messages), 1)
        replies = self._push_and_pull(grid, messages, server_round, phase, take, batch)
        self._count_bytes(server_round, phase, traffic.messages_nbytes(messages), received)
        self._note_node_replies(server_round, phase, messages, arrived)
        return replies

    @property
    def reply_dtypes(self) -> tuple[np.dtype, ...]:
        """The float dtypes a train reply's arrays may have (``wire_dtype``)."""
        return REPLY_DTYPES[str(self.wire_dtype)]

    def _to_wire_dtype(self, messages: list[Message]) -> list[Message]:
        """Every float32 array of the messages in ``wire_dtype`` (no-op for float32).

        In place, in the messages' own records (never the global state's): an array
        that several messages share (the trainable state, the prototypes) is cast once.
        """
        if self.wire_dtype == np.float32:
            return messages
        cast: dict[int, Array] = {}
        for msg in messages:
            if not msg.has_content():
                continue
            for record in msg.content.array_records.values():
                for key, array in list(record.items()):
                    if array.dtype != "float32":
                        continue
                    if id(array) not in cast:
                        value = array_view(array).astype(self.wire_dtype)
                        cast[id(array)] = Array(value)
                    record[key] = cast[id(array)]
        return messages

    def next_poll_pause(self, got_replies: bool, elapsed: float, polling: float = 0.0) -> float:
        """Seconds until the next poll of a phase ``elapsed`` s old: the shortest pause
        while replies come in, else a pause that grows with the phase, capped; and never
        shorter than the last poll took (``polling``: its pulls and what was done with the
        replies), so that polling holds the SuperLink at most half the time (a prototype
        round of 10,000 nodes pulls in 100 batches per poll)."""
        low, high = self.poll_seconds
        pause = low if got_replies else min(max(low, self.poll_fraction * elapsed), high)
        return max(pause, polling)

    def _push_and_pull(
        self,
        grid: Grid,
        messages: list[Message],
        server_round: int,
        phase: str,
        take: Callable[[Message], bool],
        batch: int,
    ) -> list[Message]:
        """Push the messages, then pull until every one is answered or the timeout; each
        reply goes to ``take`` as it arrives and is kept if it returns True. Replies are
        pulled for at most ``batch`` messages at a time, so that a phase whose replies
        are consumed holds no more than that many at once."""
        if not messages:
            return []
        pushed = [message_id for message_id in grid.push_messages(messages) if message_id]
        self._set_outgoing(messages)  # the grid gave them their ids: look them up anew
        pending = set(pushed)
        start = last_line = time.monotonic()
        deadline = start + self.timeout
        replies: list[Message] = []
        arrived = 0
        while pending:
            waiting = [i for i in pushed if i in pending]
            got_any = False
            polled_at = time.monotonic()
            for first in range(0, len(waiting), batch):
                for reply in grid.pull_messages(waiting[first : first + batch]):
                    pending.discard(reply.metadata.reply_to_message_id)
                    arrived += 1
                    got_any = True
                    if take(reply):
                        replies.append(reply)
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            if now - last_line >= self.progress_seconds:
                log(
                    INFO,
                    "round %d %s: %d/%d replies, %.0f s",
                    server_round,
                    phase,
                    arrived,
                    len(messages),
                    now - start,
                )
                last_line = now
            pause = self.next_poll_pause(got_any, now - start, now - polled_at)
            time.sleep(min(pause, deadline - now))
        elapsed = time.monotonic() - start
        log(
            INFO if not pending else WARNING,
            "round %d %s: %d/%d replies in %.1f s%s",
            server_round,
            phase,
            arrived,
            len(messages),
            elapsed,
            f" (fed.round-timeout = {self.timeout:g} s; the others are dropped)" if pending else "",
        )
        # In the order sent, not of arrival: aggregation sums in a fixed order, so that a
        # run (and a resumed one) is repeatable to the bit.
        order = {message_id: i for i, message_id in enumerate(pushed)}
        replies.sort(key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))
        return replies

    def _note_node_replies(
        self,
        server_round: int,
        phase: str,
        sent: list[Message],
        arrived: list[tuple[str, int, str | None]],
    ) -> None:
        """Per node: messages sent, how many failed (error or no reply), how many train or
        evaluate messages it answered with content, and its last failure. ``arrived``: per
        reply, the id of the message it answers, its source node and its error (None:
        content); taken in the order sent, whatever order they came in."""
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        order = {message_id: i for i, message_id in enumerate(node_of)}
        answered: set[int] = set()
        for message_id, source, error in sorted(
            arrived, key=lambda a: (order.get(a[0], len(order)), a[1])
        ):
            node = node_of.get(message_id, source)
            answered.add(node)
            entry = self._node_entry(node)
            if error is not None:
                entry["failed"] += 1
                entry["last-failure"] = f"round {server_round} {phase}: {error}"
            elif phase in ("train", "evaluate"):
                entry["answered-work"] += 1
        for node in set(node_of.values()) - answered:
            entry = self._node_entry(node)
            entry["failed"] += 1
            entry["last-failure"] = (
                f"round {server_round} {phase}: no reply within {self.timeout:g} s"
            )
        for node in node_of.values():
            self._node_entry(node)["sent"] += 1

    def _node_entry(self, node: int) -> dict[str, Any]:
        entry = self.node_replies.setdefault(
            node, {"sent": 0, "failed": 0, "answered-work": 0, "last-failure": ""}
        )
        entry.setdefault("trained", 0)  # an entry from a checkpoint written before these
        entry.setdefault("evaluated", 0)
        return entry

    def _count_used(self, valid: Iterable[Message], what: str) -> None:
        """Per node, how many of its train (``trained``) or evaluate (``evaluated``)
        replies passed every check, so that results say plainly which node did which."""
        for msg in valid:
            self._node_entry(self._sender(msg))[what] += 1

    def _count_bytes(self, server_round: int, phase: str, down: int, up: int) -> None:
        """Add ``down`` and ``up`` array bytes to the round's ``<phase>/bytes-down|up`` and
        its ``bytes-down|up`` totals."""
        entry = self.round_metrics.setdefault(server_round, {})
        for key, nbytes in ((traffic.BYTES_DOWN, down), (traffic.BYTES_UP, up)):
            for name in (f"{phase}/{key}", key):
                entry[name] = int(entry.get(name, 0)) + nbytes  # type: ignore[arg-type]

    def remember_metrics(self, server_round: int, phase: str, metrics: MetricRecord) -> None:
        """Keep ``metrics`` in ``round_metrics[server_round]`` as ``<phase>/<key>``."""
        entry = self.round_metrics.setdefault(server_round, {})
        for key, value in metrics.items():
            entry[f"{phase}/{key}"] = value  # type: ignore[assignment]

    def _messages(
        self,
        arrays: ArrayRecord,
        config: ConfigRecord,
        node_ids: list[int],
        message_type: str,
        server_round: int,
    ) -> list[Message]:
        """Per node: its ``node_arrays`` and the config, plus its ``extra_content``."""
        config[wire.CFG_SERVER_ROUND] = server_round
        config[wire.CFG_PROTO_VERSION] = self._proto_version
        trainable = ArrayRecord({key: arrays[key] for key in arrays if not self.server_only(key)})
        messages = []
        for node_id in node_ids:
            content = RecordDict()
            node_arrays = self.node_arrays(arrays, trainable, node_id, message_type)
            if node_arrays is not None:
                content[wire.ARRAYS] = node_arrays
            content[wire.CONFIG] = config
            self.extra_content(content, arrays, node_id)
            messages.append(
                Message(content=content, message_type=message_type, dst_node_id=node_id)
            )
        self._set_outgoing(messages)
        return messages

    def node_arrays(
        self, arrays: ArrayRecord, trainable: ArrayRecord, node_id: int, message_type: str
    ) -> ArrayRecord | None:
        """Hook: the arrays of one node's train/evaluate message (``message_type``), from
        the global state ``arrays``; None sends none. Default: ``trainable``, the state
        without its server-only keys (one record shared by every message)."""
        return trainable

    def extra_content(self, content: RecordDict, arrays: ArrayRecord, node_id: int) -> None:
        """Hook: add method-specific records to one node's train/evaluate message."""

    def _set_outgoing(self, messages: list[Message]) -> None:
        """The messages of the phase in flight; who each reply answers for is looked up
        from them (by message id, which the grid gives a message when it is pushed)."""
        self._outgoing = messages
        self._sent_ids = None

    def _sent_as(self, reply: Message) -> tuple[int, int]:
        """(index among the messages sent, node) of the message ``reply`` answers.

        The node is not always ``src_node_id``: when a node dies, the SuperLink itself
        answers with a "node unavailable" error whose source is the SuperLink. The grid
        gives every sent message its id in place, and every reply names the id it
        answers. A dict built once per phase: a linear search per reply was O(N^2).
        """
        if self._sent_ids is None:
            self._sent_ids = {
                msg.metadata.message_id: (i, msg.metadata.dst_node_id)
                for i, msg in enumerate(self._outgoing)
            }
        found = self._sent_ids.get(reply.metadata.reply_to_message_id)
        return found if found is not None else (len(self._sent_ids), reply.metadata.src_node_id)

    def _sender(self, reply: Message) -> int:
        """The node a reply answers for (``_sent_as``)."""
        return self._sent_as(reply)[1]

    def _judge(
        self, msg: Message, node: int, check: Callable[[RecordDict, int], str | None]
    ) -> str | None:
        """Why node ``node``'s reply cannot be used (None: it can): an error reply, or
        what ``check(content, node)`` says; a check that raises names the exception."""
        if msg.has_error():
            # The node may have lost its state (restart): resend the prototypes next time.
            self._node_proto_version.pop(node, None)
            return f"error reply: {one_line(msg.error.reason)}"
        try:
            return check(msg.content, node)
        except Exception as exc:  # a malformed reply must never stop the round
            return f"malformed reply: {exc!r}"

    def _accepted(
        self,
        replies: Iterable[Message],
        server_round: int,
        check: Callable[[RecordDict, int], str | None],
    ) -> list[Message]:
        """Replies that pass ``check(content, node)``; every other one is logged with its
        node and reason."""
        accepted = []
        for msg in replies:
            node = self._sender(msg)
            reason = self._judge(msg, node, check)
            if reason is None:
                accepted.append(msg)
            else:
                self.dropped.append((server_round, node, reason))
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
        return accepted

    def _accepted_train(
        self,
        server_round: int,
        replies: list[Message],
        check: Callable[[RecordDict, int], str | None],
        kept: str,
        refused: int = 0,
    ) -> tuple[list[Message] | None, MetricRecord]:
        """The valid train replies and the round's reply counts (``refused``: replies an
        earlier pass already dropped); ``None`` (logged, round remembered) when fewer than
        min-train-nodes are valid and ``kept`` stays as it was."""
        valid = self._accepted(replies, server_round, check)
        self._count_used(valid, "trained")
        metrics = MetricRecord(
            {"valid-replies": len(valid), "dropped-replies": refused + len(replies) - len(valid)}
        )
        if len(valid) >= max(self.min_train_nodes, 1):
            return valid, metrics
        log(
            WARNING,
            "round %d: %d valid replies, fewer than min-train-nodes = %d; %s stays as it was",
            server_round,
            len(valid),
            self.min_train_nodes,
            kept,
        )
        self.remember_metrics(server_round, "train", metrics)
        return None, metrics

    def _wait_for_nodes(self, grid: Grid, minimum: int) -> list[int]:
        """The connected node ids, once at least ``minimum`` are connected.

        Logs progress (at once, when the count changes, every 10 s) and gives up after
        ``wait_timeout`` seconds with a TimeoutError that says what it waited for, so that
        a deployment short of SuperNodes fails instead of waiting forever.
        """
        start = time.monotonic()
        logged_at, logged_count = -math.inf, -1
        while len(nodes := sorted(grid.get_node_ids())) < minimum:
            waited = time.monotonic() - start
            keys = ", ".join(
                f"{name}={getattr(self, name)}"
                for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
                if getattr(self, name) == minimum
            )
            if waited >= self.wait_timeout:
                raise TimeoutError(
                    f"waited {waited:.0f} s for nodes: {len(nodes)} connected, {minimum} "
                    f"required ({keys}); start more SuperNodes, lower those minimums or "
                    f"raise the wait timeout (wait_timeout = {self.wait_timeout:g} s)"
                )
            if len(nodes) != logged_count or waited - logged_at >= 10.0:
                log(
                    INFO,
                    "waiting for nodes: %d connected, %d required (%s); %.0f of %.0f s",
                    len(nodes),
                    minimum,
                    keys,
                    waited,
                    self.wait_timeout,
                )
                logged_at, logged_count = waited, len(nodes)
            time.sleep(min(1.0, max(self.wait_timeout - waited, 0.01)))
        return nodes

    def _sample(
        self,
        grid: Grid,
        fraction: float,
        minimum: int,
        exclude: set[int] | None = None,
        verified_only: bool = False,
    ) -> list[int]:
        """Seeded sampling of max(fraction * candidates, minimum) nodes, not in ``exclude``
        (and, with ``verified_only``, only nodes whose class counts were verified)."""
        connected = self._wait_for_nodes(grid, max(self.min_available_nodes, minimum))
        candidates = self.in_identity_order(
            node
            for node in connected
            if node not in (exclude or set()) and (not verified_only or node in self._node_counts)
        )
        size = min(len(candidates), max(int(len(candidates) * fraction), minimum))
        return self.in_identity_order(self._rng.sample(candidates, size))

    def in_identity_order(self, nodes: Iterable[int]) -> list[int]:
        """``nodes`` sorted by the client each one is: its partition id where the prototype
        round (or late-node admission) learnt one, then nodes without one by node id.

        Sampling draws over this order, never over raw node ids: Flower gives SuperNodes
        new random ids in every simulation and a restarted SuperNode a new id, so the same
        seed would pick other clients in another run or after a resume, while a node's
        partition is its data and stays.
        """
        partition_of = {int(entry["node-id"]): pid for pid, entry in self.partitions.items()}  # type: ignore[call-overload]

        def identity(node: int) -> tuple[int, int]:
            pid = partition_of.get(node)
            return (0, pid) if pid is not None else (1, node)

        return sorted(nodes, key=identity)
