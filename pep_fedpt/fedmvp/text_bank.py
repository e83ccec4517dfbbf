"""The frozen attribute-text bank: every sentence of every candidate class, encoded once.

The text tower is frozen and the sentences are fixed, so their features never change: they
are computed once per (CLIP weights, exact sentences) and kept in the node's z(x) disk cache
(``pep_fedpt.feature_cache``: atomic writes, a damaged file is recomputed, the full key is
checked on load). The authors' code re-encodes all of them on every training step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pep_fedpt.config import FedMVPConfig
from pep_fedpt.feature_cache import default_cache_dir, feature_store
from pep_fedpt.fedmvp.attributes import sentences
from pep_fedpt.fedmvp.clip import ClipBundle
from pep_fedpt.fedmvp.templates import Template

ENCODE_BATCH = 256  # sentences per text-tower pass


@dataclass
class TextBank:
    """L2-normalised sentence features ``features`` (S, D), ``class_index`` (S,) naming each
    sentence's class (0..num_classes-1, in ``classnames`` order)."""

    features: torch.Tensor
    class_index: torch.Tensor
    num_classes: int
    classnames: list[str]
    sentences: list[str]
    # What the PromptFormer reads as keys and values, when not ``features``: the released
    # code's raw phrases for OfficeHome and TerraIncognita (the logits keep the sentences).
    context: torch.Tensor | None = None

    @property
    def prompt_context(self) -> torch.Tensor:
        return self.features if self.context is None else self.context

    def __post_init__(self) -> None:
        counts = torch.bincount(self.class_index, minlength=self.num_classes)
        if len(counts) != self.num_classes or bool((counts == 0).any()):
            raise ValueError(f"every class needs a sentence; sentences per class: {counts}")
        if self.features.shape[0] != self.class_index.shape[0]:
            raise ValueError(
                f"{self.features.shape[0]} features but {self.class_index.shape[0]} sentences"
            )

    @property
    def counts(self) -> torch.Tensor:
        """Sentences per class (C,), as float: the divisor of the per-class mean."""
        return torch.bincount(self.class_index, minlength=self.num_classes).to(self.features.dtype)

    def to(self, device: torch.device | str) -> TextBank:
        return TextBank(
            self.features.to(device),
            self.class_index.to(device),
            self.num_classes,
            self.classnames,
            self.sentences,
            None if self.context is None else self.context.to(device),
        )


def bank_sentences(
    classnames: Sequence[str],
    attributes: Mapping[str, list[str]],
    template: Template | FedMVPConfig,
) -> list[list[str]]:
    """The sentences of each class, in ``classnames`` order (``sentences`` per class);
    a FedMVPConfig stands for its "design" template (prompt-prefix / prompt-suffix)."""
    if isinstance(template, FedMVPConfig):
        template = Template.design(template)
    missing = [name for name in classnames if name not in attributes]
    if missing:
        raise KeyError(f"no attribute entry for classes {missing}; load_attributes gives one each")
    return [
        sentences(name, attributes[name], suffix=template.suffix, lead=template.lead)
        for name in classnames
    ]


def text_bank_key(fingerprint: str, device: str, per_class: list[list[str]]) -> str:
    """The cache key: the CLIP weights, the device type that encodes (as for z(x): CUDA and
    CPU kernels differ in the last bits) and the exact sentences, class by class."""
    digest = hashlib.sha256(json.dumps(per_class, ensure_ascii=False).encode()).hexdigest()
    return f"fedmvp-text|{fingerprint}|{device}|{digest}"


@torch.no_grad()
def encode_sentences(bundle: ClipBundle, texts: list[str]) -> torch.Tensor:
    """(S, D) L2-normalised text features of the frozen text tower, float32 on the CPU."""
    chunks = []
    for start in range(0, len(texts), ENCODE_BATCH):
        tokens = bundle.tokenizer(texts[start : start + ENCODE_BATCH]).to(bundle.device)
        chunks.append(F.normalize(bundle.model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(chunks)


def build_text_bank(
    bundle: ClipBundle,
    classnames: Sequence[str],
    attributes: Mapping[str, list[str]],
    template: Template | FedMVPConfig,
    cache_dir: Path | None = None,
) -> TextBank:
    """The bank of ``classnames`` on the CLIP's device; encoded only if no cache holds it.

    ``cache_dir``: the node's feature cache folder (None: ``~/.cache/pep-fedpt/features``).
    A template with ``raw_context`` adds the raw phrases' features as the PromptFormer's
    context (a class without phrases contributes its plain sentence there too).
    """
    if not classnames:
        raise ValueError("a text bank needs at least one class")
    per_class = bank_sentences(classnames, attributes, template)
    bank = encode_bank(bundle, classnames, per_class, cache_dir)
    if isinstance(template, Template) and template.raw_context:
        raw = [
            [p.strip() for p in attributes[name]] or per_class[k]
            for k, name in enumerate(classnames)
        ]
        bank.context = encode_bank(bundle, classnames, raw, cache_dir).features
    return bank


def encode_bank(
    bundle: ClipBundle,
    classnames: Sequence[str],
    per_class: list[list[str]],
    cache_dir: Path | None = None,
) -> TextBank:
    """The bank of the given sentences of each class (disk-cached like every bank)."""
    flat = [text for group in per_class for text in group]
    store = feature_store(cache_dir if cache_dir is not None else default_cache_dir())
    features = store.get(
        text_bank_key(bundle.fingerprint, bundle.device.type, per_class),
        lambda: encode_sentences(bundle, flat),
    )
    index = torch.cat(
        [torch.full((len(group),), k, dtype=torch.long) for k, group in enumerate(per_class)]
    )
    return TextBank(features, index, len(per_class), list(classnames), flat).to(bundle.device)
