"""The strategy base's named override points: a method built from them alone runs through
the real ``start`` loop, and the project's strategies override no private helper."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

import strategies.base as base
from server_app.inprocess import InProcessGrid, set_task_identity
from strategies import SGPT, LocalOnly, PEPFedPT, PFedPG, PromptFedAvg, wire
from strategies.aggregation import RunningMean

HOOKS = (
    "counts_only",
    "has_prototypes",
    "prototype_state",
    "fold_prototypes",
    "server_only",
    "node_arrays",
    "extra_content",
    "check_train_metrics",
    "merge_weight",
    "prepare_merge",
    "merge_result",
    "aggregate_valid",
    "dp_refusal",
    "checkpoint",
    "restore",
)

toy = ClientApp()


def _counts(context: Context) -> list[int]:
    node = int(context.node_config["partition-id"]) + 1
    return [5 * node, 5 * node]


@toy.query()
def _query(msg: Message, context: Context) -> Message:
    counts = np.asarray(_counts(context), dtype=np.int64)
    content = RecordDict(
        {
            wire.PROTO: ArrayRecord({wire.PROTO_COUNT: Array(counts)}),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: int(counts.sum())}),
        }
    )
    return Message(content=content, reply_to=msg)


@toy.train()
def _train(msg: Message, context: Context) -> Message:
    """Every array + this node's tag (the method's extra record)."""
    tag = int(msg.content["tag"]["node"].numpy()[0])
    arrays = {k: v.numpy() + np.float32(tag) for k, v in msg.content[wire.ARRAYS].items()}
    counts = _counts(context)
    metrics = {wire.NUM_EXAMPLES: sum(counts), wire.CLASS_COUNTS: counts, wire.TRAIN_LOSS: 1.0}
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            wire.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content=content, reply_to=msg)


@toy.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    context.state["seen"] = ConfigRecord({"arrays": wire.ARRAYS in msg.content})
    metrics = {wire.NUM_EXAMPLES: 10, wire.CORRECT: 5, wire.ACCURACY: 0.5}
    return Message(content=RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)


class Tagged(PromptFedAvg):
    """A method of one's own, built from the named hooks only."""

    def __init__(self, *, bonus: float, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]  # the hooks' options pass through as object; PromptFedAvg names their types
        self.bonus = bonus

    def node_arrays(
        self, arrays: ArrayRecord, trainable: ArrayRecord, node_id: int, message_type: str
    ) -> ArrayRecord | None:
        return None if message_type == MessageType.EVALUATE and node_id == 3 else trainable

    def extra_content(self, content: RecordDict, arrays: ArrayRecord, node_id: int) -> None:
        content["tag"] = ArrayRecord({"node": Array(np.array([node_id], dtype=np.int64))})

    def check_train_metrics(self, metrics: MetricRecord, node: int) -> str | None:
        return "node 2 is refused by the method" if node == 2 else None

    def aggregate_valid(
        self,
        server_round: int,
        valid: list[Message],
        metrics: MetricRecord,
        running: Mapping[str, RunningMean],
    ) -> ArrayRecord | None:
        state = super().aggregate_valid(server_round, valid, metrics, running)
        assert state is not None
        state[wire.HEAD_BIAS] = Array(state[wire.HEAD_BIAS].numpy() + np.float32(self.bonus))
        return state


def test_a_method_built_from_the_hooks_alone_runs_through_start() -> None:
    set_task_identity()
    grid = InProcessGrid(toy, {n: {"partition-id": n - 1} for n in (1, 2, 3)}, {})
    strategy = Tagged(bonus=0.5, min_train_nodes=2, min_evaluate_nodes=3, min_available_nodes=3)
    initial = {
        wire.SHARED_PROMPT: np.zeros((1, 3), np.float32),
        wire.HEAD_WEIGHT: np.zeros((2, 3), np.float32),
        wire.HEAD_BIAS: np.zeros(2, np.float32),
    }
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=1,
        timeout=10.0,
    )

    # Node 2 was refused by check_train_metrics; nodes 1 (n=10) and 3 (n=30) merged by n_k:
    # (10 * 1 + 30 * 3) / 40 = 2.5 on every trainable value, plus aggregate_valid's bonus.
    assert [(node, why) for _, node, why in strategy.dropped] == [
        (2, "node 2 is refused by the method")
    ]
    state = {k: v.numpy() for k, v in result.arrays.items()}
    np.testing.assert_array_equal(state[wire.HEAD_BIAS], np.full(2, 3.0, np.float32))
    np.testing.assert_array_equal(state[wire.HEAD_WEIGHT], np.full((2, 3), 2.5, np.float32))
    np.testing.assert_array_equal(state[wire.PROTO_COUNT], [30, 30])  # server-only, kept
    # node_arrays: node 3's evaluate message carried no arrays, the others theirs.
    seen = {n: bool(grid.contexts[n].state["seen"]["arrays"]) for n in (1, 2, 3)}
    assert seen == {1: True, 2: True, 3: False}


def test_rounds_yields_round_0_and_each_round_with_what_start_returns() -> None:
    set_task_identity()
    initial = {
        wire.SHARED_PROMPT: np.zeros((1, 3), np.float32),
        wire.HEAD_WEIGHT: np.zeros((2, 3), np.float32),
        wire.HEAD_BIAS: np.zeros(2, np.float32),
    }
    ends, results = [], []
    for loop in ("rounds", "start"):
        grid = InProcessGrid(toy, {n: {"partition-id": n - 1} for n in (1, 2, 3)}, {})
        strategy = Tagged(bonus=0.5, min_train_nodes=2, min_evaluate_nodes=3, min_available_nodes=3)
        arrays = ArrayRecord({k: Array(v) for k, v in initial.items()})
        if loop == "rounds":
            ends = list(strategy.rounds(grid, arrays, num_rounds=2, timeout=10.0))
        else:
            results.append(strategy.start(grid, arrays, num_rounds=2, timeout=10.0))

    assert [end.server_round for end in ends] == [0, 1, 2]
    # Round 0 is the state after the prototype round (its counts, as the toy nodes report
    # them), with nothing trained or refused yet.
    assert ends[0].train_metrics is None and ends[0].dropped == []
    np.testing.assert_array_equal(ends[0].arrays[wire.PROTO_COUNT].numpy(), [30, 30])
    # Each round adds node 2's refusal; the last state is the one start returns.
    assert [len(end.dropped) for end in ends] == [0, 1, 2]
    assert ends[2].checkpoint["dropped"] == [list(entry) for entry in ends[2].dropped]
    for key, array in results[0].arrays.items():
        np.testing.assert_array_equal(ends[2].arrays[key].numpy(), array.numpy(), err_msg=key)
    assert ends[2].metrics["train/valid-replies"] == 2


def test_every_hook_is_documented_and_exists_on_the_base() -> None:
    doc = inspect.getdoc(base) or ""
    for hook in HOOKS:
        assert f"``{hook}" in doc, hook
        assert hasattr(PromptFedAvg, hook), hook


def test_the_project_strategies_override_no_private_helper_of_the_base() -> None:
    private = {
        name
        for name, _ in inspect.getmembers(PromptFedAvg, inspect.isfunction)
        if name.startswith("_") and not name.startswith("__")
    }
    for cls in (PEPFedPT, SGPT, PFedPG, LocalOnly):
        assert not private & set(vars(cls)), (cls.__name__, private & set(vars(cls)))
    assert "aggregate_train" not in vars(PFedPG)  # its update is aggregate_valid


def test_every_strategy_takes_its_own_arguments_by_keyword_and_the_base_s_as_kwargs() -> None:
    for cls in (PEPFedPT, SGPT, PFedPG, LocalOnly):
        params = inspect.signature(cls.__init__).parameters.values()
        kinds = {p.kind for p in params if p.name != "self"}
        assert kinds <= {inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD}, cls
        assert cls(seed=3, min_train_nodes=1).seed == 3  # type: ignore[call-arg]  # mypy types cls as a join of four classes with different __init__s; each takes seed through **kwargs


def test_a_subclass_written_against_the_old_hook_names_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match=r"Old.census_state: this hook is now prototype_state"):

        class Old(PromptFedAvg):
            def census_state(self) -> None:
                pass

    with pytest.raises(TypeError, match=r"check_train_metrics must take \(self, metrics, node\)"):

        class OneArgument(PromptFedAvg):
            def check_train_metrics(self, metrics: MetricRecord) -> str | None:  # type: ignore[override]  # the wrong signature is the point: the base must refuse it
                return None


# The modules that make up the base (PromptFedAvg and its mixins): their ``self._...``
# names are the base's own.
BASE_MODULES = tuple(
    sorted(
        {
            Path(inspect.getfile(part)).name
            for part in PromptFedAvg.__mro__
            if part.__module__.startswith("strategies.")
        }
    )
)


def _self_attributes(tree: ast.AST) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def test_no_method_reads_a_private_attribute_of_the_base() -> None:
    """A method uses the base through its hooks and documented public names
    (``global_arrays``, ``sender``, ``proto_version``, ...), never its ``_`` names."""
    root = Path(base.__file__).parent
    private = {
        name
        for module in BASE_MODULES
        for name in _self_attributes(ast.parse((root / module).read_text()))
        if name.startswith("_") and not name.startswith("__")
    }
    assert {"_global", "_sender", "_proto_version"} <= private  # the scan sees them
    found = {
        path.name: sorted(_self_attributes(ast.parse(path.read_text())) & private)
        for path in sorted(root.glob("*.py"))
        if path.name not in BASE_MODULES
    }
    assert {name: attrs for name, attrs in found.items() if attrs} == {}
