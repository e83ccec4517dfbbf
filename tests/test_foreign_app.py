"""examples/foreign-app run as its README says: `flwr run .` in Flower's simulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.plugin_app import EXAMPLE, write_plugin_app

from pep_fedpt.local_flwr import flwr_env, run_to_end, stop_superlink, superlinks


def test_the_example_is_a_flower_app_with_its_own_components() -> None:
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "toy_prompts.server:app",
        "clientapp": "toy_prompts.client:app",
    }
    # Nothing of this project but the strategy, which README step 1 copies in.
    sources = "".join(p.read_text() for p in (EXAMPLE / "toy_prompts").glob("*.py"))
    assert "pep_fedpt" not in sources and "torch" not in sources


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_flwr_run_of_the_example_finishes_and_its_superlink_keeps_running(
    tmp_path: Path,
) -> None:
    app = write_plugin_app(tmp_path / "foreign-app", vendor_strategies=True)
    home = tmp_path / "flwr-home"
    env = flwr_env(home)
    result_file = tmp_path / "result.json"
    try:
        run = run_to_end(
            app,
            "-c",
            f"num-server-rounds=3 result-file='{result_file}'",
            "--federation-config",
            "num-supernodes=3",
            env=env,
            timeout=300,
        )
        log = run.log
        assert run.returncode == 0 and run.completed, log
        assert "toy-prompts: global accuracy" in log
        rounds = json.loads(result_file.read_text())["rounds"]
        assert rounds["3"]["train/valid-replies"] == 3
        assert rounds["3"]["evaluate/global-accuracy"] > 0.5
        # What the guide warns about: the SuperLink that `flwr run` started outlives it.
        assert superlinks(home), "the local SuperLink should still run after flwr run"
    finally:
        stop_superlink(home)
