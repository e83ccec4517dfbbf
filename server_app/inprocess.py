"""Run a real ServerApp/strategy against real ClientApps in one process (no simulation).

What it is for: the tests and the benchmarks drive the real strategy and ClientApp
through Flower's Grid surface without a SuperLink, Ray or subprocesses, so that a round
is deterministic (fixed node ids), fast and debuggable in one interpreter; it is also
how a user can try a strategy against a ClientApp in a notebook.

``InProcessGrid`` is a Flower ``Grid`` whose ``push_messages`` hands each message to
the ClientApp of its destination node (``pull_messages`` then returns the replies), each
node keeping its own ``Context`` (and so its ``context.state``) across rounds, as a
SuperNode does. ``tamper`` lets a test replace a
node's reply, to play a faulty or hostile client (``None``: a node that never answers).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common import Metadata
from flwr.proto.node_pb2 import NodeInfo  # the Grid interface names it
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

Scalar = bool | int | float | str


def set_task_identity(run_id: int = 1) -> None:
    """Messages built outside a run need a run id (see ../shared/docs/flower-notes.md)."""
    TaskIdentity.run_id = run_id
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1


def incoming_message(
    content: RecordDict,
    message_type: str,
    *,
    dst_node_id: int = 7,
    message_id: str = "m",
    group_id: str = "1",
) -> Message:
    """A message as a ClientApp receives it from the SuperLink (node 1)."""
    return Message(  # type: ignore[call-overload]  # Flower builds a received message from its metadata; its public overloads do not
        content=content,
        metadata=Metadata(
            run_id=1,
            message_id=message_id,
            src_node_id=1,
            dst_node_id=dst_node_id,
            reply_to_message_id="",
            group_id=group_id,
            created_at=time.time(),
            ttl=3600.0,
            message_type=message_type,
        ),
    )


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, Scalar]],
        run_config: Mapping[str, Scalar],
        tamper: Mapping[int, Callable[[Message], Message | None]] | None = None,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            node_id: Context(
                run_id=1,
                node_id=node_id,
                node_config=dict(config),
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for node_id, config in node_configs.items()
        }
        self.tamper = dict(tamper or {})
        self.sent: list[tuple[str, int]] = []  # (message type, node id), in order
        self._replies: dict[str, Message] = {}  # pushed, not yet pulled, by message id

    # Grid's abstract surface; only what strategies use is real.
    def set_run(self, run: Run) -> None:  # pragma: no cover - not used in-process
        pass

    @property
    def run(self) -> Run:  # pragma: no cover
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def get_nodes(self) -> Iterable[NodeInfo]:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message's ClientApp now; its reply waits for ``pull_messages``."""
        message_ids = []
        for message in messages:
            node_id = message.metadata.dst_node_id
            self.sent.append((message.metadata.message_type, node_id))
            # Flower's grids give each pushed message its id in place; replies name it.
            message_id = uuid.uuid4().hex
            message.metadata.__dict__["_message_id"] = message_id
            incoming = incoming_message(
                message.content,
                message.metadata.message_type,
                dst_node_id=node_id,
                message_id=message_id,
                group_id=message.metadata.group_id or "",
            )
            reply: Message | None
            try:
                reply = self.client_app(incoming, self.contexts[node_id])
            except Exception as exc:  # a crashing ClientApp becomes an error reply
                reply = Message(Error(code=0, reason=repr(exc)), reply_to=incoming)
            if node_id in self.tamper:
                reply = self.tamper[node_id](reply)
            if reply is not None:  # None: a node that never answers
                self._replies[message_id] = reply
            message_ids.append(message_id)
        return message_ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))
