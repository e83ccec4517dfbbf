"""FedTPG (text-driven prompt generation) under FedMVP's protocol: the generator against
values computed by hand, its prompts in CLIP's text encoder, its wire format, and one
round through the real apps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Message
from helpers.run_helpers import load_json, load_state, recorder, run_server

from pep_fedpt.config import RunConfig
from pep_fedpt.methods.fedmvp import cached_clip
from pep_fedpt.methods.fedtpg import PREFIX, GeneratedPrompts, PromptGenerator
from strategies import wire


def test_the_generator_computes_fedtpgs_cross_attention_by_hand() -> None:
    gen = PromptGenerator(text_dim=6, width=8, n_ctx=3, heads=2, seed=0)
    names = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # non-trivial norms, so that a skipped LayerNorm would show
        for norm in (gen.q_norm, gen.kv_norm, gen.ffn_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        q = F.layer_norm(gen.queries, (8,), gen.q_norm.weight, gen.q_norm.bias)
        t = F.layer_norm(names, (6,), gen.kv_norm.weight, gen.kv_norm.bias)
        attn = gen.attn  # keys and values of width 6: separate projections
        bias = attn.in_proj_bias
        queries = q @ attn.q_proj_weight.t() + bias[:8]
        keys = t @ attn.k_proj_weight.t() + bias[8:16]
        values = t @ attn.v_proj_weight.t() + bias[16:]
        heads = []
        for h in range(2):
            s = slice(4 * h, 4 * h + 4)
            weights = torch.softmax(queries[:, s] @ keys[:, s].t() / math.sqrt(4), dim=-1)
            heads.append(weights @ values[:, s])
        hidden = attn.out_proj(torch.cat(heads, dim=-1))  # no residual from the queries
        up = gen.fc1(F.layer_norm(hidden, (8,), gen.ffn_norm.weight, gen.ffn_norm.bias))
        expected = hidden + gen.fc2(up[:, :32] * F.gelu(up[:, 32:]))
        got = gen(names)
    assert got.shape == (3, 8)
    assert torch.allclose(got, expected, atol=1e-5)
    # The context depends on the classes: other names, another context; same seed, same net.
    assert not torch.allclose(gen(names[:2]), got)
    again = PromptGenerator(6, 8, 3, 2, seed=0)
    assert torch.equal(again.attn.q_proj_weight, gen.attn.q_proj_weight)
    assert not torch.equal(PromptGenerator(6, 8, 3, 2, seed=1).queries, again.queries)


def test_generated_prompts_fill_coops_placeholders_and_round_trip() -> None:
    bundle = cached_clip(RunConfig(), "cpu")
    prompts = GeneratedPrompts(bundle, seed=0, n_ctx=4)
    names = ["dog", "alarm_clock"]
    tokens = prompts.tokens(names)
    with torch.no_grad():
        ctx = prompts.context(names)
        words = F.normalize(
            bundle.model.encode_text(bundle.tokenizer(["dog", "alarm clock"])), dim=-1
        )
        assert torch.allclose(prompts.name_features(names), words, atol=1e-6)
        assert torch.allclose(ctx, prompts.generator(words), atol=1e-6)
        # With the generated context, the prompted encoder is open_clip's own encode_text of
        # the token embeddings with positions 1..4 replaced by it.
        clip = bundle.model
        x = clip.token_embedding(tokens)
        x = torch.cat([x[:, :1], ctx.expand(2, -1, -1), x[:, 5:]], dim=1)
        x = clip.ln_final(clip.transformer(x + clip.positional_embedding, attn_mask=clip.attn_mask))
        pooled = x[torch.arange(2), tokens.argmax(dim=-1)] @ clip.text_projection
        np.testing.assert_allclose(
            prompts.text_features(tokens, names), F.normalize(pooled, dim=-1), atol=1e-5
        )
    arrays = prompts.trainable_arrays()
    assert all(k.startswith(PREFIX) for k in arrays) and f"{PREFIX}queries" in arrays
    other = GeneratedPrompts(bundle, seed=5, n_ctx=4)
    other.load_trainable_arrays(arrays)
    assert all(np.array_equal(arrays[k], v) for k, v in other.trainable_arrays().items())
    with pytest.raises(KeyError, match=r"missing \['fedtpg\.queries'\]"):
        other.load_trainable_arrays({k: v for k, v in arrays.items() if k != f"{PREFIX}queries"})
    with pytest.raises(ValueError, match=r"fedtpg\.queries: shape \(2, 2\)"):
        other.load_trainable_arrays({**arrays, f"{PREFIX}queries": np.zeros((2, 2), np.float32)})
    assert not hasattr(prompts, "ctx")  # no learnt context of its own: only the generator


@pytest.mark.integration
def test_one_fedtpg_round_averages_the_generator_with_equal_weights(
    tmp_path: Path, task_identity
) -> None:
    flat = RunConfig().to_flat()
    flat.update(
        {
            "method": "fedtpg",
            "num-server-rounds": 1,
            "output-dir": str(tmp_path / "run"),
            "cache-dir": str(tmp_path / "features"),
            "fedmvp.classes-per-client": 2,
            "fedmvp.shots": 4,
            "train.batch-size": 4,
        }
    )
    nodes = {10 + p: {"partition-id": p, "num-partitions": 2} for p in range(2)}
    trains: list[Message] = []
    run_server(flat, tamper={n: recorder(trains) for n in nodes}, nodes=nodes)
    state = load_state(tmp_path / "run")
    keys = set(state) - {wire.PROTO_COUNT}
    assert keys and all(k.startswith(PREFIX) for k in keys)
    for key in keys:  # equal weights: clients of 2 and 3 classes count the same
        replies = [m.content[wire.ARRAYS][key].numpy().astype(np.float64) for m in trains]
        np.testing.assert_allclose(state[key], np.mean(replies, axis=0), rtol=1e-5, atol=1e-6)
    row = load_json(tmp_path / "run" / "metrics.json")[1]
    for key in ("server/local-accuracy", "server/base-accuracy", "server/new-accuracy"):
        assert 0.0 <= row[key] <= 1.0, key
