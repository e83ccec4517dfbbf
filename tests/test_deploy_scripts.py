"""scripts/deploy/: the parts the deployment tests do not reach (fast, no Flower processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "deploy"


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_write_connection_replaces_a_table(tmp_path: Path) -> None:
    env = {"FLWR_HOME": str(tmp_path / "home")}
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    assert run("write-connection.sh", "a", "h1:8000", "--insecure", env=env).returncode == 0
    assert run("write-connection.sh", "b", "h2:8000", "--ca", str(ca), env=env).returncode == 0
    assert run("write-connection.sh", "a", "h3:8000", "--ca", str(ca), env=env).returncode == 0
    config = tomllib.loads((tmp_path / "home" / "config.toml").read_text())["superlink"]
    assert config == {
        "a": {"address": "h3:8000", "root-certificates": str(ca)},
        "b": {"address": "h2:8000", "root-certificates": str(ca)},
    }


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_gen_certs_names_every_host(tmp_path: Path) -> None:
    done = run("gen-certs.sh", str(tmp_path), "superlink.example.org", "10.0.0.5", "localhost")
    assert done.returncode == 0, done.stderr
    san = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "server.pem"),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("DNS:superlink.example.org", "IP Address:10.0.0.5", "DNS:localhost"):
        assert name in san
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0  # private
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_gen_supernode_keys_are_p384(tmp_path: Path) -> None:
    assert run("gen-supernode-keys.sh", str(tmp_path), "gpu-1").returncode == 0
    before = (tmp_path / "gpu-1").read_text()
    assert run("gen-supernode-keys.sh", str(tmp_path), "gpu-1").returncode == 0  # kept
    assert (tmp_path / "gpu-1").read_text() == before
    assert (tmp_path / "gpu-1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition-id", "2", "--num-partitions", "2", "--insecure"], "0 <= partition-id"),
        (
            ["--partition-id", "0", "--num-partitions", "2", "--insecure", "--data-dir", "d"],
            "absolute path",
        ),
        (["--partition-id", "0", "--num-partitions", "2"], "--ca FILE or --insecure"),
    ],
)
def test_start_supernode_refuses_bad_arguments(args: list[str], message: str) -> None:
    done = run("start-supernode.sh", "--superlink", "h:8000", *args, env={"DRY_RUN": "1"})
    assert done.returncode == 2 and message in done.stderr


def test_start_superlink_needs_a_tls_choice(tmp_path: Path) -> None:
    done = run("start-superlink.sh", "--database", ":memory:", env={"DRY_RUN": "1"})
    assert done.returncode == 2 and "--certs DIR or --insecure" in done.stderr
    done = run("start-superlink.sh", "--insecure", "--database", ":memory:", env={"DRY_RUN": "1"})
    assert done.returncode == 0 and "--database" not in done.stdout
