"""The global state a round loop carries, and the server arrays kept beside it.

``GlobalState`` is a part of ``PromptFedAvg`` (strategies/base.py). A loop may carry the
whole state (this project's ``rounds``, a resumed checkpoint) or its trainable arrays only
(Flower's ``Strategy.start`` and the wrappers that delegate to the strategy); the
server-made arrays (``server_only`` keys) are kept in ``server_arrays`` either way, and a
new state goes back in the form the loop gave (``_as_given``).
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from strategies.parts import PartsBase


class GlobalState(PartsBase):
    """The whole state from what a loop carries, and back; the state of the round in flight."""

    def global_state(self, arrays: ArrayRecord) -> ArrayRecord:
        """The whole global state: ``arrays`` (the trainable arrays a loop carries, or the
        whole state) plus the server arrays (``server_arrays``) it lacks. What a central
        evaluation and a checkpoint need; server arrays that ``arrays`` holds win, and
        are kept as the strategy's from then on."""
        own = [key for key in arrays if self.server_only(key)]
        if own:
            # Annotated: mypy infers no type from a Protocol base's declaration (StrategyParts).
            self.server_arrays: ArrayRecord = ArrayRecord(
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
