"""The accuracies a run records in ``metrics.json``, named once for every table and plot.

The run's own ``summary.md`` and ``accuracy.png`` (``server_app.results``, ``.plots``) and
the comparison report (``bench/report.py``) all read this list, so a new accuracy is added
in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Accuracy:
    """One recorded accuracy: its ``metrics.json`` key, table column and plot label."""

    key: str
    column: str
    label: str


# The headline accuracies of a round, in table order.
ACCURACIES = (
    Accuracy("evaluate/global-accuracy", "global acc", "global (pooled clients)"),
    Accuracy("evaluate/mean-client-accuracy", "mean client acc", "mean client"),
    Accuracy("evaluate/worst-client-accuracy", "worst client acc", "worst client"),
    Accuracy("evaluate/held-out-accuracy", "held-out acc", "held-out clients"),
    Accuracy("server/accuracy", "server acc", "server (central test)"),
)
# Mean client accuracy on the clients' validation splits (data.val-fraction > 0): what
# hyper-parameter selection scores, never a reported result.
VALIDATION = Accuracy(
    "evaluate/val-mean-client-accuracy", "val mean client acc", "validation mean client"
)
# PEP-FedPT's zero-training diagnostic (strategies.summaries.ccmp_summary): the CCMP
# mixing weights used directly as a classifier, with each client's own prior and with a
# uniform one; only PEP-FedPT runs record it, and a table shows it only where one did.
CCMP_DIAGNOSTICS = (
    Accuracy(
        "evaluate/ccmp-prior-mean-client-accuracy",
        "CCMP argmax, own prior",
        "CCMP weights as classifier, own prior (mean client)",
    ),
    Accuracy(
        "evaluate/ccmp-uniform-mean-client-accuracy",
        "CCMP argmax, uniform",
        "CCMP weights as classifier, uniform prior (mean client)",
    ),
    Accuracy(
        "evaluate/held-out-ccmp-prior-accuracy",
        "held-out CCMP argmax, own prior",
        "CCMP weights as classifier, own prior (held-out clients)",
    ),
)
BY_KEY = {a.key: a for a in (*ACCURACIES, VALIDATION, *CCMP_DIAGNOSTICS)}
