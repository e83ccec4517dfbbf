"""ClientApp for PEP-FedPT and the baselines (Message API).

``cfg.method`` picks the client routine (``pep_fedpt.methods.CLIENTS``); the handlers
below are the same for every method.

``@app.query``    prototype round: per-class feature sums and counts (only the counts when
                  the query sets ``counts-only``: the baselines' census).
``@app.train``    E local epochs on this node's partition; returns prompts, head, counts.
``@app.evaluate`` accuracy on this node's local test split with its own prior.

A held-out partition (``data.held-out-fraction``) says so in its prototype and evaluate
replies and refuses to train.

The node learns its partition from ``node_config`` (``partition-id``, ``num-partitions``,
and optionally ``data-dir``, which overrides the run config's ``data.data-dir``, and
``cache-dir``, the node-local z(x) cache folder, which overrides the run config's);
the global prototypes arrive once per version and are kept in ``context.state``; SGPT's
group selections so far (``group.count``) come with every message.
A ``local`` (local-only) node keeps its own trained prompts and head in ``context.state``
too: it trains and evaluates them, never the global state, once it has trained. A
``pfedpg`` node keeps only its head there: the prompt is the one the server generated for
it (``PromptClient.personal_arrays`` says which arrays a node keeps).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pep_fedpt.config import RunConfig
from pep_fedpt.feature_cache import resolve_cache_dir
from pep_fedpt.methods import PromptClient, client_for
from strategies import wire

app = ClientApp()

_STATE_PROTO = "pep-fedpt.proto"
_STATE_PROTO_VERSION = "pep-fedpt.proto-version"
_STATE_PERSONAL = "pep-fedpt.personal"  # a local-only node's own trained state
_STATE_PERSONAL_BEFORE = "pep-fedpt.personal-before"  # ... as its latest round began
_STATE_PERSONAL_ROUND = "pep-fedpt.personal-round"


def _client(context: Context) -> PromptClient:
    node = context.node_config
    missing = [k for k in ("partition-id", "num-partitions") if k not in node]
    if missing:
        raise ValueError(
            f"node config lacks {missing}: start the SuperNode with "
            "--node-config 'partition-id=K num-partitions=N'"
        )
    cfg = RunConfig.from_flat(context.run_config)
    if node.get("data-dir"):
        # On real hosts each SuperNode names its own data folder (--node-config
        # 'data-dir="/data"'); it wins over the run config's data.data-dir.
        data = dataclasses.replace(cfg.data, data_dir=str(node["data-dir"]))
        cfg = dataclasses.replace(cfg, data=data)
    cache_dir = resolve_cache_dir(cfg.cache_dir, node.get("cache-dir"))
    return client_for(cfg, int(node["partition-id"]), int(node["num-partitions"]), cache_dir)


def _prototypes(msg: Message, context: Context) -> np.ndarray:
    """The global μ: from this message if it carries them, else from the node's state."""
    config = msg.content[wire.CONFIG]
    version = int(config.get(wire.CFG_PROTO_VERSION, 0))
    if wire.PROTO in msg.content:
        context.state[_STATE_PROTO] = ArrayRecord(
            {wire.PROTO_MEAN: msg.content[wire.PROTO][wire.PROTO_MEAN]}
        )
        context.state[_STATE_PROTO_VERSION] = ConfigRecord({"version": version})
    stored = context.state.get(_STATE_PROTO_VERSION)
    if stored is None or int(stored["version"]) != version:
        have = None if stored is None else int(stored["version"])
        raise RuntimeError(f"this node holds prototypes v{have}, the server uses v{version}")
    return context.state[_STATE_PROTO][wire.PROTO_MEAN].numpy()


def _arrays(msg: Message, context: Context, client: PromptClient) -> dict[str, np.ndarray]:
    if wire.ARRAYS not in msg.content:
        # local-only: the server sends no state to a node it believes holds its own
        if client.personal and _STATE_PERSONAL in context.state:
            return {}
        raise RuntimeError(
            f"the message carries no {wire.ARRAYS!r} and this node holds no state of its own "
            "(restarted?); the server sends the state again after this error"
        )
    return {key: array.numpy() for key, array in msg.content[wire.ARRAYS].items()}


def _own_arrays(msg: Message, context: Context, client: PromptClient) -> dict[str, np.ndarray]:
    """The state to evaluate: the message's, with a personal node's own arrays in place of
    the message's once it has them."""
    arrays = _arrays(msg, context, client)
    if client.personal and _STATE_PERSONAL in context.state:
        arrays.update(_numpy(context.state[_STATE_PERSONAL]))
    return arrays


def _start_of_round(
    msg: Message, context: Context, client: PromptClient, server_round: int
) -> dict[str, np.ndarray]:
    """The state to train from: the message's, with a personal node's own arrays in their
    place. Asked again for a round it already trained (the server restarted mid-round), a
    personal node starts again from that round's starting point, so that a resumed run
    matches an uninterrupted one."""
    arrays = _arrays(msg, context, client)
    if not client.personal or _STATE_PERSONAL not in context.state:
        return arrays
    if int(context.state[_STATE_PERSONAL_ROUND]["round"]) == server_round:
        arrays.update(_numpy(context.state[_STATE_PERSONAL_BEFORE]))
    else:
        arrays.update(_numpy(context.state[_STATE_PERSONAL]))
    return arrays


def _keep_personal(
    context: Context,
    client: PromptClient,
    start: dict[str, np.ndarray],
    trained: dict[str, np.ndarray],
    server_round: int,
) -> None:
    previous = context.state.get(_STATE_PERSONAL_ROUND)
    if previous is None or int(previous["round"]) != server_round:
        # a new round: what it started from is needed again if the round is retried
        before = client.personal_arrays(start)
        context.state[_STATE_PERSONAL_BEFORE] = ArrayRecord(
            {k: Array(v) for k, v in before.items()}
        )
    own = client.personal_arrays(trained)
    context.state[_STATE_PERSONAL] = ArrayRecord({k: Array(v) for k, v in own.items()})
    context.state[_STATE_PERSONAL_ROUND] = ConfigRecord({"round": server_round})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in record.items()}


def _global_extra(msg: Message, context: Context, client: PromptClient) -> np.ndarray | None:
    """What beyond the arrays the method needs from the server: PEP-FedPT's prototypes,
    SGPT's group selections so far (``group.count``, in every message)."""
    if client.uses_prototypes:
        return _prototypes(msg, context)
    if client.uses_group_counts:
        if wire.GROUP not in msg.content:
            raise ValueError(
                f"method {client.cfg.method!r} needs the record {wire.GROUP!r} "
                f"({wire.GROUP_COUNT}) in every message; is the server running SGPT?"
            )
        return msg.content[wire.GROUP][wire.GROUP_COUNT].numpy()
    return None


@app.query()
def prototypes(msg: Message, context: Context) -> Message:
    task = msg.content[wire.CONFIG].get(wire.CFG_TASK)
    if task != wire.TASK_PROTOTYPES:
        raise ValueError(f"unknown query task {task!r}; this app answers {wire.TASK_PROTOTYPES!r}")
    client = _client(context)
    if msg.content[wire.CONFIG].get(wire.CFG_COUNTS_ONLY, False):
        counts = client.class_counts()
        proto = ArrayRecord({wire.PROTO_COUNT: Array(counts)})
    else:
        if not hasattr(client, "prototype_stats"):
            raise ValueError(f"method {client.cfg.method!r} has no prototypes to send")
        sums, counts = client.prototype_stats()
        proto = ArrayRecord({wire.PROTO_SUM: Array(sums), wire.PROTO_COUNT: Array(counts)})
    metrics = {
        wire.NUM_EXAMPLES: int(counts.sum()),
        wire.PARTITION_ID: client.data.partition_id,
        wire.HELD_OUT: int(client.data.held_out),
    }
    content = RecordDict(
        {
            wire.PROTO: proto,
            wire.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    client = _client(context)
    if client.data.held_out:
        raise RuntimeError(
            f"partition {client.data.partition_id} is held out (data.held-out-fraction): "
            "it never trains, and the server should not have asked it to"
        )
    server_round = int(msg.content[wire.CONFIG].get(wire.CFG_SERVER_ROUND, 0))
    start = _start_of_round(msg, context, client, server_round)
    arrays, metrics = client.train(start, _global_extra(msg, context, client), server_round)
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if client.personal:
        _keep_personal(context, client, start, arrays, server_round)
    content = RecordDict(
        {
            wire.ARRAYS: record,
            wire.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    client = _client(context)
    metrics = client.evaluate(
        _own_arrays(msg, context, client), _global_extra(msg, context, client)
    )
    return Message(content=RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)
