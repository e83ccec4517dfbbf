"""PromptFL (method = "promptfl", Guo et al., 2023): the FedAvg baseline of FedMVP's tables.

CoOp's learnable text context, trained federatedly: the class prompt is
``[SOS] v_1 ... v_M {class}. [EOS]`` with M = ``fedmvp.promptfl-context`` context vectors
(default 4, the PromptFL row of FedTPG's and FedMVP's tables; CoOp's own is 16) shared by
every class (CoOp's class-agnostic context, initialised N(0, 0.02^2) from the seed) and the
frozen CLIP text encoder; logits = ``fedmvp.logit-scale`` x cos(g(x), t_c) with g the
frozen CLIP image feature. Only the context (``promptfl.ctx``, M x text width) trains and
travels; the server averages it with ``fedmvp.aggregation``: equal weights (default, as
FedTPG's run of it) or n_k ("num-examples", FedAvg's). Class names only: no attribute
phrases.

It runs under FedMVP's protocols (base->new: Local / Base / New / HM; leave one domain out)
on the same data, prototype round, checks and results; the frozen image features of a client's
training examples are computed once per node and cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from pep_fedpt.engine import autocast, grad_scaler, indexed_batches, training_precision
from pep_fedpt.feature_cache import examples_digest, feature_store
from pep_fedpt.methods.fedmvp import (
    ClassSubset,
    FedMVPClient,
    FedMVPServer,
    _adapter_switch,
    _check_config,
    _strategy_kwargs,
    domain_words,
)
from pep_fedpt.methods.registry import Method, register
from strategies import wire

CTX_KEY = "promptfl.ctx"


class ContextPrompts(nn.Module):
    """The text side of CoOp: learnable context before each class name, frozen encoder.

    ``context(classnames)`` is what fills the M placeholders: here one learnt context for
    every class; a subclass may compute it from the classes (FedTPG's generator), with
    ``learnable = False`` so that no context parameter of its own exists.
    """

    def __init__(
        self, bundle, seed: int, n_ctx: int = 4, learnable: bool = True
    ) -> None:  # bundle: ClipBundle
        super().__init__()
        self.clip = bundle.model
        self.tokenizer = bundle.tokenizer
        self.n_ctx = n_ctx
        self.device = bundle.device
        self.width = int(self.clip.token_embedding.weight.shape[1])
        if learnable:
            generator = torch.Generator().manual_seed(seed)
            ctx = torch.randn(n_ctx, self.width, generator=generator) * 0.02
            self.ctx = nn.Parameter(ctx.to(bundle.device))

    def context(self, classnames: Sequence[str]) -> torch.Tensor:
        """(M, token width): the context of these classes' prompts (CoOp: the same for all)."""
        return self.ctx

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.ctx]

    def tokens(self, classnames: Sequence[str], domain: str | None = None) -> torch.Tensor:
        """(C, context length): "X" x M placeholders, then the class (and domain) words."""
        tail = f" {domain_words(domain)} style" if domain else ""
        texts = [" ".join(["X"] * self.n_ctx) + f" {domain_words(c)}{tail}." for c in classnames]
        return self.tokenizer(texts).to(self.device)

    def text_features(self, tokens: torch.Tensor, classnames: Sequence[str] = ()) -> torch.Tensor:
        """(C, D) L2-normalised: open_clip's encode_text with the placeholders' embeddings
        (positions 1..M, after [SOS]) replaced by ``context(classnames)``."""
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast)
        ctx = self.context(classnames).to(cast).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx :]], dim=1)
        x = x + clip.positional_embedding.to(cast)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        x = text_global_pool(x, tokens, clip.text_pool_type)
        x = (
            clip.text_projection(x)
            if isinstance(clip.text_projection, nn.Linear)
            else x @ clip.text_projection
        )
        return F.normalize(x.float(), dim=-1)

    def trainable_arrays(self) -> dict[str, np.ndarray]:
        return {CTX_KEY: self.ctx.detach().float().cpu().numpy().copy()}

    def load_trainable_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        value = np.asarray(arrays[CTX_KEY])
        if value.shape != tuple(self.ctx.shape):
            raise ValueError(f"{CTX_KEY}: shape {value.shape}, expected {tuple(self.ctx.shape)}")
        with torch.no_grad():
            self.ctx.copy_(torch.from_numpy(value).to(self.ctx))


@torch.no_grad()
def image_features(bundle, dataset, device: torch.device) -> torch.Tensor:
    """g(x) of every example, in order: (N, D) float32 on the CPU."""
    chunks = [torch.zeros(0, int(bundle.model.text_projection.shape[-1]))]
    for images, _, _ in indexed_batches(dataset, 128, False, 0, device):
        chunks.append(bundle.model.encode_image(images, normalize=True).float().cpu())
    return torch.cat(chunks)


def score(
    prompts: ContextPrompts,
    features: torch.Tensor,
    labels: torch.Tensor,
    tokens: torch.Tensor,
    scale: float,
    classnames: Sequence[str],
) -> tuple[int, float]:
    """(correct, summed cross-entropy) of cached image features against the classes."""
    with torch.no_grad():
        logits = scale * features @ prompts.text_features(tokens, classnames).t()
        loss = float(F.cross_entropy(logits, labels, reduction="sum"))
        return int((logits.argmax(dim=-1) == labels).sum()), loss


class PromptFLClient(FedMVPClient):
    """CoOp context trained on this client's classes; Local on its own classes."""

    prompt_type: type[ContextPrompts] = ContextPrompts  # FedTPG: its generated prompts

    def prompts(self, arrays: Mapping[str, np.ndarray]) -> ContextPrompts:
        ctx = self.cfg.fedmvp.promptfl_context
        prompts = self.prompt_type(self.bundle, self.cfg.seed, ctx)
        if arrays:
            prompts.load_trainable_arrays(arrays)
        return prompts

    def own_names(self) -> list[str]:
        return [self.classnames[c] for c in self.data.classes]

    def own_tokens(self, prompts: ContextPrompts) -> torch.Tensor:
        return prompts.tokens(self.own_names(), self.data.domain)

    @property
    def classnames(self) -> list[str]:
        from pep_fedpt.data import load_central_data

        return load_central_data(self.cfg.data, self.bundle.spec).classes

    def cached_features(self, dataset: ClassSubset, split: str) -> torch.Tensor:
        key = (
            f"promptfl-g|{self.bundle.fingerprint}|{self.bundle.spec}|{self.cfg.data!r}|{split}|"
            f"{examples_digest(dataset.indices, dataset.targets)}|{self.device.type}"
        )
        store = feature_store(self.cache_dir)
        return store.get(key, lambda: image_features(self.bundle, dataset, self.device))

    def train(
        self, arrays: Mapping[str, np.ndarray], adapters_on: bool, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        """``train.local-epochs`` epochs of SGD on the context (cached image features)."""
        prompts = self.prompts(arrays)
        names, tokens = self.own_names(), self.own_tokens(prompts)
        features = self.cached_features(self.data.train, "train").to(self.device)
        labels = torch.as_tensor(self.data.train.targets, device=self.device)
        train = self.cfg.train
        optimizer = torch.optim.SGD(
            prompts.trainable_parameters(),
            lr=self.round_lr(server_round),
            momentum=train.momentum,
            weight_decay=train.weight_decay,
        )
        generator = torch.Generator().manual_seed(self.train_seed(server_round))
        scale = self.cfg.fedmvp.logit_scale
        # The text tower's forward and backward: autocast per train.precision.
        precision = training_precision(train.precision, self.device)
        scaler = grad_scaler(self.device, precision)
        total, correct, seen = 0.0, 0, 0
        for _ in range(train.local_epochs):
            order = torch.randperm(len(labels), generator=generator).to(self.device)
            for batch in order.split(train.batch_size):
                with autocast(self.device, precision):
                    text = prompts.text_features(tokens, names)
                    logits = scale * features[batch] @ text.t()
                    loss = F.cross_entropy(logits.float(), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.item() * len(batch)
                correct += int((logits.argmax(dim=-1) == labels[batch]).sum())
                seen += len(batch)
        metrics: dict[str, float | int | list[int]] = {
            wire.NUM_EXAMPLES: len(labels),
            wire.CLASS_COUNTS: [int(n) for n in self.data.train_counts],
            wire.TRAIN_LOSS: total / seen,
            "train-accuracy": correct / seen,
            wire.PARTITION_ID: self.data.partition_id,
            wire.ADAPTERS_ON: 0,
        }
        dtype = next((np.asarray(v).dtype for v in arrays.values()), np.dtype(np.float32))
        return {k: v.astype(dtype) for k, v in prompts.trainable_arrays().items()}, metrics

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], adapters_on: bool
    ) -> dict[str, float | int]:
        prompts = self.prompts(arrays)
        features = self.cached_features(self.data.test, "test").to(self.device)
        labels = torch.as_tensor(self.data.test.targets, device=self.device)
        tokens, scale = self.own_tokens(prompts), self.cfg.fedmvp.logit_scale
        correct, loss = score(prompts, features, labels, tokens, scale, self.own_names())
        total = len(labels)
        return {
            wire.NUM_EXAMPLES: total,
            wire.CORRECT: correct,
            wire.ACCURACY: correct / total if total else 0.0,
            "loss": loss / max(total, 1),
            wire.PARTITION_ID: self.data.partition_id,
            wire.HELD_OUT: int(self.data.held_out),
        }


class PromptFLServer(FedMVPServer):
    """The seeded initial context; Base and New (or Target) with the context's prompts."""

    prompt_type: type[ContextPrompts] = ContextPrompts

    def make_bank(
        self,
        classnames: list[str],
        cache: Path,
        domain: str | None = None,
        dataset: str | None = None,
    ) -> None:
        return None  # class names only: no attribute bank

    def features(self, name: str) -> torch.Tensor:
        """g(x) of a central test set, computed once per run."""
        cached = self.__dict__.setdefault("_features", {})
        if name not in cached:
            cached[name] = image_features(self.bundle, self.sets[name], self.bundle.device)
        return cached[name]

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return self.prompts().trainable_arrays()

    def prompts(self) -> ContextPrompts:
        return self.prompt_type(self.bundle, self.cfg.seed, self.cfg.fedmvp.promptfl_context)

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        prompts = self.prompts()
        prompts.load_trainable_arrays(state)
        device = self.bundle.device
        domain = self.cfg.fedmvp.target_domain if self.cfg.fedmvp.protocol == "domain" else None
        out: dict[str, float] = {}
        for name, dataset in self.sets.items():
            features = self.features(name).to(device)
            labels = torch.as_tensor(dataset.targets, device=device)
            names = [self.classes[c] for c in dataset.classes]
            tokens = prompts.tokens(names, domain)
            scale = self.cfg.fedmvp.logit_scale
            correct, loss = score(prompts, features, labels, tokens, scale, names)
            out[f"{name}-accuracy"] = correct / len(labels) if len(labels) else 0.0
            out[f"{name}-loss"] = loss / max(len(labels), 1)
        return self.member_averages(out)


register(
    Method(
        name="promptfl",
        client=PromptFLClient,
        strategy="strategies.fedmvp:FedMVP",
        strategy_kwargs=_strategy_kwargs,  # fedmvp.aggregation: "equal" or n_k
        layout=None,
        server=PromptFLServer,
        extra=_adapter_switch,
        clip=True,
        check_config=_check_config,
    )
)
