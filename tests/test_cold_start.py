"""bench/cold_start.py: its document, its stage table and ``--report``, on hand-written
stage times (no child process, nothing timed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.cold_start import (
    bench_config,
    main,
    make_document,
    render_pair,
    render_table,
    stage_medians,
)
from tests.helpers.cli import refused

ROOT = Path(__file__).resolve().parents[1]

SETTING = {
    "model": "vit_tiny",
    "img_size": 32,
    "embed_dim": 96,
    "depth": 4,
    "dataset": "imagefolder",
    "image_folder": 400,
    "partition_id": 0,
    "num_partitions": 2,
    "train_examples": 256,
    "repeats": 3,
    "device": "cpu",
}


def _stages(imports: float, data: float, train: float, zx: str = "z(x) cache load") -> dict:
    """One process's stages, in the order bench/cold_start.py's child runs them."""
    return {
        "process start": 0.05,
        "imports": imports,
        "model build": 0.02,
        "weight load": 0.01,
        "data load": data,
        zx: 0.004,
        "train 1 round (cold)": train,
        "train 1 round (warm)": train * 0.8,
    }


def _document() -> dict[str, Any]:
    first = _stages(6.0, 3.77, 1.0, zx="z(x) computed")
    first["z(x) computed"] = 0.35
    runs = [_stages(5.0, 0.02, 0.9), _stages(7.0, 0.04, 0.85), _stages(6.0, 0.03, 0.8)]
    return make_document(
        ["--image-folder", "400", "--out", "cold.json"],
        SETTING,
        first,
        runs,
        (1.25, 1.0, 1.0),
        (3.0, 2.0, 1.0),
    )


def _rows(table: str) -> dict[str, str]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return {line.split(" | ")[0][2:]: line.split(" | ")[1].rstrip(" |") for line in lines[2:]}


def test_each_stage_is_the_median_over_the_processes_after_the_first() -> None:
    document = _document()
    median = stage_medians(document)
    assert list(median) == list(_stages(0, 0, 0))  # the processes' own order
    assert median["imports"] == 6.0
    assert median["data load"] == 0.03
    assert median["train 1 round (cold)"] == 0.85
    assert document["median_s"] == median
    assert document["command"] == "python bench/cold_start.py --image-folder 400 --out cold.json"
    assert document["machine"]["loadavg_at_start"] == [1.25, 1.0, 1.0]
    assert json.loads(json.dumps(document)) == document  # what --out writes


def test_the_table_has_the_stage_medians_the_first_message_and_the_ratios() -> None:
    table = render_table(_document())
    lines = table.splitlines()
    assert lines[0].startswith(
        "Cold start per message: vit_tiny at 32 px, width 96, depth 4, imagefolder (400 "
        "synthetic 96 px JPEGs), partition 0 of 2 (256 train examples); median of 3 fresh "
        "processes after a first one with empty caches, device cpu; "
    )
    assert lines[0].endswith("1-minute load average 1.2 at the start, 3.0 at the end.")
    assert lines[2:4] == ["| stage | seconds |", "|---|---|"]
    rows = _rows(table)
    assert rows["imports"] == "6.000"
    assert rows["data load"] == "0.030"
    assert rows["z(x) cache load"] == "0.004"
    assert rows["train 1 round (warm)"] == "0.680"
    assert rows["(first message only: z(x) computed, empty cache)"] == "0.350"
    assert rows["(first message only: data load, empty caches)"] == "3.770"
    # 0.05 + 6.0 + 0.02 + 0.01 + 0.03 + 0.004: every stage before training
    assert rows["cold start (process start .. z(x) cache load)"] == "6.114"
    assert rows["one round's compute (train, cold process)"] == "0.850"
    assert lines[-1] == (
        "Cold start / one round's compute = **7.19**; the cold start is **0.88** of each "
        "message's time."
    )


def test_report_prints_the_table_of_a_written_file_without_running(tmp_path: Path) -> None:
    path = tmp_path / "cold-start.json"
    path.write_text(json.dumps(_document()))
    done = subprocess.run(
        [sys.executable, "bench/cold_start.py", "--report", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == render_table(_document()) + "\n"


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("runs", 1, "stages", "imports"), r"runs\[1\]\.stages: no 'imports'"),
        (("first", "stages", "z(x) computed"), r"first\.stages: no 'z\(x\) computed'"),
        (("setting", "image_folder"), r"setting: no 'image_folder'"),
        (("runs",), r"the document: no 'runs'"),
        (("first",), r"the document: no 'first'"),
    ],
)
def test_a_document_missing_a_figure_is_refused_naming_it(
    drop: tuple[Any, ...], named: str
) -> None:
    document = _document()
    holder: Any = document
    for key in drop[:-1]:
        holder = holder[key]
    del holder[drop[-1]]
    with pytest.raises(ValueError, match=named):
        render_table(document)


def test_report_of_a_file_missing_a_figure_names_the_file_and_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = _document()
    for run in document["runs"]:
        del run["stages"]["train 1 round (cold)"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(document))
    error = refused(main, ["--report", str(path)], capsys)
    assert f"--report {path}: not a bench/cold_start.py --out file" in error
    assert "no 'train 1 round (cold)'" in error


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--repeats", "0"], "--repeats = 0: at least 1"),
        (["--partition-id", "2"], "--partition-id = 2, --num-partitions = 2"),
        (["--image-folder", "-1"], "--image-folder = -1"),
        (
            ["-c", "data.pixel-cache=3"],
            "-c 'data.pixel-cache=3': data.pixel-cache = 3 has type int",
        ),
        (["-c", "model.no-such-key=1"], "no-such-key"),
        (["-c", "model.img-size=two"], "not key=value pairs with TOML values"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error in refused(main, argv, capsys)


def test_overrides_reach_the_config_of_every_process() -> None:
    cfg = bench_config("/images", "model.img-size=224 model.patch-size=16 data.pixel-cache=false")
    assert (cfg.model.img_size, cfg.model.patch_size, cfg.data.pixel_cache) == (224, 16, False)
    assert (cfg.data.dataset, cfg.data.data_dir, cfg.model.pretrained) == (
        "imagefolder",
        "/images",
        "random",
    )


def test_the_pixel_cache_pair_puts_each_stage_side_by_side_with_the_saving() -> None:
    on, off = _document(), _document()
    on["setting"] = {**on["setting"], "pixel_cache": True}
    off["setting"] = {**off["setting"], "pixel_cache": False}
    for run, seconds in zip(off["runs"], (1.8, 1.7, 1.6), strict=True):
        run["stages"]["train 1 round (cold)"] = seconds
    rows = [line.split(" | ") for line in render_pair(on, off).splitlines()[4:]]
    table = {row[0].lstrip("| "): row[1:] for row in rows}
    assert table["train 1 round (cold)"] == ["0.850", "1.700", "2.00 |"]
    assert table["data load"] == ["0.030", "0.030", "1.00 |"]


def test_a_pixel_cache_pair_run_the_wrong_way_round_is_refused() -> None:
    on = {**_document(), "setting": {**SETTING, "pixel_cache": False}}
    with pytest.raises(ValueError, match=r"run it with -c data\.pixel-cache=true"):
        render_pair(on, on)
