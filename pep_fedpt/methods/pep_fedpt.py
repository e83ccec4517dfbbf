"""PEP-FedPT's client side: prototype statistics, local prompt tuning, local evaluation;
and its registration (server: ``strategies/pep_fedpt.py``).

Flower-free: the ClientApp decodes a message into numpy arrays, calls one of these
methods and encodes what comes back. One ``PEPFedPTClient`` lives per worker process and
partition, so the backbone and the data outlive single messages; z(x) is also kept in a
node-local disk cache, which outlives the process (deployment starts one per message).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pep_fedpt.ccmp import ccmp_correct, mixing_weights
from pep_fedpt.config import RunConfig
from pep_fedpt.data.client_data import subset_targets
from pep_fedpt.engine import WeightsFn, evaluate
from pep_fedpt.methods.central import PromptedViTServer
from pep_fedpt.methods.common import PromptClient
from pep_fedpt.methods.registry import Method, Received, register
from pep_fedpt.state import trainable_arrays
from strategies import wire


def ccmp_weights_fn(
    prototypes: torch.Tensor, log_prior: torch.Tensor, tau: float, onehot_in_training: bool
) -> WeightsFn:
    """CCMP mixing weights from z(x); one-hot on the label while training if asked."""

    def weights(query: torch.Tensor, labels: torch.Tensor, training: bool) -> torch.Tensor:
        if training and onehot_in_training:
            return F.one_hot(labels, prototypes.shape[0]).float()
        return mixing_weights(query, prototypes, log_prior, tau)

    return weights


def mixing_log_prior(cfg: RunConfig, log_prior: torch.Tensor) -> torch.Tensor:
    """log π in the mixing weights: the prior's, or zeros with ``prompt.mixing-prior =
    "uniform"`` (the ablation that leaves only cos(z(x), μ_c) / τ)."""
    if cfg.prompt.mixing_prior == "uniform":
        return torch.zeros_like(log_prior)
    return log_prior


class PEPFedPTClient(PromptClient):
    """One client's PEP-FedPT routines over its partition."""

    uses_prototypes = True

    def prototype_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class sums S_{k,c} of z(x) over the local train split, and counts n_{k,c}."""
        feats = self.features("train").double()
        labels = torch.as_tensor(subset_targets(self.data.train), dtype=torch.long)
        sums = torch.zeros(self.data.num_classes, feats.shape[1], dtype=torch.float64)
        sums.index_add_(0, labels, feats)
        return sums.float().numpy(), self.data.train_counts.astype(np.int64)

    def _weights(self, prototypes: np.ndarray) -> WeightsFn:
        return ccmp_weights_fn(
            torch.as_tensor(prototypes, dtype=torch.float32, device=self.device),
            mixing_log_prior(self.cfg, self.log_prior),
            self.cfg.prompt.tau,
            self.cfg.prompt.train_weights == "onehot",
        )

    def train(
        self, arrays: Mapping[str, np.ndarray], prototypes: np.ndarray, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        model = self._model(arrays)
        result = self.train_local(
            model, self.features("train"), self._weights(prototypes), server_round
        )
        return trainable_arrays(model), self.train_metrics(result)

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], prototypes: np.ndarray
    ) -> dict[str, float | int]:
        model = self._model(arrays)
        weights = self._weights(prototypes)
        # prompt.test-prior-correction: this project's extension (off by default).
        shift = self.log_prior if self.cfg.prompt.test_prior_correction else None
        metrics = self.evaluated(
            lambda split: evaluate(
                model,
                self.data.split(split),
                self.features(split),
                weights,
                self.device,
                log_prior=shift,
            )
        )
        metrics.update(self.ccmp_diagnostic(prototypes))
        return metrics

    def ccmp_diagnostic(self, prototypes: np.ndarray) -> dict[str, float | int]:
        """The zero-training diagnostic: how many test examples the mixing weights get
        right used directly as a classifier, with this client's (smoothed) prior and with a
        uniform one, whatever ``prompt.mixing-prior`` the run mixes with."""
        query = self.features("test").float().cpu()
        labels = torch.as_tensor(subset_targets(self.data.split("test")), dtype=torch.long)
        mu = torch.as_tensor(prototypes, dtype=torch.float32)
        log_prior = self.log_prior.float().cpu()
        tau = self.cfg.prompt.tau
        return {
            wire.CCMP_PRIOR_CORRECT: ccmp_correct(query, labels, mu, log_prior, tau),
            wire.CCMP_UNIFORM_CORRECT: ccmp_correct(
                query, labels, mu, torch.zeros_like(log_prior), tau
            ),
        }


def central_weights(
    cfg: RunConfig, state: Mapping[str, np.ndarray], log_prior: torch.Tensor, device: torch.device
) -> WeightsFn | None:
    """The server's CCMP weights: the global prototypes under the global prior (soft
    weights, as at a client's evaluation; no prior with ``prompt.mixing-prior = "uniform"``)."""
    if wire.PROTO_MEAN not in state:
        return None
    prototypes = torch.as_tensor(state[wire.PROTO_MEAN], device=device)
    return ccmp_weights_fn(
        prototypes, mixing_log_prior(cfg, log_prior), cfg.prompt.tau, onehot_in_training=False
    )


def _prototypes(received: Received) -> np.ndarray:
    return received.records[wire.PROTO][wire.PROTO_MEAN]


def _strategy_kwargs(cfg: RunConfig) -> dict[str, Any]:
    return {
        "class_prompt_aggregation": cfg.fed.class_prompt_aggregation,
        "prototype_refresh_every": cfg.fed.prototype_refresh_every,
    }


register(
    Method(
        name="pep-fedpt",
        client=PEPFedPTClient,
        strategy="strategies.pep_fedpt:PEPFedPT",
        strategy_kwargs=_strategy_kwargs,
        server=PromptedViTServer,
        central_weights=central_weights,
        kept_record=wire.PROTO,  # prototypes: once per version, kept by the node
        extra=_prototypes,
        ccmp=True,  # prompt.mixing-prior and prompt.test-prior-correction apply
    )
)
