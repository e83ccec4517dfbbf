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

Modules: ``params`` (the parameters, the names on the wire, what a sum returns),
``server`` (the protocol driver, ``SecAggServer``), ``rounds`` (the prototype and training
rounds as secure sums). The names below are the package's API.
"""

from __future__ import annotations

from strategies.secagg.params import (
    ACTION,
    FLOATS,
    INTS,
    MASKED,
    MAX_BITS,
    MESSAGE_TYPE,
    MOD_BITS,
    RECORD,
    SECURE_KEYS,
    SECURE_PER_CLASS,
    SUM_SCALE,
    TASK_TRAIN,
    VECTOR_RECORD,
    Exchange,
    SecAggError,
    SecAggParams,
    SecureSum,
    secure_aggregation,
)
from strategies.secagg.rounds import (
    SecurePrototypes,
    SecureUpdate,
    secure_prototypes,
    secure_train,
    secure_update,
)
from strategies.secagg.server import SecAggServer

__all__ = [
    "ACTION",
    "FLOATS",
    "INTS",
    "MASKED",
    "MAX_BITS",
    "MESSAGE_TYPE",
    "MOD_BITS",
    "RECORD",
    "SECURE_KEYS",
    "SECURE_PER_CLASS",
    "SUM_SCALE",
    "TASK_TRAIN",
    "VECTOR_RECORD",
    "Exchange",
    "SecAggError",
    "SecAggParams",
    "SecAggServer",
    "SecurePrototypes",
    "SecureSum",
    "SecureUpdate",
    "secure_aggregation",
    "secure_prototypes",
    "secure_train",
    "secure_update",
]
