"""pep_fedpt.preflight: a run that would fail is refused in a second, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from flwr.common.config import parse_config_args as flwr_parse_config_args

from pep_fedpt.data import dataset_names
from pep_fedpt.preflight import (
    DATASETS,
    PreflightError,
    main,
    parse_config_args,
    preflight,
    toml_text,
)

ROOT = Path(__file__).resolve().parents[1]


def refusal(*args: str) -> str:
    with pytest.raises(PreflightError) as failure:
        preflight(ROOT, args)
    return str(failure.value)


@pytest.mark.parametrize(
    "text",
    [
        "num-server-rounds=2",
        "num-server-rounds=2 data.alpha=0.1 model.pretrained='random'",
        'output-dir="/tmp/a b" data.download=true train.lr=1e-3',
        "fed.round-timeout=60 prompt.ccmp-blocks='2-L'",
        "",
    ],
)
def test_overrides_parse_as_flwr_parses_them(text: str) -> None:
    assert parse_config_args([text]) == flwr_parse_config_args([text])


def test_a_toml_file_parses_as_flwr_parses_it() -> None:
    for conf in sorted((ROOT / "conf").glob("*.toml")):
        assert parse_config_args([str(conf)]) == flwr_parse_config_args([str(conf)])


def test_the_data_sets_are_the_registrys() -> None:
    assert tuple(sorted(DATASETS)) == dataset_names()


def test_a_valid_command_line_passes() -> None:
    checked = preflight(
        ROOT, ["-c", "num-server-rounds=2", "--federation-config", "num-supernodes=3"]
    )
    assert checked.config.fed.num_rounds == 2
    assert checked.overrides == {"num-server-rounds": 2}
    assert checked.federation == {"num-supernodes": 3}


def test_an_unknown_key_is_named_with_its_value_and_a_close_key() -> None:
    message = refusal("-c", "data.alpah=0.1")
    assert message.startswith("unknown run-config key 'data.alpah' (= 0.1)")
    assert "'data.alpha'" in message


def test_a_value_of_the_wrong_type_is_named() -> None:
    assert refusal("-c", "num-server-rounds='five'") == (
        "num-server-rounds = 'five' has type str; expected int"
    )


def test_a_value_out_of_range_says_what_is_accepted() -> None:
    assert "use one of: pep-fedpt" in refusal("-c", "method='pepfedpt'")


def test_a_missing_data_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = refusal("-c", f"data.dataset='cifar10-folder' data.data-dir='{missing}'")
    assert message == f"data.data-dir = {str(missing)!r}: no such folder"
    assert "needs data.data-dir" in refusal("-c", "data.dataset='mnist'")
    assert "did you mean 'mnist'" in refusal("-c", "data.dataset='mnsit'")


def test_a_simulation_too_small_for_the_minimums_names_both_numbers_and_the_key() -> None:
    message = refusal("--federation-config", "num-supernodes=1")
    assert message.startswith("fed.min-available-nodes = 2 but the simulation has only 1 ")
    assert "num-supernodes = 1" in message
    message = refusal(
        "-c",
        "fed.min-train-nodes=3 data.held-out-fraction=0.5",
        "--federation-config",
        "num-supernodes=4",
    )
    assert message.startswith("fed.min-train-nodes = 3 but the simulation has only 2 training")


def test_a_toml_file_and_overrides_combine_later_ones_winning(tmp_path: Path) -> None:
    conf = tmp_path / "x.toml"
    conf.write_text("num-server-rounds = 7\nseed = 3\n[data]\nalpha = 0.3\n")
    checked = preflight(ROOT, ["--run-config", str(conf), "-c", "seed=4"])
    assert checked.overrides == {"num-server-rounds": 7, "seed": 4, "data.alpha": 0.3}
    assert "no such file" in refusal("--run-config", str(tmp_path / "y.toml"))


def test_an_argument_the_script_does_not_pass_on_is_refused() -> None:
    assert refusal("--stream").startswith("argument '--stream' is not accepted")


def test_the_written_overrides_read_back_as_the_same_flat_config(tmp_path: Path) -> None:
    flat = {
        "output-dir": '/tmp/a "b"\\c',
        "data.alpha": 0.1,
        "data.download": True,
        "num-server-rounds": 3,
        "fed.round-timeout": float("inf"),
    }
    path = tmp_path / "run.toml"
    path.write_text(toml_text(flat))
    assert flwr_parse_config_args([str(path)]) == flat


def test_main_prints_the_output_folder_and_writes_the_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    written = tmp_path / "merged.toml"
    code = main(
        ["--app", str(ROOT), "--write-run-config", str(written), "--", "-c", f"output-dir='{out}'"]
    )
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"output-dir={out}",
        "resume-from=",
        "federation-config=",
    ]
    assert tomllib.loads(written.read_text()) == {"output-dir": str(out)}


def test_main_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pep_fedpt.preflight", "--app", str(ROOT), "--", "-c", "x=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("run.sh: unknown run-config")


def test_it_imports_neither_torch_nor_flwr() -> None:
    code = (
        "import sys, pep_fedpt.preflight as p; "
        "p.preflight(p.Path('.'), ['-c', 'num-server-rounds=2']); "
        "print(sorted(m for m in ('torch', 'flwr', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_every_minimum_the_simulation_cannot_reach_is_named_in_one_line() -> None:
    message = refusal(
        "-c", "fed.min-train-nodes=3 fed.min-evaluate-nodes=3", "--federation-config",
        "num-supernodes=2",
    )  # fmt: skip
    assert message == (
        "fed.min-evaluate-nodes = 3 but the simulation has only 2 SuperNodes; "
        "fed.min-train-nodes = 3 but the simulation has only 2 SuperNodes "
        "(NUM_SUPERNODES / num-supernodes = 2): the run would wait forever; lower those "
        "keys or run more SuperNodes"
    )


def test_a_cifar_folder_without_torchvisions_files_says_what_it_holds(tmp_path: Path) -> None:
    for name in ("apple", "bear"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "train" / name / "0001.jpg").write_bytes(b"\xff\xd8")
    message = refusal("-c", f"data.dataset='cifar100' data.data-dir='{tmp_path}'")
    assert message == (
        f"data.dataset = 'cifar100' reads torchvision's cifar-100-python/ under data.data-dir "
        f"= {str(tmp_path)!r}, which is not there; it holds train/<class>/<image> folders: "
        "for images in class folders set data.dataset = 'imagefolder' (docs/datasets.md, "
        "'Any ImageFolder tree')"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    message = refusal("-c", f"data.dataset='cifar10' data.data-dir='{empty}'")
    assert message.endswith(
        "which is not there; unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
        "there, or set data.download = true"
    )
    (empty / "cifar-10-batches-py").mkdir()
    preflight(ROOT, ["-c", f"data.dataset='cifar10' data.data-dir='{empty}'"])


def test_a_resumed_run_with_a_changed_key_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    import json

    import numpy as np

    from pep_fedpt.config import RunConfig

    saved = RunConfig().to_flat()
    saved.update({"output-dir": str(tmp_path), "train.lr": 0.05})
    meta = {"format": 1, "round": 1, "strategy": {}, "rows": [], "config": saved}
    np.savez(
        tmp_path / "checkpoint.npz",
        **{"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)},
    )
    message = refusal("-c", f"resume-from='{tmp_path}' train.lr=0.01")
    assert message == (
        f"resume-from = {str(tmp_path)!r}: the run config differs from the checkpoint's in "
        "train.lr: 0.05 -> 0.01; resume with the same config (only cache-dir, fed.evaluate-every, "
        "fed.round-timeout, fed.wait-timeout, num-server-rounds, output-dir may change)"
    )
    preflight(ROOT, ["-c", f"resume-from='{tmp_path}' train.lr=0.05 num-server-rounds=9"])
