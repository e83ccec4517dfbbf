"""The memory and CPU of running processes, read from ``/proc``, and a thread that reads
them every few tenths of a second while a run lives.

The kernel keeps each process's peak resident memory (``VmHWM`` in
``/proc/<pid>/status``), so polling misses only growth within the last interval before
a process exits; ``VmRSS`` is the memory now. A process that is gone, or not ours to
read, reads as "" (its figures as None): a run's processes come and go while it is
polled.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

TICKS = float(os.sysconf("SC_CLK_TCK"))


def proc_text(pid: int, name: str) -> str:
    """``/proc/<pid>/<name>``, or "" when the process is gone (or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_text(errors="replace")
    except OSError:
        return ""


def command_line(pid: int) -> str:
    """The process's command line, its arguments joined by spaces ("" once it is gone)."""
    return proc_text(pid, "cmdline").replace("\0", " ").strip()


def status_bytes(pid: int, field_name: str) -> int | None:
    """A ``/proc/<pid>/status`` field in bytes (``VmHWM``, ``VmRSS``), None if absent."""
    found = re.search(rf"^{field_name}:\s+(\d+) kB$", proc_text(pid, "status"), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds (``/proc/<pid>/stat`` fields 14 and 15, after the name)."""
    fields = proc_text(pid, "stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS if len(fields) > 12 else None


class Sampler(threading.Thread):
    """Calls ``sample`` every ``poll`` seconds from ``start`` until ``stop``; a subclass
    says what one sample reads and keeps. ``sample`` may also be called from another
    thread (a probe samples at a mark in the log), so it only ever raises a peak."""

    def __init__(self, poll: float) -> None:
        super().__init__(daemon=True)
        self.poll = poll
        self._halt = threading.Event()

    def sample(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.poll)

    def stop(self) -> None:
        """Stop polling (after the sample under way)."""
        self._halt.set()
        if self.is_alive():
            self.join()
