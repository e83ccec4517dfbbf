"""Write a minimal Flower app, not this project's, that plugs in ``strategies.PEPFedPT``.

Its ClientApp is numpy only (a linear classifier on synthetic class clusters) and follows
``strategies/wire.py``; its ServerApp builds the initial state from the wire names and
writes the result to the run config's ``result-file``. The sources are kept here as text
so that the guide (docs/using-the-strategy.md) and the tests show the same code.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "toy-prompts"
version = "1.0.0"
license = "Apache-2.0"
dependencies = ["flwr>=1.41,<1.43", "numpy"]

[tool.setuptools.packages.find]
include = ["toy_prompts*", "strategies*"]

[tool.flwr.app]
publisher = "someone-else"

[tool.flwr.app.components]
serverapp = "toy_prompts.server:app"
clientapp = "toy_prompts.client:app"

[tool.flwr.app.config]
num-server-rounds = 2
num-classes = 3
dim = 8
round-timeout = 120.0
result-file = ""
"""

CLIENT = '''\
"""A numpy ClientApp that speaks PEP-FedPT's wire format (strategies/wire.py)."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def local_data(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """Class clusters; each partition holds mostly two of the classes (label skew)."""
    c, d = int(context.run_config["num-classes"]), int(context.run_config["dim"])
    pid = int(context.node_config["partition-id"])
    centers = np.random.default_rng(0).normal(0.0, 3.0, (c, d))
    rng = np.random.default_rng(100 + pid)
    labels = np.concatenate([np.full(40, pid % c), np.full(20, (pid + 1) % c), [pid % c]])
    x = centers[labels] + rng.normal(0.0, 1.0, (len(labels), d))
    return x.astype(np.float32), labels.astype(np.int64)


def arrays_of(msg: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in msg.content["arrays"].items()}


def logits(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = x + state["prompt.shared"][0]  # the "prompt" shifts the features
    return z @ state["head.weight"].T + state["head.bias"]


@app.query()
def prototypes(msg: Message, context: Context) -> Message:
    assert msg.content["config"]["task"] == "prototypes"
    x, y = local_data(context)
    c = int(context.run_config["num-classes"])
    sums = np.zeros((c, x.shape[1]), np.float32)
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=c).astype(np.int64)
    content = RecordDict(
        {
            "proto": ArrayRecord({"proto.sum": Array(sums), "proto.count": Array(counts)}),
            "metrics": MetricRecord({"num-examples": int(counts.sum())}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    x, y = local_data(context)
    state = arrays_of(msg)
    c = state["head.weight"].shape[0]
    loss = 0.0
    for _ in range(20):  # softmax regression, plain gradient descent
        z = logits(state, x)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        g = (p - np.eye(c)[y]) / len(y)
        state["head.weight"] -= 0.1 * g.T @ (x + state["prompt.shared"][0])
        state["head.bias"] -= 0.1 * g.sum(0)
    counts = np.bincount(y, minlength=c)
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v.astype(np.float32)) for k, v in state.items()}),
            "metrics": MetricRecord(
                {
                    "num-examples": len(y),
                    "class-counts": [int(n) for n in counts],
                    "train-loss": loss,
                }
            ),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    x, y = local_data(context)
    correct = int((logits(arrays_of(msg), x).argmax(1) == y).sum())
    metrics = {"num-examples": len(y), "correct": correct, "accuracy": correct / len(y)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
'''

SERVER = '''\
"""A ServerApp that plugs in PEPFedPT; the rest is this app's own business."""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from strategies import PEPFedPT

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    c, d = int(context.run_config["num-classes"]), int(context.run_config["dim"])
    initial = ArrayRecord(
        {
            "prompt.shared": Array(np.zeros((1, d), np.float32)),
            "prompt.class.1": Array(np.zeros((c, 1, d), np.float32)),
            "head.weight": Array(np.zeros((c, d), np.float32)),
            "head.bias": Array(np.zeros(c, np.float32)),
        }
    )
    strategy = PEPFedPT(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=float(context.run_config["round-timeout"]),
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    final = {k: v.numpy().tolist() for k, v in result.arrays.items()}
    out = {"arrays": final, "rounds": {str(k): v for k, v in strategy.round_metrics.items()}}
    if context.run_config["result-file"]:
        with open(str(context.run_config["result-file"]), "w") as f:
            json.dump(out, f)
'''


def write_plugin_app(root: Path, *, vendor_strategies: bool = False) -> Path:
    """Write the app under ``root``; with ``vendor_strategies`` also copy ``strategies/``
    in, so that its FAB carries the strategy (what a deployment without this project
    installed needs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    package = root / "toy_prompts"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "client.py").write_text(textwrap.dedent(CLIENT))
    (package / "server.py").write_text(textwrap.dedent(SERVER))
    if vendor_strategies:
        source = Path(__file__).resolve().parents[2] / "strategies"
        shutil.copytree(source, root / "strategies", ignore=shutil.ignore_patterns("__pycache__"))
    return root
