"""bench/figures.py: the speed and backbone blocks come from their result files, and a
file that lacks what a block needs is named in the error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import figures

AGGREGATE = {
    "clients": 100,
    "repeats": 7,
    "values-per-reply": 929380,
    "load-average": [1.0, 2.0, 3.0],
    "cpus": 2,
    "median-s": {"fedavg": 0.4, "pep-fedpt": 0.44, "validation": 0.1, "merge": 0.25},
    "peak-traced-mib": {"fedavg": 7.5, "pep-fedpt": 11.8, "validation": 0.0, "merge": 11.8},
    "ratios": {
        "pep-fedpt / fedavg time": 1.1,
        "merge / fedavg time": 0.625,
        "validation / merge time": 0.4,
        "pep-fedpt peak / one state": 3.3,
        "fedavg peak / one state": 2.1,
    },
}


def test_the_aggregation_block_reads_every_figure_from_the_file(tmp_path: Path) -> None:
    (tmp_path / figures.AGGREGATE).write_text(json.dumps(AGGREGATE))
    block = figures.aggregation_block(tmp_path)
    assert "| Flower `FedAvg.aggregate_train` | 0.400 | 7.5 MiB |" in block
    assert "| its merge alone (replies read cold) | 0.250 | 11.8 MiB |" in block
    assert "= **1.10** (target ≤ 1.2); the merge alone 0.25 s" in block
    assert "929,380 float32 values" in block and "load average 1.0, 2.0, 3.0" in block


def test_an_aggregate_file_without_its_ratios_is_named(tmp_path: Path) -> None:
    (tmp_path / figures.AGGREGATE).write_text(json.dumps({**AGGREGATE, "ratios": {}}))
    with pytest.raises(figures.FigureError, match=r"aggregate\.json: no 'pep-fedpt / fedavg"):
        figures.aggregation_block(tmp_path)
    with pytest.raises(figures.FigureError, match=r"backbone-probe\.jsonl"):
        figures.backbone_block(tmp_path)


def test_the_backbone_block_lists_the_best_probe_first(tmp_path: Path) -> None:
    rows = [
        {"weights": "local:random", "size": 32, "acc": 0.31, "acc-0-4": 0.2, "acc-5-9": 0.4},
        {"weights": "local:/c/vit-x.pth", "size": 32, "acc": 0.46, "acc-0-4": 0.5, "acc-5-9": 0.42},
    ]
    (tmp_path / figures.BACKBONE_PROBE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = figures.backbone_block(tmp_path).splitlines()
    assert (
        lines[2]
        == "| `local:0-4`, pre-trained here (`vit-x.pth`) | 32 px | 46.0% | 50.0% | 42.0% |"
    )
    assert lines[3].startswith("| same ViT, random weights (control) | 32 px | 31.0%")


def test_the_readme_scale_summary_keeps_the_header_and_its_rows() -> None:
    root = Path(__file__).resolve().parents[1] / "bench" / "results"
    whole = figures.scale_block(root).splitlines()
    summary = figures.scale_summary_block(root).splitlines()
    assert summary[:2] == whole[:2] and set(summary) <= set(whole)
    assert summary[2].split("|")[1].strip() == "sampled clients per round (train)"
    assert len(summary) == 2 + len(figures.SCALE_SUMMARY)  # one row per summary entry


def _sim_overhead_document() -> dict[str, object]:
    from bench.sim_overhead import TINY, make_document

    loop = {"startup": 6.0, "rounds": [1.5, 1.0, 1.0], "total": 10.0}
    loop |= {"encode_per_round": 0.001, "client_build": 0.4}
    sim = {"startup": 60.0, "rounds": [1.5, 1.1, 1.1], "total": 70.0}
    setting = {"clients": 4, "rounds": 3, "repeats": 1, "method": "pep-fedpt"}
    setting |= {"dataset": "digits", "model": TINY}
    return make_document([], setting, [{"simulation": sim, "plain_loop": loop}], [1] * 3, [2] * 3)


def _cold_start_document() -> dict[str, object]:
    from bench.cold_start import make_document

    stages = {"process start": 0.05, "imports": 5.0, "data load": 0.02}
    stages |= {"z(x) cache load": 0.003, "train 1 round (cold)": 0.9}
    first = {**stages, "z(x) computed": 0.35, "data load": 3.8}
    setting = {"model": "vit", "img_size": 32, "embed_dim": 96, "depth": 4}
    setting |= {"dataset": "digits", "image_folder": 0, "partition_id": 0, "num_partitions": 2}
    setting |= {"train_examples": 681, "repeats": 1, "device": "cpu"}
    return make_document([], setting, first, [stages], [1] * 3, [2] * 3)


def test_the_simulation_overhead_block_is_the_benchmarks_own_table(tmp_path: Path) -> None:
    from bench.sim_overhead import render_table

    document = _sim_overhead_document()
    (tmp_path / figures.SIM_OVERHEAD).write_text(json.dumps(document))
    block = figures.sim_overhead_block(tmp_path)
    assert block == render_table(document) + "\n"
    assert "| steady-state ratio simulation / loop | **1.10** |  |" in block


def test_the_longer_rounds_block_is_the_same_table_of_its_own_file(tmp_path: Path) -> None:
    from bench.sim_overhead import render_table

    document = _sim_overhead_document()
    (tmp_path / figures.SIM_OVERHEAD_LONG).write_text(json.dumps(document))
    assert figures.sim_overhead_long_block(tmp_path) == render_table(document) + "\n"


def test_the_simulation_overhead_summary_has_one_row_per_file_in_order(tmp_path: Path) -> None:
    from bench.sim_overhead import render_summary

    short, longer = _sim_overhead_document(), _sim_overhead_document()
    longer["setting"]["model"] = {**longer["setting"]["model"], "model.depth": 4}  # type: ignore[index]
    (tmp_path / figures.SIM_OVERHEAD).write_text(json.dumps(short))
    (tmp_path / figures.SIM_OVERHEAD_LONG).write_text(json.dumps(longer))
    (tmp_path / "sim-overhead-pass1.json").write_text(json.dumps(longer))
    (tmp_path / "sim-overhead-pass0.json").write_text(json.dumps(short))
    block = figures.sim_overhead_summary_block(tmp_path)
    names = ["sim-overhead.json", "sim-overhead-depth4.json"]
    names += ["sim-overhead-pass0.json", "sim-overhead-pass1.json"]
    assert (
        block
        == render_summary([short, longer, short, longer], [f"`{name}`" for name in names]) + "\n"
    )
    rows = block.splitlines()[2:6]
    assert rows[0].startswith("| `sim-overhead.json` | depth 2, 16 px,")
    assert rows[1].startswith("| `sim-overhead-depth4.json` | depth 4, 16 px,")
    assert rows[2].startswith("| `sim-overhead-pass0.json` | depth 2, 16 px,")
    assert rows[3].startswith("| `sim-overhead-pass1.json` | depth 4, 16 px,")
    del longer["setting"]["model"]  # type: ignore[attr-defined]
    (tmp_path / figures.SIM_OVERHEAD_LONG).write_text(json.dumps(longer))
    with pytest.raises(
        figures.FigureError, match=r"sim-overhead-depth4\.json: setting: no 'model'"
    ):
        figures.sim_overhead_summary_block(tmp_path)


def test_the_cold_start_block_is_the_benchmarks_own_table(tmp_path: Path) -> None:
    from bench.cold_start import render_table

    document = _cold_start_document()
    (tmp_path / figures.COLD_START).write_text(json.dumps(document))
    block = figures.cold_start_block(tmp_path)
    assert block == render_table(document) + "\n"
    assert "| (first message only: data load, empty caches) | 3.800 |" in block


@pytest.mark.parametrize(
    ("block", "name"),
    [
        (figures.sim_overhead_block, figures.SIM_OVERHEAD),
        (figures.sim_overhead_long_block, figures.SIM_OVERHEAD_LONG),
        (figures.sim_overhead_summary_block, figures.SIM_OVERHEAD),
        (figures.cold_start_block, figures.COLD_START),
    ],
)
def test_a_speed_block_without_its_result_file_names_the_file(
    tmp_path: Path, block: object, name: str
) -> None:
    with pytest.raises(figures.FigureError, match=rf"{tmp_path}/{name}: No such file"):
        block(tmp_path)  # type: ignore[operator]


def test_a_speed_block_of_an_incomplete_file_names_the_file_and_the_figure(
    tmp_path: Path,
) -> None:
    sim = _sim_overhead_document()
    del sim["repeats"][0]["plain_loop"]["client_build"]  # type: ignore[index]
    (tmp_path / figures.SIM_OVERHEAD).write_text(json.dumps(sim))
    with pytest.raises(
        figures.FigureError,
        match=r"sim-overhead\.json: repeats\[0\]\.plain_loop: no 'client_build' "
        r"\(written by bench/sim_overhead\.py --out\)$",  # said once
    ):
        figures.sim_overhead_block(tmp_path)
    (tmp_path / figures.COLD_START).write_text("{not json")
    with pytest.raises(figures.FigureError, match=r"cold-start\.json: not JSON"):
        figures.cold_start_block(tmp_path)
    cold = _cold_start_document()
    del cold["setting"]["device"]  # type: ignore[attr-defined]
    (tmp_path / figures.COLD_START).write_text(json.dumps(cold))
    with pytest.raises(figures.FigureError, match=r"cold-start\.json: setting: no 'device'"):
        figures.cold_start_block(tmp_path)


def _fedmvp_step_documents() -> tuple[dict[str, object], dict[str, object]]:
    from bench.fedmvp_step import make_document

    setting = {"clip_model": "tiny", "vision_width": 64, "text_dim": 64, "image_size": 32}
    setting |= {"device": "cpu", "threads": 1, "batch": 32, "per_class": 10}
    setting |= {"sentences_from": "synthetic", "classes": 100, "repeats": 1}
    setting |= {"memory_classes": [10], "skip_timing": False}
    calls = {"cached_s": [0.2], "reencode_s": [3.0]}
    timing = {"bank_classes": 100, "bank_sentences": 1000}
    timing |= {"calls": {"training step": calls, "evaluation": dict(calls)}}
    row = {"classes": 10, "sentences": 100, "this_project_bytes": 2**23}
    row |= {"per_element_bytes": 3 * 2**22}
    tiny = make_document([], setting, timing, [row], [1] * 3, [2] * 3)
    vit = {**setting, "clip_model": "ViT-B-16", "batch": 8, "skip_timing": True}
    return tiny, make_document([], vit, None, [row], [1] * 3, [2] * 3)


def test_the_fedmvp_step_block_is_the_benchmarks_tables_of_both_files(tmp_path: Path) -> None:
    from bench.fedmvp_step import render_report

    tiny, vit = _fedmvp_step_documents()
    (tmp_path / figures.FEDMVP_STEP_TINY).write_text(json.dumps(tiny))
    (tmp_path / figures.FEDMVP_STEP_VIT_B_16).write_text(json.dumps(vit))
    block = figures.fedmvp_step_block(tmp_path)
    assert block == render_report([tiny, vit]) + "\n"
    assert "| training step | 200.00 ms | 3000.00 ms | **15.00** |" in block
    assert "FedMVP step costs, memory only (`--skip-timing`): CLIP ViT-B-16" in block
    assert figures.FEDMVP_STEP_TINY == "fedmvp-step-tiny.json"
    assert figures.FEDMVP_STEP_VIT_B_16 == "fedmvp-step-vit-b-16.json"


def test_the_fedmvp_step_block_names_whichever_result_file_is_missing_or_bad(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        figures.FigureError, match=rf"{tmp_path}/{figures.FEDMVP_STEP_TINY}: No such file"
    ):
        figures.fedmvp_step_block(tmp_path)
    tiny, vit = _fedmvp_step_documents()
    (tmp_path / figures.FEDMVP_STEP_TINY).write_text(json.dumps(tiny))
    with pytest.raises(
        figures.FigureError, match=rf"{tmp_path}/{figures.FEDMVP_STEP_VIT_B_16}: No such file"
    ):
        figures.fedmvp_step_block(tmp_path)
    del vit["memory"][0]["per_element_bytes"]  # type: ignore[index]
    (tmp_path / figures.FEDMVP_STEP_VIT_B_16).write_text(json.dumps(vit))
    with pytest.raises(
        figures.FigureError,
        match=r"fedmvp-step-vit-b-16\.json: memory\[0\]: no 'per_element_bytes' "
        r"\(written by bench/fedmvp_step\.py --out\)$",  # said once
    ):
        figures.fedmvp_step_block(tmp_path)


def _ccmp_step_documents() -> list[dict[str, object]]:
    """C = 10, C = 100 and C = 10 recomputing z(x), as bench/ccmp_step.py --out writes them."""
    from bench.ccmp_step import make_document

    setting = {"classes": 10, "width": 192, "depth": 6, "heads": 3, "img_size": 32}
    setting |= {"patch": 4, "tokens": 76, "batch": 32, "threads": 2, "shared_length": 10}
    setting |= {"class_length": 1, "recompute_z": False, "repeats": 2, "warmup": 3}
    rows = [
        ({}, [0.2367, 0.2367], [0.2377, 0.2377]),
        ({"classes": 100}, [0.2614, 0.2614], [0.2627, 0.2627]),
        ({"recompute_z": True}, [0.2351, 0.2351], [0.3225, 0.3225]),
    ]
    documents = []
    for changes, deep, ccmp in rows:
        document = make_document([], setting | changes, deep, ccmp, (0.4, 1, 1), (0.4, 1, 1))
        document["machine"].update(cpus=2, omp_num_threads="2")  # whatever runs the tests
        documents.append(document)
    return documents


def test_the_ccmp_step_block_is_one_table_of_the_three_files_in_order(tmp_path: Path) -> None:
    from bench.ccmp_step import render_report

    documents = _ccmp_step_documents()
    for name, document in zip(figures.CCMP_STEP, documents, strict=True):
        (tmp_path / name).write_text(json.dumps(document))
    block = figures.ccmp_step_block(tmp_path)
    assert block == render_report(documents) + "\n"
    assert block.splitlines()[2:5] == [
        "| C = 10, z(x) cached | 236.7 ms | 237.7 ms | 1.004 |",
        "| C = 100, z(x) cached | 261.4 ms | 262.7 ms | 1.005 |",
        "| C = 10, z(x) recomputed every step | 235.1 ms | 322.5 ms | 1.372 |",
    ]
    assert figures.CCMP_STEP == (
        "ccmp-step-c10.json",
        "ccmp-step-c100.json",
        "ccmp-step-c10-recompute.json",
    )


def test_the_ccmp_step_block_names_whichever_result_file_is_missing_or_bad(
    tmp_path: Path,
) -> None:
    c10, c100, recompute = figures.CCMP_STEP
    documents = _ccmp_step_documents()
    with pytest.raises(figures.FigureError, match=rf"{tmp_path}/{c10}: No such file"):
        figures.ccmp_step_block(tmp_path)
    (tmp_path / c10).write_text(json.dumps(documents[0]))
    (tmp_path / c100).write_text("{")
    with pytest.raises(figures.FigureError, match=rf"{tmp_path}/{c100}: not JSON"):
        figures.ccmp_step_block(tmp_path)
    (tmp_path / c100).write_text(json.dumps(documents[1]))
    with pytest.raises(figures.FigureError, match=rf"{tmp_path}/{recompute}: No such file"):
        figures.ccmp_step_block(tmp_path)
    del documents[2]["setting"]["recompute_z"]  # type: ignore[attr-defined]
    (tmp_path / recompute).write_text(json.dumps(documents[2]))
    with pytest.raises(
        figures.FigureError,
        match=r"ccmp-step-c10-recompute\.json: setting: no 'recompute_z' "
        r"\(written by bench/ccmp_step\.py --out\)$",  # said once
    ):
        figures.ccmp_step_block(tmp_path)
