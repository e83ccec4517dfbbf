"""Real Flower deployments on 127.0.0.1 for tests: SuperLink, SuperNodes, `flwr` CLI.

``Deployment`` starts every process through ``scripts/deploy/`` (so the scripts users run
are the ones tested), each in its own session (process group) with its output in a log
file under the test's tmp dir; ``close()`` ends every group by id (TERM, then KILL), also
when the test failed. ``FLWR_HOME`` is a temp dir, runtime dependency installation is off,
and every ``flwr`` call and wait is bounded in time.

Ports: tests use 19000-19099 only; each test picks its own ``port_base``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "deploy"
VENV_BIN = Path(sys.executable).parent

# A 1-round run of a tiny ViT on digits: seconds of compute per node on 2 CPU cores.
TINY_RUN = {
    "num-server-rounds": 1,
    "model.pretrained": "random",
    "model.depth": 2,
    "model.embed-dim": 64,
    "model.num-heads": 2,
    "model.img-size": 16,
    "fed.min-train-nodes": 2,
    "fed.min-evaluate-nodes": 2,
    "fed.min-available-nodes": 2,
}


def run_config_arg(overrides: Mapping[str, bool | int | float | str]) -> str:
    """``flwr run -c`` text: TOML values (strings quoted)."""

    def toml(value: bool | int | float | str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return json.dumps(value)
        return repr(value)

    return " ".join(f"{key}={toml(value)}" for key, value in overrides.items())


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class DeploymentError(AssertionError):
    """A process did not come up, or a command failed; the message carries its log."""


class Deployment:
    """SuperLink + SuperNodes on loopback, owned by one test."""

    def __init__(self, root: Path, port_base: int) -> None:
        if not 19000 <= port_base <= 19099:
            raise ValueError(f"port_base {port_base}: tests use ports 19000-19099")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = root / "flwr-home"
        self.home.mkdir(exist_ok=True)
        self.superlink_port = port_base
        self.port_base = port_base
        self.env = dict(os.environ)
        self.env.update(
            {
                "FLWR_HOME": str(self.home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "NO_COLOR": "1",
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ processes
    @property
    def superlink_address(self) -> str:
        return f"127.0.0.1:{self.superlink_port}"

    def log_path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, output to ``<root>/<name>.log``."""
        if name in self.procs:
            raise ValueError(f"a process named {name!r} was started already")
        with self.log_path(name).open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def wait_for_log(self, name: str, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until ``pattern`` (regex) shows in the process's log; fail if it exits."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.log(name))
            if match:
                return match
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise DeploymentError(
                    f"{name} exited with {proc.returncode} before /{pattern}/:\n{self.tail(name)}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{name}: no /{pattern}/ within {timeout:.0f}s:\n{self.tail(name)}"
                )
            time.sleep(0.3)

    def wait_exit(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"{name} still runs after {timeout:.0f}s:\n{self.describe()}"
            ) from None

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole process group of ``name`` (it and what it spawned)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    def close(self) -> None:
        """End every process group this deployment started: TERM, then KILL after 10 s."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # The group may outlive its leader (SuperExec, ServerApp/ClientApp children).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    # ------------------------------------------------------------------ Flower
    def start_superlink(
        self, *, certs: Path | None = None, auth: bool = False, timeout: float = 60
    ) -> None:
        if not port_is_free(self.superlink_port):
            raise DeploymentError(f"port {self.superlink_port} is taken (a leaked SuperLink?)")
        argv = [
            str(SCRIPTS / "start-superlink.sh"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.superlink_port),
            "--database",
            str(self.root / "superlink-state.db"),
        ]
        argv += ["--certs", str(certs)] if certs else ["--insecure"]
        if auth:
            argv.append("--auth")
        self.start("superlink", argv)
        self.wait_for_log("superlink", r"Uvicorn running on", timeout)

    def start_supernode(
        self,
        name: str,
        partition_id: int,
        num_partitions: int,
        *,
        port: int,
        ca: Path | None = None,
        key: Path | None = None,
        data_dir: Path | None = None,
        extra: Iterable[str] = (),
    ) -> None:
        """Start a SuperNode (does not wait: see ``wait_connected``)."""
        if not port_is_free(port):
            raise DeploymentError(f"port {port} is taken (a leaked SuperNode?)")
        argv = [
            str(SCRIPTS / "start-supernode.sh"),
            "--superlink",
            self.superlink_address,
            "--partition-id",
            str(partition_id),
            "--num-partitions",
            str(num_partitions),
            "--port",
            str(port),
        ]
        argv += ["--ca", str(ca)] if ca else ["--insecure"]
        if key:
            argv += ["--key", str(key)]
        if data_dir:
            argv += ["--data-dir", str(data_dir)]
        extra = list(extra)
        if extra:
            argv += ["--", *extra]
        self.start(name, argv)

    def wait_connected(self, name: str, timeout: float = 90) -> int:
        """Wait until the SuperNode ``name`` is activated; returns its node id."""
        return int(self.wait_for_log(name, r"SuperNode ID: (\d+)", timeout).group(1))

    def write_connection(self, name: str, *, ca: Path | None = None) -> None:
        argv = [str(SCRIPTS / "write-connection.sh"), name, self.superlink_address]
        argv += ["--ca", str(ca)] if ca else ["--insecure"]
        self.check(argv, timeout=30)

    def check(self, argv: list[str], timeout: float = 60) -> str:
        """Run a short command to completion; its output, or a DeploymentError."""
        try:
            done = subprocess.run(
                argv,
                env=self.env,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"{argv} ran past {timeout}s: {exc.output!r}") from None
        if done.returncode != 0:
            raise DeploymentError(f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def submit(
        self,
        connection: str,
        overrides: Mapping[str, bool | int | float | str],
        *,
        app: Path = REPO,
        name: str = "flwr-run",
    ) -> int:
        """Start ``flwr run APP CONNECTION --stream -c ...`` in the background; its run id."""
        argv = [
            str(VENV_BIN / "flwr"),
            "run",
            str(app),
            connection,
            "--stream",
            "--run-config",
            run_config_arg(overrides),
        ]
        self.start(name, argv)
        return int(self.wait_for_log(name, r"Successfully started run (\d+)", 120).group(1))

    def run_info(self, connection: str, run_id: int) -> dict:
        out = self.check(
            [
                str(VENV_BIN / "flwr"),
                "ls",
                connection,
                "--run-id",
                str(run_id),
                "--format",
                "json",
            ],
            timeout=60,
        )
        return json.loads(out[out.index("{") :])["runs"][0]

    def wait_finished(
        self, connection: str, run_id: int, timeout: float, *, name: str = "flwr-run"
    ) -> str:
        """Wait for ``flwr run --stream`` to end, then ask ``flwr ls`` for the status.

        ``--stream`` exits 0 whatever the outcome, so the status is what tells; polling
        ``flwr ls`` is avoided because each call costs a Python start-up on a busy CPU.
        """
        self.wait_exit(name, timeout)
        for _ in range(10):
            status = str(self.run_info(connection, run_id)["status"])
            if status.startswith("finished"):
                return status
            time.sleep(2)
        raise DeploymentError(f"run {run_id} is {status} after its stream ended\n{self.describe()}")

    def describe(self) -> str:
        """Every process's log tail, for assertion messages."""
        return "\n".join(f"--- {name}\n{self.tail(name, 30)}" for name in self.procs)


MakeDeployment = Callable[[int], Deployment]


@pytest.fixture
def make_deployment(tmp_path: Path) -> Iterator[MakeDeployment]:
    """``make_deployment(port_base)``: a Deployment under tmp_path, closed in teardown."""
    made: list[Deployment] = []

    def make(port_base: int) -> Deployment:
        deployment = Deployment(tmp_path / f"deploy-{port_base}", port_base)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()
