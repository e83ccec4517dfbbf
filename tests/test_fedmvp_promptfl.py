"""PromptFL (CoOp context, FedAvg) under FedMVP's protocol: the prompted text encoder
against open_clip's own, and one round through the real apps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message
from helpers.run_helpers import load_json, load_state, recorder, run_server

from pep_fedpt.config import RunConfig
from pep_fedpt.methods.fedmvp import cached_clip
from pep_fedpt.methods.promptfl import CTX_KEY, ContextPrompts
from strategies import wire


def test_the_context_sits_where_the_placeholders_were() -> None:
    """With the context set to the embeddings of the "X" placeholders themselves, the
    prompted encoder is open_clip's encode_text of the same tokens, exactly."""
    bundle = cached_clip(RunConfig(), "cpu")
    prompts = ContextPrompts(bundle, seed=0, n_ctx=16)  # CoOp's own length
    tokens = prompts.tokens(["dog", "alarm_clock"])
    with torch.no_grad():
        prompts.ctx.copy_(bundle.model.token_embedding(tokens)[0, 1 : 1 + 16])
        expected = bundle.model.encode_text(tokens, normalize=True)
        np.testing.assert_allclose(prompts.text_features(tokens), expected, atol=1e-6)
    # and the context is what moves them: another context, other features (a random one:
    # a constant shift would vanish in the LayerNorms)
    with torch.no_grad():
        prompts.ctx.add_(torch.randn(prompts.ctx.shape, generator=torch.Generator().manual_seed(0)))
        assert not torch.allclose(prompts.text_features(tokens), expected, atol=1e-3)


def test_the_context_is_seeded_and_round_trips() -> None:
    bundle = cached_clip(RunConfig(), "cpu")
    first, second = ContextPrompts(bundle, 3), ContextPrompts(bundle, 3)
    assert first.ctx.shape == (4, 64)  # FedTPG's PromptFL row: 4 context tokens
    np.testing.assert_array_equal(
        first.trainable_arrays()[CTX_KEY], second.trainable_arrays()[CTX_KEY]
    )
    arrays = {CTX_KEY: np.ones_like(first.trainable_arrays()[CTX_KEY])}
    second.load_trainable_arrays(arrays)
    np.testing.assert_array_equal(second.trainable_arrays()[CTX_KEY], arrays[CTX_KEY])
    with pytest.raises(ValueError, match=r"promptfl\.ctx: shape"):
        second.load_trainable_arrays({CTX_KEY: np.ones((2, 2), np.float32)})


@pytest.mark.integration
@pytest.mark.parametrize("aggregation", ["equal", "num-examples"])
def test_one_promptfl_round_averages_the_context_as_configured(
    tmp_path: Path, task_identity, aggregation: str
) -> None:
    """Equal weights by default (FedTPG's PromptFL row), n_k with "num-examples"; the
    context has fedmvp.promptfl-context tokens."""
    flat = RunConfig().to_flat()
    flat.update(
        {
            "method": "promptfl",
            "num-server-rounds": 1,
            "output-dir": str(tmp_path / "run"),
            "cache-dir": str(tmp_path / "features"),
            "fedmvp.classes-per-client": 2,
            "fedmvp.shots": 1000,  # more than any class has: every example, so n_k differ
            "train.batch-size": 64,
            "fedmvp.aggregation": aggregation,
            "fedmvp.promptfl-context": 3,
        }
    )
    nodes = {10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)}
    trains: list[Message] = []
    run_server(flat, tamper={n: recorder(trains) for n in nodes}, nodes=nodes)
    state = load_state(tmp_path / "run")
    assert set(state) == {CTX_KEY, wire.PROTO_COUNT}
    sizes = [m.content[wire.METRICS][wire.NUM_EXAMPLES] for m in trains]
    assert sizes[0] != sizes[1]
    ctxs = [m.content[wire.ARRAYS][CTX_KEY].numpy().astype(np.float64) for m in trains]
    weights = sizes if aggregation == "num-examples" else [1, 1]
    mean = sum(n * c for n, c in zip(weights, ctxs, strict=True)) / sum(weights)
    np.testing.assert_allclose(state[CTX_KEY], mean, rtol=1e-5, atol=1e-7)
    assert state[CTX_KEY].shape == (3, 64)
    assert not np.allclose(ctxs[0], ctxs[1])  # each client trained its own way
    row = load_json(tmp_path / "run" / "metrics.json")[1]
    for key in (
        "server/local-accuracy",
        "server/base-accuracy",
        "server/new-accuracy",
        "server/hm",
    ):
        assert 0.0 <= row[key] <= 1.0, key
