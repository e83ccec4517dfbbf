"""scripts/run.sh as a person runs it: errors in a second, a SuperLink of its own, Ctrl-C.

The fast tests start no simulation; the one real run (Ctrl-C in the middle of it) is
marked slow.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pep_fedpt.local_flwr import alive, process_tree, processes_of_home, stop_superlink

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = (
    "model.pretrained='random' model.depth=2 model.embed-dim=64 model.num-heads=2 model.img-size=16"
)


def script_env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "SKIP_SETUP": "1",  # the test's venv is set up; never pip-install from a test
        "PEP_FEDPT_PYTHON": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        **extra,
    }


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["-c", "num-server-rounds='five'"], {}, "num-server-rounds = 'five' has type str"),
        (["-c", "data.alpah=0.1"], {}, "unknown run-config key 'data.alpah' (= 0.1)"),
        ([], {"NUM_SUPERNODES": "1"}, "fed.min-available-nodes = 2 but the simulation has only 1"),
        ([], {"NUM_SUPERNODES": "abc"}, "NUM_SUPERNODES = 'abc' is not accepted; give the"),
        ([], {"NUM_SUPERNODES": "0"}, "NUM_SUPERNODES = '0' is not accepted"),
        (
            ["-c", "data.dataset='imagefolder' data.data-dir='/nonexistent/images'"],
            {},
            "data.data-dir = '/nonexistent/images': no such folder",
        ),
    ],
)
def test_a_bad_command_line_is_refused_in_seconds_with_one_line_and_nothing_started(
    args: list[str], env: dict[str, str], line: str, tmp_path: Path
) -> None:
    home = tmp_path / "flwr-home"
    began = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "scripts" / "run.sh"), *args],
        env=script_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - began < 20  # seconds, not the minute a SuperLink and Ray take
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("run.sh: ")
    assert line in done.stderr
    assert not (home / "local-superlink").exists()  # no SuperLink was started


class Checkout:
    """``scripts/local-superlink.sh`` of one checkout (its own FLWR_HOME), in a bash that
    starts the SuperLink, then stops it when told."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.shell = subprocess.Popen(
            [
                "bash",
                "-c",
                "set -euo pipefail; source scripts/flwr-env.sh; export PATH=$EXTRA_PATH:$PATH; "
                "source scripts/local-superlink.sh; "
                'if superlink_start >/dev/null; then echo "up $superlink_pid $superlink_port"; '
                "else echo refused; exit 1; fi; read -r _; superlink_stop; echo stopped",
            ],
            cwd=ROOT,
            env={**script_env(home), "EXTRA_PATH": str(BIN)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.shell.stdout is not None
        first = self.shell.stdout.readline().split()
        self.refused = first == ["refused"]
        self.pid, self.port = (int(first[1]), int(first[2])) if not self.refused else (0, 0)

    def stop(self) -> str:
        out, err = self.shell.communicate("\n", timeout=60)
        return out + err


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture
def checkouts(tmp_path: Path) -> Iterator[list[Checkout]]:
    started: list[Checkout] = []
    yield started
    for checkout in started:
        if checkout.shell.poll() is None:
            with contextlib.suppress(Exception):
                checkout.stop()
        if checkout.pid and alive(checkout.pid):
            os.kill(checkout.pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_checkouts_get_their_own_superlinks_and_each_stops_only_its_own(
    tmp_path: Path, checkouts: list[Checkout]
) -> None:
    first = Checkout(tmp_path / "a" / ".flwr")
    checkouts.append(first)
    second = Checkout(tmp_path / "b" / ".flwr")
    checkouts.append(second)
    assert not first.refused and not second.refused
    assert first.port != second.port and 39091 not in (first.port, second.port)
    assert healthy(first.port) and healthy(second.port)

    again = Checkout(first.home)  # a second run of the first checkout, while it runs
    checkouts.append(again)
    assert again.refused
    _, err = again.shell.communicate(timeout=30)
    assert f"SuperLink is still running (pid {first.pid}, 127.0.0.1:{first.port}" in err
    assert f"kill {first.pid}" in err

    assert first.stop().strip() == "stopped"
    assert not alive(first.pid) and not healthy(first.port)
    assert not (first.home / "local-superlink" / "run.sh.pid").exists()
    assert alive(second.pid) and healthy(second.port)  # the other checkout's is untouched
    assert second.stop().strip() == "stopped"
    assert not alive(second.pid)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_run_and_every_process_and_says_how_to_resume(tmp_path: Path) -> None:
    home, out = tmp_path / "flwr-home", tmp_path / "run"
    args = ["-c", f"num-server-rounds=50 output-dir='{out}' {TINY}"]
    script = subprocess.Popen(
        [str(ROOT / "scripts" / "run.sh"), *args],
        env=script_env(home, NUM_SUPERNODES="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # A terminal's job gets Ctrl-C. A test tier started in the background by a
        # non-interactive shell (`cmd &`) inherits SIGINT ignored, and bash cannot trap
        # a signal ignored on entry: run.sh would never see this test's Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    assert script.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(script.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
            assert script.poll() is None, "".join(lines)
            time.sleep(1)
        assert (out / "checkpoint.npz").exists(), "".join(lines)
        superlink = int(re.search(r"SuperLink pid (\d+)", "".join(lines)).group(1))
        tree = process_tree({superlink})
        assert len(tree) > 3  # the SuperLink, its SuperExec, the simulation, Ray...

        os.killpg(script.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:  # a hang guard, not a speed check: the stop takes seconds
            code = script.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("run.sh did not end within 300 s of SIGINT:\n" + "".join(lines))
    finally:
        if script.poll() is None:  # the test failed: leave nothing of this run behind
            os.killpg(script.pid, signal.SIGKILL)
            stop_superlink(home)
            for pid in processes_of_home(home):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    reader.join(timeout=10)
    text = "".join(lines)
    assert code == 130, text
    assert "run.sh: SIGINT: stopping the run" in text
    assert "flwr stop" not in text  # it said nothing: the stop went through
    assert re.search(r"run \d+ stopped", text)
    assert f"the checkpoint of the last finished round: {out}" in text
    assert f"-c \"resume-from='{out}'\"" in text
    assert "NUM_SUPERNODES=2 scripts/run.sh -c " in text
    # Start-up warnings a user cannot act on are not shown (scripts/run.sh, flwr-env.sh).
    assert "default simulated SuperNodes changed" not in text
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO" not in text
    time.sleep(2)  # Ray's workers exit on their own within a second of their raylet
    assert [pid for pid in tree if alive(pid)] == []
    assert processes_of_home(home) == set()  # nothing else that the run started either
    assert not (home / "local-superlink" / "run.sh.pid").exists()
