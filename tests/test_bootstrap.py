"""installer/bootstrap.sh for real, in a minimal Debian 12 root (debootstrap minbase:
no Python) with no network (`unshare --net`), from a real bundle: install, run again,
upgrade, roll back, uninstall.  No systemd runs in a chroot, so the script runs with
--no-start; starting, /health and kill -9 are tests/test_install.py's, in a VM.

The tests of this module run in order on one root, as an administrator would."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import installkit
import pytest

from binder_lite import bundle
from binder_lite.web import store

pytestmark = pytest.mark.slow

INSTALLER = installkit.ROOT / "installer"
SITE = """\
version: 1
site:
  name: Bootstrap test
  slug: bootstrap-test
binder:
  runtime: local
  user: blboot
  port: 8931
"""


def test_the_script_is_posix_sh() -> None:
    script = INSTALLER / "bootstrap.sh"
    subprocess.run(["dash", "-n", script], check=True)
    for tool, argv in (
        ("shellcheck", ["shellcheck", "-s", "sh", script]),
        ("checkbashisms", ["checkbashisms", script]),
    ):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup installs it)")
        found = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert found.returncode == 0, found.stdout + found.stderr


def _missing() -> list[str]:
    missing = [t for t in ("debootstrap", "unshare", "chroot") if shutil.which(t) is None]
    return missing + (["root"] if os.geteuid() != 0 else [])


@dataclass
class Chroot:
    root: Path
    bundle: Path
    wheel: Path
    work: Path

    def run(self, *args: str, network: bool = False) -> subprocess.CompletedProcess[str]:
        """bootstrap.sh (copied in at /installer) with `args`, in the root, offline."""
        return installkit.in_root(
            self.root, "sh", "/installer/bootstrap.sh", *args, network=network
        )

    def put(self, source: Path, inside: str) -> str:
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        return inside

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    if _missing():
        pytest.skip(f"needs {', '.join(_missing())}")
    work = tmp_path_factory.mktemp("bootstrap")
    own = installkit.wheel(work / "own")
    made = installkit.debian_bundle(work, own)
    base = bundle.minbase_root(bundle.release("debian-12"), lambda _: None)
    root = work / "root"
    subprocess.run(["cp", "-a", base, root], check=True)
    assert not (root / "usr/bin/python3").exists(), "the minbase root has Python"
    shutil.copytree(INSTALLER, root / "installer")
    box = Chroot(root, made, own, work)
    box.put(made, "/root/bundle.tar")
    (root / "root/site.yaml").write_text(SITE)
    yield box
    shutil.rmtree(root, ignore_errors=True)


def _steps(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("step ")]


def test_installs_offline_from_the_bundle(chroot: Chroot) -> None:
    done = chroot.run("--site", "/root/site.yaml", "--bundle", "/root/bundle.tar", "--no-start")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = _steps(done.stdout)
    assert [s.split(":")[0] for s in steps] == [f"step {n}/10" for n in range(1, 11)]
    assert chroot.path("/usr/bin/python3").exists()
    version = bundle.wheel_version(chroot.wheel)
    assert os.readlink(chroot.path("/opt/binder-lite/current")) == version
    assert chroot.path(f"/opt/binder-lite/{version}/bin/jupyter-lab").exists()  # local runtime
    state = chroot.path("/var/lib/binder-lite").stat()
    assert stat.S_IMODE(state.st_mode) == 0o700
    site = chroot.path("/etc/binder-lite/site.yaml").stat()
    assert stat.S_IMODE(site.st_mode) == 0o600
    assert site.st_uid == state.st_uid != 0  # the service account's
    unit = chroot.path("/etc/systemd/system/binder-lite.service").read_text()
    assert (
        "ExecStart=/opt/binder-lite/current/bin/binder-lite serve /etc/binder-lite/site.yaml "
        "--port 8931 --state-dir /var/lib/binder-lite --runtime local\n" in unit
    )
    for hardening in ("User=blboot", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert f"\n{hardening}\n" in unit
    wanted = chroot.path("/etc/systemd/system/multi-user.target.wants/binder-lite.service")
    assert os.readlink(wanted) == "/etc/systemd/system/binder-lite.service"  # enabled


def test_running_it_again_changes_nothing(chroot: Chroot) -> None:
    before = chroot.path("/opt/binder-lite/current").resolve().stat().st_mtime_ns
    done = chroot.run("--site", "/root/site.yaml", "--bundle", "/root/bundle.tar", "--no-start")
    assert done.returncode == 0, done.stdout + done.stderr
    for expected in ("already installed", "exists", "unchanged"):
        assert expected in done.stdout
    assert "written" not in done.stdout and "created" not in done.stdout
    assert chroot.path("/opt/binder-lite/current").resolve().stat().st_mtime_ns == before


def test_the_guix_runtime_needs_a_guix_the_release_lacks(chroot: Chroot) -> None:
    guix_site = chroot.work / "guix.yaml"
    guix_site.write_text(SITE.replace("runtime: local", "runtime: guix"))
    chroot.put(guix_site, "/root/guix.yaml")
    wheel = chroot.put(chroot.wheel, f"/root/{chroot.wheel.name}")
    done = chroot.run("--site", "/root/guix.yaml", "--wheel", wheel, "--no-start")
    assert done.returncode == 1
    assert (
        "failed: step 5/10: guix and its daemon: debian-12 has no guix package: "
        "install Guix with its binary installation" in done.stderr
    )


def test_a_missing_secret_file_is_refused(chroot: Chroot) -> None:
    secret_site = chroot.work / "secret.yaml"
    secret_site.write_text(
        SITE + "  auth:\n    provider: github\n    client_id: abc\n"
        "    client_secret_file: /etc/binder-lite/github-secret\n"
        "  public_url: https://binder.example.org/\n"
    )
    chroot.put(secret_site, "/root/secret.yaml")
    done = chroot.run("--site", "/root/secret.yaml", "--bundle", "/root/bundle.tar", "--no-start")
    assert done.returncode == 1
    assert (
        "failed: step 8/10: site file and secrets: the site names "
        "/etc/binder-lite/github-secret, which does not exist" in done.stderr
    )
    assert "github" not in chroot.path("/etc/binder-lite/site.yaml").read_text()


def test_hostile_arguments_are_refused(chroot: Chroot) -> None:
    done = chroot.run("--site", "/root/site.yaml", "--serve-arg", "--x;touch /pwned", "--no-start")
    assert done.returncode == 1 and "only [A-Za-z0-9=._/:-]" in done.stderr
    assert not chroot.path("/pwned").exists()
    dots = chroot.work / "binder_lite-..-py3-none-any.whl"
    shutil.copy(chroot.wheel, dots)
    chroot.put(dots, f"/root/{dots.name}")
    done = chroot.run("--site", "/root/site.yaml", "--wheel", f"/root/{dots.name}", "--no-start")
    assert done.returncode == 1 and "not a binder-lite wheel name" in done.stderr
    assert chroot.path("/opt/binder-lite/current").exists()
    bad = chroot.work / "bad.yaml"
    bad.write_text(SITE.replace("port: 8931", "port: 8931\n  state_dir: /var/lib/a|b"))
    chroot.put(bad, "/root/bad.yaml")
    done = chroot.run("--site", "/root/bad.yaml", "--bundle", "/root/bundle.tar", "--no-start")
    assert done.returncode == 1
    assert "failed: step 4/10: checking the site file" in done.stderr
    assert "binder.state_dir is '/var/lib/a|b'" in done.stderr


def test_upgrade_keeps_the_previous_for_roll_back(chroot: Chroot) -> None:
    old = bundle.wheel_version(chroot.wheel)
    newer = installkit.bumped_wheel(chroot.work, "99.0.0")
    chroot.put(newer, f"/root/{newer.name}")
    done = chroot.run(
        "--site",
        "/root/site.yaml",
        "--bundle",
        "/root/bundle.tar",
        "--wheel",
        f"/root/{newer.name}",
        "--no-start",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(chroot.path("/opt/binder-lite/current")) == "99.0.0"
    assert os.readlink(chroot.path("/opt/binder-lite/previous")) == old
    assert f"previous: {old}, kept for --roll-back" in done.stdout


def test_roll_back_restores_the_database_the_upgrade_migrated(chroot: Chroot) -> None:
    # What the newer version did when it started: copied the database, then migrated.
    db = chroot.path("/var/lib/binder-lite/sessions.sqlite")
    known = store.VERSION  # the previous installation is this checkout's
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE before_upgrade (id INTEGER)")
        c.execute(f"PRAGMA user_version = {known}")
    shutil.copy(db, db.with_name(f"sessions.sqlite.before-v{known + 1}"))
    with sqlite3.connect(db) as c:
        c.execute(f"CREATE TABLE {installkit.UPGRADE_TABLE} (id INTEGER)")
        c.execute(f"PRAGMA user_version = {known + 1}")
    done = chroot.run("--site", "/root/site.yaml", "--roll-back")
    assert done.returncode == 0, done.stdout + done.stderr
    old = bundle.wheel_version(chroot.wheel)
    assert os.readlink(chroot.path("/opt/binder-lite/current")) == old
    assert os.readlink(chroot.path("/opt/binder-lite/previous")) == "99.0.0"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == known
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    assert "before_upgrade" in tables and installkit.UPGRADE_TABLE not in tables
    assert db.with_name(f"sessions.sqlite.rolled-back-from-v{known + 1}").exists()


def test_uninstall_keeps_the_state_and_purge_removes_it(chroot: Chroot) -> None:
    done = chroot.run("--uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not chroot.path("/opt/binder-lite").exists()
    assert not chroot.path("/etc/systemd/system/binder-lite.service").exists()
    assert not chroot.path("/etc/binder-lite/site.yaml").exists()
    assert chroot.path("/var/lib/binder-lite/sessions.sqlite").exists()
    assert "blboot:" in chroot.path("/etc/passwd").read_text()
    done = chroot.run("--uninstall", "--purge")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not chroot.path("/var/lib/binder-lite").exists()
    assert "blboot:" not in chroot.path("/etc/passwd").read_text()
    assert not chroot.path("/etc/binder-lite").exists()
