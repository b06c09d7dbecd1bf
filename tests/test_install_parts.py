"""The installer's parts on this machine: the facts bootstrap.sh reads (and what it
refuses), the command run on the target, the bundle's apt index, systemd's side of the
smoke checks, and QEMU's closed network.  The whole, for real: test_bootstrap.py (a
chroot) and test_install.py (a VM)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CliResult

from binder_lite import bundle, install
from binder_lite.imagemeta import Boot
from binder_lite.smoke.shepherd import AsRoot, ShepherdService
from binder_lite.smoke.systemd import SystemdService, service_on, status_command
from binder_lite.vm import qemu

SERVICE_SITE = """\
version: 1
site:
  name: Parts
  slug: parts
binder:
  runtime: local
  port: 8123
  user: svc
  state_dir: /srv/state
  push_credential_file: /etc/binder-lite/push
"""


def test_facts_are_the_sites_settings(write_site: Callable[..., Path]) -> None:
    facts = install.facts(write_site(SERVICE_SITE))
    assert facts == {
        "USER_NAME": "svc",
        "STATE_DIR": "/srv/state",
        "PORT": "8123",
        "RUNTIME": "local",
        "SECRET_FILES": "/etc/binder-lite/push",
        "PUBLIC_URL": "",
    }


@pytest.mark.parametrize("path", ["/srv/a b", "/srv/a|b", "/srv/$(id)", "/srv/a&b", "/srv/a'b"])
def test_paths_that_cannot_go_into_a_unit_are_refused(
    write_site: Callable[..., Path], path: str
) -> None:
    site = write_site(SERVICE_SITE.replace("/srv/state", f'"{path}"'))
    with pytest.raises(install.UsageError, match="the installer takes only letters"):
        install.facts(site)


def test_assignments_survive_the_shell(tmp_path: Path) -> None:
    hostile = {"PUBLIC_URL": "https://x/'; touch pwned; '$(id)`id`", "PORT": "80"}
    shown = subprocess.run(
        [
            "sh",
            "-c",
            'eval "$1"; printf %s "$PUBLIC_URL"',
            "sh",
            install.shell_assignments(hostile),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == hostile["PUBLIC_URL"]
    assert not (tmp_path / "pwned").exists()


def test_the_module_answers_bootstrap_sh(write_site: Callable[..., Path], tmp_path: Path) -> None:
    import sqlite3
    import sys

    from binder_lite.web.store import VERSION

    site = write_site(SERVICE_SITE)
    run = [sys.executable, "-m", "binder_lite.install"]
    facts = subprocess.run([*run, "facts", site], capture_output=True, text=True, check=True)
    assert "USER_NAME=svc\n" in facts.stdout
    db = tmp_path / "sessions.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA user_version = 3")
    schema = subprocess.run([*run, "schema", db], capture_output=True, text=True, check=True)
    assert schema.stdout == f"3 {VERSION}\n"
    bad = subprocess.run([*run, "facts", tmp_path / "none.yaml"], capture_output=True, text=True)
    assert bad.returncode == 1 and "cannot read the file" in bad.stderr


def test_the_command_run_on_the_target() -> None:
    payload = install.Payload(Path("site.yaml"), Path("b.tar"), Path("w/binder_lite-1-py3.whl"))
    argv = install.bootstrap_argv("/var/tmp/d", payload, serve_args=["--allow-local-repos"])
    assert argv == [
        "sh",
        "/var/tmp/d/bootstrap.sh",
        "--site",
        "/var/tmp/d/site.yaml",
        "--bundle",
        "/var/tmp/d/bundle.tar",
        "--wheel",
        "/var/tmp/d/wheels/binder_lite-1-py3.whl",
        "--serve-arg",
        "--allow-local-repos",
    ]
    back = install.bootstrap_argv("/d", payload, roll_back=True)
    assert back == ["sh", "/d/bootstrap.sh", "--site", "/d/site.yaml", "--roll-back"]
    gone = install.bootstrap_argv("/d", payload, uninstall=True, purge=True)
    assert gone == ["sh", "/d/bootstrap.sh", "--uninstall", "--purge"]


def test_install_refuses_an_unknown_host_key(
    cli: Callable[..., CliResult], write_site: Callable[..., Path], tmp_path: Path
) -> None:
    site = write_site(SERVICE_SITE)
    known = tmp_path / "known_hosts"
    known.write_text("")
    result = cli("install", site, "--target", "ssh://root@127.0.0.1:9", "--known-hosts", known)
    assert result.code == 2
    assert "no known host key" in result.err and "never accepts an unknown key" in result.err
    result = cli("install", site, "--target", "ssh://root@127.0.0.1:9", "--purge")
    assert result.code == 2 and "--purge goes with --uninstall" in result.err


def test_bundles_are_made_for_known_releases_only(tmp_path: Path) -> None:
    with pytest.raises(install.UsageError, match="bundles are made for debian-12"):
        bundle.make("debian-99", tmp_path / "b.tar")
    with pytest.raises(install.UsageError, match="debian-12 has no guix package"):
        bundle.make("debian-12", tmp_path / "b.tar", with_guix=True)


def test_the_bundle_packages_come_from_bootstrap_sh() -> None:
    packages = bundle.base_packages()
    assert packages[:2] == ("python3", "python3-venv") and "bubblewrap" in packages


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_the_apt_index_of_the_bundles_debs(tmp_path: Path) -> None:
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: bl-test\nVersion: 1.2-3\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Depends: libc6\nDescription: a test\n"
    )
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(
        ["dpkg-deb", "-Zxz", "--build", tree, debs / "bl-test_1.2-3_all.deb"],
        check=True,
        capture_output=True,
    )
    index = bundle.packages_index(debs)
    assert index.startswith("Package: bl-test\nVersion: 1.2-3\n")
    assert "\nFilename: ./bl-test_1.2-3_all.deb\n" in index and "\nSHA256: " in index
    (debs / "junk.deb").write_bytes(b"not an archive")
    with pytest.raises(bundle.BundleError, match="not a .deb"):
        bundle.packages_index(debs)


def test_the_wheel_version_comes_from_its_name() -> None:
    assert bundle.wheel_version(Path("binder_lite-0.2.0-py3-none-any.whl")) == "0.2.0"
    with pytest.raises(install.UsageError):
        bundle.wheel_version(Path("other-1.0-py3-none-any.whl"))


SYSTEMCTL = """\
#!/bin/sh
echo "$0 $*" >> {log}
case $1 in
    show) printf 'MainPID=4343\\nActiveState=active\\nSubState=running\\n' ;;
    status) printf '● binder-lite.service - binder-lite\\n     Active: active (running)\\n' ;;
esac
"""


@pytest.fixture
def local_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path]:
    """testinfra's host for this machine with a stand-in `systemctl` alone on PATH."""
    import testinfra

    bin_dir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SYSTEMCTL.format(log=log))
    (bin_dir / "systemctl").chmod(0o755)
    for tool in ("sh", "test"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))
    return testinfra.get_host("local://"), log


def test_systemds_view_of_the_service(local_systemd: tuple[Any, Path]) -> None:
    host, log = local_systemd
    status = SystemdService(host, "binder-lite", AsRoot(sudo=False)).status()
    assert status.running and status.pid == 4343
    assert "Active: active (running)" in status.output
    assert (
        log.read_text()
        .splitlines()[0]
        .endswith("systemctl show -p ActiveState -p SubState -p MainPID binder-lite.service")
    )


def test_the_manager_is_the_targets_own(local_systemd: tuple[Any, Path]) -> None:
    host, _ = local_systemd
    chosen = service_on(host, "binder-lite", AsRoot(sudo=False))
    # This machine runs no systemd (a container), so the Shepherd's is chosen; a
    # systemd machine gets SystemdService (test_install.py boots one).
    expected = SystemdService if os.path.isdir("/run/systemd/system") else ShepherdService
    assert isinstance(chosen, expected)
    assert status_command(SystemdService(host, "x", AsRoot(False))) == "systemctl status x"
    assert status_command(ShepherdService(host, "x", AsRoot(False))) == "herd status x"


def test_a_closed_network_keeps_the_forwards() -> None:
    spec = qemu.VMSpec(
        name="n",
        image=Path("/i.img"),
        image_format="raw",
        boot=Boot(),
        run_dir=Path("/r"),
        ssh_port=2222,
        http_port=8081,
        restrict=True,
    )
    nic = qemu.qemu_argv("qemu", spec)[qemu.qemu_argv("qemu", spec).index("-nic") + 1]
    assert nic == (
        "user,model=virtio-net-pci,restrict=on,"
        "hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8081-:8080"
    )


class _Output:
    """What paramiko's exec_command hands back, as far as install._follow reads it."""

    def __init__(self, lines: list[str], status: int) -> None:
        self.lines = lines
        self.channel = self
        self.status = status

    def __iter__(self) -> Any:
        return iter(line + "\n" for line in self.lines)

    def recv_exit_status(self) -> int:
        return self.status


class _Client:
    def __init__(self, lines: list[str], status: int) -> None:
        self.output = _Output(lines, status)
        self.commands: list[str] = []

    def exec_command(self, command: str, timeout: float) -> tuple[None, _Output, None]:
        self.commands.append(command)
        return None, self.output, None


def test_the_installers_steps_are_followed_and_a_failure_named() -> None:
    lines = ["step 1/2: checking this host", "  debian-12", "step 2/2: switching", "done"]
    shown: list[str] = []
    client = _Client(lines, 0)
    outcome = install._follow(client, "sh b.sh", shown.append, 60)  # type: ignore[arg-type]
    assert shown == lines and outcome == install.Outcome(2, "done")
    assert client.commands == ["sh b.sh 2>&1"]
    failing = ["step 1/2: checking", "failed: step 1/2: checking: run as root"]
    with pytest.raises(install.InstallError) as raised:
        install._follow(_Client(failing, 1), "sh b.sh", shown.append, 60)  # type: ignore[arg-type]
    assert str(raised.value) == ("the installer failed (exit 1): step 1/2: checking: run as root")
    killed = ["step 2/2: switching", "Killed"]
    with pytest.raises(
        install.InstallError, match=r"exit 137\): during step 2/2: switching: Killed"
    ):
        install._follow(_Client(killed, 137), "sh b.sh", shown.append, 60)  # type: ignore[arg-type]
