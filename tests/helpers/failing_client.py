"""This project's ClientApp, except that partition 1 fails every train message: a client
whose failure the tests follow through the real simulation engine, handled by the
project's own mods (client_app/errors.py) as the project's app would handle it."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.app import MODS
from client_app.app import app as project_app

app = ClientApp(mods=MODS)  # the project's own handling of a failure
FAILING_PARTITION = 1
MESSAGE = "disk full: cannot write the feature cache"


@app.query()
def query(msg: Message, context: Context) -> Message:
    return project_app(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return project_app(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) == FAILING_PARTITION:
        raise OSError(MESSAGE)
    return project_app(msg, context)
