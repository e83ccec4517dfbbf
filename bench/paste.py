"""Paste each doc block from the command it names: the pages' generated text, one paster.

    .venv/bin/python -m bench.paste [--check] [PAGE ...]

A block in README.md or docs/*.md (default: all of them) is the output of the command on
its opening line, run from the repository root:

    <!-- paste: python -m bench.tables main --page README.md -->
    (the command's stdout; whatever is here is replaced)
    <!-- /paste -->

Only ``python -m bench.<module> ...`` commands run (this interpreter), so a page cannot
run anything else. ``--check`` writes nothing and exits 1 naming each block whose text
differs from what its command prints (CI: the pages match the committed results). A
marker without its pair, a nested one or a command that fails is an error naming the file
and line.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pep_fedpt.atomic import atomic_write

OPEN = re.compile(r"^<!-- paste: (.+) -->$")
CLOSE = "<!-- /paste -->"
LOOSE = re.compile(r"^\s*<!--\s*/?\s*(paste|bench)\b")  # looks like a marker: must be one
COMMAND = re.compile(r"python -m bench\.[a-z_.]+(\s.*)?")


class PasteError(Exception):
    """A page's markers or a block's command are wrong: said with file and line."""


def blocks(path: Path, lines: Sequence[str]) -> list[tuple[int, int, str]]:
    """(opening line, closing line, command) of each block, 0-based, checked."""
    found, open_at, command = [], -1, ""
    for index, line in enumerate(lines):
        text, where = line.rstrip("\n"), f"{path}:{index + 1}"
        opened = OPEN.match(text)
        if opened:
            if open_at >= 0:
                raise PasteError(f"{where}: a block opens inside the one of line {open_at + 1}")
            open_at, command = index, opened.group(1).strip()
            if not COMMAND.fullmatch(command):
                raise PasteError(
                    f"{where}: {command!r} is not accepted; a block's command is "
                    "'python -m bench.<module> [ARGS]'"
                )
        elif text == CLOSE:
            if open_at < 0:
                raise PasteError(f"{where}: {CLOSE!r} closes no block")
            found.append((open_at, index, command))
            open_at = -1
        elif LOOSE.match(text):
            raise PasteError(
                f"{where}: {text.strip()!r} is not a marker; write '<!-- paste: COMMAND -->' "
                f"or {CLOSE!r} alone on a line"
            )
    if open_at >= 0:
        raise PasteError(f"{path}:{open_at + 1}: block never closed (add {CLOSE!r})")
    return found


def run(command: str, root: Path, where: str) -> str:
    """The command's stdout, run from ``root`` with this interpreter."""
    argv = [sys.executable, *shlex.split(command)[1:]]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PasteError(f"{where}: {command!r} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def paste(path: Path, root: Path, check: bool) -> bool:
    """Rewrite (with ``check``: only compare) the page's blocks; True if one was stale."""
    lines = path.read_text().splitlines(keepends=True)
    out: list[str] = []
    last, stale = 0, False
    for start, end, command in blocks(path, lines):
        body = "\n" + run(command, root, f"{path}:{start + 1}").strip("\n") + "\n\n"
        out += lines[last : start + 1]
        out.append(body)
        last = end
        if "".join(lines[start + 1 : end]) != body:
            stale = True
            print(f"paste: {'stale' if check else 'rewrote'}: {path}:{start + 1}: {command}")
    out += lines[last:]
    if stale and not check:
        atomic_write(path, "".join(out).encode())
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", type=Path, help="default: README.md, docs/*.md")
    parser.add_argument("--check", action="store_true", help="write nothing; 1 if stale")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    pages = args.pages or [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    try:
        stale = [page for page in pages if paste(page, root, args.check)]
    except (OSError, PasteError) as exc:
        print(f"paste: {exc}", file=sys.stderr)
        return 2
    if not stale:
        print("paste: every block matches its command")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
