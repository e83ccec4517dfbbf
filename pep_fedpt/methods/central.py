"""The server side of the PromptedViT methods: the seeded initial state and the central
evaluation, with the method's registration deciding the weights and the logit shift.

Every PromptedViT method uses it unless its registration names a ``server`` of its own (a
method on another model: its own backbone, image spec, initial arrays and evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pep_fedpt.ccmp import smoothed_prior
from pep_fedpt.config import RunConfig
from pep_fedpt.data import load_central_data
from pep_fedpt.engine import (
    FeatureCache,
    compute_query_features,
    evaluate,
    no_features,
    unit_weights,
)
from pep_fedpt.methods.common import build_model, initial_arrays
from pep_fedpt.methods.registry import Method
from pep_fedpt.models import cached_backbone, image_spec
from pep_fedpt.state import load_trainable_arrays
from strategies import wire


class PromptedViTServer:
    """Backbone, central test split and one model, built once per ServerApp run."""

    def __init__(self, method: Method, cfg: RunConfig, device: torch.device) -> None:
        self.method = method
        self.cfg = cfg
        self.device = device
        self.backbone = cached_backbone(cfg.model, cfg.seed, str(device), cfg.data)
        self.central = load_central_data(cfg.data, image_spec(self.backbone))
        self.classes = self.central.classes
        self.model = build_model(self.backbone, cfg, self.central.num_classes).to(device)
        self.features = FeatureCache()

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """The seeded initial global state (``common.initial_arrays``)."""
        return initial_arrays(self.cfg, self.backbone, self.central.num_classes)

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Central test split, global prior π(c) ∝ Σ_k n_{k,c}.

        The registration's ``central_weights`` mixes the prompt sets (PEP-FedPT: CCMP under
        the global prior; SGPT: each sample's nearest key); without it there is one prompt
        set (weights of one) and no frozen query pass. ``prior_correction`` (or PEP-FedPT's
        ``prompt.test-prior-correction``) adds the global log prior to the logits.
        """
        model, device, test = self.model, self.device, self.central.test
        load_trainable_arrays(model, state)
        prior = smoothed_prior(
            torch.as_tensor(state[wire.PROTO_COUNT]), self.cfg.prompt.prior_smoothing
        )
        log_prior = prior.log().to(device)
        central_weights = self.method.central_weights
        weights_fn = (
            None if central_weights is None else central_weights(self.cfg, state, log_prior, device)
        )
        if weights_fn is None:
            weights_fn = unit_weights
            z = self.features.get("central-none", lambda: no_features(test))
        else:
            z = self.features.get("central", lambda: compute_query_features(model, test, device))
        # prompt.test-prior-correction (PEP-FedPT's extension) adds the same global prior.
        corrected = self.method.prior_correction or self.cfg.prompt.test_prior_correction
        shift = log_prior if corrected else None
        result = evaluate(model, test, z, weights_fn, device, log_prior=shift)
        return {wire.ACCURACY: result.accuracy, wire.LOSS: result.loss}
