"""The test tiers, as pytest hooks (imported by tests/conftest.py).

``unit`` is every test that names no tier, so a new test lands there without ceremony;
``integration`` (whole in-process runs of several rounds or several runs, any test over
~2 s, real ``flwr run``s) and ``deploy`` (real SuperLink and SuperNode processes) are
marked where the test is written. Plain ``pytest`` runs the unit tier (``addopts`` in
pyproject.toml); ``scripts/test.sh`` runs all three.
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "integration", "deploy")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that names no tier ``unit``; refuse a test in two tiers."""
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
        if len(tiers) > 1:
            raise pytest.UsageError(
                f"{item.nodeid} is marked {' and '.join(tiers)}; a test belongs to one tier "
                f"of: {', '.join(TIERS)}"
            )
        if not tiers:
            item.add_marker(pytest.mark.unit)


def pytest_report_header(config: pytest.Config) -> str:
    """Say which tier runs, so that a deselected test is no surprise."""
    return (
        f"tiers: -m {config.option.markexpr!r} of {', '.join(TIERS)} "
        "(scripts/test.sh runs them all; -m '' runs every test)"
    )
