"""FedMVP's per-round metrics on the base->new protocol: Local, Base, New and HM.

Base and New come from the server's central evaluation of the global state (all base
classes with the base bank, all new classes with the new bank: ``server/base-accuracy``,
``server/new-accuracy``); Local from the clients' evaluate replies of the same round (each
on its own classes, with its own bank): their mean over clients, as FedTPG and FedMVP
report it. HM = 3 / (1/L + 1/B + 1/N) needs all three, so round 0 (the initial state, no
client evaluation) has Base and New only.
"""

from __future__ import annotations

from collections.abc import Mapping

from pep_fedpt.data.base_new import harmonic_mean

LOCAL_SOURCE = "evaluate/mean-client-accuracy"
# Several data sets in one federation: the mean over the sets of their clients' mean.
MEMBER_LOCAL_SOURCE = "evaluate/mean-member-accuracy"
BASE, NEW = "server/base-accuracy", "server/new-accuracy"
LOCAL, HM = "server/local-accuracy", "server/hm"
TARGET = "server/target-accuracy"  # the domain protocol's held-out domain


def base_new_metrics(row: Mapping[str, object]) -> dict[str, float]:
    """``server/local-accuracy`` and ``server/hm`` of a round's metrics row, when the row
    holds Base, New and the clients' accuracies (the domain protocol: Local beside the
    Target accuracy); nothing otherwise."""
    source = MEMBER_LOCAL_SOURCE if MEMBER_LOCAL_SOURCE in row else LOCAL_SOURCE
    local_value = row.get(source)
    if TARGET in row and isinstance(local_value, int | float):
        return {LOCAL: float(local_value)}
    values = [row.get(key) for key in (source, BASE, NEW)]
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    if len(numbers) < len(values):
        return {}
    local, base, new = numbers
    return {LOCAL: local, HM: harmonic_mean(local, base, new)}


def clip_description(cfg) -> tuple[str, str]:  # cfg: RunConfig
    """(model, partition) lines of summary.md for a CLIP method."""
    mvp = cfg.fedmvp
    if mvp.protocol == "domain":
        protocol = f"leave one domain out (target {mvp.target_domain}), {mvp.shots} shots"
    else:
        protocol = f"base->new, {mvp.classes_per_client} base classes per client, {mvp.shots} shots"
    return f"CLIP {mvp.clip_model} ({mvp.clip_pretrained} weights)", protocol
