"""A ClientApp failure as an error reply, said in one line on the node.

Left to Flower, an exception in a ClientApp is printed by the simulation engine (or the
SuperNode) as a report of some 60 lines, Ray's and Flower's frames included, and the
server gets only ``str(exception)``. ``error_reply`` catches it first: the node logs one
line (``strategies.errors.one_line``), and the server gets the whole traceback as the
error reply's reason, which it shortens the same way and keeps in full in the run's
``client-errors.log``. ``KeyboardInterrupt`` and ``SystemExit`` pass through: a node being
stopped is not a client failure.
"""

from __future__ import annotations

import traceback
from logging import ERROR

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import log
from flwr.common.constant import ErrorCode

from strategies.errors import one_line


def error_reply(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: ``call_next``'s reply, or an error reply carrying the traceback."""
    try:
        return call_next(msg, context)
    except Exception:  # every failure of the app becomes the reply the server judges
        text = traceback.format_exc()
        partition = context.node_config.get("partition-id", "?")
        log(
            ERROR,
            "ClientApp of partition %s failed in %s: %s",
            partition,
            msg.metadata.message_type,
            one_line(text),
        )
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=text)
        return Message(error, reply_to=msg)
