"""The method registry: one registration per method, looked up by name.

A method is two files, FL-bench style: its server file ``strategies/<method>.py`` (numpy
and flwr only) and its client file ``pep_fedpt/methods/<method>.py``, which holds the
client routine and calls ``register(Method(...))`` with every fact the apps need: the
client, the strategy (by import path, so that this library imports no Flower), the
strategy's arguments from the run config, the prompt layout of its PromptedViT (or its own
server side for another model), the central evaluation, what its messages carry beyond
the arrays, and its config checks. The ServerApp and ClientApp ask ``get_method(name)``
and never name a method.

``METHOD_MODULES`` (name -> the module that registers it) is the only other line a new
method adds. It is plain data, so that ``check_name`` refuses an unknown ``method`` without
importing torch (the launcher's preflight); ``get_method`` imports the module on first use
and refuses a module that did not register the name it is listed for
(tests/test_registry.py checks every name). ``method_for`` checks a run config against the
registration's facts; ``pep_fedpt.config`` knows no method.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pep_fedpt.config import CCMP_KEYS, ConfigError, PromptConfig, RunConfig

if TYPE_CHECKING:  # numpy and torch stay out of this module's imports
    import numpy as np
    import torch

    from pep_fedpt.engine import WeightsFn

# Every method and the module that registers it (the torch-free name table).
METHOD_MODULES: dict[str, str] = {
    "pep-fedpt": "pep_fedpt.methods.pep_fedpt",
    "fedavg-vpt-shallow": "pep_fedpt.methods.baselines",
    "fedavg-vpt-deep": "pep_fedpt.methods.baselines",
    "fedprox-vpt": "pep_fedpt.methods.baselines",
    "head-only": "pep_fedpt.methods.baselines",
    "fedavg-vpt-prior": "pep_fedpt.methods.baselines",
    "local": "pep_fedpt.methods.baselines",
    "sgpt": "pep_fedpt.methods.sgpt",
    "pfedpg": "pep_fedpt.methods.pfedpg",
    "fedmvp": "pep_fedpt.methods.fedmvp",
    "zeroshot-clip": "pep_fedpt.methods.zeroshot_clip",
    "promptfl": "pep_fedpt.methods.promptfl",
    "fedtpg": "pep_fedpt.methods.fedtpg",
}
METHODS = tuple(METHOD_MODULES)  # the accepted values of ``method``, in the table's order


@dataclass(frozen=True)
class PromptLayout:
    """Which prompts a PromptedViT method's model has (the backbone and head are shared).

    ``shared``: ``prompt.shared-length`` tokens at the input. ``blocks``: prompts in the
    blocks of ``prompt.ccmp-blocks``, of the kind ``per_block``: "class" (one set per class,
    mixed by CCMP: PEP-FedPT), "one" (one prompt per block: VPT-deep) or "group"
    (``prompt.num-groups`` keyed sets in ``prompt.group-blocks``: SGPT).
    """

    shared: bool = True
    blocks: bool = True
    per_block: Literal["class", "one", "group"] = "class"


VPT_SHALLOW = PromptLayout(blocks=False)
VPT_DEEP = PromptLayout(per_block="one")
NO_PROMPT = PromptLayout(shared=False, blocks=False)


@dataclass(frozen=True)
class Received:
    """What a train or evaluate message carried beyond the arrays, without Flower types.

    ``records``: its array records other than ``arrays`` (a method's ``kept_record`` filled
    in from the node's state when this message did not carry it); ``config``: its config.
    """

    config: Mapping[str, Any]
    records: Mapping[str, Mapping[str, np.ndarray]]


class MethodClient(Protocol):
    """What the ClientApp calls on a method's client (one per process and partition).

    ``data`` has ``partition_id`` and ``held_out``; ``train``/``evaluate`` take the arrays
    to start from and the method's ``extra`` (None without one); a method whose strategy
    asks for feature sums in the prototype round also has ``prototype_stats()``.
    """

    cfg: RunConfig
    data: Any

    def train(
        self, arrays: Mapping[str, np.ndarray], extra: Any, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def evaluate(self, arrays: Mapping[str, np.ndarray], extra: Any) -> dict[str, Any]: ...

    def class_counts(self) -> np.ndarray: ...

    def personal_arrays(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class MethodServer(Protocol):
    """The server side of a method beyond its strategy: the seeded initial state and the
    central evaluation after every round (``PromptedViTServer`` for the PromptedViT ones).

    ``classes``: the central data set's class names (for partition.json).
    """

    @property
    def classes(self) -> Sequence[str]: ...

    def initial_arrays(self) -> dict[str, np.ndarray]: ...

    def evaluate(self, state: Mapping[str, np.ndarray]) -> dict[str, float]: ...


ClientFactory = Callable[[RunConfig, int, int, "Path | None"], MethodClient]
ServerFactory = Callable[["Method", RunConfig, "torch.device"], MethodServer]
# Central evaluation of a PromptedViT method: the mixing weights from the global state
# (None: one prompt set, no frozen query features needed).
CentralWeights = Callable[
    [RunConfig, "Mapping[str, np.ndarray]", "torch.Tensor", "torch.device"], "WeightsFn | None"
]


def _no_kwargs(cfg: RunConfig) -> dict[str, Any]:
    return {}


def _no_checks(cfg: RunConfig) -> None:
    return None


@dataclass(frozen=True)
class Method:
    """One method's registration: everything the apps need to run it, as data.

    name             the run config's ``method``.
    client           builds the client routine (``MethodClient``) of one partition.
    strategy         "module:Class" of its server strategy (numpy + flwr only).
    strategy_kwargs  its strategy's arguments beyond the base's (``PromptFedAvg``), from
                     the run config.
    layout           the prompts of its PromptedViT (None: not a PromptedViT).
    server           its server side (initial state, central evaluation), required: a
                     PromptedViT method's is ``pep_fedpt.methods.central.PromptedViTServer``.
    central_weights  the PromptedViT central evaluation's mixing weights from the state.
    prior_correction adds the log prior to the logits at evaluation (the global prior on
                     the server, the client's own on a client).
    proximal         FedProx's proximal term (``train.proximal-mu``) in local training.
    personal         a node keeps (part of) its trained state and uses it instead of the
                     message's (which part: the client's ``personal_arrays``).
    kept_record      an array record the server sends once per prototype version and the
                     node keeps in its state (PEP-FedPT: ``proto``).
    extra            what its client's ``train``/``evaluate`` get besides the arrays, read
                     from the message (None: nothing).
    ccmp             its prompts are mixed by CCMP: the prompt keys ``CCMP_KEYS``
                     (``prompt.mixing-prior``, ``prompt.test-prior-correction``) apply; any
                     other method refuses a value other than their default.
    own_aggregation  its server makes the new state itself (SGPT's group momentum, pFedPG's
                     generator step): a median or trimmed mean of the replies would bypass
                     it, so ``fed.aggregation`` must be "mean".
    clip             it runs on a CLIP (FedMVP and its baselines), not on a timm backbone:
                     the ``fedmvp.*`` protocol decides who holds what, and the run records
                     the CLIP instead of a backbone.
    check_config     refuses a run config the method cannot run (ConfigError), after the
                     checks of the facts above.
    """

    name: str
    client: ClientFactory
    strategy: str
    strategy_kwargs: Callable[[RunConfig], dict[str, Any]] = _no_kwargs
    layout: PromptLayout | None = PromptLayout()
    server: ServerFactory | None = None
    central_weights: CentralWeights | None = None
    prior_correction: bool = False
    proximal: bool = False
    personal: bool = False
    kept_record: str | None = None
    extra: Callable[[Received], Any] | None = None
    ccmp: bool = False
    own_aggregation: bool = False
    clip: bool = False
    check_config: Callable[[RunConfig], None] = _no_checks

    def __post_init__(self) -> None:
        module, _, cls = self.strategy.partition(":")
        if not module or not cls:
            raise ValueError(
                f"method {self.name!r}: strategy = {self.strategy!r} must be 'module:Class'"
            )
        if self.server is None:
            what = "is not a PromptedViT (layout = None)" if self.layout is None else "has none"
            raise ValueError(
                f"method {self.name!r} {what}: give its server (a PromptedViT's: "
                "pep_fedpt.methods.central.PromptedViTServer)"
            )

    def strategy_class(self) -> type[Any]:
        """The strategy class, imported now (Flower is imported here, not before)."""
        module, _, name = self.strategy.partition(":")
        return getattr(importlib.import_module(module), name)

    def build_strategy(self, cfg: RunConfig) -> Any:
        """The strategy of this run: the base's arguments plus the method's own."""
        fed = cfg.fed
        return self.strategy_class()(
            fraction_train=fed.fraction_train,
            fraction_evaluate=fed.fraction_evaluate,
            min_train_nodes=fed.min_train_nodes,
            min_evaluate_nodes=fed.min_evaluate_nodes,
            min_available_nodes=fed.min_available_nodes,
            seed=cfg.seed,
            wire_dtype=fed.wire_dtype,
            secure_aggregation=fed.secure_aggregation,
            secagg=fed.secagg_params() if fed.secure_aggregation != "off" else None,
            max_update_norm=fed.max_update_norm,
            update_norm_factor=fed.update_norm_factor,
            reply_aggregation=fed.aggregation,
            trim_fraction=fed.trim_fraction,
            **self.strategy_kwargs(cfg),
        )

    def build_server(self, cfg: RunConfig, device: torch.device) -> MethodServer:
        """The server side of this run (initial state, central evaluation)."""
        if self.server is None:  # refused at registration; this says so to the type checker
            raise ValueError(f"method {self.name!r} has no server side")
        return self.server(self, cfg, device)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add one method; a name registers once, and only from its module in METHOD_MODULES."""
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"method {method.name!r} is registered twice")
    _REGISTRY[method.name] = method
    return method


def check_name(name: str) -> None:
    """Refuse a ``method`` the table does not list (torch-free: the registry is not read)."""
    if name not in METHOD_MODULES:
        raise ConfigError(f"method = {name!r} is not accepted; use one of: {', '.join(METHODS)}")


def get_method(name: str) -> Method:
    """The registration of ``name``, importing its module on first use."""
    check_name(name)
    if name not in _REGISTRY:
        importlib.import_module(METHOD_MODULES[name])
    if name not in _REGISTRY:
        raise RuntimeError(
            f"module {METHOD_MODULES[name]} did not register method {name!r} "
            "(METHOD_MODULES names it as its home)"
        )
    return _REGISTRY[name]


def check_run_config(method: Method, cfg: RunConfig) -> None:
    """Refuse a run config that ``method`` cannot run: its facts' checks, then its own."""
    if method.own_aggregation and cfg.fed.aggregation != "mean":
        raise ConfigError(
            f"fed.aggregation = {cfg.fed.aggregation!r}: method = {cfg.method!r} makes its "
            "new state itself (SGPT's group momentum, pFedPG's generator step); use 'mean'"
        )
    if not method.ccmp:
        defaults = PromptConfig()
        for attr in CCMP_KEYS:
            value, default = getattr(cfg.prompt, attr), getattr(defaults, attr)
            if value != default:
                key = f"prompt.{attr.replace('_', '-')}"
                raise ConfigError(
                    f"{key} = {value!r} changes PEP-FedPT only; method = {cfg.method!r} "
                    f"accepts {default!r} (for the log prior at test on FedAvg-VPT-deep: "
                    "method = 'fedavg-vpt-prior')"
                )
    method.check_config(cfg)


def method_for(cfg: RunConfig) -> Method:
    """The registration of ``cfg.method``, after the run config's checks against it."""
    method = get_method(cfg.method)
    check_run_config(method, cfg)
    return method


@functools.lru_cache(maxsize=64)
def client_for(
    cfg: RunConfig,
    partition_id: int,
    num_partitions: int,
    cache_dir: Path | None = None,
    *,
    method: Method | None = None,
) -> MethodClient:
    """The per-process client of one partition (a simulation worker serves many).

    ``method``: ``cfg.method``'s registration when the caller holds it already (the
    ClientApp looks it up once per message); else it is looked up here."""
    if method is None:
        method = get_method(cfg.method)
    elif method.name != cfg.method:
        raise ValueError(f"method {method.name!r} given for a run of method = {cfg.method!r}")
    check_run_config(method, cfg)
    return method.client(cfg, partition_id, num_partitions, cache_dir)


def all_methods() -> list[Method]:
    """Every registration, in the order of METHOD_MODULES."""
    return [get_method(name) for name in METHOD_MODULES]


def from_record(record: str, key: str, server: str) -> Callable[[Received], np.ndarray]:
    """An ``extra`` reader: array ``key`` of record ``record`` (or, without that record,
    the integers ``key`` of the config), required in every message (``server``: the
    strategy that sends it, for the error)."""

    def read(received: Received) -> np.ndarray:
        if record not in received.records and key in received.config:
            # Under a client-side DP wrapper it rides in the config (one ArrayRecord).
            import numpy

            return numpy.asarray(received.config[key], dtype=numpy.int64)
        if record not in received.records or key not in received.records[record]:
            raise ValueError(
                f"this method needs the record {record!r} ({key}) in every message; "
                f"is the server running {server}?"
            )
        return received.records[record][key]

    return read
