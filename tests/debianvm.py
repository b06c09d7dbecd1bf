"""A minimal Debian 12 server image for installing binder-lite onto, as a user's server
would be before `binder-lite install`: debootstrap minbase with systemd, OpenSSH and
a kernel, and no Python.  Booted straight from its kernel and initrd (no boot loader)
by `binder-lite vm run`, which reads how from the image's metadata.

Cached under /var/cache/binder-lite, keyed by its recipe (this file's build steps):
an edit to them makes a new image; root's SSH key is made with it and kept beside it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
from pathlib import Path

from binder_lite import imagemeta
from binder_lite.imagemeta import Boot, ImageMeta
from binder_lite.vm.ssh import BEGIN_KEYS, END_KEYS

CACHE = Path(os.environ.get("BINDER_LITE_CACHE", "/var/cache/binder-lite"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "systemd-sysv,udev,openssh-server,linux-image-cloud-amd64"
SIZE = "4G"  # binder-lite with Jupyter, twice (an upgrade keeps the one before)

# Host keys are made at each boot and printed on the serial console, where
# `binder-lite vm run` reads them: the VM runner never trusts a key on first use.
HOST_KEYS_UNIT = f"""\
[Unit]
Description=Make SSH host keys and show them on the serial console
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'ssh-keygen -A && {{ echo "{BEGIN_KEYS}"; \
cat /etc/ssh/ssh_host_*_key.pub; echo "{END_KEYS}"; }} >/dev/ttyS0'

[Install]
RequiredBy=ssh.service
"""
NETWORK = "[Match]\nName=eth0 en*\n\n[Network]\nDHCP=yes\n"
SSHD = (
    "PermitRootLogin prohibit-password\n"
    "PasswordAuthentication no\n"
    "KbdInteractiveAuthentication no\n"
)


def _run(*argv: str | os.PathLike[str]) -> None:
    subprocess.run([os.fspath(a) for a in argv], check=True, capture_output=True)


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def _make(tmp: Path) -> None:
    root = tmp / "root"
    _run("debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", root, MIRROR)
    assert not (root / "usr/bin/python3").exists(), "the server image must have no Python"
    key = tmp / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "install-test", "-f", key)
    _write(root, "/root/.ssh/authorized_keys", key.with_suffix(".pub").read_text(), 0o600)
    (root / "root/.ssh").chmod(0o700)
    _write(root, "/etc/hostname", "debian-server\n")
    _write(root, "/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 debian-server\n")
    _write(root, "/etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    _write(root, "/etc/systemd/network/20-dhcp.network", NETWORK)
    _write(root, "/etc/ssh/sshd_config.d/test.conf", SSHD)
    _write(root, "/etc/systemd/system/host-keys.service", HOST_KEYS_UNIT)
    for unit in ("systemd-networkd.service", "host-keys.service"):
        _run("chroot", root, "systemctl", "enable", unit)
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    boot = root / "boot"
    shutil.copy(next(boot.glob("vmlinuz-*")), tmp / "vmlinuz")
    shutil.copy(next(boot.glob("initrd.img-*")), tmp / "initrd.img")
    image = tmp / "debian-12.img"
    _run("mkfs.ext4", "-q", "-F", "-L", "debian", "-d", root, image, SIZE)
    shutil.rmtree(root)
    imagemeta.write(
        image,
        ImageMeta(
            image=image.name,
            type="debian-server",
            format="raw",
            boot=Boot(
                firmware="bios",
                kernel="vmlinuz",
                initrd="initrd.img",
                append="root=/dev/vda rw console=ttyS0,115200 net.ifnames=0",
            ),
            ssh_user="root",
            ssh_port=22,
            http_port=8080,
        ),
    )


def image() -> tuple[Path, Path]:
    """(the image, root's private key), made once per recipe."""
    recipe = "\n".join([PACKAGES, SIZE, HOST_KEYS_UNIT, NETWORK, SSHD, inspect.getsource(_make)])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    target = CACHE / f"install-debian-12-{key}"
    if not (target / ".ready").exists():
        for old in CACHE.glob("install-debian-12-*"):
            shutil.rmtree(old, ignore_errors=True)
        partial = CACHE / f"install-debian-12-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        _make(partial)
        (partial / ".ready").touch()
        partial.rename(target)
    return target / "debian-12.img", target / "id_ed25519"
