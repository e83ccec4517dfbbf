"""FedMVP's offline run (conf/fedmvp-offline.toml) through a real `flwr run .` in Flower's
simulation engine, as docs/fedmvp.md runs it; and the conf file's own checks."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from flwr.common.config import get_fused_config_from_dir, parse_config_args

from pep_fedpt.config import RunConfig
from pep_fedpt.local_flwr import BIN, flwr_env, run_to_end, stop_superlinks
from pep_fedpt.methods.fedmvp import BUNDLED_ATTRIBUTES, attributes_dir

ROOT = Path(__file__).resolve().parents[1]

OFFLINE = ROOT / "conf" / "fedmvp-offline.toml"


def test_the_offline_conf_is_tiny_offline_and_names_its_command() -> None:
    cfg = RunConfig.from_flat(get_fused_config_from_dir(ROOT, parse_config_args([str(OFFLINE)])))
    assert cfg.method == "fedmvp" and cfg.data.dataset == "digits"
    assert (cfg.fedmvp.clip_model, cfg.fedmvp.clip_pretrained) == ("tiny", "random")
    assert cfg.fedmvp.protocol == "base-new" and 2 <= cfg.fed.num_rounds <= 3
    # "" finds the project's own phrases for digits, which ship in the FAB
    assert attributes_dir(cfg) == str(BUNDLED_ATTRIBUTES)
    assert (BUNDLED_ATTRIBUTES / "digits.json").is_file()
    assert "flwr run . --run-config conf/fedmvp-offline.toml" in OFFLINE.read_text()


@contextlib.contextmanager
def local_superlink(home: Path, env: dict[str, str]):
    """The SuperLink `flwr run` would start itself, started here with a patient wait: on a
    loaded machine it can take longer than the 15 s `flwr run` gives it."""
    (home / "local-superlink").mkdir(parents=True, exist_ok=True)
    http_port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    command = [
        str(BIN / "flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
        "--host",
        "127.0.0.1",
        "--port",
        http_port,
        "--log-file",
        str(home / "local-superlink" / "superlink.log"),
        "--database",
        str(home / "local-superlink" / "state.db"),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the run's processes stop with it
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, "flower-superlink exited at start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).is_success:
                    break
            time.sleep(1)
        yield
    finally:
        stop_superlinks({process.pid})
        process.wait(timeout=15)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_offline_fedmvp_run_finishes_completed_with_local_base_new_hm(
    tmp_path: Path,
) -> None:
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    env = {**flwr_env(home), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    # The conf file as it is, plus where to write (flwr run takes one TOML or key=values).
    conf = tmp_path / "offline.toml"
    conf.write_text(f"output-dir = '{out}'\n" + OFFLINE.read_text())
    with local_superlink(home, env):
        run = run_to_end(
            ROOT,
            "--run-config",
            str(conf),
            "--federation-config",
            "num-supernodes=2",
            env=env,
            timeout=780,
        )
        log = run.log
        assert run.returncode == 0 and run.completed, log
    assert "pep-fedpt summary (fedmvp, digits)" in log
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    for key in ("server/local-accuracy", "server/base-accuracy", "server/new-accuracy"):
        assert 0.0 <= rows[-1][key] <= 1.0, key
    assert rows[-1]["evaluate/num-clients"] == 2
    summary = (out / "summary.md").read_text()
    assert "| local acc | base acc | new acc | HM |" in summary
    last = summary.strip().splitlines()[-1].split("|")[1:-1]
    assert last[0].strip() == "3" and all(c.strip() != "-" for c in last[-4:])


DG_FILES = sorted((ROOT / "conf").glob("fedmvp-dg-*.toml"))


@pytest.mark.parametrize("path", DG_FILES, ids=lambda p: p.name)
def test_the_domain_generalisation_confs_are_at_the_paper_scale(path: Path) -> None:
    from pep_fedpt.data import dataset_names
    from pep_fedpt.data.base_new import published_clients
    from pep_fedpt.methods.fedmvp import run_domains

    cfg = RunConfig.from_flat(get_fused_config_from_dir(ROOT, parse_config_args([str(path)])))
    assert cfg.method == "fedmvp" and cfg.data.dataset in dataset_names()
    assert (cfg.fedmvp.clip_model, cfg.fedmvp.clip_pretrained) == ("ViT-B-16", "openai")
    assert (cfg.fed.num_rounds, cfg.train.batch_size, cfg.train.lr) == (100, 128, 0.003)
    domains = run_domains(cfg)
    assert cfg.fedmvp.protocol == "domain" and cfg.fedmvp.target_domain in domains
    match = re.search(
        r'flwr run \. --run-config conf/(\S+) .*"num-supernodes=(\d+) ', path.read_text()
    )
    assert match and match[1] == path.name
    sources = len(domains) - 1
    classes = {"pacs": 7, "officehome": 65, "vlcs": 5, "terraincognita": 10, "domainnet": 345}
    per_domain = published_clients(classes[cfg.data.dataset], cfg.fedmvp.classes_per_client)
    clients = int(match[2])
    assert clients == sources * per_domain  # the released chunks: OfficeHome 9, DomainNet 85
    assert clients == cfg.fed.min_available_nodes == cfg.fed.min_train_nodes
    paper = {"pacs": "sketch", "officehome": "Real World", "vlcs": "SUN09",
             "terraincognita": "location_100", "domainnet": "sketch"}  # fmt: skip
    assert cfg.fedmvp.target_domain == paper[cfg.data.dataset]  # the paper's table


B2N_FILES = sorted((ROOT / "conf").glob("fedmvp-b2n-*.toml"))


@pytest.mark.parametrize("path", B2N_FILES, ids=lambda p: p.name)
def test_the_base_to_new_confs_are_at_the_paper_scale(path: Path) -> None:
    from pep_fedpt.data import dataset_names
    from pep_fedpt.data.base_new import published_clients
    from pep_fedpt.data.coop import COOP_SETS

    cfg = RunConfig.from_flat(get_fused_config_from_dir(ROOT, parse_config_args([str(path)])))
    assert cfg.method == "fedmvp" and cfg.data.dataset in COOP_SETS
    assert cfg.data.dataset in dataset_names()
    assert (cfg.fedmvp.clip_model, cfg.fedmvp.clip_pretrained) == ("ViT-B-16", "openai")
    assert (cfg.fed.num_rounds, cfg.train.batch_size, cfg.train.lr) == (100, 128, 0.003)
    assert cfg.train.lr_schedule == "cosine" and cfg.fedmvp.shots == 8
    match = re.search(
        r'flwr run \. --run-config conf/(\S+) .*"num-supernodes=(\d+) ', path.read_text()
    )
    assert match and match[1] == path.name
    clients = int(match[2])
    assert clients == cfg.fed.min_available_nodes == cfg.fed.min_train_nodes
    base = int(re.search(r"base =\n# the first (\d+)", path.read_text())[1])
    assert clients == published_clients(base, cfg.fedmvp.classes_per_client)  # released chunks
