"""FedMVP's client routine and its server-side pieces (initial state, central Base/New
evaluation) over the base->new protocol (``pep_fedpt.data.base_new``).

The model is not a PromptedViT: a frozen open_clip CLIP with a trained PromptFormer
(``pep_fedpt.fedmvp``). Each client holds ``fedmvp.shots`` examples of each of its
base classes (a consecutive chunk, ``pep_fedpt.data.base_new``); it trains and evaluates
with a text bank of its own classes only (Local). The server evaluates the global state
on all base classes with the base bank (Base) and on all new classes with the new bank
(New), so new classes need only their attribute phrases. The adapter switch comes from
the server in every message's config (``adapters-on``) and goes back in the train metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.data import ImageSpec, LabeledDataset, load_central_data
from pep_fedpt.data.base_new import (
    BaseNewSplit,
    base_new_split,
    joint_base_new_split,
    member_base_new,
    of_classes,
    published_clients,
    split_base_new,
)
from pep_fedpt.data.client_data import client_pool
from pep_fedpt.data.coop import NINE_SETS, nine_members
from pep_fedpt.data.leave_one_domain_out import DomainSplit, leave_one_domain_out, target_index
from pep_fedpt.data.partition import class_counts, held_out_partitions
from pep_fedpt.data.pixel_cache import cached_subset
from pep_fedpt.data.registry import domains_of
from pep_fedpt.engine import pick_device
from pep_fedpt.feature_cache import (
    default_cache_dir,
    examples_digest,
    feature_store,
    resolve_cache_dir,
)
from pep_fedpt.methods.registry import Method, Received, register
from pep_fedpt.schedule import lr_factor, train_seed
from strategies import wire

_LOG = logging.getLogger(__name__)

# The project's own attribute phrases (conf/attributes/<dataset>.json, written for this
# project), used when fedmvp.attributes-dir is empty: they ship in the app (fab-include).
BUNDLED_ATTRIBUTES = Path(__file__).resolve().parents[2] / "conf" / "attributes"


# Loaders of one data set under another name read the same attribute file.
ATTRIBUTE_FILE_NAMES = {"cifar10-folder": "cifar10"}


def attribute_set(cfg: RunConfig, dataset: str | None = None) -> str:
    """The name of the data set's attribute file, ``<name>.json`` (``dataset``: a member set
    of a joint federation, else the run's data set)."""
    name = dataset or cfg.data.dataset
    return ATTRIBUTE_FILE_NAMES.get(name, name)


def attributes_dir(cfg: RunConfig, dataset: str | None = None) -> str:
    """``fedmvp.attributes-dir``, or the bundled folder when that is empty and holds the
    data set's file ("" otherwise: load_attributes then says what is missing)."""
    if cfg.fedmvp.attributes_dir:
        return cfg.fedmvp.attributes_dir
    if (BUNDLED_ATTRIBUTES / f"{attribute_set(cfg, dataset)}.json").is_file():
        return str(BUNDLED_ATTRIBUTES)
    return ""


class ClassSubset(Dataset):
    """Examples of some classes, labelled by their position in ``classes`` (the bank's
    order), as the FedMVP model's text bank indexes them."""

    def __init__(self, dataset: LabeledDataset, indices: np.ndarray, classes: tuple[int, ...]):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = tuple(classes)
        position = {c: i for i, c in enumerate(self.classes)}
        labels = np.asarray(dataset.targets)[self.indices]
        if not set(labels.tolist()) <= set(position):
            raise ValueError(f"examples outside the classes {list(self.classes)}")
        self.targets = np.array([position[int(c)] for c in labels], dtype=np.int64)
        self.loader_workers = 0  # worker processes of its loaders (node_subset sets it)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.dataset[int(self.indices[index])]
        return image, int(self.targets[index])


@dataclass
class FedMVPClientData:
    """One client's few-shot train set and Local test set, both over its own classes."""

    partition_id: int
    classes: tuple[int, ...]  # data set labels, in the bank's order
    train: ClassSubset
    test: ClassSubset
    num_classes: int  # of the data set (the length of the prototype-round counts)
    train_counts: np.ndarray  # (num_classes,) shots per class, 0 outside its classes
    held_out: bool = False
    domain: str | None = None  # protocol = "domain": its source domain
    dataset: str | None = None  # coop-nine: its member set (attribute file and template)


@functools.lru_cache(maxsize=4)
def _protocol(
    cfg: RunConfig, spec: ImageSpec, num_partitions: int
) -> tuple[BaseNewSplit, LabeledDataset, LabeledDataset, list[str]]:
    """The run's base->new split, the data sets its indices refer to, and class names."""
    _check_config(cfg)
    pool_data, pool = client_pool(cfg.data, spec)
    central = load_central_data(cfg.data, spec)
    test_data, test_idx = central.source, central.indices
    if cfg.data.dataset == NINE_SETS:
        members, groups = nine_groups(cfg, pool_data)
        split = joint_base_new_split(
            groups,
            members,
            pool,
            np.asarray(pool_data.targets),
            test_idx,
            np.asarray(test_data.targets),
            num_partitions,
            cfg.fedmvp.classes_per_client,
            cfg.fedmvp.shots,
            cfg.seed,
        )
        return split, pool_data, test_data, central.classes
    split = base_new_split(
        pool,
        np.asarray(pool_data.targets),
        test_idx,
        np.asarray(test_data.targets),
        central.num_classes,
        num_partitions,
        cfg.fedmvp.classes_per_client,
        cfg.fedmvp.shots,
        cfg.seed,
    )
    return split, pool_data, test_data, central.classes


def nine_groups(
    cfg: RunConfig, pool_data: LabeledDataset
) -> tuple[tuple[str, ...], list[tuple[int, ...]]]:
    """coop-nine: the member sets and each one's labels (contiguous, in the members' order)."""
    members = nine_members(cfg.data)
    targets = np.asarray(pool_data.targets)
    sets = domains_of(pool_data)  # coop-nine: each example's member set
    groups = [tuple(int(c) for c in np.unique(targets[sets == m])) for m in range(len(members))]
    return members, groups


def run_domains(cfg: RunConfig) -> tuple[str, ...]:
    """The names of the run's domains, in the order of the examples' domain ids."""
    from pep_fedpt.data.domainbed import DOMAIN_SETS, selected
    from pep_fedpt.data.domainnet import selected_domains

    if cfg.data.dataset in DOMAIN_SETS:
        return selected(cfg.data.domains, DOMAIN_SETS[cfg.data.dataset])
    if cfg.data.dataset in ("domainnet", "domainnet-10"):
        return selected_domains(cfg.data.domains)
    raise ConfigError(
        f"fedmvp.protocol = 'domain' needs a data set of several domains; "
        f"data.dataset = {cfg.data.dataset!r} has none (use pacs, officehome, vlcs, "
        "terraincognita, domainnet or domainnet-10)"
    )


def domain_words(domain: str) -> str:
    return domain.replace("_", " ").strip()


@functools.lru_cache(maxsize=4)
def _domain_protocol(
    cfg: RunConfig, spec: ImageSpec, num_partitions: int
) -> tuple[DomainSplit, LabeledDataset, LabeledDataset, list[str], tuple[str, ...]]:
    """The run's leave-one-domain-out split, its data sets, class and domain names."""
    _check_config(cfg)
    names = run_domains(cfg)
    pool_data, pool = client_pool(cfg.data, spec)
    central = load_central_data(cfg.data, spec)
    test_data = central.source
    split = leave_one_domain_out(
        pool,
        domains_of(pool_data),
        np.asarray(pool_data.targets),
        central.indices,
        domains_of(test_data),
        len(names),
        target_index(names, cfg.fedmvp.target_domain),
        num_partitions,
        central.num_classes,
        cfg.fedmvp.classes_per_client,
        cfg.fedmvp.shots,
        cfg.seed,
        test_targets=np.asarray(test_data.targets),
    )
    return split, pool_data, test_data, central.classes, names


def _client_data(
    cfg: RunConfig,
    split: BaseNewSplit | DomainSplit,
    pool_data: LabeledDataset,
    test_data: LabeledDataset,
    num_classes: int,
    own: tuple[int, ...],
    partition_id: int,
    num_partitions: int,
    domain: str | None = None,
    dataset: str | None = None,
) -> FedMVPClientData:
    """One client's train and Local-test subsets of ``own`` classes, either protocol."""
    train = ClassSubset(pool_data, split.client_train[partition_id], own)
    counts = class_counts(np.asarray(pool_data.targets)[train.indices], num_classes)
    held = held_out_partitions(num_partitions, cfg.data.held_out_fraction, cfg.seed)
    return FedMVPClientData(
        partition_id=partition_id,
        classes=own,
        train=train,
        test=ClassSubset(test_data, split.client_test[partition_id], own),
        num_classes=num_classes,
        train_counts=counts.astype(np.int64),
        held_out=partition_id in held,
        domain=domain,
        dataset=dataset,
    )


def client_data(
    cfg: RunConfig, spec: ImageSpec, partition_id: int, num_partitions: int
) -> FedMVPClientData:
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id = {partition_id} is outside 0..{num_partitions - 1}")
    if cfg.fedmvp.protocol == "domain":
        by_domain, pool_data, test_data, classes, names = _domain_protocol(
            cfg, spec, num_partitions
        )
        return _client_data(
            cfg,
            by_domain,
            pool_data,
            test_data,
            len(classes),
            by_domain.client_classes[partition_id],
            partition_id,
            num_partitions,
            names[by_domain.client_domains[partition_id]],
        )
    split, pool_data, test_data, classes = _protocol(cfg, spec, num_partitions)
    own = split.client_classes[partition_id]
    member = None
    if split.client_members:
        member = nine_members(cfg.data)[split.client_members[partition_id]]
    return _client_data(
        cfg,
        split,
        pool_data,
        test_data,
        len(classes),
        own,
        partition_id,
        num_partitions,
        dataset=member,
    )


def node_subset(subset: ClassSubset, cfg: RunConfig, split: str, cache_dir: Path) -> ClassSubset:
    """``subset`` as a node (or the server) reads it: its decoded, resized images from the
    pixel cache in ``cache_dir`` with ``data.pixel-cache`` (evaluated every round, a split
    would be decoded again every round), its loaders in ``data.num-workers`` processes."""
    if not cfg.data.pixel_cache:
        subset.loader_workers = cfg.data.num_workers
        return subset
    prefix = f"clip|{cfg.data!r}|{split}"
    return cached_subset(subset, prefix, cache_dir, cfg.data.num_workers)


@functools.lru_cache(maxsize=2)
def cached_clip(cfg: RunConfig, device: str):  # -> ClipBundle
    """The frozen CLIP of a run, once per process (a simulation worker serves many)."""
    from pep_fedpt.fedmvp import build_clip

    return build_clip(cfg.fedmvp, cfg.seed, device)


def text_bank(
    cfg: RunConfig,
    bundle,
    classnames: list[str],
    cache_dir: Path,
    domain: str | None = None,
    dataset: str | None = None,
):  # -> TextBank
    """The frozen text features of the sentences of ``classnames`` (disk-cached), in the
    template ``fedmvp.templates`` selects for the data set (for ``domain``'s, given one;
    ``dataset``: a member set of coop-nine, whose attribute file and template it uses)."""
    from pep_fedpt.fedmvp import build_text_bank, load_attributes
    from pep_fedpt.fedmvp.templates import sentence_template

    template = sentence_template(cfg.fedmvp, dataset or cfg.data.dataset, domain)
    attributes = load_attributes(
        attributes_dir(cfg, dataset),
        attribute_set(cfg, dataset),
        classnames,
        cfg.fedmvp.plain_template,
    )
    return build_text_bank(bundle, classnames, attributes, template, cache_dir)


def build_fedmvp_model(cfg: RunConfig, bundle, arrays: Mapping[str, np.ndarray] | None = None):
    """A FedMVPModel on the bundle's device, with ``arrays`` loaded when given."""
    from pep_fedpt.fedmvp import FedMVPModel

    model = FedMVPModel(bundle, cfg.fedmvp, seed=cfg.seed).to(bundle.device)
    if arrays is not None:
        model.load_trainable_arrays(
            {k: v for k, v in arrays.items() if k.startswith(wire.FEDMVP_PREFIX)}
        )
    return model


def fedmvp_initial_arrays(cfg: RunConfig, bundle) -> dict[str, np.ndarray]:
    """The seeded initial PromptFormer and adapters (the same in every process)."""
    return build_fedmvp_model(cfg, bundle).trainable_arrays()


class FedMVPClient:
    """One partition's FedMVP routines: the frozen CLIP, its few-shot data, its class bank.

    The registry's ``MethodClient`` (``data``, ``class_counts`` for the prototype round, ``train`` /
    ``evaluate``); its ``extra`` is the adapter switch, which travels in the messages'
    config (``adapters-on``), not in the arrays.
    """

    def __init__(
        self,
        cfg: RunConfig,
        partition_id: int,
        num_partitions: int,
        cache_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = pick_device()
        self.bundle = cached_clip(cfg, str(self.device))
        self.num_partitions = num_partitions
        self.cache_dir = cache_dir or default_cache_dir()
        data = client_data(cfg, self.bundle.spec, partition_id, num_partitions)
        self.data = dataclasses.replace(
            data,
            train=node_subset(data.train, cfg, f"client-train:{partition_id}", self.cache_dir),
            test=node_subset(data.test, cfg, f"client-test:{partition_id}", self.cache_dir),
        )
        self._bank = None

    def personal_arrays(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Nothing personal: every FedMVP array is the server's."""
        return {}

    def class_counts(self) -> np.ndarray:
        """Shots per class (0 outside this client's classes): its prototype-round counts."""
        return self.data.train_counts

    def bank(self):  # -> TextBank
        """The text bank of this client's own classes, built once per process."""
        if self._bank is None:
            names = load_central_data(self.cfg.data, self.bundle.spec).classes
            self._bank = self.make_bank([names[c] for c in self.data.classes])
        return self._bank

    def make_bank(self, classnames: list[str]):  # -> TextBank
        """The text bank of ``classnames`` in this client's domain and member set (a method
        with another bank overrides this, as its server overrides ``make_bank``)."""
        return text_bank(
            self.cfg, self.bundle, classnames, self.cache_dir, self.data.domain, self.data.dataset
        )

    def train(
        self, arrays: Mapping[str, np.ndarray], adapters_on: bool, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        """Local training from the global ``arrays``: trained arrays and the train metrics
        (with ``partition-id`` and the switch after training, ``adapters-on``)."""
        from pep_fedpt.fedmvp import train_local

        model = build_fedmvp_model(self.cfg, self.bundle, arrays)
        flipped = self.flipped(model)
        result = train_local(
            model,
            self.data.train,
            self.bank(),
            self.cfg,
            self.device,
            self.train_seed(server_round),
            adapters_on,
            lr=self.round_lr(server_round),
            flipped=flipped,
        )
        metrics: dict[str, float | int | list[int]] = {
            wire.NUM_EXAMPLES: int(result.num_examples),
            wire.CLASS_COUNTS: [int(n) for n in self.data.train_counts],
            wire.TRAIN_LOSS: float(result.loss),
            "train-accuracy": float(result.accuracy),
            wire.PARTITION_ID: self.data.partition_id,
            wire.ADAPTERS_ON: int(bool(result.adapters_on)),
        }
        # Reply in the type the state came in (fed.wire-dtype: float16 halves the bytes).
        dtype = next((np.asarray(v).dtype for v in arrays.values()), np.dtype(np.float32))
        trained = {k: v.astype(dtype, copy=False) for k, v in model.trainable_arrays().items()}
        return trained, metrics

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], adapters_on: bool
    ) -> dict[str, float | int]:
        """Local accuracy: this client's test examples of its own classes, its own bank,
        with its adapters exactly when its switch is on."""
        from pep_fedpt.fedmvp import evaluate_local

        model = self.eval_model(arrays, adapters_on)
        correct, total, loss = evaluate_local(model, self.data.test, self.bank(), self.device)
        return {
            wire.NUM_EXAMPLES: int(total),
            wire.CORRECT: int(correct),
            wire.ACCURACY: correct / total if total else 0.0,
            "loss": float(loss),
            wire.PARTITION_ID: self.data.partition_id,
            wire.HELD_OUT: int(self.data.held_out),
        }

    def round_lr(self, server_round: int) -> float:
        """``train.lr`` under ``train.lr-schedule`` (the design: "cosine") in the round the
        server names, so that a resumed run continues the same schedule."""
        train = self.cfg.train
        factor = lr_factor(
            server_round, self.cfg.fed.num_rounds, train.lr_schedule, train.warmup_rounds
        )
        return train.lr * factor

    def flipped(self, model) -> torch.Tensor:
        """g(x') of the training examples (the consistency target: frozen encoder, fixed
        flip), computed once per node and kept in its feature cache like z(x)."""
        from pep_fedpt.fedmvp import flipped_features

        train = self.data.train
        examples = examples_digest(train.indices, train.targets)
        key = (
            f"fedmvp-flipped|{self.bundle.fingerprint}|{self.bundle.spec}|{self.cfg.data!r}|"
            f"{examples}|{self.device.type}"
        )
        store = feature_store(self.cache_dir)
        return store.get(key, lambda: flipped_features(model, train, self.device))

    def eval_model(self, arrays: Mapping[str, np.ndarray], adapters_on: bool):  # -> FedMVPModel
        """The model the evaluation runs: the global state, adapters per the switch."""
        model = build_fedmvp_model(self.cfg, self.bundle, arrays)
        model.adapters_on = bool(adapters_on)
        return model

    def train_seed(self, server_round: int) -> int:
        """Shuffling seed of one local training (``schedule.train_seed``)."""
        return train_seed(self.cfg.seed, server_round, self.data.partition_id)


def target_examples(
    cfg: RunConfig, spec: ImageSpec, test_data: LabeledDataset, test_idx: np.ndarray, target: int
) -> np.ndarray:
    """The examples Target scores: the held-out domain's central test examples
    (``fedmvp.target-split = "test"``) or every example of it (``"all"``: no client ever
    trains on the target, so all of it is unseen). "all" needs the central test carved from
    the same data set as the pool (the DomainBed sets); DomainNet's official test lists
    hold only the test part."""
    domains = domains_of(test_data)
    if cfg.fedmvp.target_split == "test":
        return test_idx[domains[test_idx] == target]
    pool_data, _ = client_pool(cfg.data, spec)
    if pool_data is not test_data:
        raise ConfigError(
            f"fedmvp.target-split = 'all' scores every example of the target domain, but "
            f"data.dataset = {cfg.data.dataset!r} has a separate official test set; use "
            "'test' (its test list of the target domain)"
        )
    return np.flatnonzero(domains == target).astype(np.int64)


class FedMVPServer:
    """FedMVP's server side: the seeded initial state and the central Base and New
    evaluation of the global state, each on the central test examples of its classes with
    the text bank of those classes (so new classes need only their phrases).

    The adapters are applied: a client that never switched them on leaves them as
    initialised, and their up-projection starts at zero, so untrained adapters add exactly
    nothing; trained ones are used wherever they were trained, here too.
    """

    def __init__(self, method: Method, cfg: RunConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.bundle = cached_clip(cfg, str(device))
        central = load_central_data(cfg.data, self.bundle.spec)
        self.classes = central.classes
        test_data, test_idx = central.source, central.indices
        targets = np.asarray(test_data.targets)
        cache = resolve_cache_dir(cfg.cache_dir)
        self.sets: dict[str, ClassSubset] = {}
        self.banks: dict[str, Any] = {}  # TextBank, or None without attribute banks
        self.members: tuple[str, ...] = ()  # coop-nine: the member sets
        if cfg.fedmvp.protocol == "domain":  # Target: the held-out domain, its template
            names = run_domains(cfg)
            target = target_index(names, cfg.fedmvp.target_domain)
            every = tuple(range(central.num_classes))
            in_target = target_examples(cfg, self.bundle.spec, test_data, test_idx, target)
            subset = ClassSubset(test_data, in_target, every)
            self.sets["target"] = node_subset(subset, cfg, "central-target", cache)
            self.banks["target"] = self.make_bank(list(self.classes), cache, names[target])
            return
        if cfg.data.dataset == NINE_SETS:  # Base and New per member set, with its bank
            pool_data, _ = client_pool(cfg.data, self.bundle.spec)
            self.members, groups = nine_groups(cfg, pool_data)
            halves = member_base_new(groups)
            for member, (base, new) in zip(self.members, halves, strict=True):
                for kind, group in (("base", base), ("new", new)):
                    name = f"{kind}-{member}"
                    indices = of_classes(test_idx, targets, group)
                    subset = ClassSubset(test_data, indices, group)
                    self.sets[name] = node_subset(subset, cfg, f"central-{name}", cache)
                    classnames = [self.classes[c] for c in group]
                    self.banks[name] = self.make_bank(classnames, cache, None, member)
            return
        base, new = split_base_new(central.num_classes)
        for name, group in (("base", base), ("new", new)):
            subset = ClassSubset(test_data, of_classes(test_idx, targets, group), group)
            self.sets[name] = node_subset(subset, cfg, f"central-{name}", cache)
            self.banks[name] = self.make_bank([self.classes[c] for c in group], cache)

    def make_bank(
        self,
        classnames: list[str],
        cache: Path,
        domain: str | None = None,
        dataset: str | None = None,
    ):
        """The text bank of ``classnames`` (a method without attribute banks: None)."""
        return text_bank(self.cfg, self.bundle, classnames, cache, domain, dataset)

    def member_averages(self, out: dict[str, float]) -> dict[str, float]:
        """coop-nine: Base and New (and their losses) as the means over the member sets,
        each set weighing the same (the paper's nine-set averages); per set they stay as
        ``base-<set>-accuracy`` etc."""
        for kind in ("base", "new"):
            for metric in ("accuracy", "loss"):
                values = [out[f"{kind}-{m}-{metric}"] for m in self.members]
                if values:
                    out[f"{kind}-{metric}"] = float(np.mean(values))
        return out

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return fedmvp_initial_arrays(self.cfg, self.bundle)

    def eval_model(self, state: Mapping[str, np.ndarray]):  # -> FedMVPModel
        """The global state's model, its adapters applied (see the class docstring)."""
        model = build_fedmvp_model(self.cfg, self.bundle, state)
        model.adapters_on = True
        return model

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``base-accuracy``, ``new-accuracy`` (domain protocol: ``target-accuracy``) and
        their losses (mean cross-entropy)."""
        from pep_fedpt.fedmvp import evaluate_local

        model = self.eval_model(state)
        out: dict[str, float] = {}
        for name, dataset in self.sets.items():
            correct, total, loss = evaluate_local(
                model, dataset, self.banks[name], self.bundle.device
            )
            out[f"{name}-accuracy"] = correct / total if total else 0.0
            out[f"{name}-loss"] = float(loss)
        return self.member_averages(out)


def _strategy_kwargs(cfg: RunConfig) -> dict[str, object]:
    """The data set's class count (FedMVP has no head to read it from) and the weights."""
    spec = cached_clip(cfg, str(pick_device())).spec
    num_classes = load_central_data(cfg.data, spec).num_classes
    kwargs: dict[str, object] = {"num_classes": num_classes, "aggregation": cfg.fedmvp.aggregation}
    if cfg.data.dataset == NINE_SETS and cfg.fedmvp.protocol == "base-new":
        _, groups = nine_groups(cfg, client_pool(cfg.data, spec)[0])
        counts = [
            published_clients(len(base), cfg.fedmvp.classes_per_client)
            for base, _ in member_base_new(groups)
        ]
        kwargs["member_of"] = [m for m, count in enumerate(counts) for _ in range(count)]
    return kwargs


def _adapter_switch(received: Received) -> bool:
    """The switch the server holds for this node's partition (off if not sent)."""
    return bool(int(received.config.get(wire.ADAPTERS_ON, 0)))


def _check_config(cfg: RunConfig) -> None:
    if cfg.train.optimizer != "sgd":
        raise ConfigError(
            f"train.optimizer = {cfg.train.optimizer!r}: FedMVP trains with SGD (the design's "
            "lr, momentum and weight decay); use 'sgd'"
        )
    if cfg.fedmvp.protocol == "domain" and not cfg.fedmvp.target_domain:
        raise ConfigError(
            "fedmvp.protocol = 'domain' needs fedmvp.target-domain: the domain to hold out"
        )


register(
    Method(
        name="fedmvp",
        client=FedMVPClient,
        strategy="strategies.fedmvp:FedMVP",
        strategy_kwargs=_strategy_kwargs,
        layout=None,  # a CLIP with a PromptFormer, not a PromptedViT
        server=FedMVPServer,
        extra=_adapter_switch,
        clip=True,
        check_config=_check_config,
    )
)
