"""PEP-FedPT's two prior keys: the uniform-prior ablation of the mixing weights and this
project's extension that adds the client's log prior to the logits at test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pep_fedpt.ccmp import smoothed_prior
from pep_fedpt.config import RunConfig
from pep_fedpt.data.client_data import subset_targets
from pep_fedpt.methods import client_for, initial_arrays
from pep_fedpt.methods.pep_fedpt import PEPFedPTClient


def _client(tiny_run_config: dict, **keys: object) -> PEPFedPTClient:
    cfg = RunConfig.from_flat({**tiny_run_config, "method": "pep-fedpt", **keys})
    client = client_for(cfg, 1, 8)
    assert isinstance(client, PEPFedPTClient)
    return client


def _prototypes(client: PEPFedPTClient) -> np.ndarray:
    sums, counts = client.prototype_stats()
    return sums / np.maximum(counts, 1)[:, None]


def test_test_prior_correction_predicts_the_clients_most_frequent_class_from_a_zero_head(
    tiny_run_config: dict,
) -> None:
    """With the initial zero head every logit is equal: plain PEP-FedPT predicts class 0,
    with the extension on the client's most frequent class, loss −mean log π(y)."""
    results = {}
    for on in (False, True):
        client = _client(tiny_run_config, **{"prompt.test-prior-correction": on})
        state = initial_arrays(client.cfg, client.backbone, 10)
        results[on] = client.evaluate(state, _prototypes(client))
    labels = subset_targets(client.data.test)
    prior = smoothed_prior(torch.as_tensor(client.data.train_counts), 1.0).double().numpy()
    assert results[False]["correct"] == int((labels == 0).sum())
    assert results[False]["loss"] == pytest.approx(math.log(10), rel=1e-5)
    assert results[True]["correct"] == int((labels == int(np.argmax(prior))).sum())
    assert results[True]["loss"] == pytest.approx(-np.mean(np.log(prior[labels])), rel=1e-5)


def test_uniform_mixing_prior_equals_a_prior_smoothed_flat(tiny_run_config: dict) -> None:
    """``mixing-prior = "uniform"`` leaves softmax(cos / τ): the same as the client's
    prior made flat by a huge ε (a constant log π cancels in the softmax), and not the
    same as the client's real prior once the class prompts and the head differ."""
    normal_head = {"prompt.head-init": "normal", "prompt.tau": 1.0}
    losses = {}
    for name, keys in {
        "uniform": {"prompt.mixing-prior": "uniform"},
        "flat": {"prompt.prior-smoothing": 1e12},
        "client": {},
    }.items():
        client = _client(tiny_run_config, **normal_head, **keys)
        state = initial_arrays(client.cfg, client.backbone, 10)
        losses[name] = client.evaluate(state, _prototypes(client))["loss"]
    assert losses["uniform"] == pytest.approx(losses["flat"], rel=1e-6)
    assert losses["uniform"] != pytest.approx(losses["client"], rel=1e-6)
