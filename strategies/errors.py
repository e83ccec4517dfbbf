"""A client's error reply in one line: the exception's class, text and file:line.

This project's ClientApp sends its exception's whole traceback (client_app/errors.py).
Flower wraps an exception that escaped a ClientApp before it reaches the server: the
simulation engine as ``<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'...'>``
around Ray's whole traceback (with terminal colour codes), a SuperNode as ``<class 'X'>:<'text'>``.
``one_line`` finds the client's own exception in either; ``strip_ansi`` removes the colour
codes from the full text, which a run keeps apart (``client-errors.log``).
"""

from __future__ import annotations

import re

# Longest one-line reason kept; the full text is in the run's client-errors.log.
MAX_CHARS = 400

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_FLOWER = re.compile(r"^<class '([^']+)'>:<'(.*)'>$", re.DOTALL)
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+)')
_TRACEBACK = "Traceback (most recent call last):"
# How Python joins a chain's tracebacks (the cause's first).
_CHAINED = ("The above exception", "During handling of")
# Where a path is cut: what follows is the part a person recognises (module path).
_PATH_CUTS = (re.compile(r".*/site-packages/"), re.compile(r".*/apps/[^/]+/"))


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes."""
    return _ANSI.sub("", text)


def one_line(reason: str) -> str:
    """The client's own exception as ``Class: text (file:line)``, on one line, at most
    ``MAX_CHARS`` long; a reason that holds no exception is returned with its whitespace
    collapsed."""
    text = strip_ansi(reason).strip()
    wrapped = _FLOWER.match(text)
    outer = ""
    if wrapped:
        outer, text = wrapped.group(1).rsplit(".", 1)[-1], wrapped.group(2)
    if any(_FRAME.match(part) for part in text.splitlines()):
        # Flower's wrapping comes around Ray's ClientAppException, whose cause (printed
        # first) is what the app raised; a plain traceback (client_app/errors.py) prints
        # the app's own exception last, after the causes it chained.
        line = _innermost(text if wrapped else _last_of_chain(text))
    elif outer:
        line = f"{outer}: {text}" if text else outer
    else:
        line = text
    line = " ".join(line.split())
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 3] + "..."


def _last_of_chain(text: str) -> str:
    """The last traceback of a chain Python printed causes first."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(_CHAINED)]
    return "\n".join(lines[starts[-1] + 1 :]) if starts else text


def _innermost(text: str) -> str:
    """The first traceback's exception and its last frame: Python (and Ray, which heads
    each traceback ``ray::Actor.method() (pid=...)``) prints a chain's cause first, so
    that is the client's own exception, before Flower and Ray wrapped it."""
    lines = text.splitlines()
    where: str = ""
    message: list[str] = []
    for number, line in enumerate(lines):
        if line.startswith((_TRACEBACK, "ray::")):
            continue
        frame = _FRAME.match(line)
        if frame:
            path = frame.group(1)
            for cut in _PATH_CUTS:
                path = cut.sub("", path)
            where, message = f"{path}:{frame.group(2)}", []
            continue
        if line and not line[0].isspace() and where:
            message = [part for part in lines[number:] if part.strip()]
            break
    ending = []
    for part in message:  # up to the blank line or the next chained traceback's preamble
        if part.startswith(_CHAINED):
            break
        ending.append(part.strip())
    said = " ".join(ending) or "an exception"
    return f"{said} ({where})" if where else said
