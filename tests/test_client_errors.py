"""A client's failure in one line everywhere (console, dropped.json, summary.md), its full
text in the run's client-errors.log: through Flower's real simulation engine, where Ray
wraps the exception in its own traceback with colour codes, and by hand on such texts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from helpers import failing_client

from client_app.errors import error_reply
from pep_fedpt.local_flwr import BIN, flwr_env, stop_superlink
from server_app.inprocess import incoming_message, set_task_identity
from strategies.errors import MAX_CHARS, one_line, strip_ansi

ROOT = Path(__file__).resolve().parents[1]

# What the simulation engine sent for a ClientApp that raised, as Flower 1.42 and Ray
# format it (shortened: the real one is 6.9 kB).
RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor"
    ".run()\x1b[39m (pid=4242, ip=10.0.0.5, actor_id=ab12, repr=<flwr.simulation.ray_transport"
    ".ray_actor.ClientAppActor object at 0x7f00>)\n"
    '  File "/root/.flwr/apps/pep-fedpt.pep-fedpt.1.0.0.1a2b/client_app/app.py", line 150, '
    "in train\n"
    '    raise ValueError("partition 3 holds no image")\n'
    "ValueError: partition 3 holds no image\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=4242, ip=10.0.0.5)\n"
    '  File "/venv/lib/python3.11/site-packages/flwr/simulation/ray_transport/ray_actor.py", '
    "line 65, in run\n"
    "    raise ClientAppException(str(ex)) from ex\n"
    "flwr.clientapp.client_app.ClientAppException: \n"
    "Exception ClientAppException occurred. Message: partition 3 holds no image'>"
)


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        (RAY_REASON, "ValueError: partition 3 holds no image (client_app/app.py:150)"),
        # a SuperNode's wrapping: no traceback, the class and the text
        ("<class 'OSError'>:<'disk full\nno space left'>", "OSError: disk full no space left"),
        ("ValueError('no partition-id')", "ValueError('no partition-id')"),
        ("\x1b[31mError: Node Unavailable\x1b[0m", "Error: Node Unavailable"),
    ],
)
def test_a_client_error_becomes_its_own_exception_on_one_line(reason: str, line: str) -> None:
    assert one_line(reason) == line


def test_a_long_error_is_cut_to_the_longest_line_kept() -> None:
    line = one_line("<class 'ValueError'>:<'" + "x" * 1000 + "'>")
    assert len(line) == MAX_CHARS and line.endswith("...")
    assert strip_ansi("\x1b[1m\x1b[36mray\x1b[39m\x1b[22m") == "ray"


def _app_with_a_failing_client(root: Path) -> Path:
    """This project's app with helpers/failing_client.py as its ClientApp, and its
    scripts (and .venv), so that it runs as a user runs the project."""
    for folder in ("pep_fedpt", "client_app", "server_app", "strategies", "scripts"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / folder, root / folder, ignore=ignore)
    for data in ("attributes", "templates"):  # the conf/ files the FAB ships
        shutil.copytree(ROOT / "conf" / data, root / "conf" / data)
    for name in ("README.md", "LICENSE"):
        shutil.copy(ROOT / name, root / name)
    (root / ".venv").symlink_to(BIN.parent)
    shutil.copy(Path(failing_client.__file__), root / "failing_client.py")
    text = (ROOT / "pyproject.toml").read_text()
    text = text.replace('clientapp = "client_app.app:app"', 'clientapp = "failing_client:app"')
    text = text.replace('    "LICENSE",\n]', '    "LICENSE",\n    "failing_client.py",\n]')
    assert tomllib.loads(text)["tool"]["flwr"]["app"]["components"]["clientapp"] == (
        "failing_client:app"
    )
    (root / "pyproject.toml").write_text(text)
    return root


@pytest.mark.integration
@pytest.mark.timeout(500)
@pytest.mark.parametrize("runner", ["scripts/run.sh", "flwr run"])
def test_a_client_that_fails_in_the_simulation_engine_is_said_in_one_line(
    tmp_path: Path, runner: str
) -> None:
    """3 SuperNodes, partition 1's ClientApp raises OSError in train: through the project's
    command and through a plain ``flwr run``, whose console has no filter of its own."""
    app = _app_with_a_failing_client(tmp_path / "app")
    home, out = tmp_path / "flwr-home", tmp_path / "run"
    overrides = (
        f"num-server-rounds=1 output-dir='{out}' model.pretrained='random' model.depth=2 "
        "model.embed-dim=64 model.num-heads=2 model.img-size=16"
    )
    env = {
        **flwr_env(home),
        "NUM_SUPERNODES": "3",
        "SKIP_SETUP": "1",  # the .venv is set up; never pip-install from a test
        "PEP_FEDPT_PYTHON": sys.executable,
    }
    command = (
        [str(app / "scripts" / "run.sh"), "-c", overrides]
        if runner == "scripts/run.sh"
        else [str(BIN / "flwr"), "run", ".", "--stream", "-c", overrides,
              "--federation-config", "num-supernodes=3"]
    )  # fmt: skip
    try:
        run = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True, timeout=420)
    finally:
        stop_superlink(home)
    console = strip_ansi(run.stdout + run.stderr)
    assert run.returncode == 0, console[-3000:]
    # Flower's own 60-line report of the exception never happens: the app replies with
    # the error itself (client_app/errors.py).
    assert "Traceback" not in console and "ray::" not in console, console
    assert "An exception was raised" not in console, console
    assert "default simulated SuperNodes changed" not in console or runner == "flwr run"

    source = Path(failing_client.__file__).read_text().splitlines()
    raised_at = next(i for i, text in enumerate(source, 1) if "raise OSError" in text)
    dropped = json.loads((out / "dropped.json").read_text())
    assert [d["round"] for d in dropped] == [1]
    # The file as the simulation ran it (this app's folder, or Flower's copy of it).
    line = dropped[0]["reason"].removeprefix("error reply: ")
    assert re.fullmatch(
        rf"OSError: {failing_client.MESSAGE} \((\S*/)?failing_client\.py:{raised_at}\)", line
    ), line
    node = dropped[0]["node"]
    said = [text for text in console.splitlines() if f"dropped reply from node {node}" in text]
    assert len(said) == 1 and said[0].endswith(
        f"round 1: dropped reply from node {node}: error reply: {line}"
    )
    # ... and the node itself said it once, in the same words.
    said = [text for text in console.splitlines() if "ClientApp of partition" in text]
    assert len(said) == 1 and said[0].endswith(
        f"ClientApp of partition 1 failed in train: {line}"
    ), said

    summary = (out / "summary.md").read_text()
    assert "\x1b" not in summary and "\x1b" not in (out / "dropped.json").read_text()
    row = next(text for text in summary.splitlines() if text.startswith(f"| {node} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # node, partition, failed / sent, trained, evaluated, never trained or evaluated, last
    assert cells[1:] == ["partition 1", "1 / 3", "no", "1 time", "no", f"round 1 train: {line}"]

    full = (out / "client-errors.log").read_text()
    assert full.startswith(f"=== round 1 train, node {node} ===\n")
    assert "Traceback (most recent call last)" in full
    assert "\x1b" not in full and re.search(r'failing_client.py", line \d+', full)


def test_the_console_filter_puts_one_line_for_the_engines_report_and_keeps_the_rest() -> None:
    red, green, yellow, end = "\x1b[91m", "\x1b[92m", "\x1b[93m", "\x1b[0m"
    console = [
        f"{yellow}WARNING {end}:   Since flwr 1.32, default simulated SuperNodes changed from "
        "10 to 2.",
        f"{green}INFO {end}:      configure_train: sampled 3 nodes",
        f"{red}ERROR {end}:     An exception was raised when processing a message by RayBackend",
        f"{red}ERROR {end}:     \x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)",
        '  File "/app/failing_client.py", line 29, in train',
        "OSError: disk full",
        "",
        f"{red}ERROR {end}:     Traceback (most recent call last):",
        '  File "/venv/flwr/vce_api.py", line 132, in worker',
        "ray.exceptions.RayTaskError(ClientAppException): ray::ClientAppActor.run()",
        "",
        f"{green}INFO {end}:      round 1 train: 3/3 replies in 18.7 s",
        f"{red}ERROR {end}:     a ServerApp error of its own",
        "pep-fedpt summary (pep-fedpt, digits):",
    ]
    done = subprocess.run(
        ["awk", "-f", str(ROOT / "scripts" / "console-filter.awk")],
        input="\n".join(console) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert done.stdout.splitlines() == [
        console[1],
        "run.sh: a ClientApp raised an exception; the server names it in one line below "
        "(dropped reply from node ...), its traceback is in client-errors.log in the run folder",
        *console[11:],
    ]


def _train_message() -> tuple[Message, Context]:
    set_task_identity()
    msg = incoming_message(RecordDict(), "train")
    context = Context(
        run_id=1, node_id=7, node_config={"partition-id": 2}, state=RecordDict(), run_config={}
    )
    return msg, context


def test_an_exception_in_the_app_becomes_an_error_reply_with_its_traceback() -> None:
    msg, context = _train_message()

    def fails(msg: Message, context: Context) -> Message:
        raise ValueError("no image in partition 2")

    reply = error_reply(msg, context, fails)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert reply.error.reason.startswith("Traceback (most recent call last):")
    assert one_line(reply.error.reason).startswith("ValueError: no image in partition 2 (")
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id


def test_a_reply_passes_through_and_a_node_being_stopped_is_not_a_client_error() -> None:
    msg, context = _train_message()
    answer = Message(RecordDict(), reply_to=msg)
    assert error_reply(msg, context, lambda m, c: answer) is answer

    def stopped(msg: Message, context: Context) -> Message:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        error_reply(msg, context, stopped)


def test_the_app_s_own_exception_is_named_not_the_cause_it_chained() -> None:
    msg, context = _train_message()

    def fails(msg: Message, context: Context) -> Message:
        try:
            raise OSError("Truncated File Read")
        except OSError as exc:
            raise ValueError("/data/train/cat/1.png: cannot read this image") from exc

    reason = error_reply(msg, context, fails).error.reason
    assert "OSError: Truncated File Read" in reason  # the whole chain is kept
    assert one_line(reason).startswith(
        "ValueError: /data/train/cat/1.png: cannot read this image ("
    )
