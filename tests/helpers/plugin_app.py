"""Copy the foreign-app example (examples/foreign-app/: a Flower app that is not this
project's, with ``strategies.PEPFedPT`` plugged in) where a test runs it.

The example's own files are what the tests run, so the guide
(docs/using-the-strategy.md), the example's README and the tests show the same code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "foreign-app"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "strategies")


def write_plugin_app(root: Path, *, vendor_strategies: bool = False) -> Path:
    """Copy the app to ``root``; with ``vendor_strategies`` also copy ``strategies/`` in
    (README step 1), so that its FAB carries the strategy (what a deployment without this
    project installed needs)."""
    shutil.copytree(EXAMPLE, root, ignore=IGNORE, dirs_exist_ok=True)
    if vendor_strategies:
        shutil.copytree(ROOT / "strategies", root / "strategies", ignore=IGNORE, dirs_exist_ok=True)
    return root
