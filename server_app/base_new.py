"""FedMVP's per-round metrics on the base->new protocol: Local, Base, New and HM.

Base and New come from the server's central evaluation of the global state (all base
classes with the base bank, all new classes with the new bank); Local from the clients'
evaluate replies of the same round (each on its own classes, with its own bank): the mean
over clients, as FedTPG and FedMVP report it. HM = 3 / (1/L + 1/B + 1/N) needs all three,
so round 0 (the initial state, no client evaluation) has Base and New only.
"""

from __future__ import annotations

from collections.abc import Mapping

from pep_fedpt.data.base_new import harmonic_mean

LOCAL_SOURCE = "evaluate/mean-client-accuracy"


def base_new_row(
    central: Mapping[str, float], round_metrics: Mapping[str, object]
) -> dict[str, float]:
    """``server/*`` entries of a round's metrics row from the central Base/New results and
    the strategy's aggregated client metrics of that round."""
    row = {f"server/{key}": float(value) for key, value in central.items()}
    local = round_metrics.get(LOCAL_SOURCE)
    if isinstance(local, int | float):
        row["server/local-accuracy"] = float(local)
        row["server/hm"] = harmonic_mean(
            float(local), row["server/base-accuracy"], row["server/new-accuracy"]
        )
    return row
