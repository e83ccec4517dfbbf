"""Which nodes a phase asks, and what each one's message carries.

``NodeMessages`` is a part of ``PromptFedAvg`` (strategies/base.py). Sampling is seeded
(``seed``), in node-identity order, and never picks a held-out node to train or, with
``verified_only``, a node whose class counts no prototype round verified. Each message
carries the node's ``node_arrays`` (a hook: by default the trainable state, one record
shared by every message), the round's config and the method's ``extra_content``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from strategies import wire
from strategies.parts import PartsBase


class NodeMessages(PartsBase):
    """Seeded sampling of the nodes of a phase, and their messages."""

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
        size = sample_size(len(candidates), fraction, minimum)
        return self.in_identity_order(self._rng.sample(candidates, size))

    def train_sample_size(self, grid: Grid) -> int:
        """How many nodes a training round would sample now (what central DP's noise is
        calibrated to): the verified nodes connected, held-out ones apart."""
        candidates = [
            node
            for node in grid.get_node_ids()
            if node not in self.held_out_nodes and node in self._node_counts
        ]
        return sample_size(len(candidates), self.fraction_train, self.min_train_nodes)


def sample_size(candidates: int, fraction: float, minimum: int) -> int:
    """max(fraction * candidates, minimum) nodes, and no more than there are."""
    return min(candidates, max(int(candidates * fraction), minimum))
