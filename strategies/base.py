"""PromptFedAvg: the FedAvg base every prompt-tuning method here subclasses (FL-bench style).

Its parts, one concern per module: ``strategies/exchange.py`` (``GridExchange``: push,
poll, progress, bytes and each node's reply log), ``strategies/admission.py``
(``NodeAdmission``: the prototype round, late nodes, the registry of verified counts and
partitions), ``strategies/loop.py`` (``RoundLoop``: ``start``, the SecAgg+ training round,
``checkpoint``/``restore``); this module holds sampling, the hooks, the reply checks and
aggregation.

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
``dp_refusal(client_side)`` why Flower's DP wrappers (``client_side``: the client-side ones,
                           whose clipping mods take one ArrayRecord per train message) cannot
                           protect this method, or None (default: they can; LocalOnly and
                           PFedPG: never; SGPT: not client-side). ``configure_train``
                           refuses such a run before anything is sent (strategies/dp.py).
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
``unchanged_state()``      what ``aggregate_train`` returns for a round that keeps the
                           state (LocalOnly: every round).
``proto_version()`` / ``prototypes_to_send(node_id)``
                           the prototype version messages name; whether a message to a node
                           must carry the prototypes (noted as sent).

Round loops. ``start`` is this project's loop (the ServerApp's: the whole state carried
from round to round, the prototype round before the central evaluation of round 0,
resume at ``start_round``, bytes per phase, SecAgg+ training rounds). Flower's own
``Strategy.start``, and Flower's wrappers whose ``start`` is it (the DP wrappers, fixed
and adaptive clipping), run the strategy too: ``configure_train`` runs the prototype
round when the state lacks its result, and late-node admission, whatever loop calls it, and
``aggregate_train`` returns the state in the form the loop gave it (the trainable arrays
only, when that is what the loop carries), the server arrays staying in
``server_arrays``. SecAgg+ is refused outside ``start``.
"""

from __future__ import annotations

import inspect
import math
import random
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
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies import wire
from strategies.admission import NodeAdmission
from strategies.aggregation import (
    RunningMean,
    ccmp_summary,
    evaluation_summary,
    robust_value,
    scratch_buffer,
    validation_summary,
)
from strategies.dp import check_dp_wrapper
from strategies.errors import one_line
from strategies.exchange import GridExchange
from strategies.loop import RoundLoop
from strategies.options import ROBUST_AGGREGATIONS, WIRE_DTYPES
from strategies.records import Partitions
from strategies.secagg import SecAggParams
from strategies.secagg import secure_aggregation as secure_aggregation_params
from strategies.validation import (
    check_evaluate_reply,
    check_known_counts,
    check_train_reply,
    check_update_norm,
    integer,
    norm_bound,
    number,
    optional_count,
    record_arrays,
    reply_arrays,
    reply_metrics,
    update_norm,
)

# Which float dtypes a train reply may carry, per ``wire_dtype`` (strategies.options.WIRE_DTYPES).
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


def evaluation_round(server_round: int, every: int, num_rounds: int) -> bool:
    """Whether round ``server_round`` of ``num_rounds`` evaluates, clients and server alike:
    every ``every``-th round, the initial state (round 0) and always the last round."""
    if every < 1:
        raise ValueError(f"every = {every}: evaluate every 1 or more rounds")
    return server_round % every == 0 or server_round == num_rounds


class PromptFedAvg(RoundLoop, NodeAdmission, GridExchange, FedAvg):
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
        # that each finished round can be recorded as soon as it ends (``RoundEnd``).
        self.round_metrics: dict[int, dict[str, float | list[float]]] = {}
        # Rounds whose train replies were aggregated into a new state (not kept as it was),
        # so that a run in which none was can say so and fail.
        self.updated_rounds: list[int] = []
        # From the latest prototype round: nodes that never train, and per partition id
        # what its node reported (node id, held-out flag, train class counts).
        self.held_out_nodes: set[int] = set()
        self.partitions: Partitions = {}
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

    def unchanged_state(self) -> ArrayRecord:
        """What ``aggregate_train`` returns for a round that keeps the global state: the
        state ``configure_train`` built the round from (late nodes' counts folded in), in
        the form the loop carries."""
        if self._global is None:
            raise RuntimeError("unchanged_state called before configure_train")
        return self._as_given(self._global)

    @property
    def global_arrays(self) -> ArrayRecord | None:
        """The whole global state of the round in flight, as ``configure_train`` built its
        messages from it (None before the first ``configure_train``); ``aggregate_train``
        makes the new state from it and the replies."""
        return self._global

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
        check_dp_wrapper(self, config)
        self._caller_holds_server_arrays = any(self.server_only(key) for key in arrays)
        arrays = self.ensure_prototypes(grid, arrays)
        if self.refreshes_prototypes(server_round):
            arrays = self._keep_server_arrays(self.prototype_round(grid, arrays, server_round))
        # Before the fraction-0 return too: a resumed run's nodes come back under new ids,
        # and evaluation samples by the partitions this admission learns.
        arrays = self._keep_server_arrays(self.admit_late_nodes(grid, arrays, server_round))
        self._global = arrays
        if self.fraction_train == 0.0:
            return []
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

    def server_only(self, key: str) -> bool:
        """Hook: whether state key ``key`` stays on the server (never sent as a trainable
        array, never expected back in a train reply)."""
        return key in wire.GLOBAL_ONLY_KEYS

    def dp_refusal(self, client_side: bool) -> str | None:
        """Hook: why Flower's DP wrappers cannot protect this method (None: they can), for
        the client-side ones (``client_side``) or the server-side ones. They clip each
        reply against the arrays their loop carries and add noise to the aggregate."""
        return None

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
        return number(metrics[wire.NUM_EXAMPLES])

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
        for update, one_reply in zip(updates, metrics, strict=True):
            self._add_to_sums(running, update, one_reply)
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
            norm, metrics = norms_of[node], reply_metrics(content)
            reason = None if norm is None else check_update_norm(norm, bound, why)
            reason = reason or self.check_train_metrics(metrics, node)
            if reason is None:  # views of the reply's bytes again: nothing kept per reply
                self._add_to_sums(running, record_arrays(reply_arrays(content)), metrics)
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
        client_metrics = [reply_metrics(msg.content) for msg in valid]
        sizes = [number(m[wire.NUM_EXAMPLES]) for m in client_metrics]
        losses = [number(m.get(wire.TRAIN_LOSS, 0.0)) for m in client_metrics]
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
        self.prepare_merge([reply_metrics(msg.content) for msg in valid])
        if self.reply_aggregation != "mean":
            replies = [record_arrays(reply_arrays(msg.content)) for msg in valid]
            metrics_of = [reply_metrics(msg.content) for msg in valid]
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
        metrics = [reply_metrics(msg.content) for msg in valid]
        correct = [integer(m[wire.CORRECT]) for m in metrics]
        totals = [integer(m[wire.NUM_EXAMPLES]) for m in metrics]
        held_out = [
            bool(m.get(wire.HELD_OUT, 0)) or self._sender(msg) in self.held_out_nodes
            for m, msg in zip(metrics, valid, strict=True)
        ]
        summary = evaluation_summary(correct, totals, held_out)
        summary.update(
            validation_summary(
                [optional_count(m, wire.VAL_CORRECT) for m in metrics],
                [optional_count(m, wire.VAL_NUM_EXAMPLES) for m in metrics],
                held_out,
            )
        )
        summary.update(
            ccmp_summary(
                [optional_count(m, wire.CCMP_PRIOR_CORRECT) for m in metrics],
                [optional_count(m, wire.CCMP_UNIFORM_CORRECT) for m in metrics],
                totals,
                held_out,
            )
        )
        record = MetricRecord({key: float(value) for key, value in summary.items()})
        # Per client, in partition-id order where the replies carry it, so that e.g. one
        # client per DomainNet domain gives the per-domain accuracies.
        pids = [integer(m.get(wire.PARTITION_ID, -1)) for m in metrics]
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

    @property
    def reply_dtypes(self) -> tuple[np.dtype, ...]:
        """The float dtypes a train reply's arrays may have (``wire_dtype``)."""
        return REPLY_DTYPES[str(self.wire_dtype)]

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

    def _judge(
        self, msg: Message, node: int, check: Callable[[RecordDict, int], str | None]
    ) -> str | None:
        """Why node ``node``'s reply cannot be used (None: it can): an error reply, or
        what ``check(content, node)`` says; a check that raises names the exception."""
        if msg.has_error():
            # The node may have lost its state (restart): resend the prototypes next time.
            self._node_proto_version.pop(node, None)
            return f"error reply: {one_line(msg.error.reason or '')}"
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
