"""PromptFedAvg: the FedAvg base every prompt-tuning method here subclasses (FL-bench style).

Its parts, one concern per module (each a mixin of ``PromptFedAvg``):
``strategies/exchange.py`` (``GridExchange``: push, poll, progress, bytes and each node's
reply log), ``strategies/admission.py`` (``NodeAdmission``: the prototype round, late
nodes, the registry of verified counts and partitions), ``strategies/loop.py``
(``RoundLoop``: ``start``, the SecAgg+ training round, ``checkpoint``/``restore``),
``strategies/state.py`` (``GlobalState``: the state a loop carries, the server arrays),
``strategies/replies.py`` (``ReplyChecks``: judging, keeping and logging replies),
``strategies/train.py`` (``TrainAggregation``: ``aggregate_train``, the running sums and
the merge hooks), ``strategies/evaluate.py`` (``EvaluatePhase``: ``configure_evaluate``,
``aggregate_evaluate``), ``strategies/messages.py`` (``NodeMessages``: seeded sampling,
each node's message and its hooks); ``strategies/overrides.py`` checks what a subclass
overrides. What the parts use of one another is declared once, in
``strategies/parts.py``. This module holds the options and ``configure_train``.

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
                           ``tally``: a ``strategies.tally.PrototypeTally``, the
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

import math
import random
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies import wire
from strategies.admission import NodeAdmission
from strategies.dp import check_dp_wrapper
from strategies.evaluate import EvaluatePhase, evaluation_round
from strategies.exchange import GridExchange
from strategies.loop import RoundLoop
from strategies.messages import NodeMessages
from strategies.options import ROBUST_AGGREGATIONS, WIRE_DTYPES
from strategies.overrides import check_hook_definitions, overridden, secure_blockers
from strategies.records import Partitions
from strategies.replies import ReplyChecks
from strategies.secagg import SecAggParams
from strategies.secagg import secure_aggregation as secure_aggregation_params
from strategies.state import GlobalState
from strategies.train import TrainAggregation

# evaluation_round: the ServerApp reads it from here too.
__all__ = ["PromptFedAvg", "evaluation_round"]


class PromptFedAvg(
    RoundLoop,
    NodeAdmission,
    EvaluatePhase,
    TrainAggregation,
    ReplyChecks,
    GlobalState,
    NodeMessages,
    GridExchange,
    FedAvg,
):
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
        SecAgg+ (strategies/secagg/): the prototype round's counts and feature sums
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
        (``strategies.robust.robust_value``; ``trim_fraction`` of each end left out),
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
        check_hook_definitions(cls)

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
        own = overridden(type(self), PromptFedAvg, ("merge_result", "aggregate_valid"))
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
        # SecAgg+ parameters, or None: plain replies (strategies/secagg/).
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
        wrapper = check_dp_wrapper(self, config)
        # ``rounds`` accounts its own DP rounds; another loop's are accounted per round.
        if self._own_loop or wrapper is None:
            self.dp_pending = None
        else:
            self.dp_pending = (wrapper, wrapper.clipping_norm)
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
        if KEY_CLIPPING_NORM in config and self.secagg is None:  # SecAgg+ needs no mod
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

    def _check_secure_hooks(self) -> None:
        """Refuse secure aggregation for a method whose aggregation needs single replies."""
        found = secure_blockers(type(self), PromptFedAvg)
        if found:
            raise ValueError(
                f"secure_aggregation = 'secaggplus' is not available for "
                f"{type(self).__name__}: its "
                f"{', '.join(found)} need each reply, and the server sees only totals"
            )
