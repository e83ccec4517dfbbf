"""PEP-FedPT's zero-training diagnostic: the CCMP mixing weights used directly as a
classifier, on each client's test split, with its own prior and with a uniform one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from helpers.run_helpers import NODES, load_json, run_server

from pep_fedpt.ccmp import ccmp_correct
from pep_fedpt.config import RunConfig
from pep_fedpt.data.client_data import subset_targets
from pep_fedpt.methods import client_for, initial_arrays
from pep_fedpt.methods.pep_fedpt import PEPFedPTClient
from strategies import wire
from strategies.summaries import ccmp_summary
from strategies.validation import check_ccmp_counts, check_evaluate_reply

# Two unit prototypes and three queries, every label 0.
# cosines (to mu_0, mu_1): x1 (0.981, 0.196), x2 (0.6, 0.8), x3 (0.8, 0.6).
MU = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
X = torch.tensor([[1.0, 0.2], [0.6, 0.8], [0.8, 0.6]])
Y = torch.tensor([0, 0, 0])


def test_uniform_prior_is_the_nearest_prototype() -> None:
    # argmax of the cosines: x1 -> 0, x2 -> 1, x3 -> 0: two of three right, at any tau
    for tau in (0.03, 0.1, 1.0):
        assert ccmp_correct(X, Y, MU, torch.zeros(2), tau) == 2


def test_the_prior_moves_the_argmax_by_hand() -> None:
    # pi = (0.1, 0.9), tau = 0.1: logits x1 (9.806 - 2.303, 1.961 - 0.105) -> 0;
    # x2 (6 - 2.303, 8 - 0.105) -> 1; x3 (8 - 2.303 = 5.697, 6 - 0.105 = 5.895) -> 1:
    # the prior turns x3 to class 1, so one of three right
    log_prior = torch.tensor([0.1, 0.9]).log()
    assert ccmp_correct(X, Y, MU, log_prior, 0.1) == 1
    # at tau = 1 the cosines' 0.2 gap is too small against log 9 = 2.2: all three -> 1
    assert ccmp_correct(X, Y, MU, log_prior, 1.0) == 0
    assert ccmp_correct(X, torch.ones(3, dtype=torch.long), MU, log_prior, 1.0) == 3


def test_a_tie_goes_to_the_lower_class_and_empty_is_zero() -> None:
    zero = torch.zeros(2, 2)  # no class held: every cosine 0, every logit equal
    assert ccmp_correct(X, Y, zero, torch.zeros(2), 0.1) == 3
    assert ccmp_correct(X[:0], Y[:0], MU, torch.zeros(2), 0.1) == 0
    with pytest.raises(ValueError, match="3 features but 2 labels"):
        ccmp_correct(X, Y[:2], MU, torch.zeros(2), 0.1)


def test_ccmp_summary_by_hand() -> None:
    # training clients: prior 3/4 and 1/2, uniform 1/4 and 2/2; held out: prior 0/5,
    # uniform 5/5; a fourth client reported no counts (a baseline's reply)
    summary = ccmp_summary(
        [3, 1, 0, None], [1, 2, 5, None], [4, 2, 5, 7], [False, False, True, False]
    )
    assert summary == pytest.approx(
        {
            "ccmp-prior-accuracy": 4 / 6,
            "ccmp-prior-mean-client-accuracy": (0.75 + 0.5) / 2,
            "ccmp-uniform-accuracy": 3 / 6,
            "ccmp-uniform-mean-client-accuracy": (0.25 + 1.0) / 2,
            "held-out-ccmp-prior-accuracy": 0.0,
            "held-out-ccmp-prior-mean-client-accuracy": 0.0,
            "held-out-ccmp-uniform-accuracy": 1.0,
            "held-out-ccmp-uniform-mean-client-accuracy": 1.0,
        }
    )
    assert ccmp_summary([None], [None], [3], [False]) == {}


def test_the_counts_are_checked_like_the_others() -> None:
    ok = {wire.NUM_EXAMPLES: 5, wire.CORRECT: 2}
    both = {wire.CCMP_PRIOR_CORRECT: 4, wire.CCMP_UNIFORM_CORRECT: 0}
    assert check_ccmp_counts(MetricRecord(ok)) is None  # a baseline: none
    assert check_ccmp_counts(MetricRecord({**ok, **both})) is None
    one = check_ccmp_counts(MetricRecord({**ok, wire.CCMP_PRIOR_CORRECT: 4}))
    assert "come together" in str(one)
    over = {**ok, **both, wire.CCMP_UNIFORM_CORRECT: 6}
    reply = RecordDict({wire.METRICS: MetricRecord(over)})
    assert check_evaluate_reply(reply) == (
        "ccmp-uniform-correct = 6 with num-examples = 5 is impossible"
    )
    floaty = check_ccmp_counts(MetricRecord({**ok, **both, wire.CCMP_PRIOR_CORRECT: 1.5}))
    assert floaty == "ccmp-prior-correct must be an integer, got 1.5"


def _client(tiny_run_config: dict, **keys: object) -> PEPFedPTClient:
    cfg = RunConfig.from_flat({**tiny_run_config, "method": "pep-fedpt", **keys})
    client = client_for(cfg, 1, 8)
    assert isinstance(client, PEPFedPTClient)
    return client


def _by_hand(features: np.ndarray, labels: np.ndarray, mu: np.ndarray, log_prior, tau) -> int:
    """numpy's own cosine and argmax, no project code."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    norms = np.linalg.norm(mu, axis=1, keepdims=True)
    m = np.divide(mu, norms, out=np.zeros_like(mu), where=norms > 0)
    return int((np.argmax(f @ m.T / tau + log_prior, axis=1) == labels).sum())


@pytest.mark.integration  # builds two clients' data and features: about 10 s
def test_a_clients_evaluate_reply_carries_both_counts(tiny_run_config: dict) -> None:
    client = _client(tiny_run_config, **{"prompt.tau": 0.05})
    sums, counts = client.prototype_stats()
    mu = sums / np.maximum(counts, 1)[:, None]
    state = initial_arrays(client.cfg, client.backbone, 10)
    metrics = client.evaluate(state, mu)
    features = client.features("test").double().numpy()
    labels = np.asarray(subset_targets(client.data.split("test")))
    log_prior = client.log_prior.double().numpy()
    assert metrics[wire.NUM_EXAMPLES] == len(labels) > 0
    assert metrics[wire.CCMP_PRIOR_CORRECT] == _by_hand(features, labels, mu, log_prior, 0.05)
    assert metrics[wire.CCMP_UNIFORM_CORRECT] == _by_hand(features, labels, mu, 0.0, 0.05)
    # no prompt, head or mixing-prior setting enters it
    state = {k: v + 1.0 if k.startswith("prompt.") else v for k, v in state.items()}
    uniform = _client(tiny_run_config, **{"prompt.tau": 0.05, "prompt.mixing-prior": "uniform"})
    again = uniform.evaluate(state, mu)
    for key in (wire.CCMP_PRIOR_CORRECT, wire.CCMP_UNIFORM_CORRECT):
        assert again[key] == metrics[key]


@pytest.mark.integration  # two whole in-process runs: about 50 s
def test_the_server_records_it_for_pep_fedpt_only(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    run_server(tiny_run_config)
    last = load_json(tmp_path / "run" / "metrics.json")[-1]
    for prior in ("prior", "uniform"):
        for key in (f"ccmp-{prior}-accuracy", f"ccmp-{prior}-mean-client-accuracy"):
            value = last[f"evaluate/{key}"]
            assert isinstance(value, float) and 0.0 <= value <= 1.0 and math.isfinite(value)
    assert len(NODES) >= 2
    flat = {**tiny_run_config, "method": "fedavg-vpt-shallow"}
    flat["output-dir"] = str(tmp_path / "baseline")
    run_server(flat)
    baseline = load_json(tmp_path / "baseline" / "metrics.json")[-1]
    assert not any("ccmp-" in key for key in baseline)
