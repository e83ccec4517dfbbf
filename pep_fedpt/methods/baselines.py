"""The baselines' client side (method doc §7): VPT-shallow/deep, FedProx, head-only, prior
correction, local-only. One class: each name's registration (at the end) decides the
model (``layout``), the loss (``proximal``: FedProx's term) and the logits at evaluation
(``prior_correction``: the client's own log prior); local-only is ``personal``. Their
server is ``PromptFedAvg`` (``strategies/base.py``), local-only's ``LocalOnly``
(``strategies/baselines.py``).

None of them uses CCMP or z(x): the weights are one (a single prompt set) and no frozen
query pass is run.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pep_fedpt.corrections import proximal_term
from pep_fedpt.engine import evaluate, no_features, unit_weights
from pep_fedpt.methods.central import PromptedViTServer
from pep_fedpt.methods.common import PromptClient
from pep_fedpt.methods.registry import NO_PROMPT, VPT_DEEP, VPT_SHALLOW, Method, register
from pep_fedpt.state import trainable_arrays


class BaselineClient(PromptClient):
    """One client's routines for a baseline ``cfg.method`` over its partition."""

    def train(
        self,
        arrays: Mapping[str, np.ndarray],
        prototypes: np.ndarray | None = None,
        server_round: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        model = self._model(arrays)
        regularizer = None
        mu = self.cfg.train.proximal_mu
        if self.method.proximal and mu > 0:
            params = [p for p in model.parameters() if p.requires_grad]
            anchors = [p.detach().clone() for p in params]  # θ_global, as received

            def regularizer() -> torch.Tensor:
                return proximal_term(params, anchors, mu)

        result = self.train_local(
            model,
            no_features(self.data.train),
            unit_weights,
            server_round,
            regularizer=regularizer,
        )
        return trainable_arrays(model), self.train_metrics(result)

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], prototypes: np.ndarray | None = None
    ) -> dict[str, float | int]:
        model = self._model(arrays)
        shift = self.log_prior if self.method.prior_correction else None
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


FEDAVG = "strategies.base:PromptFedAvg"  # FedAvg by n_k: they differ only on the client

VIT = PromptedViTServer  # every baseline's server side: the PromptedViT one

for _method in (
    Method("fedavg-vpt-shallow", BaselineClient, FEDAVG, layout=VPT_SHALLOW, server=VIT),
    Method("fedavg-vpt-deep", BaselineClient, FEDAVG, layout=VPT_DEEP, server=VIT),
    Method("fedprox-vpt", BaselineClient, FEDAVG, layout=VPT_DEEP, server=VIT, proximal=True),
    Method("head-only", BaselineClient, FEDAVG, layout=NO_PROMPT, server=VIT),
    Method(
        "fedavg-vpt-prior",
        BaselineClient,
        FEDAVG,
        layout=VPT_DEEP,
        server=VIT,
        prior_correction=True,
    ),
    # Local-only: the node trains and evaluates its own state; the server shares nothing.
    Method(
        "local",
        BaselineClient,
        "strategies.baselines:LocalOnly",
        layout=VPT_DEEP,
        server=VIT,
        personal=True,
    ),
):
    register(_method)
