"""What the PromptedViT methods share: the model of a method's prompt layout, the initial
state and the per-partition client (backbone, data, z(x) cache, own prior)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from pep_fedpt.ccmp import smoothed_prior
from pep_fedpt.config import RunConfig, parse_block_spec
from pep_fedpt.data import ClientData, load_client_data
from pep_fedpt.data.client_data import partition_cache_dir, subset_targets
from pep_fedpt.data.pixel_cache import node_splits
from pep_fedpt.engine import (
    EvalResult,
    TrainResult,
    WeightsFn,
    compute_query_features,
    pick_device,
    train_epochs,
)
from pep_fedpt.feature_cache import default_cache_dir, examples_digest, feature_store
from pep_fedpt.methods.registry import Method, get_method
from pep_fedpt.models import PromptedViT, backbone_fingerprint, cached_backbone, image_spec
from pep_fedpt.schedule import lr_factor, train_seed
from pep_fedpt.state import load_trainable_arrays, trainable_arrays
from strategies import wire


def build_model(backbone: VisionTransformer, cfg: RunConfig, num_classes: int) -> PromptedViT:
    """The prompted ViT of ``cfg.method`` (its registration's ``layout``) around a frozen
    backbone.

    PEP-FedPT: shared prompt + class prompts in the CCMP blocks. VPT-deep baselines: shared
    prompt + one prompt per block (the same blocks and token counts). VPT-shallow: shared
    prompt only. Head-only: no prompt (a linear probe). SGPT: shared prompt + a bank of
    ``prompt.num-groups`` keyed group prompts in ``prompt.group-blocks`` (default: the
    CCMP blocks), one group picked per sample.
    """
    layout = get_method(cfg.method).layout
    if layout is None:
        raise ValueError(f"method {cfg.method!r} does not build a PromptedViT")
    depth = len(backbone.blocks)
    blocks = parse_block_spec(cfg.prompt.ccmp_blocks, depth) if layout.blocks else ()
    shared = cfg.prompt.shared_length if layout.shared else 0
    sets: int | None = None  # one set per class
    keyed = layout.per_block == "group"
    if layout.per_block == "one":
        sets = 1
    if keyed:
        sets = cfg.prompt.num_groups
        if cfg.prompt.group_blocks:
            blocks = parse_block_spec(cfg.prompt.group_blocks, depth, "prompt.group-blocks")
    return PromptedViT(
        backbone,
        num_classes,
        shared_length=shared,
        class_length=cfg.prompt.class_length,
        ccmp_blocks=blocks,
        num_prompt_sets=sets,
        keyed=keyed,
        head_init=cfg.prompt.head_init,
    )


def initial_arrays(
    cfg: RunConfig, backbone: VisionTransformer, num_classes: int
) -> dict[str, np.ndarray]:
    """The seeded initial global state (prompts uniform, head per ``prompt.head-init``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return trainable_arrays(build_model(backbone, cfg, num_classes))


class PromptClient:
    """What every PromptedViT method's client holds: backbone, partition, z(x) cache, own
    log prior, and its method's registration (``method``).

    Subclasses add ``train(arrays, extra, server_round)`` and ``evaluate(arrays, extra)``,
    where ``extra`` is what the registration's ``extra`` reads from the message (PEP-FedPT:
    the global prototypes; SGPT: the group selections so far). A personal method's node
    keeps the part of its trained state that ``personal_arrays`` picks (local-only: all of
    it; pFedPG: the head).
    """

    def __init__(
        self,
        cfg: RunConfig,
        partition_id: int,
        num_partitions: int,
        cache_dir: Path | None = None,
    ) -> None:
        """``cache_dir``: this node's z(x) cache folder (None: ~/.cache/pep-fedpt/features)."""
        self.cfg = cfg
        self.method: Method = get_method(cfg.method)
        self.device = pick_device()
        self.backbone = cached_backbone(cfg.model, cfg.seed, str(self.device), cfg.data)
        node_cache = cache_dir or default_cache_dir()
        self.data: ClientData = node_splits(
            load_client_data(
                cfg.data,
                image_spec(self.backbone),
                cfg.seed,
                partition_id,
                num_partitions,
                partition_cache_dir(node_cache),
            ),
            cfg.data,
            node_cache,
        )
        self._fingerprint = backbone_fingerprint(cfg.model, cfg.seed, cfg.data)
        self.features_store = feature_store(cache_dir or default_cache_dir())
        prior = smoothed_prior(torch.as_tensor(self.data.train_counts), cfg.prompt.prior_smoothing)
        self.log_prior = prior.log().to(self.device)

    @property
    def personal(self) -> bool:
        """Whether the node keeps (part of) its trained state: the registration says."""
        return self.method.personal

    def features_key(self, split: str) -> str:
        """What z(x) of a split depends on: backbone weights and timm's code, the examples
        (config and the exact indices) and transform, and the device (bf16 autocast on
        CUDA gives other values than float32 on the CPU)."""
        subset = self.data.split(split)
        examples = examples_digest(np.asarray(subset.indices), subset_targets(subset))
        return (
            f"{self._fingerprint}|timm-{timm.__version__}|{self.data.cache_key}|{split}|"
            f"{examples}|{self.device.type}"
        )

    def features(self, split: str) -> torch.Tensor:
        """z(x) of the local train, val or test split: memory, else this node's disk cache."""
        dataset = self.data.split(split)

        def compute() -> torch.Tensor:
            model = build_model(self.backbone, self.cfg, self.data.num_classes)
            return compute_query_features(model, dataset, self.device)

        return self.features_store.get(self.features_key(split), compute)

    def personal_arrays(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What of its trained ``arrays`` a personal node keeps and uses instead of the
        message's: everything, by default."""
        return dict(arrays)

    def train(
        self, arrays: Mapping[str, np.ndarray], prototypes: Any, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        """Local training from ``arrays``: the trained arrays and the train metrics.
        ``prototypes``: the registration's ``extra`` (its type is the subclass's)."""
        raise NotImplementedError

    def evaluate(self, arrays: Mapping[str, np.ndarray], prototypes: Any) -> dict[str, float | int]:
        """Accuracy of ``arrays`` on the local test split."""
        raise NotImplementedError

    def train_local(
        self,
        model: PromptedViT,
        features: torch.Tensor,
        weights: WeightsFn,
        server_round: int,
        *,
        seed_offset: int = 0,
        regularizer: Callable[[], torch.Tensor] | None = None,
        query_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> TrainResult:
        """``train.local-epochs`` epochs on the local train split (``engine.train_epochs``),
        shuffled by the round's seed (plus ``seed_offset``: SGPT's second block) at the
        round's learning rates."""
        return train_epochs(
            model,
            self.data.train,
            features,
            weights,
            self.cfg.train,
            self.device,
            train_seed(self.cfg.seed, server_round, self.data.partition_id) + seed_offset,
            regularizer=regularizer,
            query_loss=query_loss,
            lr_scale=self.lr_scale(server_round),
        )

    def lr_scale(self, server_round: int) -> float:
        """The schedule's factor of the learning rates in ``server_round`` (the round the
        server names in its train message, so that a resumed run trains as one that never
        stopped)."""
        train = self.cfg.train
        return lr_factor(
            server_round, self.cfg.fed.num_rounds, train.lr_schedule, train.warmup_rounds
        )

    def train_metrics(self, result: TrainResult) -> dict[str, float | int | list[int]]:
        """The train reply's metrics (wire names; counts as in the prototype round)."""
        return {
            wire.NUM_EXAMPLES: result.num_examples,
            wire.CLASS_COUNTS: [int(n) for n in self.data.train_counts],
            wire.TRAIN_LOSS: result.loss,
            wire.TRAIN_ACCURACY: result.accuracy,
        }

    def evaluate_metrics(self, result: EvalResult) -> dict[str, float | int]:
        """The evaluate reply's metrics (wire names)."""
        return {
            wire.NUM_EXAMPLES: result.total,
            wire.CORRECT: result.correct,
            wire.ACCURACY: result.accuracy,
            wire.LOSS: result.loss,
            wire.PARTITION_ID: self.data.partition_id,
            wire.HELD_OUT: int(self.data.held_out),
        }

    def evaluated(self, run: Callable[[str], EvalResult]) -> dict[str, float | int]:
        """The evaluate reply's metrics from ``run(split)``: the test split's, and with
        ``data.val-fraction`` > 0 also the validation split's counts (hyper-parameter
        selection reads those, never the test split's)."""
        metrics = self.evaluate_metrics(run("test"))
        if self.data.val is not None and len(self.data.val) > 0:
            val = run("val")
            metrics[wire.VAL_NUM_EXAMPLES] = val.total
            metrics[wire.VAL_CORRECT] = val.correct
        return metrics

    def class_counts(self) -> np.ndarray:
        """n_{k,c} of the local train split (a counts-only prototype round)."""
        return self.data.train_counts.astype(np.int64)

    def _model(self, arrays: Mapping[str, np.ndarray]) -> PromptedViT:
        num_classes = int(np.asarray(arrays[wire.HEAD_WEIGHT]).shape[0])
        if num_classes != self.data.num_classes:
            raise ValueError(
                f"the global head has {num_classes} classes, but data set "
                f"{self.cfg.data.dataset!r} has {self.data.num_classes}"
            )
        model = build_model(self.backbone, self.cfg, num_classes).to(self.device)
        load_trainable_arrays(model, arrays)
        return model
