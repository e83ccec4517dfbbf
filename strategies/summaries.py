"""Metric summaries of an evaluation round: pooled, mean and worst client accuracies, of the
training clients and apart of the held-out ones, CCMP diagnostics and validation splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy_summary(correct: Sequence[int], totals: Sequence[int]) -> dict[str, float]:
    """Global (pooled) accuracy, mean and worst client accuracy over clients with data."""
    pairs = [(int(c), int(n)) for c, n in zip(correct, totals, strict=True) if n > 0]
    if not pairs:
        raise ValueError("no client reported any test example")
    per_client = [c / n for c, n in pairs]
    return {
        "global-accuracy": sum(c for c, _ in pairs) / sum(n for _, n in pairs),
        "mean-client-accuracy": float(np.mean(per_client)),
        "worst-client-accuracy": float(min(per_client)),
        "num-clients": float(len(pairs)),
    }


HELD_OUT_NAMES = {
    "global-accuracy": "held-out-accuracy",
    "mean-client-accuracy": "held-out-mean-client-accuracy",
    "worst-client-accuracy": "held-out-worst-client-accuracy",
    "num-clients": "held-out-num-clients",
}


def evaluation_summary(
    correct: Sequence[int], totals: Sequence[int], held_out: Sequence[bool]
) -> dict[str, float]:
    """``accuracy_summary`` of the training clients, and apart that of the held-out ones.

    Held-out clients never train, so pooling them with the others would hide the
    generalisation gap the held-out numbers exist to show.
    """
    if not len(correct) == len(totals) == len(held_out):
        raise ValueError(
            f"need one flag per client: {len(correct)} correct, {len(totals)} totals, "
            f"{len(held_out)} held-out flags"
        )
    summary: dict[str, float] = {}
    for flag in (False, True):
        group = [(c, n) for c, n, h in zip(correct, totals, held_out, strict=True) if h == flag]
        if not any(n > 0 for _, n in group):
            continue
        part = accuracy_summary([c for c, _ in group], [n for _, n in group])
        summary.update({HELD_OUT_NAMES[k]: v for k, v in part.items()} if flag else part)
    if not summary:
        raise ValueError("no client reported any test example")
    return summary


def ccmp_summary(
    prior_correct: Sequence[int | None],
    uniform_correct: Sequence[int | None],
    totals: Sequence[int],
    held_out: Sequence[bool],
) -> dict[str, float]:
    """The CCMP-as-classifier accuracies (PEP-FedPT's zero-training diagnostic) of the
    clients that reported them (None: not reported): per prior (``prior``: the client's
    own, ``uniform``), ``ccmp-<prior>-accuracy`` (pooled) and
    ``ccmp-<prior>-mean-client-accuracy`` over the training clients, and the same with a
    ``held-out-`` prefix over the held-out ones; {} if none reported them."""
    if not len(prior_correct) == len(uniform_correct) == len(totals) == len(held_out):
        raise ValueError(
            f"need one of each per client: {len(prior_correct)} prior counts, "
            f"{len(uniform_correct)} uniform counts, {len(totals)} totals, "
            f"{len(held_out)} held-out flags"
        )
    summary: dict[str, float] = {}
    for name, correct in (("prior", prior_correct), ("uniform", uniform_correct)):
        for flag, prefix in ((False, ""), (True, "held-out-")):
            pairs = [
                (int(c), int(n))
                for c, n, h in zip(correct, totals, held_out, strict=True)
                if h == flag and c is not None and n > 0
            ]
            if not pairs:
                continue
            part = accuracy_summary([c for c, _ in pairs], [n for _, n in pairs])
            summary[f"{prefix}ccmp-{name}-accuracy"] = part["global-accuracy"]
            summary[f"{prefix}ccmp-{name}-mean-client-accuracy"] = part["mean-client-accuracy"]
    return summary


def validation_summary(
    correct: Sequence[int | None], totals: Sequence[int | None], held_out: Sequence[bool]
) -> dict[str, float]:
    """``val-global-accuracy``, ``val-mean-client-accuracy`` and ``val-worst-client-accuracy``
    over the training clients that scored a validation split (None: no split); {} if none.

    Only training clients count: the selection they serve picks what trains best on the
    clients that train, and held-out clients keep their own, test-only, numbers.
    """
    if not len(correct) == len(totals) == len(held_out):
        raise ValueError(
            f"need one flag per client: {len(correct)} correct, {len(totals)} totals, "
            f"{len(held_out)} held-out flags"
        )
    pairs = [
        (int(c), int(n))
        for c, n, h in zip(correct, totals, held_out, strict=True)
        if not h and c is not None and n is not None and n > 0
    ]
    if not pairs:
        return {}
    part = accuracy_summary([c for c, _ in pairs], [n for _, n in pairs])
    return {f"val-{key}": value for key, value in part.items()}
