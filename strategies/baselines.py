"""Server sides of the baselines (method doc §7): small subclasses of ``PromptFedAvg``.

FedAvg-VPT (shallow and deep), FedProx-VPT, head-only and FedAvg-VPT with prior
correction differ only on the client (which prompts exist, the proximal term, the logit
shift at evaluation); their server is ``PromptFedAvg`` itself: FedAvg by n_k.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord

from strategies.base import PromptFedAvg


class LocalOnly(PromptFedAvg):
    """Local-only prompt tuning: clients train their own prompts and never share them.

    Train replies are still checked and their metrics aggregated, but the global state
    stays the initial one; every client keeps its own state and evaluates its own model.

    The initial state goes only to nodes that do not hold one of their own yet (never
    trained, held out, or answered with an error since: perhaps restarted), so that the
    communicated bytes are what local-only really needs. Nodes are not asked to build
    the initial state themselves from the seed: the prompt init draws from the RNG of the
    backbone's device, so a GPU client would not reproduce a CPU server's state.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Nodes that answered a train message: they keep their own trained state.
        self.personal_nodes: set[int] = set()

    def checkpoint(self) -> dict[str, Any]:
        """The base state plus the nodes believed to hold their own state.

        Local-only resumes exactly only if the nodes kept their ``context.state``; a node
        that lost it answers with an error and is sent the initial state again.
        """
        return {**super().checkpoint(), "personal-nodes": sorted(self.personal_nodes)}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.personal_nodes = {int(node) for node in state.get("personal-nodes", [])}

    def dp_refusal(self, client_side: bool) -> str | None:
        return (
            "local-only never aggregates (each node keeps its own prompts and head, and one "
            "that holds them gets no arrays to clip against), so there is no released "
            "aggregate for a DP wrapper to clip or noise; run it without one"
        )

    def node_arrays(
        self, arrays: ArrayRecord, trainable: ArrayRecord, node_id: int, message_type: str
    ) -> ArrayRecord | None:
        """None for a node that holds its own state (it uses that); else the state."""
        return None if node_id in self.personal_nodes else trainable

    def _note_replies(self, replies: list[Message]) -> None:
        for msg in replies:
            node = self.sender(msg)
            if msg.has_error():
                self.personal_nodes.discard(node)
            elif msg.metadata.message_type == MessageType.TRAIN:
                self.personal_nodes.add(node)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._note_replies(replies)
        _, metrics = super().aggregate_train(server_round, replies)
        return self.unchanged_state(), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._note_replies(replies)
        return super().aggregate_evaluate(server_round, replies)
