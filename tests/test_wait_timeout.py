"""A deployment short of nodes: the real strategy waits ``wait_timeout`` s, then fails
with what it waited for (fed.wait-timeout in this project's run config).

The nodes are the numpy ClientApp of the foreign-app example, run in-process.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp
from helpers.plugin_app import write_plugin_app

from pep_fedpt.config import ConfigError, RunConfig
from server_app.inprocess import InProcessGrid, set_task_identity
from strategies import PEPFedPT

RUN_CONFIG = {"num-server-rounds": 1, "num-classes": 3, "dim": 8, "round-timeout": 60.0}
C, D = 3, 8


@pytest.fixture
def client(tmp_path: Path) -> Iterator[ClientApp]:
    root = write_plugin_app(tmp_path / "toy-app")
    sys.path.insert(0, str(root))
    set_task_identity()
    try:
        yield importlib.import_module("toy_prompts.client").app
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n.startswith("toy_prompts")]:
            del sys.modules[name]


class LateGrid(InProcessGrid):
    """Nodes that connect one by one: node ``i`` (in order) after ``i * delay`` s."""

    def __init__(self, client: ClientApp, nodes: int, delay: float) -> None:
        super().__init__(
            client,
            {n: {"partition-id": n - 1, "num-partitions": nodes} for n in range(1, nodes + 1)},
            RUN_CONFIG,
        )
        self.delay = delay
        self.started = time.monotonic()

    def get_node_ids(self) -> Iterable[int]:
        elapsed = time.monotonic() - self.started
        return [n for i, n in enumerate(self.contexts) if i * self.delay <= elapsed]


def initial() -> ArrayRecord:
    return ArrayRecord(
        {
            "prompt.shared": Array(np.zeros((1, D), np.float32)),
            "prompt.class.1": Array(np.zeros((C, 1, D), np.float32)),
            "head.weight": Array(np.zeros((C, D), np.float32)),
            "head.bias": Array(np.zeros(C, np.float32)),
        }
    )


def start(strategy: PEPFedPT, grid: InProcessGrid) -> None:
    strategy.start(
        grid=grid,
        initial_arrays=initial(),
        num_rounds=1,
        timeout=60.0,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )


def test_a_round_short_of_nodes_fails_after_the_wait_timeout_saying_what_it_waited_for(
    client: ClientApp, caplog: pytest.LogCaptureFixture
) -> None:
    grid = InProcessGrid(client, {1: {"partition-id": 0, "num-partitions": 2}}, RUN_CONFIG)
    strategy = PEPFedPT(min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2)
    strategy.wait_timeout = 1.5
    began = time.monotonic()
    with (
        caplog.at_level(logging.INFO, logger="flwr"),
        pytest.raises(TimeoutError) as failure,
    ):
        start(strategy, grid)
    waited = time.monotonic() - began
    assert 1.5 <= waited < 5.0
    message = str(failure.value)
    assert "1 connected, 2 required" in message
    assert "min_available_nodes=2" in message
    assert "wait_timeout = 1.5 s" in message
    progress = [r.getMessage() for r in caplog.records if "waiting for nodes" in r.getMessage()]
    assert progress and "1 connected, 2 required" in progress[0]
    assert grid.sent == []  # nothing was sent to the one node that came


def test_nodes_that_connect_within_the_wait_timeout_are_waited_for(
    client: ClientApp, caplog: pytest.LogCaptureFixture
) -> None:
    grid = LateGrid(client, nodes=3, delay=0.6)
    strategy = PEPFedPT(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3)
    strategy.wait_timeout = 30.0
    with caplog.at_level(logging.INFO, logger="flwr"):
        start(strategy, grid)
    progress = [r.getMessage() for r in caplog.records if "waiting for nodes" in r.getMessage()]
    # One line per count seen, not one per second.
    assert any("1 connected, 3 required" in line for line in progress)
    assert any("2 connected, 3 required" in line for line in progress)
    assert len(progress) <= 3
    assert [kind for kind, _ in grid.sent].count("train") == 3


def test_the_wait_timeout_is_a_run_config_key_and_must_be_positive() -> None:
    assert RunConfig.from_flat({"fed.wait-timeout": 30}).fed.wait_timeout == 30.0
    assert RunConfig().fed.wait_timeout == 600.0
    with pytest.raises(ConfigError, match=r"fed.wait-timeout = -1.0"):
        RunConfig.from_flat({"fed.wait-timeout": -1.0})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("num-server-rounds", "five", "int"), ("seed", 1.5, "int"), ("output-dir", 3, "str")],
)
def test_a_top_level_key_of_the_wrong_type_is_named_with_its_value(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{key} = {value!r} has type .*expected {expected}"):
        RunConfig.from_flat({key: value})  # type: ignore[dict-item]  # a value of the wrong type is the point: from_flat must name it


def test_the_server_app_gives_up_after_fed_wait_timeout(
    tiny_run_config: dict[str, bool | int | float | str], task_identity: None
) -> None:
    from helpers.run_helpers import run_server

    flat = {**tiny_run_config, "fed.wait-timeout": 1.0}
    one_node = {10: {"partition-id": 0, "num-partitions": 2}}
    with pytest.raises(TimeoutError, match=r"1 connected, 2 required .*wait_timeout = 1 s"):
        run_server(flat, nodes=one_node)


def test_a_reply_waits_for_the_next_poll_at_most_a_twentieth_of_its_phase() -> None:
    """While no reply arrives the pause grows with the phase's age, not by doubling: a
    short phase is polled often (a doubled 1 s pause once cost a 1 s round half a second),
    a long one at most once a second; a reply that came in makes the next poll quick."""
    strategy = PEPFedPT()
    assert strategy.next_poll_pause(False, 0.2) == 0.05
    assert strategy.next_poll_pause(False, 4.0) == pytest.approx(0.2)
    assert strategy.next_poll_pause(False, 600.0) == 1.0
    assert strategy.next_poll_pause(True, 600.0) == 0.05


def test_a_poll_that_took_long_is_followed_by_a_pause_as_long() -> None:
    """Many pulls per poll (a prototype round of 10,000 nodes pulls in batches of
    pull_batch) must not hold the SuperLink all the time: the pause is at least what the
    last poll took, so polling uses at most half the time."""
    strategy = PEPFedPT()
    assert strategy.next_poll_pause(True, 600.0, polling=0.3) == 0.3
    assert strategy.next_poll_pause(False, 4.0, polling=0.01) == pytest.approx(0.2)
    assert strategy.next_poll_pause(False, 600.0, polling=2.5) == 2.5  # above the 1 s cap
