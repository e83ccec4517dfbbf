"""ε of a run's central-DP releases, by Flower's RDP accountant, with weights as they are.

Flower's wrappers add noise of std σ·C/m to an aggregate that they take to be the plain
mean of m clipped updates, where one node moves it by at most C/m. This project's
strategies weigh a node by n_k, and PEP-FedPT's class prompts row by row by n_{k,c}: a
node holding most of a class moves that class's rows by up to its whole update. So each
release is accounted as a Gaussian mechanism whose noise multiplier is the noise over
the largest share any one node had of any aggregated value that round, times the bound:
z = σ·C/m / (share·C) = σ / (m·share), equal to σ only when every share is 1/m.

Our choices: the shares are read from the replies the strategy accepted (through its
``merge_weight`` hook), as if they were public; no amplification by sampling (the
server picks the nodes and knows whom it picked); add-or-remove-one neighbours; an
adaptive wrapper's noisy count accounted as its own Gaussian release (sensitivity 1, its
noise std), not folded into σ as Andrew et al. do for a centred count, because Flower's
count is not centred. Flower's accountant needs Google's ``dp-accounting`` package (the
``dp`` extra); without it the run goes on and says that ε is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flwr.app import MetricRecord, MetricRecordValues
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from strategies.dp import ClientSideAdaptiveClipping, DPWrapper, ServerSideAdaptiveClipping


def largest_share(
    metrics: Iterable[MetricRecord],
    keys: Iterable[str],
    weight: Callable[[str, MetricRecord], float | np.ndarray],
) -> float:
    """The largest share one reply had of any value the strategy averaged: for each key,
    each reply's weight (a number, or one per row) over the sum of all replies' weights."""
    rows = list(metrics)
    if not rows:
        return 1.0
    largest = 0.0
    for key in keys:
        weights = [np.atleast_1d(np.asarray(weight(key, m), dtype=np.float64)) for m in rows]
        total = np.sum(weights, axis=0)
        held = total > 0  # rows nobody weighed have no share to take
        if held.any():
            for w in weights:
                largest = max(largest, float(np.max(w[held] / total[held])))
    return largest if largest > 0 else 1.0


def largest_share_bound(
    num_examples: int, class_counts: np.ndarray, per_class: bool, max_count: int
) -> float:
    """``largest_share`` when only totals are known (secure aggregation): no node weighs
    more than ``max_count`` (SecAgg+ refuses larger counts on the node) nor more than a
    whole total, so a node's share of a value is at most min(1, max_count / total), taken
    over the examples and, for per-class rows (``per_class``), over every class held."""
    totals = [num_examples] if num_examples > 0 else []
    if per_class:
        totals += [int(c) for c in np.asarray(class_counts).reshape(-1) if c > 0]
    if not totals:
        return 1.0
    return max(min(1.0, max_count / total) for total in totals)


class PrivacyLedger:
    """The releases of one run, composed by Flower's ``RdpAccountant``."""

    def __init__(self, delta: float, population: int) -> None:
        self.delta = delta
        self.population = max(population, 1)
        self.releases: list[tuple[float, int]] = []  # (noise multiplier, sample size)
        self._accountant: RdpAccountant | None = None
        self.missing: str | None = None  # why no ε can be computed
        config = PrivacyConfig(
            target_delta=delta,
            population_size=self.population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
        try:  # it imports dp-accounting here
            self._accountant = RdpAccountant(config)
        except ImportError as exc:
            self.missing = f"{exc} (pip install 'pep-fedpt[dp]' or dp-accounting)"

    def compose(self, noise_multiplier: float, sample_size: int) -> None:
        """One Gaussian release of the given noise multiplier (0: not private, ε = inf)."""
        self.releases.append((noise_multiplier, sample_size))
        if self._accountant is None or noise_multiplier <= 0:
            return
        event = GaussianPrivacyEvent(
            noise_multiplier=noise_multiplier,
            sample_size=min(max(sample_size, 1), self.population),
            population_size=self.population,
        )
        self._accountant.compose(event)

    def epsilon(self) -> float | None:
        """ε at ``delta`` over every release so far (inf once one had no noise; None:
        Flower's accountant could not be loaded)."""
        if any(z <= 0 for z, _ in self.releases):
            return float("inf")
        if self._accountant is None:
            return None
        if not self.releases:
            return 0.0
        return float(self._accountant.get_privacy_spent(self.delta).epsilon)


def replay(
    ledger: PrivacyLedger, round_metrics: Mapping[int, Mapping[str, float | list[float]]]
) -> None:
    """Compose the releases a checkpoint's rounds recorded (``dp/...`` metrics), in order."""
    for server_round in sorted(round_metrics):
        metrics = round_metrics[server_round]
        size = metrics.get("dp/sample-size", 1)
        for key in ("dp/update-noise-multiplier", "dp/count-noise-multiplier"):
            value = metrics.get(key)
            if isinstance(value, (int, float)) and isinstance(size, (int, float)):
                ledger.compose(float(value), int(size))


def unaccountable(wrapper: DPWrapper) -> str | None:
    """Why a round under ``wrapper`` cannot be accounted as ``account_round`` does (None:
    it can): Flower's own adaptive wrappers noise for the bound after the round's update,
    not the one the updates were clipped to, so σ does not say the round's noise."""
    ours = (ServerSideAdaptiveClipping, ClientSideAdaptiveClipping)
    if isinstance(wrapper, DifferentialPrivacyAdaptiveBase) and not isinstance(wrapper, ours):
        return (
            f"{type(wrapper).__name__} noises for the next round's bound; use "
            "strategies.dp.ServerSideAdaptiveClipping or ClientSideAdaptiveClipping "
            "(docs/privacy.md)"
        )
    return None


def account_round(
    ledger: PrivacyLedger, wrapper: DPWrapper, bound: float, share: float
) -> dict[str, MetricRecordValues]:
    """Compose one round's releases (the noisy aggregate, whose largest share of one node
    is ``share``; an adaptive wrapper's noisy count too) and return the round's ``dp/...``
    metrics, ε so far included (left out once a release had no noise: JSON has no
    infinity)."""
    nodes = wrapper.num_sampled_clients
    # noise std sigma' C / m over sensitivity share C (sigma': the wrapper's multiplier)
    update_z = wrapper.noise_multiplier / (nodes * share)
    out: dict[str, MetricRecordValues] = {
        "clipping-norm": bound,
        "noise-std": wrapper.noise_multiplier * bound / nodes,
        "largest-share": share,
        "sample-size": float(nodes),
        "update-noise-multiplier": update_z,
    }
    ledger.compose(update_z, nodes)
    if isinstance(wrapper, DifferentialPrivacyAdaptiveBase):
        out["count-noise-multiplier"] = wrapper.clipped_count_stddev  # sensitivity 1
        ledger.compose(wrapper.clipped_count_stddev, nodes)
    epsilon = ledger.epsilon()
    if epsilon is not None and math.isfinite(epsilon):  # no noise: no epsilon to state
        out["epsilon"] = epsilon
    return out
