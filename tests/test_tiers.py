"""The test tiers (tests/helpers/tiers.py): where a test lands, and what `-m` selects."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.integration
def test_several_rounds():
    pass

@pytest.mark.deploy
def test_real_processes():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A fresh test suite with this project's tier hooks and markers, nothing else."""
    pytester.makeconftest("from helpers.tiers import *  # noqa: F403\n")
    pytester.makeini(
        "[pytest]\n"
        "addopts = -m unit --strict-markers\n"
        "markers =\n    unit: u\n    integration: i\n    deploy: d\n"
    )
    pytester.makepyfile(test_suite=TESTS)
    return pytester


@pytest.mark.parametrize(
    ("args", "ran"),
    [
        ((), "test_plain"),
        (("-m", "unit"), "test_plain"),
        (("-m", "integration"), "test_several_rounds"),
        (("-m", "deploy"), "test_real_processes"),
    ],
)
def test_a_test_without_a_tier_is_unit_and_each_tier_runs_alone(
    suite: pytest.Pytester, args: tuple[str, ...], ran: str
) -> None:
    result = suite.runpytest("-v", *args)
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines([f"*::{ran} PASSED*"])


def test_an_empty_marker_expression_runs_every_tier(suite: pytest.Pytester) -> None:
    suite.runpytest("-m", "").assert_outcomes(passed=3)


def test_the_header_names_the_tier_that_runs(suite: pytest.Pytester) -> None:
    suite.runpytest("-m", "integration").stdout.fnmatch_lines(
        ["tiers: -m 'integration' of unit, integration, deploy*"]
    )


def test_a_test_in_two_tiers_is_refused_naming_it(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_both="import pytest\n\n"
        "@pytest.mark.integration\n@pytest.mark.deploy\ndef test_both():\n    pass\n"
    )
    result = suite.runpytest("-m", "")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*test_both.py::test_both is marked integration and deploy; a test belongs to one*"]
    )
