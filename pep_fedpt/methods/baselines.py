"""The baselines' client side (method doc §7): VPT-shallow/deep, FedProx, head-only, prior
correction, local-only. One class: the method decides the model (``build_model``), the
loss (FedProx's proximal term) and the logits at evaluation (the client's own log prior).

None of them uses CCMP or z(x): the weights are one (a single prompt set) and no frozen
query pass is run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pep_fedpt.corrections import proximal_term
from pep_fedpt.engine import evaluate, no_features, train_epochs, unit_weights
from pep_fedpt.methods.common import PromptClient
from pep_fedpt.state import trainable_arrays

PRIOR_CORRECTED_METHODS = ("fedavg-vpt-prior",)
PROXIMAL_METHODS = ("fedprox-vpt",)
PERSONAL_METHODS = ("local",)


class BaselineClient(PromptClient):
    """One client's routines for a baseline ``cfg.method`` over its partition."""

    @property
    def personal(self) -> bool:  # type: ignore[override]
        """Local-only: the node keeps (and evaluates) its own trained state."""
        return self.cfg.method in PERSONAL_METHODS

    def train(
        self,
        arrays: Mapping[str, np.ndarray],
        prototypes: np.ndarray | None = None,
        server_round: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        model = self._model(arrays)
        regularizer = None
        mu = self.cfg.train.proximal_mu
        if self.cfg.method in PROXIMAL_METHODS and mu > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            anchors = [p.detach().clone() for p in params]  # θ_global, as received

            def regularizer() -> torch.Tensor:
                return proximal_term(params, anchors, mu)

        result = train_epochs(
            model,
            self.data.train,
            no_features(self.data.train),
            unit_weights,
            self.cfg.train,
            self.device,
            self.train_seed(server_round),
            lr_scale=self.lr_scale(server_round),
            regularizer=regularizer,
        )
        return trainable_arrays(model), self.train_metrics(result)

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], prototypes: np.ndarray | None = None
    ) -> dict[str, float | int]:
        model = self._model(arrays)
        shift = self.log_prior if self.cfg.method in PRIOR_CORRECTED_METHODS else None
        return self.evaluated(
            lambda split: evaluate(
                model,
                self.data.split(split),
                no_features(self.data.split(split)),
                unit_weights,
                self.device,
                log_prior=shift,
            )
        )
