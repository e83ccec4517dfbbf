"""FedTPG (method = "fedtpg", Qiu et al., ICLR 2024): text-driven prompt generation, the
strongest federated baseline of FedMVP's tables.

A prompt generator, shared by every client and averaged on the server, maps the text
embeddings of a set of class names to the M context vectors of CLIP's text prompt
(``[SOS] v_1 ... v_M {class}.``, CoOp's layout): unseen classes get prompts from their
names alone. The generator, as FedTPG's released one at its default depth 0:

1. learnt queries Q (M x token width, N(0, 0.02^2) from the seed);
2. one cross-attention, ``heads`` heads: queries LayerNorm(Q), keys and values
   LayerNorm(T), T the L2-normalised frozen CLIP text features of the bare class names
   (C x D); no residual from Q: H = attention output;
3. context = H + FFN(H), FFN LayerNorm -> Linear(w, 8w) -> GEGLU -> Linear(4w, w).

Everything else is PromptFL's (``pep_fedpt.methods.promptfl``): frozen image features g(x)
cached per node, logits = ``fedmvp.logit-scale`` x cos(g(x), t_c), SGD with ``train.*``,
M = ``fedmvp.promptfl-context`` (4, FedTPG's), weights ``fedmvp.aggregation`` (equal, as
FedTPG averages). Only the generator (``fedtpg.*``) trains and travels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pep_fedpt.methods.fedmvp import _adapter_switch, _check_config, _strategy_kwargs
from pep_fedpt.methods.promptfl import ContextPrompts, PromptFLClient, PromptFLServer
from pep_fedpt.methods.registry import Method, register

PREFIX = "fedtpg."


class PromptGenerator(nn.Module):
    """(class-name features (C, text_dim)) -> context (M, width); see the module."""

    def __init__(self, text_dim: int, width: int, n_ctx: int, heads: int, seed: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"FedTPG: token width {width} is not divisible by {heads} heads")
        generator = torch.Generator().manual_seed(seed)
        self.queries = nn.Parameter(torch.randn(n_ctx, width, generator=generator) * 0.02)
        self.q_norm = nn.LayerNorm(width)
        self.kv_norm = nn.LayerNorm(text_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the layers' initialisation is a function of the seed
            self.attn = nn.MultiheadAttention(
                width, heads, kdim=text_dim, vdim=text_dim, batch_first=True
            )
            self.ffn_norm = nn.LayerNorm(width)
            self.fc1 = nn.Linear(width, 8 * width)
            self.fc2 = nn.Linear(4 * width, width)

    def forward(self, names: torch.Tensor) -> torch.Tensor:
        queries = self.q_norm(self.queries).unsqueeze(0)
        context = self.kv_norm(names).unsqueeze(0)
        hidden, _ = self.attn(queries, context, context, need_weights=False)
        a, b = self.fc1(self.ffn_norm(hidden)).chunk(2, dim=-1)
        return (hidden + self.fc2(a * F.gelu(b))).squeeze(0)


class GeneratedPrompts(ContextPrompts):
    """CoOp's prompts with the context generated from the classes' names."""

    def __init__(self, bundle, seed: int, n_ctx: int = 4, heads: int = 4) -> None:
        super().__init__(bundle, seed, n_ctx, learnable=False)
        text_dim = int(self.clip.text_projection.shape[-1])
        self.generator = PromptGenerator(text_dim, self.width, n_ctx, heads, seed).to(self.device)
        self._names: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def name_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """(C, D) L2-normalised frozen text features of the bare class names (FedTPG's
        generator input), computed once per set of classes."""
        key = tuple(classnames)
        if key not in self._names:
            words = [c.replace("_", " ").strip() for c in classnames]
            tokens = self.tokenizer(words).to(self.device)
            self._names[key] = F.normalize(self.clip.encode_text(tokens).float(), dim=-1)
        return self._names[key]

    def context(self, classnames: Sequence[str]) -> torch.Tensor:
        if not classnames:
            raise ValueError("FedTPG generates the context from class names: none given")
        return self.generator(self.name_features(classnames))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def trainable_arrays(self) -> dict[str, np.ndarray]:
        return {
            PREFIX + k: v.detach().float().cpu().numpy().copy()
            for k, v in self.generator.state_dict().items()
        }

    def load_trainable_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        own = self.generator.state_dict()
        given = {k[len(PREFIX) :]: v for k, v in arrays.items() if k.startswith(PREFIX)}
        missing, unknown = sorted(set(own) - set(given)), sorted(set(given) - set(own))
        if missing or unknown:
            raise KeyError(
                f"FedTPG arrays: missing {[PREFIX + k for k in missing]}, unknown "
                f"{[PREFIX + k for k in unknown]}"
            )
        for name, value in given.items():
            value = np.asarray(value)
            if value.shape != tuple(own[name].shape):
                raise ValueError(
                    f"{PREFIX}{name}: shape {value.shape}, expected {tuple(own[name].shape)}"
                )
        self.generator.load_state_dict(
            {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in given.items()}
        )


class FedTPGClient(PromptFLClient):
    """The generator trained on this client's classes; Local on its own classes."""

    prompt_type = GeneratedPrompts


class FedTPGServer(PromptFLServer):
    """The seeded initial generator; Base and New (or Target) with the prompts it
    generates from each set's class names (new classes: from their names alone)."""

    prompt_type = GeneratedPrompts


register(
    Method(
        name="fedtpg",
        client=FedTPGClient,
        strategy="strategies.fedmvp:FedMVP",  # every array averaged; fedmvp.aggregation
        strategy_kwargs=_strategy_kwargs,
        layout=None,
        server=FedTPGServer,
        extra=_adapter_switch,
        clip=True,
        check_config=_check_config,
    )
)
