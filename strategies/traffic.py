"""Communicated bytes: the array payloads of the messages a strategy sends and receives.

What dominates a prompt-tuning round is the arrays (prompts, head, prototypes); configs and
metrics are a few hundred bytes. So a message counts as the sum of ``nbytes`` of the
arrays in its ``ArrayRecord``s, the size of the raw numbers, without Flower's headers or
serialisation overhead: the same figure on every transport, comparable across methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

# The per-round metric keys: totals, and per phase "<phase>/bytes-down" (server -> clients)
# and "<phase>/bytes-up" (clients -> server).
BYTES_DOWN = "bytes-down"
BYTES_UP = "bytes-up"
PHASES = ("query", "train", "evaluate")


def array_nbytes(array: Array) -> int:
    """Bytes of the numbers in one array (shape x item size), read from its metadata.

    A reply whose dtype numpy cannot name still counts: its serialised size instead.
    """
    try:
        itemsize = np.dtype(array.dtype).itemsize
    except TypeError:
        return len(array.data)
    return math.prod(int(n) for n in array.shape) * itemsize


def record_nbytes(record: ArrayRecord) -> int:
    """Sum of the arrays' bytes in one ArrayRecord."""
    return sum(array_nbytes(array) for array in record.values())


def content_nbytes(content: RecordDict) -> int:
    """Sum over every ArrayRecord of a message's content (configs and metrics count 0)."""
    return sum(record_nbytes(record) for record in content.array_records.values())


def messages_nbytes(messages: Iterable[Message]) -> int:
    """Bytes of the arrays in these messages; error replies (no content) count 0."""
    return sum(content_nbytes(msg.content) for msg in messages if msg.has_content())
