"""Booting and smoke-testing a machine for real: the stand-in image (tests/standin.py,
since no Guix image can be built here) booted by `binder-lite vm` under QEMU and
checked over SSH by `binder-lite smoke`."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SSH_KEY

from binder_lite.smoke import checks

pytestmark = pytest.mark.vm

BIN = Path(sys.executable).parent
# The smoke checks as `binder-lite smoke` runs them, and those that need the service.
CHECKS = [name for name in vars(checks) if name.startswith("test_")]
NEED_SERVICE = [n for n in CHECKS if "web" in inspect.signature(getattr(checks, n)).parameters]
SITE = """\
version: 1
site:
  name: "Stand-in Binder"
  slug: standin
  tagline: "Debian, the Shepherd and binder-lite"
  primary_color: "#224466"
host:
  hostname: standin
  timezone: Europe/Amsterdam
users:
  - name: tester
    admin: true
    ssh_keys: ["{key}"]
binder:
  port: 8080
  # The VM has no Guix to build session environments with: sessions use the
  # service's own Jupyter.
  runtime: local
  push_credential_file: /etc/binder-lite/push-credential
"""


def _missing_tools() -> list[str]:
    tools = ["qemu-system-x86_64", "debootstrap", "mkfs.ext4", "ssh-keygen", "ssh"]
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (to build the stand-in image)")
    return missing


@dataclass
class Machine:
    name: str
    site: Path
    key: Path
    image: Path
    ssh_port: int
    output: str
    run_dir: Path  # binder-lite's record of the VM: host keys, serial log


def binder_lite(
    *args: str | os.PathLike[str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "binder-lite", *map(os.fspath, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def qemu_running(name: str, home: Path) -> bool:
    """Whether a QEMU of this test run (its files under `home`) runs VM `name`: another
    run on the machine may boot a VM of the same name at the same time."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"\0-name\0{name}\0".encode() in cmdline and os.fsencode(home) in cmdline:
                return True
    return False


@pytest.fixture(scope="session")
def vms_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the tests' VMs apart from the user's (binder-lite keeps them in the cache)."""
    home = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(image, site file, private key): the stand-in built for a fresh key."""
    missing = _missing_tools()
    if missing:
        reason = f"cannot build or boot the stand-in VM: missing {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    import standin as builder

    from binder_lite.site import load_site

    work = tmp_path_factory.mktemp("standin")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    site = work / "site.yaml"
    site.write_text(SITE.format(key=key.with_suffix(".pub").read_text().strip()))
    image = builder.build(load_site(site), work / "image", "push-secret-" + uuid.uuid4().hex)
    return image, site, key


@pytest.fixture(scope="session")
def machine(standin: tuple[Path, Path, Path], vms_home: Path) -> Iterator[Machine]:
    image, site, key = standin
    name = f"t-{uuid.uuid4().hex[:8]}"
    result = binder_lite("vm", "run", image, "--name", name, "--timeout", "600")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        port = int(re.search(r"ssh:\s+127\.0\.0\.1:(\d+)", result.stdout).group(1))  # type: ignore[union-attr]
        run_dir = vms_home / "binder-lite" / "vms" / name
        yield Machine(name, site, key, image, port, result.stdout + result.stderr, run_dir)
    finally:
        # The other tests' VMs are stopped by now: `vm stop` without a name finds this one.
        stopped = binder_lite("vm", "stop")
        if stopped.returncode != 0:
            binder_lite("vm", "stop", name)
    assert stopped.stdout == f"stopped {name}\n", stopped.stdout + stopped.stderr
    assert not qemu_running(name, vms_home)


def test_vm_run_proves_its_accelerator(machine: Machine) -> None:
    chosen = re.search(r"accelerator (kvm|tcg)", machine.output)
    assert chosen, machine.output
    if chosen.group(1) == "tcg":  # on this kind of machine KVM exists but does not work
        assert "warning:" in machine.output and "TCG" in machine.output
    assert "SSH is up; host keys from the serial console:" in machine.output


def test_smoke_passes_with_junit_and_summary(machine: Machine, tmp_path: Path) -> None:
    junit = tmp_path / "smoke.xml"
    result = binder_lite(
        "smoke", machine.name, "--site", machine.site, "-i", machine.key, "--junit-xml", junit
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_all_passed(result.stdout, junit)


def test_the_booted_service_is_the_one_guix_generated(machine: Machine) -> None:
    """What the Shepherd runs is Guix's lowering of `(binder-lite services)` for the
    site, store names mapped (tests/standin_guix.py), not a hand-written copy."""
    import standin as builder

    from binder_lite.site import load_site

    site = load_site(machine.site)
    expected = builder.lowered(site, builder.ROOT / "services", machine.image.parent)
    assert guest_output(machine, "cat /etc/shepherd/binder-lite.scm") == expected.service_file()
    # Guix's definition has a reload action and passes the JSON file Guix wrote.
    assert "reload" in guest_output(machine, "sudo -n herd doc binder-lite list-actions")
    serve = guest_output(machine, "pgrep -a -f 'binder-lite serve'")
    assert "serve /etc/binder-lite/binder-lite.json --port 8080 --state-dir" in serve, serve
    config = guest_output(machine, "cat /etc/binder-lite/binder-lite.json")
    assert config == expected.config_file()


def assert_all_passed(summary: str, junit: Path) -> None:
    assert f"{len(CHECKS)} passed, 0 failed, 0 skipped" in summary, summary
    for check in CHECKS:
        assert re.search(rf"ok\s+{check}\b", summary), summary
    suite = ET.parse(junit).getroot()
    assert sorted(c.get("name") or "" for c in suite.findall(".//testcase")) == sorted(CHECKS)
    assert not suite.findall(".//failure") and not suite.findall(".//error")


def test_vm_ssh_checks_the_host_key(machine: Machine) -> None:
    result = binder_lite("vm", "ssh", machine.name, "-i", machine.key, "--", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "standin"


def test_a_wrong_or_unknown_host_key_is_refused(machine: Machine, tmp_path: Path) -> None:
    target = f"ssh://tester@127.0.0.1:{machine.ssh_port}"
    wrong = binder_lite(
        "smoke", target, "--site", machine.site, "-i", machine.key, "--host-key", SSH_KEY
    )
    assert wrong.returncode == 1
    assert "host key does not match" in wrong.stderr and "refusing to connect" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    unknown = binder_lite(
        "smoke", target, "--site", machine.site, "-i", machine.key, "--known-hosts", empty
    )
    assert unknown.returncode == 1 and "no known host key" in unknown.stderr


def guest(machine: Machine, command: str, user: str = "tester") -> None:
    """Run a shell command on the guest over `vm ssh` (which checks its host key)."""
    result = binder_lite("vm", "ssh", machine.name, "-i", machine.key, "-l", user, "--", command)
    assert result.returncode == 0, result.stdout + result.stderr


def guest_output(machine: Machine, command: str) -> str:
    result = binder_lite("vm", "ssh", machine.name, "-i", machine.key, "--", command)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_stopped_service_fails_with_its_status(machine: Machine) -> None:
    """The service is waited for once; the other checks that need it fail at once,
    with the same reason (the Shepherd's status included)."""
    guest(machine, "sudo -n herd stop binder-lite")
    try:
        result = binder_lite(
            "smoke",
            machine.name,
            "--site",
            machine.site,
            "-i",
            machine.key,
            "--service-timeout",
            "10",
        )
        assert result.returncode == 1 and "smoke tests failed" in result.stderr
        failed = dict(re.findall(r"FAIL (test_\w+)\s+(.*)", result.stdout))
        assert sorted(failed) == sorted(NEED_SERVICE), result.stdout
        reasons = set(failed.values())
        assert len(reasons) == 1, result.stdout
        assert re.search(
            r"binder-lite on port 8080 did not answer within 10 s; herd status binder-lite:",
            reasons.pop(),
        )
        passed = len(CHECKS) - len(NEED_SERVICE)
        assert f"{passed} passed, {len(NEED_SERVICE)} failed, 0 skipped" in result.stdout
    finally:
        guest(machine, "sudo -n herd start binder-lite")


def test_smoke_as_root_on_a_host_without_sudo(machine: Machine, tmp_path: Path) -> None:
    """Logged in as root, the checks run herd, cat, grep and kill directly: sudo is
    taken away for the run (a host may have none)."""
    enable_root = " && ".join(
        [
            "install -d -m 700 /root/.ssh",
            "cp /home/tester/.ssh/authorized_keys /root/.ssh/",
            "echo 'PermitRootLogin prohibit-password' > /etc/ssh/sshd_config.d/00-root.conf",
            "kill -HUP $(pgrep -o -x sshd)",  # the listener rereads its configuration
            "mv /usr/bin/sudo /usr/bin/sudo.away",
        ]
    )
    guest(machine, f"sudo -n sh -c {shlex.quote(enable_root)}")
    try:
        root_login_works(machine)
        keys = (machine.run_dir / "host-keys").read_text().splitlines()
        junit = tmp_path / "smoke.xml"
        result = binder_lite(
            "smoke",
            f"ssh://root@127.0.0.1:{machine.ssh_port}",
            "--site",
            machine.site,
            "-i",
            machine.key,
            *[arg for key in keys for arg in ("--host-key", key)],
            "--junit-xml",
            junit,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert_all_passed(result.stdout, junit)
    finally:
        restore = (
            "mv /usr/bin/sudo.away /usr/bin/sudo; rm -f /etc/ssh/sshd_config.d/00-root.conf "
            "/root/.ssh/authorized_keys; kill -HUP $(pgrep -o -x sshd)"
        )
        guest(machine, restore, user="root")


def root_login_works(machine: Machine, timeout: float = 30) -> None:
    """Wait (bounded) until sshd, reloading, lets root in."""
    deadline = time.monotonic() + timeout
    while True:
        check = binder_lite(
            "vm", "ssh", machine.name, "-i", machine.key, "-l", "root", "--", "id -u"
        )
        if check.returncode == 0 and check.stdout.strip() == "0":
            return
        assert time.monotonic() < deadline, check.stdout + check.stderr
        time.sleep(0.5)


def test_a_vm_that_never_reaches_ssh(
    standin: tuple[Path, Path, Path], vms_home: Path, tmp_path: Path
) -> None:
    import standin as builder

    image, _, _ = standin
    broken = builder.without_init(image, tmp_path / "broken.img")
    name = f"t-{uuid.uuid4().hex[:8]}"
    result = binder_lite("vm", "run", broken, "--name", name, "--accel", "tcg", "--timeout", "45")
    assert result.returncode == 1
    assert "no SSH server answered" in result.stderr
    assert "the end of the serial console" in result.stderr
    assert re.search(r"Kernel panic|init", result.stderr), result.stderr[-2000:]
    assert not qemu_running(name, vms_home)


def test_vm_smoke_boots_checks_and_stops(
    standin: tuple[Path, Path, Path], vms_home: Path, tmp_path: Path
) -> None:
    """The one-command path (with the stand-in instead of a Guix build)."""
    image, site, key = standin
    junit = tmp_path / "smoke.xml"
    result = binder_lite(
        "vm", "smoke", site, "--image", image, "--accel", "tcg", "-i", key, "--junit-xml", junit
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_all_passed(result.stdout, junit)
    stopped = re.search(r"stopped (\S+)", result.stderr)
    assert stopped and not qemu_running(stopped.group(1), vms_home)
