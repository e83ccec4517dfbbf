"""Flower's central-DP wrappers around this project's strategies: which method they fit.

Flower's four wrappers (``DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping``)
clip each train reply against the arrays their loop carries and add noise to every array
of the aggregate. That is sound for a method whose train messages carry those arrays and
whose new state is the aggregate of the replies; a method that sends each node something
else, or keeps its state elsewhere, would run under a wrapper and get clipping and noise
that protect nothing. ``PromptFedAvg.dp_refusal`` says which methods cannot, and
``check_dp_wrapper`` (called first in ``configure_train``) refuses them before anything is
sent.

The server-side wrappers tell the strategy they wrap nothing (their ``configure_train``
passes the same arguments on), so the wrapper is found on the call stack: the caller
whose ``strategy`` attribute, followed through any wrappers in between, is this strategy.
The client-side ones also put ``clipping_norm`` into the train config, which is enough by
itself.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from strategies.options import DP_MODES

if TYPE_CHECKING:
    from strategies.base import PromptFedAvg

DP_WRAPPERS = (DifferentialPrivacyFixedClippingBase, DifferentialPrivacyAdaptiveBase)
DPWrapper = DifferentialPrivacyFixedClippingBase | DifferentialPrivacyAdaptiveBase
CLIENT_SIDE = (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyClientSideAdaptiveClipping,
)
# The code of Flower's wrappers' own configure_train: a frame running one of them is a
# wrapper passing a round on (a subclass that overrides it still reaches it by super()).
# Only such frames have their locals read: reading every frame's would copy them all.
WRAPPER_CODE = frozenset(
    vars(cls)["configure_train"].__code__
    for cls in (
        *CLIENT_SIDE,
        DifferentialPrivacyServerSideFixedClipping,
        DifferentialPrivacyServerSideAdaptiveClipping,
    )
)
# How many ``.strategy`` links a wrapper may be away from the strategy it wraps.
MAX_NESTING = 8


def wraps(wrapper: object, strategy: Strategy) -> bool:
    """Whether ``strategy`` is ``wrapper``'s strategy, or its strategy's, and so on."""
    inner = wrapper
    for _ in range(MAX_NESTING):
        inner = getattr(inner, "strategy", None)
        if inner is strategy:
            return True
        if inner is None:
            return False
    return False


def calling_dp_wrapper(strategy: Strategy) -> DPWrapper | None:
    """The Flower DP wrapper around ``strategy`` whose call is on the stack (None: none)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code in WRAPPER_CODE:
            owner = frame.f_locals.get("self")
            if isinstance(owner, DP_WRAPPERS) and wraps(owner, strategy):
                return owner
        frame = frame.f_back
    return None


def check_dp_wrapper(strategy: PromptFedAvg, config: ConfigRecord) -> DPWrapper | None:
    """Refuse to configure a round of a method that a DP wrapper around it cannot protect
    (its ``dp_refusal``), naming the method, the wrapper and why, in one line; else the
    wrapper on the stack, if any."""
    wrapper = calling_dp_wrapper(strategy)
    client_side = KEY_CLIPPING_NORM in config or isinstance(wrapper, CLIENT_SIDE)
    if wrapper is None and not client_side:
        return None
    reason = strategy.dp_refusal(client_side)
    if reason is None:
        return wrapper
    name = type(wrapper).__name__ if wrapper is not None else "client-side DP clipping"
    raise RuntimeError(f"{type(strategy).__name__} cannot run under {name}: {reason}")


class _ToTheTargetQuantile(DifferentialPrivacyAdaptiveBase):
    """Adaptive clipping whose bound settles at the target quantile of the update norms,
    with noise calibrated to the bound the round's updates were clipped to.

    Flower 1.42's ``_geometric_update`` is C <- C exp(-lr (f - q)) over the fraction f of
    updates that were *clipped*: Andrew et al.'s formula, whose f is the fraction *not*
    clipped. With the clipped fraction the sign must flip, or the bound runs away from q
    (docs/privacy.md). Everything else (counting, the norm bits, drawing the noise) is
    Flower's.
    """

    _clipped_at: float | None = None  # the bound this round's updates were clipped to

    def _geometric_update(self, clipped_fraction: float) -> None:
        self._clipped_at = self.clipping_norm
        # More clipped than the target: a larger bound; fewer: a smaller one.
        self.clipping_norm *= math.exp(
            self.clip_norm_lr * (clipped_fraction - self.target_clipped_quantile)
        )

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        # Flower moves the bound before it adds the noise, so its noise is calibrated to
        # the next round's bound; one update moves the aggregate by up to the bound it was
        # clipped to, which the noise must match (Andrew et al., Algorithm 1).
        moved = self.clipping_norm
        if self._clipped_at is not None:
            self.clipping_norm = self._clipped_at
        try:
            return super()._add_noise_to_aggregated_arrays(aggregated)
        finally:
            self.clipping_norm, self._clipped_at = moved, None


class ServerSideAdaptiveClipping(
    _ToTheTargetQuantile, DifferentialPrivacyServerSideAdaptiveClipping
):
    """Flower's ``DifferentialPrivacyServerSideAdaptiveClipping``, its bound moved towards
    the target quantile."""


class ClientSideAdaptiveClipping(
    _ToTheTargetQuantile, DifferentialPrivacyClientSideAdaptiveClipping
):
    """Flower's ``DifferentialPrivacyClientSideAdaptiveClipping`` (with Flower's
    ``adaptiveclipping_mod`` on the ClientApp), its bound moved towards the target
    quantile."""


def dp_wrapper(
    strategy: Strategy,
    mode: str,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    num_sampled_clients: int,
    target_clipped_quantile: float = 0.5,
    clip_norm_lr: float = 0.2,
    clipped_count_stddev: float | None = None,
) -> DPWrapper:
    """Flower's wrapper for ``mode`` (``DP_MODES`` but "off") around ``strategy``; the
    adaptive ones are this module's, whose bound settles at the target quantile.
    Flower's own checks of the numbers raise ValueError."""
    if mode in ("server-fixed", "client-fixed"):
        fixed = (
            DifferentialPrivacyServerSideFixedClipping
            if mode == "server-fixed"
            else DifferentialPrivacyClientSideFixedClipping
        )
        return fixed(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
    if mode in ("server-adaptive", "client-adaptive"):
        adaptive = (
            ServerSideAdaptiveClipping if mode == "server-adaptive" else ClientSideAdaptiveClipping
        )
        return adaptive(
            strategy,
            noise_multiplier,
            num_sampled_clients,
            initial_clipping_norm=clipping_norm,
            target_clipped_quantile=target_clipped_quantile,
            clip_norm_lr=clip_norm_lr,
            clipped_count_stddev=clipped_count_stddev,
        )
    raise ValueError(f"DP mode {mode!r} is not accepted; use one of: {', '.join(DP_MODES[1:])}")


def dp_checkpoint(wrapper: DPWrapper) -> dict[str, Any]:
    """What a resumed run needs to go on as if never stopped: the bound (an adaptive
    wrapper moves it every round) and NumPy's global generator, which Flower's noise draws
    from (JSON)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "clipping-norm": float(wrapper.clipping_norm),
        "numpy-random": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }


def dp_restore(wrapper: DPWrapper, state: Mapping[str, Any]) -> None:
    """Undo ``dp_checkpoint``."""
    wrapper.clipping_norm = float(state["clipping-norm"])
    kind, keys, pos, has_gauss, cached = state["numpy-random"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
