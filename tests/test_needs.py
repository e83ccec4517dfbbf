"""bench/needs.py: what 10,000 clients need, computed from the committed result files and
the state's shapes (no run, nothing timed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench.needs import (
    check_prototype_bytes,
    prototype_bytes,
    render_bytes,
    render_memory,
    state_values,
)

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


# A prototype-round.json as bench/prototype_round.py writes it (its own figures here).
_PROTOTYPE: dict[str, Any] = {
    "setting": {"classes": 100, "dim": 768, "reply_bytes": 308_000},
    "runs": [
        {"nodes": 4000, "peak_bytes": 40 * 2**20, "kept_bytes": 0, "replies_bytes": 1},
        {"nodes": 1000, "peak_bytes": 34 * 2**20, "kept_bytes": 0, "replies_bytes": 1},
    ],
}


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def _rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    return {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines}


def test_the_state_is_vit_b16_cifar100s_and_matches_what_aggregate_measured() -> None:
    assert state_values(_load("aggregate.json")) == (929_380, 100, 768)


def test_a_state_that_changed_since_aggregate_ran_is_refused_naming_both_sizes() -> None:
    aggregate = _load("aggregate.json")
    aggregate["values-per-reply"] = 1000
    with pytest.raises(ValueError, match=r"1000 values per reply, but .* gives 929380"):
        state_values(aggregate)


def test_a_prototype_reply_is_float32_sums_and_int64_counts_as_a_real_run_counted() -> None:
    assert prototype_bytes(10, 64) == 10 * 64 * 4 + 10 * 8
    assert check_prototype_bytes(_load("scale.json")) == 100  # the run it checked
    scale = copy.deepcopy(_load("scale.json"))
    scale["runs"][0]["bytes"]["0"]["query/bytes-up"] += 100
    with pytest.raises(ValueError, match=r"sent 2641 bytes per node, but prototype_bytes"):
        check_prototype_bytes(scale)


def test_bytes_per_round_scale_the_state_by_the_sample_and_the_prototypes_by_the_nodes() -> None:
    table = render_bytes(_load("aggregate.json"), _load("scale.json"), nodes=10_000, fraction=0.05)
    rows = _rows(table)
    assert table.splitlines()[0] == "| | per client | 500 sampled |"
    assert rows["train, up (the state)"] == ["3.72 MB", "1.86 GB |"]  # 929,380 x 4 bytes
    assert rows["**a round**"] == ["| **5.58 GB** (2.79 GB in float16) |"]  # empty cell
    prototype = [k for k in rows if k.startswith("prototype round")]
    assert rows[prototype[0]] == ["0.31 MB", "**3.08 GB** for 10,000 |"]
    smaller = _rows(render_bytes(_load("aggregate.json"), _load("scale.json"), 1000, 0.01))
    assert smaller["train, up (the state)"] == ["3.72 MB", "0.04 GB |"]  # 10 sampled


def test_server_memory_names_each_items_source_and_growth() -> None:
    table = render_memory(_load("aggregate.json"), _load("scale.json"), _PROTOTYPE)
    rows = _rows(table)
    held = rows["the sampled clients' replies, held until their phase ends"]
    assert held == ["3.72 MB per sampled client", "1.86 GB |"]
    assert any("scale.json" in key for key in rows)
    assert any("aggregate.json" in key for key in rows)


def test_a_result_file_without_a_needed_figure_is_named() -> None:
    aggregate = _load("aggregate.json")
    del aggregate["ratios"]
    with pytest.raises(ValueError, match=r"aggregate.json: no 'ratios' \(written by"):
        render_memory(aggregate, _load("scale.json"), _PROTOTYPE)


def test_the_bytes_block_is_render_bytes_of_the_committed_files_and_names_a_missing_one(
    tmp_path: Path,
) -> None:
    from bench import figures

    block = figures.needs_bytes_block(RESULTS)
    assert block == render_bytes(_load("aggregate.json"), _load("scale.json")) + "\n"
    with pytest.raises(figures.FigureError, match=rf"{tmp_path}/aggregate.json: No such file"):
        figures.needs_bytes_block(tmp_path)


def test_the_prototype_round_is_its_measured_peak_extended_by_its_growth_per_node() -> None:
    rows = _rows(render_memory(_load("aggregate.json"), _load("scale.json"), _PROTOTYPE))
    [key] = [k for k in rows if k.startswith("the prototype round")]
    assert "traced peak 40.0 MiB at 4,000 nodes" in key
    # (40 - 34) MiB over 3,000 nodes = 2.048 KiB per node; 6,000 more nodes to 10,000.
    assert rows[key][0] == "2.0 KiB per connected node (a reply: 301 KiB)"
    assert rows[key][1].startswith(
        "52 MiB (extended linearly; holding every reply would be 3.08 GB)"
    )


def test_a_prototype_file_with_one_node_count_has_no_growth_and_says_so() -> None:
    one = {**_PROTOTYPE, "runs": _PROTOTYPE["runs"][:1]}
    with pytest.raises(ValueError, match="one node count; the growth needs two"):
        render_memory(_load("aggregate.json"), _load("scale.json"), one)
    broken = {**_PROTOTYPE, "runs": [{"nodes": 10}]}
    with pytest.raises(ValueError, match=r"prototype-round.json: .*no 'peak_bytes'"):
        render_memory(_load("aggregate.json"), _load("scale.json"), broken)
