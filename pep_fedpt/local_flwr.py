"""A local Flower of one's own: its FLWR_HOME, free ports, and nothing left running after it.

``flwr run`` in the simulation engine starts a ``flower-superlink`` detached in a session
of its own and leaves it running; the simulation and Ray run under it. A program that
starts runs (the benchmark runner, the probes, the tests) gives each ``flwr run`` its own
FLWR_HOME and free ports, so that it never meets another checkout's SuperLink, and at the
end stops the SuperLinks it started with everything under them, SIGTERM then SIGKILL, as
``scripts/local-superlink.sh`` does for ``scripts/run.sh``. A SIGTERM or SIGHUP becomes
the same exception as a Ctrl-C (``stop_on_signals``), so one ``finally`` cleans up after
all three. Only the standard library: no torch, no Flower.
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

BIN = Path(sys.executable).parent  # this environment's flwr and flower-superlink
SUPERLINK = "flower-superlink"
COMPLETED = "finished:completed"  # flwr ls's status of a run that ended well
DEFAULT_PORT = 39091  # flwr's local SuperLink without FLWR_LOCAL_SUPERLINK_HTTP_API_PORT
GRACE_S = 10.0  # from SIGTERM to SIGKILL
LS_TIMEOUT_S = 120.0
RUN_ID = re.compile(r"\brun (\d{6,})")  # as scripts/run.sh finds it


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on now (all bound
    at once, so that the system gives no port twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def flwr_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``flwr run`` whose local SuperLink lives in ``home`` on free
    ports, with this environment's ``flwr`` first on PATH (``base``: ``os.environ``)."""
    env = dict(os.environ if base is None else base)
    http_port, control_port = free_ports(2)
    return {
        **env,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    }


def home_of(env: Mapping[str, str] | None = None) -> Path:
    """The FLWR_HOME that ``flwr`` uses in ``env`` (``os.environ``): ``~/.flwr`` unset."""
    env = os.environ if env is None else env
    return Path(env.get("FLWR_HOME") or Path.home() / ".flwr")


def port_of(env: Mapping[str, str] | None = None) -> int:
    """The port of the local SuperLink that ``flwr run`` starts or uses in ``env``."""
    env = os.environ if env is None else env
    return int(env.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT") or DEFAULT_PORT)


def flwr_bin() -> str:
    """This environment's ``flwr`` (the one next to the interpreter), else PATH's."""
    local = BIN / "flwr"
    return str(local) if local.exists() else "flwr"


def run_id_in(log: str) -> str:
    """The id of the run a ``flwr run`` log names ("Successfully started run 123..."), or
    "" when it names none (the run never started)."""
    found = RUN_ID.search(log)
    return found.group(1) if found else ""


def run_status(run_id: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """How run ``run_id`` ended, as ``flwr ls`` says: ``COMPLETED`` for a run that ended
    well (``flwr run --stream`` exits 0 even when the run failed), else its status,
    or ``failed (flwr ls: ...)`` when ``flwr ls`` does not answer."""
    try:
        listing = subprocess.run(
            [flwr_bin(), "ls", "--run-id", run_id, "--format", "json"],
            cwd=cwd,
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            check=False,
            timeout=LS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return f"failed (flwr ls: no answer in {LS_TIMEOUT_S:.0f} s)"
    try:
        return str(json.loads(listing.stdout)["runs"][0]["status"])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"failed (flwr ls: {listing.stdout.strip() or listing.stderr.strip()})"


@dataclass(frozen=True)
class FlwrRun:
    """How one ``flwr run --stream`` ended."""

    returncode: int
    log: str  # its output, stdout and stderr together
    run_id: str  # "" when the log names none
    status: str  # flwr ls's (finished:completed, ...), or "failed (...)" without a run id

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def run_command(app: Path, *args: str) -> list[str]:
    """``flwr run APP --stream ARGS`` (the run's output streams to the end)."""
    return [flwr_bin(), "run", str(app), "--stream", *args]


def run_to_end(
    app: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
) -> FlwrRun:
    """``run_command(app, *args)`` in ``app`` to its end, and how the run ended by ``flwr
    ls`` (``flwr run --stream`` exits 0 even when the run failed). With ``log_path`` the
    output goes to that file as it comes (a long run's log survives an interruption)."""
    command = run_command(app, *args)
    run_env = None if env is None else dict(env)
    if log_path is None:
        done = subprocess.run(
            command, cwd=app, env=run_env, capture_output=True, text=True, timeout=timeout
        )
        returncode, log = done.returncode, done.stdout + done.stderr
    else:
        with log_path.open("w") as out:
            returncode = subprocess.run(
                command, cwd=app, env=run_env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        log = log_path.read_text(errors="replace")
    run_id = run_id_in(log)
    if not run_id:
        return FlwrRun(returncode, log, "", f"failed (flwr run exited {returncode}, no run id)")
    return FlwrRun(returncode, log, run_id, run_status(run_id, env, cwd=app))


@dataclass(frozen=True)
class Streamed:
    """How one ``stream_to_end`` ended: its output lines as they came, stdout and stderr
    together, and its exit code (a kill's negative signal number after a timeout)."""

    returncode: int
    lines: list[str]
    timed_out: bool


def stream_to_end(
    app: Path,
    *args: str,
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> Streamed:
    """``run_command(app, *args)`` in ``app``, each output line handed to ``on_line`` as it
    arrives (a probe times the round marks so), killed after ``timeout`` seconds. The
    caller stops the run's SuperLink (``stop_superlink``) once done with it: ``flwr ls``
    still needs it."""
    process = subprocess.Popen(
        run_command(app, *args),
        cwd=app,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout or ():
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if process.poll() is None:  # timed out, or this process was interrupted
            process.kill()
            process.wait()
    # After a kill a leftover child may hold the pipe open: the lines so far will do.
    reader.join(timeout=5.0 if timed_out else None)
    return Streamed(process.returncode, list(lines), timed_out)


# ---------------------------------------------------------------------- processes
def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) from /proc, or None once the process is gone."""
    try:
        # The command name, in parentheses, may hold spaces: split after its last ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[3])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def superlinks(home: Path, port: int | None = None) -> set[int]:
    """The running ``flower-superlink`` processes whose files are in ``home`` (flwr's
    local SuperLink keeps its log and database in ``home/local-superlink``), and with
    ``port`` only the one serving that port. ``/tmp/a`` never matches ``/tmp/ab``."""
    homes = {str(home), str(home.resolve())}

    def inside(arg: str) -> bool:
        return any(arg == h or arg.startswith(f"{h}{os.sep}") for h in homes)

    found = set()
    for pid in _pids():
        argv = _cmdline(pid)
        if not any(Path(arg).name == SUPERLINK for arg in argv[:2]):
            continue
        if not any(inside(arg) for arg in argv):
            continue
        if port is not None and not any(
            argv[i] == "--port" and argv[i + 1] == str(port) for i in range(len(argv) - 1)
        ):
            continue
        if alive(pid):
            found.add(pid)
    return found


def process_tree(roots: Iterable[int]) -> set[int]:
    """The running ones of ``roots``, every process in a session that one of them leads or
    led (an orphan keeps its session when its parent, or the leader, dies: Ray's workers
    do) and every descendant of all of these."""
    leaders = set(roots)
    table = {pid: stat for pid in _pids() if (stat := _stat(pid)) is not None}
    tree = {pid for pid, (_, _, sid) in table.items() if pid in leaders or sid in leaders}
    grown = True
    while grown:
        children = {pid for pid, (_, ppid, _) in table.items() if ppid in tree}
        grown = not children <= tree
        tree |= children
    return {pid for pid in tree if table[pid][0] != "Z"}


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if alive(pid)}
    return left


def stop_processes(pids: Iterable[int], grace: float = GRACE_S) -> None:
    """SIGTERM each process, then SIGKILL those still running after ``grace`` seconds."""
    left = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        left = _wait_gone(left, grace if sig == signal.SIGTERM else 5.0)


def stop_superlinks(pids: Iterable[int], grace: float = GRACE_S) -> None:
    """Stop these SuperLinks and everything under them (the SuperExec, the simulation,
    Ray): SIGTERM to all, SIGKILL to what is left after ``grace`` seconds."""
    roots = set(pids)
    tree = process_tree(roots)  # before a stop re-parents any of them
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    left = _wait_gone(tree, grace) | process_tree(roots)
    stop_processes(left, grace=0.0)


def stop_superlink(home: Path, grace: float = GRACE_S) -> None:
    """Stop every local SuperLink of ``home`` and everything under it."""
    stop_superlinks(superlinks(home), grace)


def processes_of_home(home: Path) -> set[int]:
    """Every running process (of this user; others' environments are unreadable) whose
    environment has ``FLWR_HOME=home``: the SuperLink of a ``flwr run`` in that home and
    everything it started, whatever their parents and sessions. Not this process."""
    wanted = {f"FLWR_HOME={home}".encode(), f"FLWR_HOME={home.resolve()}".encode()}
    found = set()
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted.intersection(environ) and alive(pid):
            found.add(pid)
    return found


# ---------------------------------------------------------------------- signals
class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where a Ctrl-C raises KeyboardInterrupt (and caught by
    the same handlers), so that a program stops the same way on all three."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_name(exc: KeyboardInterrupt) -> str:
    """``SIGTERM``/``SIGHUP`` for a ``StopSignal``, ``SIGINT`` for a Ctrl-C."""
    return signal.Signals(exc.signum).name if isinstance(exc, StopSignal) else "SIGINT"


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process a signal ended (130 for
    Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
    return 128 + (exc.signum if isinstance(exc, StopSignal) else signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(*signums: int) -> Iterator[None]:
    """Within the block, the first of ``signums`` (default SIGTERM and SIGHUP) raises
    ``StopSignal`` and a Ctrl-C its KeyboardInterrupt; from then on all of them are
    ignored, so that the clean-up the first one starts runs to its end. The previous
    handlers come back after the block. A Ctrl-C that this process ignores (a background
    job of a script) stays ignored."""
    wanted = signums or (signal.SIGTERM, signal.SIGHUP)
    handled = list(wanted)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        handled.append(signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in handled}

    def handler(signum: int, frame: FrameType | None) -> None:
        for other in handled:
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt if signum == signal.SIGINT else StopSignal(signum)

    for signum in handled:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def main(argv: list[str] | None = None) -> int:
    """For ``scripts/local-superlink.sh``: ``free-ports N`` prints N free ports on one
    line; ``stop-tree PID...`` stops those processes, every process of a session one of
    them leads or led and every descendant (``stop_superlinks``: what a parent-by-parent
    walk misses once a process has been re-parented)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "free-ports" and args[1].isdigit():
        print(" ".join(str(port) for port in free_ports(int(args[1]))))
        return 0
    if len(args) >= 2 and args[0] == "stop-tree" and all(a.isdigit() for a in args[1:]):
        stop_superlinks({int(pid) for pid in args[1:]})
        return 0
    print(
        f"local_flwr: {' '.join(args)!r}: accepted: free-ports N, stop-tree PID...",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
