"""pFedPG's server-side prompt generator: numpy forward pass and hand-derived gradient.

The generator maps a client descriptor e (d,) to that client's prompt P (T, D):

    Q = reshape(e W_q, (T, d))          one query per prompt token, from the descriptor
    K = B W_k,  V = B W_v               keys and values from the learnable base prompts B
    A = softmax_rows(Q Kᵀ / √d)         (T, T): how each token mixes the base tokens
    P = B + A V                         residual on the client-agnostic base prompts

Parameters: B (T, D), W_q (d, T·d), W_k (D, d), W_v (D, D). W_v starts at zero, so every
client's first prompt is B (the model's initial prompt) and what differs between clients
is learned; W_k is scaled so that the initial keys have unit variance. The descriptors
(one per client) are learned with the generator.

Training (pFedHN-style, as pFedPG): a client trains the prompt P it received into P̃ and
the server descends L = ½ ‖P(φ, e) − P̃‖² with P̃ fixed, i.e. back-propagates
∂L/∂P = P − P̃ = −ΔP through the generator. One step moves P towards P̃; with
``lr = 1`` and one client, B moves by exactly ΔP (plus the attention path's share).

Small enough (T·D + d·T·d + D·d + D² numbers) that numpy and a hand-derived gradient are
simpler to ship than torch in a package users import into their own server apps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

# A client's key (its partition id); sorted, so that sums run in one order.
Key = TypeVar("Key", int, str)

# Names of the generator's parameters in a flat array dict (the strategy's state).
PARAM_NAMES = ("base", "w-q", "w-k", "w-v")


@dataclass(frozen=True)
class GeneratorParams:
    """The generator's shared parameters (float64 while computing, float32 on the wire)."""

    base: np.ndarray  # (T, D) client-agnostic base prompts B
    w_q: np.ndarray  # (d, T·d) descriptor -> one query per token
    w_k: np.ndarray  # (D, d) base prompt -> key
    w_v: np.ndarray  # (D, D) base prompt -> value

    @property
    def num_tokens(self) -> int:
        return int(self.base.shape[0])

    @property
    def width(self) -> int:
        return int(self.base.shape[1])

    @property
    def descriptor_dim(self) -> int:
        return int(self.w_k.shape[1])

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters under ``PARAM_NAMES``, as float32."""
        values = (self.base, self.w_q, self.w_k, self.w_v)
        return {
            name: np.asarray(v, dtype=np.float32)
            for name, v in zip(PARAM_NAMES, values, strict=True)
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> GeneratorParams:
        """Undo ``arrays``; shapes are checked so that a corrupt state fails here."""
        base, w_q, w_k, w_v = (np.asarray(arrays[name], dtype=np.float64) for name in PARAM_NAMES)
        params = cls(base=base, w_q=w_q, w_k=w_k, w_v=w_v)
        t, width, d = params.num_tokens, params.width, params.descriptor_dim
        expected = {"base": (t, width), "w-q": (d, t * d), "w-k": (width, d), "w-v": (width, width)}
        for name, value in zip(PARAM_NAMES, (base, w_q, w_k, w_v), strict=True):
            if value.shape != expected[name]:
                raise ValueError(
                    f"generator parameter {name!r} has shape {value.shape}, expected "
                    f"{expected[name]} for T={t} tokens of width D={width} and d={d}"
                )
        return params

    def _combine(self, other: GeneratorParams, scale: float) -> GeneratorParams:
        return GeneratorParams(
            base=self.base + scale * other.base,
            w_q=self.w_q + scale * other.w_q,
            w_k=self.w_k + scale * other.w_k,
            w_v=self.w_v + scale * other.w_v,
        )

    def is_finite(self) -> bool:
        return all(np.all(np.isfinite(v)) for v in (self.base, self.w_q, self.w_k, self.w_v))


def init_params(base: np.ndarray, descriptor_dim: int, seed: int) -> GeneratorParams:
    """B = ``base`` (the initial prompts), W_q ~ N(0, 1/d), W_v = 0, and
    W_k ~ N(0, 1/(D·mean(B²))): keys of unit variance however small the initial prompts
    are (VPT's are ~U(±0.2)), so that descriptors make a difference to the attention
    from the start instead of it being uniform."""
    if descriptor_dim < 1:
        raise ValueError(f"descriptor_dim = {descriptor_dim} must be >= 1")
    base = np.asarray(base, dtype=np.float64)
    if base.ndim != 2:
        raise ValueError(f"base prompts must be (T, D), got shape {base.shape}")
    t, width = base.shape
    rng = np.random.default_rng([seed, 0x9FED])
    mean_square = float(np.mean(base**2)) or 1.0
    return GeneratorParams(
        base=base.copy(),
        w_q=rng.normal(0.0, 1.0 / math.sqrt(descriptor_dim), (descriptor_dim, t * descriptor_dim)),
        w_k=rng.normal(0.0, 1.0 / math.sqrt(width * mean_square), (width, descriptor_dim)),
        w_v=np.zeros((width, width)),
    )


def init_descriptor(descriptor_dim: int, seed: int, client: int) -> np.ndarray:
    """Client ``client``'s initial descriptor, U(−1, 1)^d, independent of the other clients."""
    rng = np.random.default_rng([seed, 0xDE5C, client])
    return rng.uniform(-1.0, 1.0, descriptor_dim).astype(np.float32)


def _check_descriptor(params: GeneratorParams, descriptor: np.ndarray) -> np.ndarray:
    e = np.asarray(descriptor, dtype=np.float64)
    if e.shape != (params.descriptor_dim,):
        raise ValueError(f"descriptor has shape {e.shape}, expected ({params.descriptor_dim},)")
    return e


def _attention(
    params: GeneratorParams, e: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q (T, d), K (T, d), V (T, D) and A (T, T) of one descriptor."""
    t, d = params.num_tokens, params.descriptor_dim
    q = (e @ params.w_q).reshape(t, d)
    k = params.base @ params.w_k
    v = params.base @ params.w_v
    scores = q @ k.T / math.sqrt(d)
    scores = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=1, keepdims=True)
    return q, k, v, weights


def forward(params: GeneratorParams, descriptor: np.ndarray) -> np.ndarray:
    """The prompt P (T, D) the generator makes for ``descriptor`` (float32)."""
    _, _, v, a = _attention(params, _check_descriptor(params, descriptor))
    prompt: np.ndarray = (params.base + a @ v).astype(np.float32)
    return prompt


def gradients(
    params: GeneratorParams, descriptor: np.ndarray, upstream: np.ndarray
) -> tuple[GeneratorParams, np.ndarray]:
    """∂L/∂φ and ∂L/∂e for a loss L whose gradient at the output P is ``upstream`` (T, D)."""
    e = _check_descriptor(params, descriptor)
    g = np.asarray(upstream, dtype=np.float64)
    if g.shape != params.base.shape:
        raise ValueError(f"upstream gradient has shape {g.shape}, expected {params.base.shape}")
    t, d = params.num_tokens, params.descriptor_dim
    q, k, v, a = _attention(params, e)
    d_a = g @ v.T  # (T, T)
    d_v = a.T @ g  # (T, D)
    d_scores = a * (d_a - (d_a * a).sum(axis=1, keepdims=True))  # softmax backward, per row
    d_q = d_scores @ k / math.sqrt(d)  # (T, d)
    d_k = d_scores.T @ q / math.sqrt(d)  # (T, d)
    d_base = g + d_v @ params.w_v.T + d_k @ params.w_k.T
    grads = GeneratorParams(
        base=d_base,
        w_q=np.outer(e, d_q.reshape(t * d)),
        w_k=params.base.T @ d_k,
        w_v=params.base.T @ d_v,
    )
    return grads, params.w_q @ d_q.reshape(t * d)


def update(
    params: GeneratorParams, descriptor: np.ndarray, delta: np.ndarray, lr: float
) -> tuple[GeneratorParams, np.ndarray]:
    """One gradient step from one client's ΔP = P̃ − P: φ ← φ + lr Jᵀ ΔP, e likewise."""
    grads, d_e = gradients(params, descriptor, -np.asarray(delta, dtype=np.float64))
    new_e = np.asarray(descriptor, dtype=np.float64) - lr * d_e
    return params._combine(grads, -lr), new_e.astype(np.float32)


def round_update(
    params: GeneratorParams,
    descriptors: Mapping[Key, np.ndarray],
    deltas: Mapping[Key, np.ndarray],
    lr: float,
) -> tuple[GeneratorParams, dict[Key, np.ndarray]]:
    """One step from a round's clients: the shared parameters by the mean of their
    gradients (each client counts once, as one pFedHN step each), every descriptor by its
    own client's gradient. Descriptors without a delta stay as they are.

    Summed in sorted key order, so the result does not depend on the order replies came in.
    """
    if not deltas:
        raise ValueError("round_update needs at least one client's delta")
    unknown = sorted(set(deltas) - set(descriptors))
    if unknown:
        raise KeyError(f"no descriptor for clients {unknown}")
    total: GeneratorParams | None = None
    new_descriptors = dict(descriptors)
    for key in sorted(deltas):
        grads, d_e = gradients(params, descriptors[key], -np.asarray(deltas[key], np.float64))
        total = grads if total is None else total._combine(grads, 1.0)
        e = np.asarray(descriptors[key], dtype=np.float64)
        new_descriptors[key] = (e - lr * d_e).astype(np.float32)
    assert total is not None
    return params._combine(total, -lr / len(deltas)), new_descriptors


def mean_descriptor(descriptors: Mapping[Key, np.ndarray]) -> np.ndarray:
    """The mean of the learned descriptors: what a client without one (held out) gets."""
    if not descriptors:
        raise ValueError("no descriptors to average")
    keys = sorted(descriptors)
    stacked = np.stack([np.asarray(descriptors[k], dtype=np.float64) for k in keys])
    mean: np.ndarray = stacked.mean(axis=0).astype(np.float32)
    return mean
