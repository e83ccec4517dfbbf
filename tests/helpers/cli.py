"""Running a command's ``main`` on arguments it must refuse."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest


def refused(main: Callable[[Sequence[str]], Any], argv: Sequence[str], capsys: Any) -> str:
    """``main(argv)`` must stop as argparse does on bad input (exit code 2) without printing
    a table first; returns what it wrote to stderr, for the test to look for its words."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing half-done printed before the refusal
    return str(captured.err)
