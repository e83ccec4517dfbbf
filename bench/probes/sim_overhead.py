"""The same rounds two ways: a real ``flwr run .`` in Flower's simulation engine, and a
plain loop that calls the same ServerApp and ClientApp code in one process.

The commands and what they showed: bench/probes/README.md.

The plain loop is ``server_app/inprocess.py``'s ``InProcessGrid``: the real ServerApp (strategy,
aggregation, central evaluation) and the real ClientApp handler per node, with no
SuperLink, no SuperNode, no Ray actor and no serialisation. A round is timed by the
ServerApp itself, the same way in both: its "pep-fedpt: round r took s s" line, from one
round's record to the next (the arrival of a streamed log line lags by up to Flower's
0.5 s log interval, which would make a 1 s round read 1.0 or 1.5 s); "steady state" is
the median of the rounds after the first. Start-up is timed to the first "[ROUND 1/R]"
line as it arrives. The rest of the simulation's time is split into: start-up
(``flwr run`` to the first round: SuperLink, the run's processes, Ray, actors), the
message encoding (a round's messages through Flower's own protobuf serde, measured here)
and the per-message data and model set-up (a client built cold in the loop's process:
what an actor pays once per partition it serves, cached after that by ``client_for``).

``--repeats K`` runs both ways K times, interleaved (simulation, loop, simulation, ...),
each loop in a fresh Python process of its own (as cold as the simulation's processes, so
no repeat starts warmer than the first); the steady-state ratio is reported per repeat
and as their median (the target is <= 1.10, and one run on a shared machine is noisy).
``--out`` writes every figure with ``bench.probes.result_file.header``; the summary is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.probes.result_file import header, write

ROOT = Path(__file__).resolve().parents[2]
ROUND_MARK = "[ROUND "
# The ServerApp's own measure of each round (server_app/app.py), the same line both ways.
ROUND_TOOK = re.compile(r"pep-fedpt: round (\d+) took ([0-9.]+) s")

TINY = {
    "model.pretrained": "random",
    "model.depth": 2,
    "model.embed-dim": 64,
    "model.num-heads": 2,
    "model.img-size": 16,
}


def round_times(lines: Iterable[str], rounds: int) -> list[float] | None:
    """Rounds 1..``rounds``' seconds as the ServerApp logged them ("pep-fedpt: round r
    took s s", from one round's record to the next); None if a round is missing. A line's
    arrival through ``flwr run --stream`` lags by up to Flower's 0.5 s log interval, which
    would quantise 1 s rounds to 1.0 or 1.5 s."""
    took: dict[int, float] = {}
    for line in lines:
        found = ROUND_TOOK.search(line)
        if found:
            took[int(found.group(1))] = float(found.group(2))
    if any(r not in took for r in range(1, rounds + 1)):
        return None
    return [took[r] for r in range(1, rounds + 1)]


def simulation(
    clients: int, rounds: int, out: Path, home: Path, config: Mapping[str, Any] = TINY
) -> dict[str, object]:
    """``flwr run .`` with ``clients`` SuperNodes; round marks timed as the log streams."""
    from pep_fedpt.local_flwr import flwr_env, stop_superlink, stream_to_end
    from pep_fedpt.preflight import toml_value

    overrides = " ".join(f"{k}={toml_value(v)}" for k, v in config.items())
    overrides += f" num-server-rounds={rounds} output-dir='{out}' cache-dir='{out}/cache'"
    overrides += f" fed.min-train-nodes={clients} fed.min-evaluate-nodes={clients}"
    overrides += f" fed.min-available-nodes={clients}"
    marks: list[float] = []

    def mark(line: str) -> None:
        if ROUND_MARK in line:
            marks.append(time.monotonic())

    start = time.monotonic()
    try:
        run = stream_to_end(
            ROOT, "-c", overrides, "--federation-config", f"num-supernodes={clients}",
            env=flwr_env(home), on_line=mark,
        )  # fmt: skip
        finished = time.monotonic()
    finally:
        stop_superlink(home)
    log = run.lines
    if run.returncode != 0 or len(marks) != rounds:
        sys.exit(f"flwr run failed ({run.returncode}, {len(marks)} rounds):\n{''.join(log)}")
    took = round_times(log, rounds)
    if took is None:
        sys.exit(f"flwr run logged no 'round r took' line for some round:\n{''.join(log)}")
    return {"total": finished - start, "startup": marks[0] - start, "rounds": took}


def plain_loop(
    clients: int, rounds: int, out: Path, config: Mapping[str, Any] = TINY
) -> dict[str, object]:
    """The same ServerApp and ClientApp code in this process (``InProcessGrid``)."""
    from flwr.app import Context, RecordDict
    from flwr.common.logger import FLOWER_LOGGER

    from client_app.app import app as client_app
    from pep_fedpt.config import RunConfig
    from server_app.app import app as server_app
    from server_app.inprocess import InProcessGrid, set_task_identity

    set_task_identity()
    flat = RunConfig().to_flat()
    flat.update(config)
    flat.update(
        {
            "num-server-rounds": rounds,
            "output-dir": str(out),
            "cache-dir": str(out / "cache"),
            "fed.min-train-nodes": clients,
            "fed.min-evaluate-nodes": clients,
            "fed.min-available-nodes": clients,
        }
    )
    marks: list[float] = []
    messages_logged: list[str] = []
    contents: list[object] = []  # every message and reply, encoded after the run

    class RoundMarks(logging.Handler):
        """Keeps every line the loop logs (its rounds' "took" lines) and times each
        "[ROUND r/R]" line (the start-up ends at the first)."""

        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            messages_logged.append(message)
            if ROUND_MARK in message:
                marks.append(time.monotonic())

    class RecordingGrid(InProcessGrid):
        """Keeps what crossed (messages and replies), for the serde figure."""

        def push_messages(self, messages):  # type: ignore[no-untyped-def]  # overrides Grid.push_messages as is; the probe only records
            messages = list(messages)
            contents.extend(m.content for m in messages if m.has_content())
            return super().push_messages(messages)

        def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]  # overrides Grid.pull_messages as is; the probe only records
            replies = list(super().pull_messages(message_ids))
            contents.extend(m.content for m in replies if m.has_content())
            return replies

    round_marks = RoundMarks()
    FLOWER_LOGGER.addHandler(round_marks)
    nodes = {100 + i: {"partition-id": i, "num-partitions": clients} for i in range(clients)}
    grid = RecordingGrid(client_app, nodes, flat)
    start = time.monotonic()
    try:
        server_app(
            grid,
            Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat),
        )
    finally:
        FLOWER_LOGGER.removeHandler(round_marks)
    finished = time.monotonic()
    if len(marks) != rounds:
        sys.exit(f"the plain loop logged {len(marks)} '{ROUND_MARK}' lines, not {rounds}")
    took = round_times(messages_logged, rounds)
    if took is None:
        sys.exit("the plain loop logged no 'round r took' line for some round")
    from flwr.common.serde import recorddict_to_proto

    tick = time.perf_counter()
    for content in contents:  # encoded once each, as on the way through the SuperLink
        recorddict_to_proto(content).SerializeToString()  # type: ignore[arg-type]  # contents is a list[object]; each item is a message's RecordDict
    encode = time.perf_counter() - tick
    # One client built cold, as a fresh actor (or a fresh ClientApp process) builds it:
    # every per-process cache emptied; the node's z(x) disk cache is warm by now.
    from pep_fedpt.data import client_data
    from pep_fedpt.feature_cache import feature_store
    from pep_fedpt.methods import client_for
    from pep_fedpt.models import cached_backbone

    for cache in (client_for, cached_backbone, feature_store, client_data._splits):
        cache.cache_clear()
    client_data._partitions.cache_clear()
    tick = time.perf_counter()
    client_for(RunConfig.from_flat(flat), 0, clients, out / "cache")
    build = time.perf_counter() - tick
    encode_per_round = encode / rounds  # the query, train and evaluate messages, per round
    return {
        "total": finished - start,
        "startup": marks[0] - start,
        "rounds": took,
        "encode_per_round": encode_per_round,
        "client_build": build,
        "method": flat["method"],
        "dataset": flat["data.dataset"],
    }


def run_config(overrides: str) -> dict[str, Any]:
    """The tiny setting with ``-c``'s ``key=value`` pairs on top, checked as the ServerApp
    would check it (an unknown key or a bad value is a ValueError naming it)."""
    from pep_fedpt.config import RunConfig
    from pep_fedpt.preflight import parse_config_args

    config = {**TINY, **(parse_config_args([overrides]) if overrides.strip() else {})}
    RunConfig.from_flat({**RunConfig().to_flat(), **config})
    return config


def plain_loop_in_child(
    clients: int, rounds: int, out: Path, overrides: str = ""
) -> dict[str, Any]:
    """``plain_loop`` in a fresh Python process (this script with ``--loop-child``), so that
    every repeat's loop starts as cold as the first; its figures come back as a file.
    ``out`` holds the run's output folder and caches (``out/out``) and that file."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / "loop.json"
    command = [
        sys.executable, "-m", "bench.probes.sim_overhead", "--loop-child", str(out),
        "--clients", str(clients), "--rounds", str(rounds), "-c", overrides,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result.is_file():
        sys.exit(f"the plain loop failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return dict(json.loads(result.read_text()))


def summary(repeats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each repeat's steady-state rounds (the median of rounds 2..R: round 1 also pays
    each actor's first clients) and ratio simulation / plain loop, and their median."""
    each = []
    for repeat in repeats:
        sim = statistics.median(repeat["simulation"]["rounds"][1:])
        loop = statistics.median(repeat["plain_loop"]["rounds"][1:])
        each.append({"simulation_steady_s": sim, "loop_steady_s": loop, "ratio": sim / loop})
    return {"repeats": each, "ratio_median": statistics.median(e["ratio"] for e in each)}


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of both ways, interleaved (median ratio)"
    )
    parser.add_argument(
        "-c",
        "--config",
        default="",
        help='run-config overrides on top of the tiny setting, e.g. "model.depth=4 '
        'model.img-size=32" (longer rounds)',
    )
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    parser.add_argument("--loop-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients < 1:
        parser.error(f"--clients = {args.clients}: at least 1")
    if args.rounds < 2:
        parser.error(f"--rounds = {args.rounds}: a steady state needs at least 2 rounds")
    if args.repeats < 1:
        parser.error(f"--repeats = {args.repeats}: at least 1")
    try:
        config = run_config(args.config)
    except ValueError as exc:  # ConfigError, PreflightError: said before anything runs
        parser.error(f"-c {args.config!r}: {exc}")
    if args.loop_child is not None:
        result = plain_loop(args.clients, args.rounds, args.loop_child / "out", config)
        (args.loop_child / "loop.json").write_text(json.dumps(result))
        return
    load_start = os.getloadavg()
    repeats = []
    with tempfile.TemporaryDirectory(prefix="pep-fedpt-sim-") as tmp:
        for k in range(args.repeats):
            work = Path(tmp) / f"r{k}"
            print(f"--- run {k + 1}/{args.repeats}: simulation", flush=True)
            sim = simulation(args.clients, args.rounds, work / "sim", work / "home", config)
            print(f"--- run {k + 1}/{args.repeats}: plain loop", flush=True)
            loop = plain_loop_in_child(args.clients, args.rounds, work / "loop", args.config)
            repeats.append({"simulation": sim, "plain_loop": loop})
            print(json.dumps(repeats[-1]), flush=True)
    # What the loop ran (the run config's defaults, as ``flwr run .``'s pyproject ones).
    ran = [(r["plain_loop"].pop("method"), r["plain_loop"].pop("dataset")) for r in repeats]
    setting = {
        "clients": args.clients,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "method": ran[0][0],
        "dataset": ran[0][1],
        "model": config,
        "overrides": args.config,
    }
    argv = sys.argv[1:] if argv is None else list(argv)
    # Per repeat: {"simulation": {"startup", "rounds", "total"}, "plain_loop": {"startup",
    # "rounds", "total", "encode_per_round", "client_build"}}, in seconds.
    document = header("bench/probes/sim_overhead.py", argv, setting, load_start, os.getloadavg())
    document |= {"repeats": repeats, "summary": summary(repeats)}
    if args.out is not None:
        write(args.out, document)
    print(json.dumps(document["summary"], indent=1))


if __name__ == "__main__":
    main()
