"""ClientApp for PEP-FedPT and the baselines (Message API).

``cfg.method``'s registration (``pep_fedpt.methods.registry``) gives the client routine
and what its messages carry beyond the arrays; the handlers below are the same for every
method and name none.

``@app.query``    prototype round: per-class feature sums and counts (only the counts when
                  the query sets ``counts-only``, as for the baselines).
``@app.train``    E local epochs on this node's partition; returns prompts, head, counts
                  (the update clipped when a client-side DP wrapper sends a bound).
``@app.evaluate`` accuracy on this node's local test split with its own prior.
``@app.query("secagg")`` one SecAgg+ stage (``client_app/secagg.py``): the prototype
                  round's counts and sums as a masked vector, under secure aggregation.

A held-out partition (``data.held-out-fraction``) says so in its prototype and evaluate
replies and refuses to train.

The node learns its partition from ``node_config`` (``partition-id``, ``num-partitions``,
and optionally ``data-dir``, which overrides the run config's ``data.data-dir``, and
``cache-dir``, the node-local z(x) cache folder, which overrides the run config's);
a method's ``kept_record`` (PEP-FedPT's global prototypes) arrives once per prototype
version and is kept in ``context.state``; its ``extra`` reads what the client gets besides
the arrays (PEP-FedPT: the prototypes; SGPT: ``group.count``, in every message).
A ``personal`` method's node (local-only) keeps its own trained prompts and head in
``context.state`` too: it trains and evaluates them, never the global state, once it has
trained. A ``pfedpg`` node keeps only its head there: the prompt is the one the server
generated for it (the client's ``personal_arrays`` says which arrays a node keeps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client_app import secagg
from client_app.errors import error_reply
from pep_fedpt.config import RunConfig
from pep_fedpt.feature_cache import resolve_cache_dir
from pep_fedpt.methods.registry import Method, MethodClient, Received, client_for, get_method
from strategies import wire
from strategies.secagg import ACTION as SECAGG_ACTION
from strategies.secagg import SUM_SCALE, TASK_TRAIN, secure_update

# Every handler's failure becomes one error reply (client_app/errors.py).
MODS: list[Mod] = [error_reply]
app = ClientApp(mods=MODS)

_STATE_KEPT = "pep-fedpt.{record}"  # a method's kept_record (pep-fedpt.proto)
_STATE_KEPT_VERSION = "pep-fedpt.{record}-version"
_STATE_PERSONAL = "pep-fedpt.personal"  # a local-only node's own trained state
_STATE_PERSONAL_BEFORE = "pep-fedpt.personal-before"  # ... as its latest round began
_STATE_PERSONAL_ROUND = "pep-fedpt.personal-round"


def _node(context: Context) -> tuple[Method, MethodClient]:
    """This node's method registration (looked up once per message, then passed down) and
    its client (built once per process and partition)."""
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
    method = get_method(cfg.method)
    partition = (int(node["partition-id"]), int(node["num-partitions"]))
    return method, client_for(cfg, *partition, cache_dir, method=method)


def _reply(
    msg: Message,
    metrics: Mapping[str, MetricRecordValues],
    arrays: Mapping[str, ArrayRecord] | None = None,
) -> Message:
    """A reply to ``msg``: its array records (by wire name, none for evaluate) and metrics."""
    content = RecordDict({**(arrays or {}), wire.METRICS: MetricRecord(dict(metrics))})
    return Message(content=content, reply_to=msg)


def _number(record: ConfigRecord, key: str, default: float | None = None) -> float:
    """A numeric entry of a config record, refused with its value if it is not a number
    (or is missing without a default)."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"config entry {key!r} = {value!r} is not a number")
    return value


def _int(record: ConfigRecord, key: str, default: int = 0) -> int:
    """An integer entry of a config record (a round, a version)."""
    return int(_number(record, key, default))


def _kept(msg: Message, context: Context, record: str) -> dict[str, np.ndarray]:
    """A kept record (the global prototypes): from this message if it carries it, else
    from the node's state; refused if the node's is not the server's version."""
    version = _int(msg.content.config_records[wire.CONFIG], wire.CFG_PROTO_VERSION)
    state_key = _STATE_KEPT.format(record=record)
    version_key = _STATE_KEPT_VERSION.format(record=record)
    if record in msg.content:
        context.state[state_key] = msg.content[record]
        context.state[version_key] = ConfigRecord({"version": version})
    stored = context.state.config_records.get(version_key)
    if stored is None or _int(stored, "version") != version:
        have = None if stored is None else _int(stored, "version")
        raise RuntimeError(f"this node holds prototypes v{have}, the server uses v{version}")
    return _numpy(context.state.array_records[state_key])


def _from_wire(value: np.ndarray) -> np.ndarray:
    """A received float array as float32, whatever ``fed.wire-dtype`` it travelled in."""
    if value.dtype.kind == "f" and value.dtype != np.float32:
        return value.astype(np.float32)
    return value


def _to_wire(value: np.ndarray, wire_dtype: str) -> Array:
    """A float array to send, in ``fed.wire-dtype`` (integer arrays as they are)."""
    if value.dtype.kind == "f" and value.dtype != np.dtype(wire_dtype):
        value = value.astype(wire_dtype)
    return Array(value)


def _arrays(msg: Message, context: Context, method: Method) -> dict[str, np.ndarray]:
    if wire.ARRAYS not in msg.content:
        # local-only: the server sends no state to a node it believes holds its own
        if method.personal and _STATE_PERSONAL in context.state:
            return {}
        raise RuntimeError(
            f"the message carries no {wire.ARRAYS!r} and this node holds no state of its own "
            "(restarted?); the server sends the state again after this error"
        )
    return _numpy(msg.content.array_records[wire.ARRAYS])


def _own_arrays(msg: Message, context: Context, method: Method) -> dict[str, np.ndarray]:
    """The state to evaluate: the message's, with a personal node's own arrays in place of
    the message's once it has them."""
    arrays = _arrays(msg, context, method)
    if method.personal and _STATE_PERSONAL in context.state:
        arrays.update(_numpy(context.state.array_records[_STATE_PERSONAL]))
    return arrays


def _start_of_round(
    msg: Message, context: Context, method: Method, server_round: int
) -> dict[str, np.ndarray]:
    """The state to train from: the message's, with a personal node's own arrays in their
    place. Asked again for a round it already trained (the server restarted mid-round), a
    personal node starts again from that round's starting point, so that a resumed run
    matches an uninterrupted one."""
    arrays = _arrays(msg, context, method)
    if not method.personal or _STATE_PERSONAL not in context.state:
        return arrays
    if _int(context.state.config_records[_STATE_PERSONAL_ROUND], "round") == server_round:
        arrays.update(_numpy(context.state.array_records[_STATE_PERSONAL_BEFORE]))
    else:
        arrays.update(_numpy(context.state.array_records[_STATE_PERSONAL]))
    return arrays


def _keep_personal(
    context: Context,
    client: MethodClient,
    start: dict[str, np.ndarray],
    trained: dict[str, np.ndarray],
    server_round: int,
) -> None:
    previous = context.state.config_records.get(_STATE_PERSONAL_ROUND)
    if previous is None or _int(previous, "round") != server_round:
        # a new round: what it started from is needed again if the round is retried
        before = client.personal_arrays(start)
        context.state[_STATE_PERSONAL_BEFORE] = ArrayRecord(
            {k: Array(v) for k, v in before.items()}
        )
    own = client.personal_arrays(trained)
    context.state[_STATE_PERSONAL] = ArrayRecord({k: Array(v) for k, v in own.items()})
    context.state[_STATE_PERSONAL_ROUND] = ConfigRecord({"round": server_round})


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A record's arrays, floats as float32 (``_from_wire``)."""
    return {key: _from_wire(array.numpy()) for key, array in record.items()}


def _extra(msg: Message, context: Context, method: Method) -> object:
    """What beyond the arrays the method's client needs from this message (its
    registration's ``extra``; None without one)."""
    if method.extra is None:
        return None
    records = {
        name: _numpy(record)
        for name, record in msg.content.array_records.items()
        if name not in (wire.ARRAYS, method.kept_record)
    }
    if method.kept_record is not None:
        records[method.kept_record] = _kept(msg, context, method.kept_record)
    return method.extra(Received(config=dict(msg.content[wire.CONFIG]), records=records))


@app.query()
def prototypes(msg: Message, context: Context) -> Message:
    task = msg.content[wire.CONFIG].get(wire.CFG_TASK)
    if task == wire.TASK_KEEP_PROTOTYPES:
        return _keep_prototypes(msg, context)
    if task != wire.TASK_PROTOTYPES:
        raise ValueError(
            f"unknown query task {task!r}; this app answers {wire.TASK_PROTOTYPES!r} and "
            f"{wire.TASK_KEEP_PROTOTYPES!r}"
        )
    _, client = _node(context)
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
    return _reply(msg, metrics, {wire.PROTO: proto})


def _keep_prototypes(msg: Message, context: Context) -> Message:
    """Keep the query's prototypes, as a train message's ``proto`` record would be kept
    (the server sends them apart when a train message may carry one ArrayRecord only)."""
    method = get_method(RunConfig.from_flat(context.run_config).method)
    if method.kept_record is None:
        raise ValueError(f"method {method.name!r} keeps no prototypes")
    _kept(msg, context, method.kept_record)
    return _reply(msg, {})


def _trained(
    msg: Message, context: Context
) -> tuple[MethodClient, dict[str, np.ndarray], dict[str, float | int | list[int]]]:
    """Local training on the message's state: (client, trained arrays, train metrics)."""
    method, client = _node(context)
    if client.data.held_out:
        raise RuntimeError(
            f"partition {client.data.partition_id} is held out (data.held-out-fraction): "
            "it never trains, and the server should not have asked it to"
        )
    server_round = _int(msg.content.config_records[wire.CONFIG], wire.CFG_SERVER_ROUND)
    start = _start_of_round(msg, context, method, server_round)
    arrays, metrics = client.train(start, _extra(msg, context, method), server_round)
    if method.personal:
        _keep_personal(context, client, start, arrays, server_round)
    return client, arrays, metrics


def central_dp_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this node's update to the bound a client-side DP wrapper put in the train
    config (``dp.mode = "client-*"``, or Flower's wrappers in an app of your own); without
    one, train as usual. Flower's ``adaptiveclipping_mod`` serves both kinds: it clips as
    ``fixedclipping_mod`` does and adds the norm bit, which the adaptive wrappers count and
    the fixed ones and the reply checks ignore."""
    if not any(KEY_CLIPPING_NORM in config for config in msg.content.config_records.values()):
        return call_next(msg, context)
    return adaptiveclipping_mod(msg, context, call_next)


@app.train(mods=[central_dp_clipping])
def train(msg: Message, context: Context) -> Message:
    client, arrays, metrics = _trained(msg, context)
    record = ArrayRecord({k: _to_wire(v, client.cfg.fed.wire_dtype) for k, v in arrays.items()})
    return _reply(msg, metrics, {wire.ARRAYS: record})


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    method, client = _node(context)
    metrics = client.evaluate(_own_arrays(msg, context, method), _extra(msg, context, method))
    return _reply(msg, metrics)


def _secure_vector(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This node's vector for SecAgg+: the prototype round's (counts, feature sums /
    sum-scale), the sums scaled to the size of one feature value, which the clipping range
    bounds; or a training round's (``secure_update``)."""
    config = msg.content.config_records[wire.CONFIG]
    task = config.get(wire.CFG_TASK)
    if task == TASK_TRAIN:
        sent = {key: array.numpy() for key, array in msg.content.array_records[wire.ARRAYS].items()}
        client, arrays, metrics = _trained(msg, context)
        return secure_update(config, arrays, metrics, sent)
    if task != wire.TASK_PROTOTYPES:
        raise ValueError(
            f"unknown secure aggregation task {task!r}; this app sums "
            f"{wire.TASK_PROTOTYPES!r} and {TASK_TRAIN!r}"
        )
    _, client = _node(context)
    if client.data.held_out:
        raise RuntimeError(
            f"partition {client.data.partition_id} is held out: its statistics stay out of the "
            "prototypes, and the server should not have asked for them"
        )
    if config.get(wire.CFG_COUNTS_ONLY, False):
        return client.class_counts(), np.zeros(0)
    if not hasattr(client, "prototype_stats"):
        raise ValueError(f"method {client.cfg.method!r} has no prototypes to send")
    sums, counts = client.prototype_stats()
    scale = _number(config, SUM_SCALE)
    return np.asarray(counts, dtype=np.int64), np.asarray(sums, dtype=np.float64) / scale


def _secure_facts(config: ConfigRecord, context: Context) -> dict[str, int]:
    """What the server learns of this node in clear under SecAgg+: who it is and whether
    it trains (a held-out node's statistics stay out of the sum)."""
    _, client = _node(context)
    return {wire.PARTITION_ID: client.data.partition_id, wire.HELD_OUT: int(client.data.held_out)}


@app.query(SECAGG_ACTION)
def secure_sum(msg: Message, context: Context) -> Message:
    return secagg.answer(msg, context, _secure_vector, _secure_facts)
