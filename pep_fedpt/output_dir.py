"""A run's output folder is its own: a fresh run never writes over another run's results.

Light on purpose (no numpy, no torch): ``pep_fedpt.preflight`` calls it before anything
starts, and the ServerApp again before it reads any data.
"""

from __future__ import annotations

from pathlib import Path

from pep_fedpt.config import ConfigError, RunConfig


def refuse_to_overwrite(directory: Path, cfg: RunConfig) -> None:
    """Refuse a run that would write over another run's results.

    A fresh run (no ``resume-from``) needs an empty or new folder; a resumed run may write
    only into the folder it resumes. Called before any data is read, so that the refusal
    comes in seconds and the earlier run's files stay exactly as they were.
    """
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"output-dir = {str(directory)!r} is a file, not a folder")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if cfg.resume_from and Path(cfg.resume_from).resolve() == directory.resolve():
        return
    if cfg.resume_from:
        raise ConfigError(
            f"output-dir = {str(directory)!r} already holds files, and it is not the folder "
            f"being resumed (resume-from = {cfg.resume_from!r}); leave output-dir empty to "
            "continue in the resumed run's own folder, or give a new or empty output-dir"
        )
    raise ConfigError(
        f"output-dir = {str(directory)!r} already holds files (an earlier run's results?); "
        f"nothing was overwritten. Continue that run with resume-from = '{directory}', or "
        "give another (new or empty) output-dir"
    )
