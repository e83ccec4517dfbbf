"""The method registry: every method is found by name, builds its strategy, client and
server side through its registration, and the config accepts exactly the registry's names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.engine import pick_device
from pep_fedpt.methods.registry import (
    METHOD_MODULES,
    METHODS,
    Method,
    Received,
    all_methods,
    client_for,
    from_record,
    get_method,
    method_for,
)
from strategies import PromptFedAvg, wire

ROOT = Path(__file__).resolve().parents[1]


def test_the_config_accepts_exactly_the_registered_names() -> None:
    assert tuple(METHOD_MODULES) == METHODS
    assert [m.name for m in all_methods()] == list(METHODS)
    with pytest.raises(ConfigError, match=r"method = 'fedavg' is not accepted; use one of: pep"):
        method_for(RunConfig.from_flat({"method": "fedavg"}))


def test_every_name_is_registered_by_the_module_the_table_names() -> None:
    for name, module in METHOD_MODULES.items():
        method = get_method(name)
        assert method.name == name
        assert method.client.__module__ == module


def test_validating_a_method_name_imports_no_torch() -> None:
    code = (
        "import sys; from pep_fedpt.config import RunConfig; "
        "from pep_fedpt.methods.registry import check_name; "
        "check_name(RunConfig.from_flat({'method': 'sgpt'}).method); "
        "print(sorted(m for m in ('torch', 'timm', 'flwr', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.integration  # builds a backbone and loads the data set per method
@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_its_strategy_client_and_server_through_the_registry(
    name: str, tiny_run_config: dict
) -> None:
    # The CLIP methods' clients take consecutive chunks of the 5 base classes of digits: one
    # class each, so that 3 clients have one.
    chunks = {"fedmvp.classes-per-client": 1}
    cfg = RunConfig.from_flat({**tiny_run_config, **chunks, "method": name})
    method = method_for(cfg)
    strategy = method.build_strategy(cfg)
    assert isinstance(strategy, PromptFedAvg)
    assert type(strategy) is method.strategy_class()
    assert type(strategy).__module__ == method.strategy.partition(":")[0]
    client = client_for(cfg, 0, 3)
    assert isinstance(client, method.client)  # type: ignore[arg-type]  # method.client is typed as a ClientFactory (a callable); every registered one is a class
    assert client.data.partition_id == 0
    server = method.build_server(cfg, pick_device())
    state = server.initial_arrays()
    if method.layout is None:  # CLIP methods, no head (zero-shot CLIP: nothing to train)
        assert all(key.startswith((wire.FEDMVP_PREFIX, "promptfl.", "fedtpg.")) for key in state)
        assert bool(state) == (name != "zeroshot-clip")
        return
    assert wire.HEAD_WEIGHT in state
    assert len(server.classes) == state[wire.HEAD_WEIGHT].shape[0]


def test_the_method_facts_are_data_on_each_registration() -> None:
    facts = {
        m.name: (m.proximal, m.prior_correction, m.personal, m.kept_record) for m in all_methods()
    }
    assert facts["fedprox-vpt"] == (True, False, False, None)
    assert facts["fedavg-vpt-prior"] == (False, True, False, None)
    assert facts["local"] == (False, False, True, None)
    assert facts["pfedpg"] == (False, False, True, None)
    assert facts["pep-fedpt"] == (False, False, False, wire.PROTO)
    assert sum(any(f) for f in facts.values()) == 5  # the others are plain


def test_a_method_s_own_config_check_runs_before_anything_is_built() -> None:
    cfg = RunConfig.from_flat({"method": "pfedpg", "prompt.shared-length": 0})
    with pytest.raises(ConfigError, match=r"'pfedpg' needs prompt.shared-length >= 1 \(got 0\)"):
        method_for(cfg)
    with pytest.raises(ConfigError, match=r"needs prompt.shared-length >= 1"):
        client_for(cfg, 0, 3)


def test_an_unknown_name_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"method = 'fedclip' is not accepted; use one of: pep-"):
        get_method("fedclip")


def test_a_registration_without_module_class_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match=r"strategy = 'PromptFedAvg' must be 'module:Class'"):
        Method("x", get_method("head-only").client, "PromptFedAvg")


def test_a_method_on_another_model_must_give_its_server_side() -> None:
    with pytest.raises(ValueError, match=r"not a PromptedViT \(layout = None\): give its server"):
        Method("x", get_method("head-only").client, "strategies.base:PromptFedAvg", layout=None)


def test_a_missing_record_names_the_record_and_the_server_it_expects() -> None:
    read = from_record(wire.GROUP, wire.GROUP_COUNT, "SGPT")
    with pytest.raises(ValueError, match=r"needs the record 'group' \(group.count\) .* SGPT\?"):
        read(Received(config={}, records={}))
