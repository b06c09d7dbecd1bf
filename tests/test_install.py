"""The existing-server way in, for real: a minimal Debian 12 server (tests/debianvm.py:
systemd, OpenSSH, a kernel, no Python) booted by `binder-lite vm run` with no way out
(QEMU's restrict=on); `binder-lite install --target` with a bundle installs onto it,
`binder-lite smoke` passes against it (systemd's service, restarted after kill -9),
an upgrade to a later version migrates the database and keeps the sessions' records,
and `--roll-back` returns to the version before, with its database.

The tests of this module run in order against one machine, as an administrator would."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import installkit
import paramiko
import pytest

from binder_lite import bundle
from binder_lite.vm import ssh
from binder_lite.web import store

pytestmark = pytest.mark.vm

BIN = Path(sys.executable).parent
SITE = """\
version: 1
site:
  name: "Installed Binder"
  slug: installed
  tagline: "binder-lite on a Debian server"
  primary_color: "#335577"
binder:
  runtime: local
  port: 8080
  max_sessions: 2
"""
REPO = "/srv/smoke-repo"


def binder_lite(
    *args: str | os.PathLike[str], timeout: float = 2400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "binder-lite", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Server:
    name: str
    port: int
    key: Path
    known_hosts: Path
    site: Path
    bundle: Path
    own: Path
    work: Path

    @property
    def target(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return binder_lite(
            "install",
            self.site,
            "--target",
            self.target,
            "--identity",
            self.key,
            "--known-hosts",
            self.known_hosts,
            *args,
        )

    def run(self, command: str) -> str:
        """`command` as root on the server; its output (AssertionError if it fails)."""
        spec = ssh.Target("127.0.0.1", self.port, "root")
        client = ssh.connect(spec, ssh.host_keys_for(spec, [self.known_hosts], []), self.key)
        try:
            return _checked(client, command)
        finally:
            client.close()

    def sql(self, query: str) -> str:
        db = "/var/lib/binder-lite/sessions.sqlite"
        script = f"import sqlite3; print(sqlite3.connect('file:{db}?mode=ro', uri=True)" + (
            f".execute({query!r}).fetchall())"
        )
        return self.run(f"python3 -c {shlex.quote(script)}").strip()


def _checked(client: paramiko.SSHClient, command: str) -> str:
    _, stdout, _ = client.exec_command(command + " 2>&1", timeout=600)
    output = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, f"{command}:\n{output}"
    return output


def _missing() -> list[str]:
    tools = ["qemu-system-x86_64", "debootstrap", "mkfs.ext4", "ssh-keygen", "unshare"]
    missing = [t for t in tools if shutil.which(t) is None]
    return missing + (["root"] if os.geteuid() != 0 else [])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if _missing():
        reason = f"cannot build or boot the Debian server VM: missing {', '.join(_missing())}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    import debianvm

    work = tmp_path_factory.mktemp("install")
    image, key = debianvm.image()
    own = installkit.wheel(work / "own")
    made = installkit.debian_bundle(work, own)
    site = work / "site.yaml"
    site.write_text(SITE)
    home = work / "xdg-cache"
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    name = f"inst-{uuid.uuid4().hex[:8]}"
    booted = binder_lite("vm", "run", image, "--name", name, "--no-network", "--timeout", "600")
    try:
        assert booted.returncode == 0, booted.stdout + booted.stderr
        port = int(re.search(r"ssh:\s+127\.0\.0\.1:(\d+)", booted.stdout).group(1))  # type: ignore[union-attr]
        keys = (home / "binder-lite/vms" / name / "host-keys").read_text().split("\n")
        known = work / "known_hosts"
        known.write_text("".join(f"[127.0.0.1]:{port} {k}\n" for k in keys if k))
        yield Server(name, port, key, known, site, made, own, work)
    finally:
        binder_lite("vm", "stop", name)
        if old is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = old


def test_the_server_has_no_python_and_no_way_out(server: Server) -> None:
    assert server.run("command -v python3 || echo none").strip() == "none"
    # restrict=on: the guest reaches nothing but the host's forwards.
    out = server.run("timeout 10 bash -c '</dev/tcp/deb.debian.org/80' && echo open || echo closed")
    assert out.strip().endswith("closed"), out


def test_install_with_a_bundle_follows_every_step(server: Server) -> None:
    done = server.install("--bundle", server.bundle, "--serve-arg", "--allow-local-repos")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = re.findall(r"^step (\d+)/10: ", done.stdout, re.M)
    assert steps == [str(n) for n in range(1, 11)], done.stdout
    version = bundle.wheel_version(server.own)
    assert f"binder-lite {version} is running: http://debian-server:8080/" in done.stdout
    assert server.run("readlink /opt/binder-lite/current").strip() == version


def test_smoke_passes_on_systemd(server: Server) -> None:
    notebook = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    server.run(
        f"mkdir -p {REPO} && cd {REPO} && git init -q && "
        f"printf %s {shlex.quote(notebook)} > index.ipynb && git add index.ipynb && "
        "git -c user.name=t -c user.email=t@localhost commit -q -m smoke && "
        # the service's own: git refuses to clone a repository another user owns
        f"chown -R binder:binder {REPO}"
    )
    junit = server.work / "smoke.xml"
    done = binder_lite(
        "smoke",
        server.target,
        "--site",
        server.site,
        "--identity",
        server.key,
        "--known-hosts",
        server.known_hosts,
        "--repo",
        f"file://{REPO}",
        "--junit-xml",
        junit,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   test_service_comes_back_after_kill_9" in done.stdout
    assert "ok   test_binder_lite_service_is_running" in done.stdout
    assert "ok   test_a_notebook_runs_a_cell" in done.stdout
    assert " 0 failed" in done.stdout


def test_upgrade_migrates_the_database_and_keeps_the_sessions(server: Server) -> None:
    before = server.sql("SELECT id FROM sessions ORDER BY id")
    assert before != "[]", "the smoke test's session is recorded"
    newer = installkit.bumped_wheel(server.work, "99.0.0")
    done = server.install(
        "--bundle", server.bundle, "--wheel", newer, "--serve-arg", "--allow-local-repos"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "binder-lite 99.0.0 is running" in done.stdout
    old = bundle.wheel_version(server.own)
    assert f"previous: {old}, kept for --roll-back" in done.stdout
    assert server.sql("PRAGMA user_version") == f"[({store.VERSION + 1},)]"
    assert installkit.UPGRADE_TABLE in server.sql("SELECT name FROM sqlite_master")
    assert server.sql("SELECT id FROM sessions ORDER BY id") == before
    server.run(f"test -e /var/lib/binder-lite/sessions.sqlite.before-v{store.VERSION + 1}")


def test_roll_back_returns_to_the_version_before(server: Server) -> None:
    done = server.install("--roll-back")
    assert done.returncode == 0, done.stdout + done.stderr
    old = bundle.wheel_version(server.own)
    assert f"rolled back to binder-lite {old}" in done.stdout
    assert server.run("readlink /opt/binder-lite/current").strip() == old
    assert server.sql("PRAGMA user_version") == f"[({store.VERSION},)]"
    assert server.run("systemctl is-active binder-lite").strip() == "active"
    health = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/health').status)"
    assert server.run(f"python3 -c {shlex.quote(health)}").strip() == "200"


def test_a_failing_step_is_named_and_fails_the_command(server: Server) -> None:
    broken = server.work / "secret.yaml"
    broken.write_text(
        SITE + "  auth:\n    provider: github\n    client_id: abc\n"
        "    client_secret_file: /etc/binder-lite/github-secret\n"
        "  public_url: https://binder.example.org/\n"
    )
    done = binder_lite(
        "install",
        broken,
        "--target",
        server.target,
        "--identity",
        server.key,
        "--known-hosts",
        server.known_hosts,
        "--bundle",
        server.bundle,
    )
    assert done.returncode == 1
    assert "error: the installer failed (exit 1): step 8/10: site file and secrets" in done.stderr
    assert server.run("systemctl is-active binder-lite").strip() == "active"  # untouched
