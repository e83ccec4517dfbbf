"""A numpy ClientApp that speaks PEP-FedPT's wire format (``strategies/wire.py``).

It answers the three messages the strategy sends: the prototype request (a Flower QUERY
message), TRAIN and EVALUATE. Its "model" is a linear classifier on synthetic class
clusters, with a shared "prompt" vector added to every feature: small enough to read in
a minute, complete enough that every reply passes the strategy's checks.
"""

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
    """The prototype request: per-class sums of the features and per-class counts.

    Sums, not means, so that the server can pool them exactly: mu_c = sum_k s_kc / sum_k n_kc.
    With ``config["counts-only"]`` (the baselines' census) only ``proto.count`` is needed.
    """
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
    """Local training of the received state; the same keys and shapes go back, with the
    class counts the prototype reply reported (the strategy refuses any other)."""
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
