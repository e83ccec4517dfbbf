"""Zero-shot CLIP (method = "zeroshot-clip"): the baseline of the base->new protocol.

No training: the frozen, un-prompted CLIP image feature g(x) against a text bank (logits =
scale x mean over a class's sentences of cos(g(x), t)). ``fedmvp.zeroshot-text`` picks the
bank:

- "hand-crafted" (the default, the paper's row, from FedTPG's setting): one sentence per
  class, the data set's hand-crafted template ("a photo of a {}, a type of pet.", the table
  in ``conf/templates/released.json``; ``pep_fedpt.fedmvp.templates.hand_crafted``);
- "attributes": FedMVP's own bank of attribute sentences, so that the numbers differ from
  FedMVP's only by what the PromptFormer learned (a row of its own).

It runs through the same app as every method (prototype round, rounds, Local/Base/New/HM on disk):
the state holds no trainable array, a train reply carries none and reports the zero-shot
cross-entropy of the client's training examples; every round scores the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pep_fedpt.config import RunConfig
from pep_fedpt.methods.fedmvp import (
    FedMVPClient,
    FedMVPServer,
    _adapter_switch,
    _check_config,
    _strategy_kwargs,
    build_fedmvp_model,
    text_bank,
)
from pep_fedpt.methods.registry import Method, register
from strategies import wire

if TYPE_CHECKING:  # open_clip loads on first use, not with the registry
    from pep_fedpt.fedmvp.model import FedMVPModel
    from pep_fedpt.fedmvp.text_bank import TextBank


class ZeroShot:
    """The evaluation interface of a FedMVPModel (``eval``, ``logits``) with g(x) in place
    of the prompted f(x): the PromptFormer is never called."""

    def __init__(self, model: FedMVPModel) -> None:
        self.model = model

    def eval(self) -> ZeroShot:
        self.model.eval()
        return self

    def logits(self, images: torch.Tensor, bank: TextBank) -> torch.Tensor:
        return self.model.logits_from_features(self.model.frozen_features(images), bank)


def zeroshot_bank(
    cfg: RunConfig,
    bundle,
    classnames: list[str],
    cache: Path,
    domain: str | None = None,
    dataset: str | None = None,
):  # -> TextBank
    """The bank ``fedmvp.zeroshot-text`` names for ``classnames`` (see the module);
    ``dataset``: a member set of coop-nine."""
    if cfg.fedmvp.zeroshot_text == "attributes":
        return text_bank(cfg, bundle, classnames, cache, domain, dataset)
    from pep_fedpt.fedmvp.templates import hand_crafted
    from pep_fedpt.fedmvp.text_bank import encode_bank

    name = dataset or cfg.data.dataset
    per_class = [[hand_crafted(cfg.fedmvp, name, c, domain)] for c in classnames]
    return encode_bank(bundle, classnames, per_class, cache)


class ZeroShotClient(FedMVPClient):
    """Evaluates zero-shot on its own classes; "training" only scores its train set."""

    def make_bank(self, classnames: list[str]):  # -> TextBank
        return zeroshot_bank(
            self.cfg, self.bundle, classnames, self.cache_dir, self.data.domain, self.data.dataset
        )

    def train(
        self, arrays: Mapping[str, np.ndarray], adapters_on: bool, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        from pep_fedpt.fedmvp import evaluate_local

        result = evaluate_local(
            self.eval_model(arrays, False), self.data.train, self.bank(), self.device
        )
        metrics: dict[str, float | int | list[int]] = {
            wire.NUM_EXAMPLES: int(result.total),
            wire.CLASS_COUNTS: [int(n) for n in self.data.train_counts],
            wire.TRAIN_LOSS: float(result.loss),
            "train-accuracy": result.correct / result.total if result.total else 0.0,
            wire.PARTITION_ID: self.data.partition_id,
            wire.ADAPTERS_ON: 0,
        }
        return {}, metrics

    def eval_model(self, arrays: Mapping[str, np.ndarray], adapters_on: bool) -> ZeroShot:
        return ZeroShot(build_fedmvp_model(self.cfg, self.bundle))


class ZeroShotServer(FedMVPServer):
    """Base and New zero-shot; the state has nothing to train."""

    def make_bank(
        self,
        classnames: list[str],
        cache: Path,
        domain: str | None = None,
        dataset: str | None = None,
    ):
        return zeroshot_bank(self.cfg, self.bundle, classnames, cache, domain, dataset)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def eval_model(self, state: Mapping[str, np.ndarray]) -> ZeroShot:
        return ZeroShot(build_fedmvp_model(self.cfg, self.bundle))


register(
    Method(
        name="zeroshot-clip",
        client=ZeroShotClient,
        strategy="strategies.fedmvp:FedMVP",  # checks and counts; nothing to average
        strategy_kwargs=_strategy_kwargs,
        layout=None,
        server=ZeroShotServer,
        extra=_adapter_switch,
        clip=True,
        check_config=_check_config,
    )
)
