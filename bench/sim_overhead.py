"""The same rounds two ways: a real ``flwr run .`` in Flower's simulation engine, and a
plain loop that calls the same ServerApp and ClientApp code in one process.

Run from the repository root (the venv's ``flwr`` on PATH or next to ``sys.executable``)::

    python bench/sim_overhead.py                       # tiny ViT, 4 clients, 3 rounds
    python bench/sim_overhead.py --clients 4 --rounds 4

The plain loop is ``tests/inprocess.py``'s ``InProcessGrid``: the real ServerApp (strategy,
aggregation, central evaluation) and the real ClientApp handler per node, with no
SuperLink, no SuperNode, no Ray actor and no serialisation. A round is timed from one
"[ROUND r/R]" to the next in both (the simulation's from its streamed log, read line by
line as it arrives, so within the log's streaming delay); "steady state" is the median of
the rounds after the first. The rest of the simulation's time is split into: start-up
(``flwr run`` to the first round: SuperLink, the run's processes, Ray, actors), the
message encoding (a round's messages through Flower's own protobuf serde, measured here)
and the per-message data and model set-up (a client built cold in this process: what an
actor pays once per partition it serves, cached after that by ``client_for``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: this checkout's packages
    sys.path.insert(0, str(ROOT))

from bench.local_flwr import BIN, flwr_env, stop_superlink  # noqa: E402

ROUND_MARK = "[ROUND "

TINY = {
    "model.pretrained": "random",
    "model.depth": 2,
    "model.embed-dim": 64,
    "model.num-heads": 2,
    "model.img-size": 16,
}


def _round_gaps(marks: list[float], end: float) -> list[float]:
    """Seconds of each round: from its mark to the next (the last to ``end``)."""
    bounds = [*marks, end]
    return [b - a for a, b in itertools.pairwise(bounds)]


def simulation(clients: int, rounds: int, out: Path, home: Path) -> dict[str, object]:
    """``flwr run .`` with ``clients`` SuperNodes; round marks timed as the log streams."""
    overrides = " ".join(
        f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in TINY.items()
    )
    overrides += f" num-server-rounds={rounds} output-dir='{out}' cache-dir='{out}/cache'"
    overrides += f" fed.min-train-nodes={clients} fed.min-evaluate-nodes={clients}"
    overrides += f" fed.min-available-nodes={clients}"
    env = flwr_env(home)
    command = [
        str(BIN / "flwr"), "run", ".", "--stream", "-c", overrides,
        "--federation-config", f"num-supernodes={clients}",
    ]  # fmt: skip
    start = time.monotonic()
    marks: list[float] = []
    log: list[str] = []
    end: float | None = None  # the summary line: the last round's end
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        log.append(line)
        if ROUND_MARK in line:
            marks.append(time.monotonic())
        if "summary" in line and len(marks) == rounds and end is None:
            end = time.monotonic()
    process.wait()
    finished = time.monotonic()
    stop_superlink(home)
    if process.returncode != 0 or len(marks) != rounds:
        sys.exit(f"flwr run failed ({process.returncode}, {len(marks)} rounds):\n{''.join(log)}")
    return {
        "total": finished - start,
        "startup": marks[0] - start,
        "rounds": _round_gaps(marks, end if end is not None else finished),
    }


def plain_loop(clients: int, rounds: int, out: Path) -> dict[str, object]:
    """The same ServerApp and ClientApp code in this process (``InProcessGrid``)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from flwr.app import Context, RecordDict
    from inprocess import InProcessGrid, set_task_identity

    from client_app.app import app as client_app
    from pep_fedpt.config import RunConfig
    from server_app.app import app as server_app

    set_task_identity()
    flat = RunConfig().to_flat()
    flat.update(TINY)
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
    contents: list[object] = []  # every message and reply, encoded after the run

    class TimedGrid(InProcessGrid):
        """Marks each round's first train message; keeps what crossed, for the serde."""

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                marks.append(time.monotonic())
            replies = list(super().send_and_receive(messages, timeout=timeout))
            contents.extend(m.content for m in [*messages, *replies])
            return replies

    nodes = {100 + i: {"partition-id": i, "num-partitions": clients} for i in range(clients)}
    grid = TimedGrid(client_app, nodes, flat)
    start = time.monotonic()
    server_app(
        grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=flat)
    )
    end = time.monotonic()
    from flwr.common.serde import recorddict_to_proto

    tick = time.perf_counter()
    for content in contents:  # encoded once each, as on the way through the SuperLink
        recorddict_to_proto(content).SerializeToString()  # type: ignore[arg-type]
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
        "total": end - start,
        "startup": marks[0] - start,
        "rounds": _round_gaps(marks, end),
        "encode_per_round": encode_per_round,
        "client_build": build,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error(f"--rounds = {args.rounds}: a steady state needs at least 2 rounds")
    with tempfile.TemporaryDirectory(prefix="pep-fedpt-sim-") as tmp:
        sim = simulation(args.clients, args.rounds, Path(tmp) / "sim", Path(tmp) / "home")
        loop = plain_loop(args.clients, args.rounds, Path(tmp) / "loop")
    sim_steady = statistics.median(sim["rounds"][1:])  # type: ignore[index]
    loop_steady = statistics.median(loop["rounds"][1:])  # type: ignore[index]
    print(json.dumps({"simulation": sim, "plain_loop": loop}, indent=1))
    print(
        f"\n{args.clients} clients, {args.rounds} rounds, tiny ViT (depth 2, width 64, 16 px), "
        "pep-fedpt, digits\n"
    )
    print("| | simulation (flwr run) | plain loop |\n|---|---|---|")
    print(f"| start-up to round 1 (s) | {sim['startup']:.2f} | {loop['startup']:.2f} |")
    for r, (a, b) in enumerate(zip(sim["rounds"], loop["rounds"], strict=True), start=1):  # type: ignore[call-overload]
        print(f"| round {r} (s) | {a:.2f} | {b:.2f} |")
    print(f"| whole run (s) | {sim['total']:.2f} | {loop['total']:.2f} |")
    print(f"\nsteady-state round ratio simulation / plain loop: {sim_steady / loop_steady:.2f}")
    print(f"of which message encoding (Flower serde, per round): {loop['encode_per_round']:.3f} s")
    print(
        "a client built in a fresh process (data, backbone, z(x) from disk): "
        f"{loop['client_build']:.3f} s"
    )


if __name__ == "__main__":
    main()
