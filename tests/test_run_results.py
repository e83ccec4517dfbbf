"""What a person sees of a run through the real ServerApp: results never overwritten, a
summary and a plot after every round, failing clients named, progress while a phase waits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.app import Message, MessageType
from helpers.data import fake_image_tree, write_truncated_jpeg
from helpers.run_helpers import NODES, load_json, run_server

from pep_fedpt.config import ConfigError
from strategies import PromptFedAvg

pytestmark = pytest.mark.integration  # whole in-process runs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_and_changes_nothing(
    tiny_run_config: dict, task_identity: None
) -> None:
    out = Path(tiny_run_config["output-dir"])
    run_server(tiny_run_config)
    before = snapshot(out)
    assert "checkpoint.npz" in before and "summary.md" in before
    # Refused before any data is read: a data set that is not there does not get a say.
    again = dict(tiny_run_config, **{"data.dataset": "imagefolder", "data.data-dir": "/nowhere"})
    with pytest.raises(ConfigError) as info:
        run_server(again)
    message = str(info.value)
    assert f"output-dir = '{out}' already holds files" in message
    assert f"resume-from = '{out}'" in message and "another (new or empty) output-dir" in message
    assert snapshot(out) == before  # byte for byte


def test_a_resumed_run_may_not_write_into_another_runs_folder(
    tiny_run_config: dict, tmp_path: Path, task_identity: None
) -> None:
    first = dict(tiny_run_config, **{"output-dir": str(tmp_path / "first")})
    second = dict(tiny_run_config, **{"output-dir": str(tmp_path / "second")})
    run_server(first)
    run_server(second)
    before = snapshot(tmp_path / "second")
    resume = dict(second, **{"resume-from": str(tmp_path / "first"), "num-server-rounds": 2})
    with pytest.raises(ConfigError, match=r"second' already holds files, and it is not the"):
        run_server(resume)
    assert snapshot(tmp_path / "second") == before
    # An empty folder is no one's results: a fresh run may use it.
    (tmp_path / "empty").mkdir()
    run_server(dict(tiny_run_config, **{"output-dir": str(tmp_path / "empty")}))
    assert (tmp_path / "empty" / "summary.md").is_file()


class KilledInRound:
    """Plays a server process killed in round ``server_round``'s train phase."""

    def __init__(self, server_round: int) -> None:
        self.evaluates_before = len(NODES) * (server_round - 1)
        self.evaluated = 0

    def __call__(self, reply: Message) -> Message:
        if reply.metadata.message_type == MessageType.EVALUATE:
            self.evaluated += 1
        elif (
            reply.metadata.message_type == MessageType.TRAIN
            and self.evaluated == self.evaluates_before
        ):
            raise RuntimeError("server process killed")
        return reply


def test_a_stopped_run_has_its_summary_and_plot_of_the_rounds_it_finished(
    tiny_run_config: dict, task_identity: None
) -> None:
    flat = dict(tiny_run_config, **{"num-server-rounds": 3, "seed": 4})
    out = Path(flat["output-dir"])
    killed = KilledInRound(2)
    with pytest.raises(RuntimeError, match="killed"):
        run_server(flat, {node: killed for node in NODES})
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    summary = (out / "summary.md").read_text()
    for line in (
        "- method: pep-fedpt",
        "- data set: digits",
        "- partition: dirichlet, alpha 0.5, 3 clients reported",
        "- seeds: run seed 4, data split seed 0",
        "- rounds: 1 of 3 done",
        "- dropped replies: 0",
        f"- results: {out}",
    ):
        assert line in summary.splitlines(), line
    rounds = [
        line for line in summary.splitlines() if line.startswith("| ") and "round" not in line
    ]
    assert [line.split("|")[1].strip() for line in rounds] == ["0", "1"]


def test_progress_lines_name_replies_of_expected_and_the_elapsed_time(
    tiny_run_config: dict, caplog: pytest.LogCaptureFixture, task_identity: None
) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_server(tiny_run_config)
    text = caplog.text
    for phase in ("query", "train", "evaluate"):
        round_number = 0 if phase == "query" else 1
        assert f"round {round_number} {phase}: 3/3 replies in " in text, phase


def test_a_node_that_never_replies_is_waited_for_with_progress_then_named(
    tiny_run_config: dict,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    task_identity: None,
) -> None:
    monkeypatch.setattr(PromptFedAvg, "progress_seconds", 0.2)
    silent = 12
    flat = dict(tiny_run_config, **{"fed.round-timeout": 1.0})
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_server(flat, {silent: lambda reply: None})
    text = caplog.text
    assert "round 0 query: 2/3 replies, " in text  # while it waits
    assert "round 0 query: 2/3 replies in " in text and "fed.round-timeout = 1 s" in text
    summary = (Path(flat["output-dir"]) / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith(f"| {silent} |"))
    assert "partition unknown" in row and "3 / 3" in row and "**yes**" in row
    assert "no reply within 1 s" in row
    assert f"node {silent} (partition unknown) never trained or evaluated: 3 of 3" in text


def test_a_client_that_cannot_read_its_images_is_named_with_the_file(
    tiny_run_config: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture, task_identity: None
) -> None:
    """Node 12 has its own copy of the data (node config data-dir) with every image cut
    short; the counts-only census reads no image, so its partition is known."""
    good, broken = tmp_path / "good", tmp_path / "broken"
    fake_image_tree(good)
    fake_image_tree(broken)
    for file in (broken / "train").rglob("*.png"):
        write_truncated_jpeg(file)
    nodes = {**NODES, 12: {**NODES[12], "data-dir": str(broken)}}
    flat = dict(
        tiny_run_config,
        **{
            "method": "head-only",
            "data.dataset": "imagefolder",
            "data.data-dir": str(good),
            "num-server-rounds": 2,
        },
    )
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_server(flat, nodes=nodes)
    out = Path(flat["output-dir"])
    summary = (out / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if line.startswith("| 12 |"))
    assert "| partition 2 |" in row and "**yes**" in row
    assert f"{broken / 'train'}" in row and "cannot read this image" in row
    assert "- dropped replies: 4 (reasons in dropped.json)" in summary  # 2 train, 2 evaluate
    assert {d["node"] for d in load_json(out / "dropped.json")} == {12}
    # Named once as soon as a round ends without it, and again at the end of the run.
    assert caplog.text.count("node 12 (partition 2) has not trained or evaluated so far") == 1
    assert "node 12 (partition 2) never trained or evaluated: 4 of 5 messages" in caplog.text
    assert "| 11 |" not in summary and "| 10 |" not in summary  # the healthy ones
