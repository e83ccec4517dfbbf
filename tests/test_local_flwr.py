"""pep_fedpt/local_flwr.py with real short-lived processes: a stand-in ``flower-superlink``
(a script of that name that sleeps, as the real one's command line reads
``python .../flower-superlink --port P --log-file HOME/local-superlink/superlink.log``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pep_fedpt import local_flwr
from pep_fedpt.local_flwr import (
    alive,
    free_ports,
    process_tree,
    processes_of_home,
    stop_superlinks,
    superlinks,
)

ROOT = Path(__file__).resolve().parents[1]

# Says "ready" once its SIGTERM handling is set, then sleeps. IGNORE_TERM: it ignores
# SIGTERM (only a SIGKILL ends it). CHILDREN: it starts a child, and an orphan whose
# parent exits at once (re-parented, as Ray's workers are when their raylet dies).
FAKE_SUPERLINK = """\
#!{python}
import os, signal, subprocess, sys, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.environ.get("CHILDREN"):
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    subprocess.Popen(sleeper)
    subprocess.run([sys.executable, "-c",
                    "import subprocess, sys; subprocess.Popen(sys.argv[1:])", *sleeper])
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """The processes a test starts, killed (with their sessions) if the test did not."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        for pid in process_tree({proc.pid}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "flower-superlink"
    script.parent.mkdir()
    script.write_text(FAKE_SUPERLINK.format(python=sys.executable))
    script.chmod(0o755)
    return script


def start_superlink(
    procs: list[subprocess.Popen[str]], script: Path, home: Path, port: int, **env: str
) -> int:
    """A stand-in SuperLink of ``home`` on ``port``, in a session of its own as ``flwr run``
    starts the real one; its pid once it is ready."""
    proc = subprocess.Popen(
        [str(script), "--port", str(port), "--log-file", f"{home}/local-superlink/superlink.log"],
        env={**os.environ, "FLWR_HOME": str(home), **env},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc.pid


def test_it_finds_only_the_superlinks_of_its_own_home_and_port(
    tmp_path: Path, fake_bin: Path, started: list[subprocess.Popen[str]]
) -> None:
    home, longer, other = tmp_path / "home", tmp_path / "home2", tmp_path / "other"
    mine = start_superlink(started, fake_bin, home, 1111)
    second = start_superlink(started, fake_bin, home, 2222)
    start_superlink(started, fake_bin, longer, 1111)  # "home2" is not inside "home"
    start_superlink(started, fake_bin, other, 1111)
    # a process that names the home but is no SuperLink
    not_one = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"{home}/local-superlink/x"],
        start_new_session=True,
        text=True,
    )
    started.append(not_one)

    assert superlinks(home) == {mine, second}
    assert superlinks(home, port=1111) == {mine}
    assert superlinks(home, port=3333) == set()
    assert superlinks(tmp_path / "nowhere") == set()


def test_stopping_escalates_from_sigterm_to_sigkill(
    tmp_path: Path, fake_bin: Path, started: list[subprocess.Popen[str]]
) -> None:
    polite = start_superlink(started, fake_bin, tmp_path / "a", 1111)
    stubborn = start_superlink(started, fake_bin, tmp_path / "b", 2222, IGNORE_TERM="1")
    began = time.monotonic()
    stop_superlinks({polite, stubborn}, grace=1.0)
    took = time.monotonic() - began
    assert not alive(polite) and not alive(stubborn)
    codes = {proc.pid: proc.wait(timeout=5) for proc in started}
    assert codes == {polite: -signal.SIGTERM, stubborn: -signal.SIGKILL}
    assert 1.0 <= took < 10.0  # the grace was waited for the stubborn one, then SIGKILL


def test_stopping_a_superlink_stops_its_children_and_the_orphans_of_its_session(
    tmp_path: Path, fake_bin: Path, started: list[subprocess.Popen[str]]
) -> None:
    home = tmp_path / "home"
    pid = start_superlink(started, fake_bin, home, 1111, CHILDREN="1")
    tree = process_tree({pid})
    # the SuperLink, its child, and the orphan (its short-lived parent has exited)
    assert len(tree) == 3, tree
    assert processes_of_home(home) == tree  # each one inherited FLWR_HOME
    local_flwr.stop_superlink(home, grace=5.0)
    assert processes_of_home(home) == set()
    assert [p for p in tree if alive(p)] == []


def test_what_a_dead_superlink_left_is_found_by_its_session_and_stopped(
    tmp_path: Path, fake_bin: Path, started: list[subprocess.Popen[str]]
) -> None:
    home = tmp_path / "home"
    pid = start_superlink(started, fake_bin, home, 1111, CHILDREN="1")
    left = process_tree({pid}) - {pid}
    os.kill(pid, signal.SIGKILL)  # as if it died first: its child is re-parented
    started[0].wait(timeout=5)
    assert len(left) == 2 and process_tree({pid}) == left
    stop_superlinks({pid}, grace=5.0)
    assert processes_of_home(home) == set()


def test_the_stop_tree_command_stops_what_a_dead_superlink_left_in_its_session(
    tmp_path: Path, fake_bin: Path, started: list[subprocess.Popen[str]]
) -> None:
    """What scripts/local-superlink.sh calls: given the pids it remembered, the orphans of
    their sessions go too, though their parent died and no parent chain reaches them."""
    home = tmp_path / "home"
    pid = start_superlink(started, fake_bin, home, 1111, CHILDREN="1")
    os.kill(pid, signal.SIGKILL)
    started[0].wait(timeout=5)
    assert len(processes_of_home(home)) == 2
    subprocess.run(
        [sys.executable, "-m", "pep_fedpt.local_flwr", "stop-tree", str(pid)],
        cwd=ROOT,
        check=True,
        timeout=30,
    )
    assert processes_of_home(home) == set()
    refused = subprocess.run(
        [sys.executable, "-m", "pep_fedpt.local_flwr", "stop-tree", "x1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "stop-tree PID..." in refused.stderr


def test_processes_of_a_home_are_those_with_its_flwr_home(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    def sleeper(home: Path) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(60)"],
            env={**os.environ, "FLWR_HOME": str(home)},
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc.pid

    mine = sleeper(tmp_path / "home")
    sleeper(tmp_path / "home2")
    assert processes_of_home(tmp_path / "home") == {mine}


def test_free_ports_are_distinct_and_the_command_line_prints_them() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(1024 <= p < 65536 for p in ports)
    env = local_flwr.flwr_env(Path("/h"), {"PATH": "/usr/bin"})
    assert env["FLWR_HOME"] == "/h" and env["PATH"] == f"{local_flwr.BIN}{os.pathsep}/usr/bin"
    assert env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] != env["FLWR_LOCAL_CONTROL_API_PORT"]
    assert local_flwr.port_of({}) == 39091 and local_flwr.port_of(env) > 0
    printed = subprocess.run(
        [sys.executable, "-m", "pep_fedpt.local_flwr", "free-ports", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(set(map(int, printed.stdout.split()))) == 2
    refused = subprocess.run(
        [sys.executable, "-m", "pep_fedpt.local_flwr", "ports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "local_flwr: 'ports': accepted: free-ports N, stop-tree PID..."
    )


def test_the_run_id_is_the_one_flwr_run_says_it_started() -> None:
    log = (
        "Loading project configuration...\n"
        "\U0001f38a Successfully started run 9164513093411426771\n"
        "INFO :      [ROUND 1/2]\nINFO :      configure_train: 2 of 2 nodes (round 1)\n"
    )
    assert local_flwr.run_id_in(log) == "9164513093411426771"
    assert local_flwr.run_id_in("Failed to start local SuperLink within 15s.") == ""


@pytest.mark.integration  # the flwr command line takes seconds to start
def test_a_run_that_never_started_is_failed_with_flwr_run_s_exit_code(tmp_path: Path) -> None:
    app, log = tmp_path / "not-an-app", tmp_path / "run.log"
    app.mkdir()
    home = tmp_path / "flwr-home"
    run = local_flwr.run_to_end(app, "-c", "x=1", env=local_flwr.flwr_env(home), log_path=log)
    assert (run.returncode, run.run_id, run.completed) == (1, "", False)
    assert run.status == "failed (flwr run exited 1, no run id)"
    assert log.read_text() == run.log  # the output went to the file as it came
    assert "Failed to load Flower App configuration" in run.log
    assert processes_of_home(home) == set()  # no SuperLink was started for it


# Cleans up in its finally (a second signal then is ignored) and exits as the shell would.
# Ctrl-C raises KeyboardInterrupt as in a terminal, even where pytest runs in the background.
STOPPABLE = textwrap.dedent(
    """\
    import signal, sys, time
    from pep_fedpt import local_flwr
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with local_flwr.stop_on_signals():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                print("cleaning", flush=True)
                time.sleep(1)
                print("cleaned", flush=True)
    except KeyboardInterrupt as stop:
        print(local_flwr.signal_name(stop), flush=True)
        sys.exit(local_flwr.exit_code(stop))
    """
)


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)],
)
def test_sigterm_and_sighup_stop_a_program_as_ctrl_c_does(signum: int, code: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signum)
        assert proc.stdout.readline() == "cleaning\n"
        proc.send_signal(signum)  # during the clean-up: ignored
        rest = proc.stdout.read()
        assert proc.wait(timeout=10) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rest == f"cleaned\n{signal.Signals(signum).name}\n"


@pytest.mark.integration  # the flwr command line takes seconds to start
def test_a_streamed_run_hands_each_line_over_as_it_comes(tmp_path: Path) -> None:
    app = tmp_path / "not-an-app"
    app.mkdir()
    home = tmp_path / "flwr-home"
    seen: list[str] = []
    run = local_flwr.stream_to_end(
        app, "-c", "x=1", env=local_flwr.flwr_env(home), on_line=seen.append
    )
    assert (run.returncode, run.timed_out) == (1, False)
    assert seen == run.lines
    assert "Failed to load Flower App configuration" in "".join(run.lines)
    assert processes_of_home(home) == set()


def test_a_streamed_run_past_its_timeout_is_killed_keeping_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in ``flwr`` that prints two lines and sleeps: the lines come back and the
    process is killed at the timeout."""
    fake = tmp_path / "flwr"
    fake.write_text(
        f"#!{sys.executable}\nimport time\nprint('one', flush=True)\nprint('two', flush=True)\n"
        "time.sleep(60)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(local_flwr, "flwr_bin", lambda: str(fake))
    run = local_flwr.stream_to_end(tmp_path, env=dict(os.environ), timeout=3.0)
    assert run.timed_out
    assert run.returncode == -signal.SIGKILL
    assert run.lines == ["one\n", "two\n"]
