"""pep_fedpt.output_dir: a fresh run never writes into another run's folder, and
``scripts/run.sh``'s preflight says so in a second, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.output_dir import refuse_to_overwrite
from pep_fedpt.preflight import PreflightError, preflight

ROOT = Path(__file__).resolve().parents[1]


def test_a_new_or_empty_folder_is_fine_and_a_full_one_is_refused(tmp_path: Path) -> None:
    cfg = RunConfig()
    refuse_to_overwrite(tmp_path / "new", cfg)
    refuse_to_overwrite(tmp_path, cfg)  # empty
    (tmp_path / "metrics.json").write_text("[]")
    with pytest.raises(ConfigError, match=rf"^output-dir = '{tmp_path}' already holds files"):
        refuse_to_overwrite(tmp_path, cfg)
    # Resuming that folder is what it is for.
    refuse_to_overwrite(tmp_path, RunConfig(resume_from=str(tmp_path)))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"is a file, not a folder"):
        refuse_to_overwrite(tmp_path / "file", cfg)


def test_preflight_refuses_an_earlier_runs_folder_in_one_line(tmp_path: Path) -> None:
    # An earlier run that finished a round: its summary and its checkpoint's config.
    (tmp_path / "summary.md").write_text("# an earlier run\n")
    saved = dict(RunConfig().to_flat(), **{"output-dir": str(tmp_path)})
    meta = {"format": 1, "round": 1, "strategy": {}, "rows": [], "config": saved}
    np.savez(
        tmp_path / "checkpoint.npz",
        **{"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)},
    )
    with pytest.raises(PreflightError) as failure:
        preflight(ROOT, ["-c", f"output-dir='{tmp_path}'"])
    message = str(failure.value)
    assert message.startswith(f"output-dir = '{tmp_path}' already holds files")
    assert f"resume-from = '{tmp_path}'" in message and "\n" not in message
    checked = preflight(ROOT, ["-c", f"output-dir='{tmp_path}' resume-from='{tmp_path}'"])
    assert checked.config.resume_from == str(tmp_path)
