"""The app outside simulation: real SuperLink and SuperNodes on 127.0.0.1.

Every process comes from ``scripts/deploy/`` and is ended by process group in teardown
(``tests/helpers/deployment.py``). The ``deploy`` tier: ``scripts/test.sh deploy`` (or
``pytest -m deploy``) runs these. Ports 19000-19099.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml
from helpers.deployment import REPO, SCRIPTS, TINY_RUN, MakeDeployment, make_deployment

pytestmark = pytest.mark.deploy
__all__ = ["make_deployment"]  # the fixture, imported for pytest


def _rounds(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.mark.timeout(240)
def test_insecure_superlink_two_supernodes(make_deployment: MakeDeployment, tmp_path: Path):
    d = make_deployment(19000)
    d.start_superlink()
    for k in range(2):
        data_dir = tmp_path / f"host {k} data"  # a space: the node config quotes it
        data_dir.mkdir()
        d.start_supernode(f"supernode-{k}", k, 2, port=19010 + k, data_dir=data_dir)
    node_ids = {d.wait_connected(f"supernode-{k}") for k in range(2)}
    assert len(node_ids) == 2
    d.write_connection("pep-fedpt-test")

    out = tmp_path / "run"
    run_id = d.submit("pep-fedpt-test", {**TINY_RUN, "output-dir": str(out)})
    status = d.wait_finished("pep-fedpt-test", run_id, timeout=200)

    assert status == "finished:completed", d.describe()
    last = _rounds(out)[-1]
    assert last["round"] == 1
    assert last["train/valid-replies"] == 2
    assert last["evaluate/num-clients"] == 2


@pytest.mark.timeout(240)
@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
    reason="needs openssl and ssh-keygen (apt-get install -y openssl openssh-client)",
)
def test_tls_and_supernode_auth(make_deployment: MakeDeployment, tmp_path: Path):
    d = make_deployment(19020)
    certs, keys = tmp_path / "certs", tmp_path / "keys"
    d.check([str(SCRIPTS / "gen-certs.sh"), str(certs), "localhost", "127.0.0.1"])
    d.check([str(SCRIPTS / "gen-supernode-keys.sh"), str(keys), "node-0", "node-1", "intruder"])
    d.start_superlink(certs=certs, auth=True)
    d.write_connection("pep-fedpt-tls", ca=certs / "ca.crt")
    d.check(
        [
            str(SCRIPTS / "register-supernodes.sh"),
            "pep-fedpt-tls",
            str(keys / "node-0.pub"),
            str(keys / "node-1.pub"),
        ]
    )

    # An unregistered key is refused: the SuperNode gives up (no retries) and exits.
    d.start_supernode(
        "intruder",
        1,
        2,
        port=19032,
        ca=certs / "ca.crt",
        key=keys / "intruder",
        extra=["--max-retries", "0"],
    )
    assert d.wait_exit("intruder", timeout=90) != 0
    d.wait_for_log("superlink", r"No SuperNode found with the given public key", timeout=10)

    for k in range(2):
        d.start_supernode(
            f"supernode-{k}", k, 2, port=19030 + k, ca=certs / "ca.crt", key=keys / f"node-{k}"
        )
    for k in range(2):
        d.wait_connected(f"supernode-{k}")

    out = tmp_path / "run"
    run_id = d.submit("pep-fedpt-tls", {**TINY_RUN, "output-dir": str(out)})
    status = d.wait_finished("pep-fedpt-tls", run_id, timeout=200)

    assert status == "finished:completed", d.describe()
    assert _rounds(out)[-1]["train/valid-replies"] == 2
    assert "https://127.0.0.1:19020" in d.log("superlink")


@pytest.mark.timeout(300)
def test_supernode_killed_mid_round(make_deployment: MakeDeployment, tmp_path: Path):
    """kill -9 one of 3 SuperNodes while round 1 of 2 trains: the round completes with
    the other two replies (min-train-nodes = 2) and the run finishes.

    The dead node never replies; the SuperLink answers for it with a "node unavailable"
    error once its heartbeats stop (2 x 30 s), or the round timeout ends the wait.
    """
    d = make_deployment(19040)
    d.start_superlink()
    for k in range(3):
        d.start_supernode(f"supernode-{k}", k, 3, port=19050 + k)
    for k in range(3):
        d.wait_connected(f"supernode-{k}")
    d.write_connection("pep-fedpt-kill")

    out = tmp_path / "run"
    overrides = {
        **TINY_RUN,
        "num-server-rounds": 2,
        "fed.round-timeout": 90.0,
        "output-dir": str(out),
    }
    run_id = d.submit("pep-fedpt-kill", overrides)  # all 3 are connected: all 3 sampled
    d.wait_for_log("flwr-run", r"\[ROUND 1/2\][\s\S]*configure_train: sampled 3 nodes", 150)
    d.kill("supernode-2", signal.SIGKILL)
    status = d.wait_finished("pep-fedpt-kill", run_id, timeout=240)

    assert status == "finished:completed", d.describe()
    rounds = {int(row["round"]): row for row in _rounds(out)}
    assert sorted(rounds) == [0, 1, 2], d.describe()
    assert rounds[1]["train/valid-replies"] == 2, rounds[1]
    assert rounds[2]["train/valid-replies"] == 2, rounds[2]


@pytest.mark.timeout(540)
def test_secure_aggregation_across_three_supernodes(
    make_deployment: MakeDeployment, tmp_path: Path
):
    """fed.secure-aggregation = 'secaggplus' between real processes: the prototype round and
    a training round go through SecAgg+'s stages and every node is counted in the totals;
    with client-side adaptive DP, each node clips before masking, the securely summed count
    of clipped nodes moves the bound, and the round's ε is reported.

    Each stage is a message per node, and a SuperNode starts a ClientApp process for each
    (torch imported every time): the slowest run of this tier."""
    d = make_deployment(19090)
    d.start_superlink()
    for k in range(3):
        d.start_supernode(f"supernode-{k}", k, 3, port=19095 + k)
    for k in range(3):
        d.wait_connected(f"supernode-{k}")
    d.write_connection("pep-fedpt-secagg")

    out = tmp_path / "run"
    overrides = {
        **TINY_RUN,
        "fed.secure-aggregation": "secaggplus",
        "dp.mode": "client-adaptive",
        "dp.noise-multiplier": 0.5,
        "dp.clipped-count-stddev": 1.0,
        "output-dir": str(out),
    }
    run_id = d.submit("pep-fedpt-secagg", overrides)
    status = d.wait_finished("pep-fedpt-secagg", run_id, timeout=480)

    assert status == "finished:completed", d.describe()
    rounds = {int(row["round"]): row for row in _rounds(out)}
    assert rounds[1]["train/valid-replies"] == 3, rounds
    assert rounds[1]["dp/clipping-norm"] == 0.1 and rounds[1]["dp/epsilon"] > 0, rounds
    assert json.loads((out / "dropped.json").read_text()) == []
    config = json.loads((out / "config.json").read_text())
    assert config["fed.secure-aggregation"] == "secaggplus", config


def _compose_commands(files: list[str]) -> dict[str, list[str]]:
    """Each service's command from docker/ compose files (later files replace a service's
    command, as compose merges them), ``${VAR:-default}`` taking its default."""
    commands: dict[str, list[str]] = {}
    for name in files:
        text = (REPO / "docker" / name).read_text()
        text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)
        for service, spec in yaml.safe_load(text)["services"].items():
            if "command" in spec:
                commands[service] = [str(arg) for arg in spec["command"]]
    return commands


@pytest.mark.timeout(240)
@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
    reason="needs openssl and ssh-keygen (apt-get install -y openssl openssh-client)",
)
def test_compose_commands_run(make_deployment: MakeDeployment, tmp_path: Path):
    """The commands of docker/compose.yaml + compose.tls.yaml, run as processes on
    127.0.0.1 (no Docker here): SuperLink with --isolation process, its SuperExec for the
    ServerApp, two SuperNodes and their ClientApp SuperExecs, TLS and node auth. Only
    host names, ports and the data mount are rewritten; relative paths (certs/, keys/,
    state/) resolve as in the containers' /app, here the processes' working directory."""
    d = make_deployment(19080)
    link_port, node_ports = 19080, [19081, 19082]
    d.check([str(SCRIPTS / "gen-certs.sh"), "certs", "superlink", "localhost", "127.0.0.1"])
    d.check([str(SCRIPTS / "gen-supernode-keys.sh"), "keys", "supernode-0", "supernode-1"])
    (d.root / "state").mkdir()

    def local(args: list[str], service: str) -> list[str]:
        out = []
        for arg in args:
            arg = arg.replace("superlink:8000", f"127.0.0.1:{link_port}")
            for k, port in enumerate(node_ports):
                arg = arg.replace(f"supernode-{k}:9094", f"127.0.0.1:{port}")
            arg = arg.replace('data-dir="/app/data"', f'data-dir="{d.root / "data"}"')
            out.append("127.0.0.1" if arg == "0.0.0.0" else arg)
        for i, arg in enumerate(out[:-1]):
            if arg == "--port":
                k = service.rpartition("-")[2]
                out[i + 1] = str(link_port if service == "superlink" else node_ports[int(k)])
        return out

    commands = _compose_commands(["compose.yaml", "compose.tls.yaml"])
    bin_dir = Path(sys.executable).parent
    d.start(
        "superlink", [str(bin_dir / "flower-superlink"), *local(commands["superlink"], "superlink")]
    )
    d.wait_for_log("superlink", r"Uvicorn running on https://127\.0\.0\.1", 60)
    d.start(
        "superexec-serverapp",
        [str(bin_dir / "flower-superexec"), *local(commands["superexec-serverapp"], "x")],
    )
    d.write_connection("compose", ca=d.root / "certs" / "ca.crt")
    d.check(
        [
            str(SCRIPTS / "register-supernodes.sh"),
            "compose",
            *(str(d.root / "keys" / f"supernode-{k}.pub") for k in range(2)),
        ]
    )
    for k in range(2):
        name = f"supernode-{k}"
        d.start(name, [str(bin_dir / "flower-supernode"), *local(commands[name], name)])
        d.wait_connected(name)
        exec_name = f"superexec-clientapp-{k}"
        d.start(exec_name, [str(bin_dir / "flower-superexec"), *local(commands[exec_name], "x")])

    out = tmp_path / "run"
    run_id = d.submit("compose", {**TINY_RUN, "output-dir": str(out)})
    status = d.wait_finished("compose", run_id, timeout=200)

    assert status == "finished:completed", d.describe()
    assert _rounds(out)[-1]["train/valid-replies"] == 2
    assert (d.root / "state" / "state.db").exists()  # --database state/state.db
