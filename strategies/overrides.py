"""What a subclass of PromptFedAvg overrides: old hook names and signatures refused when
the class is defined, and the overrides that rule out an option (a robust reply
aggregation, secure aggregation).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

# Hooks of earlier versions and their names now: a subclass that still defines one would
# silently never be called, so it is refused when the class is defined.
RENAMED_HOOKS = {
    "census_state": "prototype_state",
    "census_round": "prototype_round",
    "has_census": "has_prototypes",
    "census_name": "nothing (the log always says 'prototype round')",
}

# Hooks whose override a secure training round cannot honour: it sees no reply, only
# the weighted totals (``secure_per_class`` stands in for ``merge_weight``).
SECURE_BLOCKERS = (
    "aggregate_train",
    "aggregate_valid",
    "merge_result",
    "prepare_merge",
    "node_arrays",
    "check_train_metrics",
)


def check_hook_definitions(cls: type) -> None:
    """Refuse a subclass ``cls`` written against the old hook names or signatures."""
    for old, new in RENAMED_HOOKS.items():
        if old in vars(cls):
            raise TypeError(
                f"{cls.__name__}.{old}: this hook is now {new}; strategies/base.py's "
                "docstring lists the override points"
            )
    for hook in ("prototype_state", "fold_prototypes"):
        method = vars(cls).get(hook)
        if method is not None and len(inspect.signature(method).parameters) != 3:
            raise TypeError(
                f"{cls.__name__}.{hook} must take (self, arrays, tally): the replies' "
                "sums and counts come folded into a PrototypeTally, no longer as lists"
            )
    check = vars(cls).get("check_train_metrics")
    if check is not None and len(inspect.signature(check).parameters) != 3:
        raise TypeError(
            f"{cls.__name__}.check_train_metrics must take (self, metrics, node): the "
            "node whose reply it checks comes with the metrics"
        )


def overridden(cls: type, base: type, hooks: Iterable[str]) -> list[str]:
    """The ``hooks`` that ``cls`` defines otherwise than ``base``."""
    return [hook for hook in hooks if getattr(cls, hook) is not getattr(base, hook)]


def secure_blockers(cls: type, base: type) -> list[str]:
    """The overrides of ``cls`` (a subclass of ``base``) that need single replies, which a
    secure training round never shows: ``SECURE_BLOCKERS``, and ``merge_weight`` unless
    ``secure_per_class`` stands in for it."""
    found = overridden(cls, base, SECURE_BLOCKERS)
    if overridden(cls, base, ["merge_weight"]) and not overridden(cls, base, ["secure_per_class"]):
        found.append("merge_weight")
    return found
