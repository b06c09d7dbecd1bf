"""The stand-in for a binder-lite Guix System image (none can be built here: no
substitutes).  Built from Debian packages: a kernel, OpenSSH, the Shepherd (Debian
sid's, as Guix uses), binder-lite installed from this checkout and configured from a
site file; booted by binder-lite's own `vm` code and smoke-tested by its own suite.

Layers are cached under /var/cache/binder-lite, each keyed by what it is made of:
the Debian root (this file's recipe), the Python dependencies (pyproject.toml), then
the site's image (binder-lite's wheel and the site), which is cheap to remake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from binder_lite import imagemeta
from binder_lite.imagemeta import Boot, ImageMeta
from binder_lite.render import issue_text, motd_text
from binder_lite.site.model import Site

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent / "standin"
CACHE = Path(os.environ.get("BINDER_LITE_CACHE", "/var/cache/binder-lite"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = (
    "linux-image-cloud-amd64,openssh-server,shepherd,python3,python3-venv,git,"
    "iproute2,procps,ca-certificates,sudo,tzdata,bubblewrap,slirp4netns,"
    # The installer ISO's disk step (tests/test_installer_image.py): sfdisk, mkfs.fat.
    "fdisk,dosfstools"
)
RECIPE = f"sid minbase {PACKAGES} v1"


def _run(*argv: str | os.PathLike[str], **kwargs: object) -> None:
    subprocess.run([os.fspath(a) for a in argv], check=True, **kwargs)  # type: ignore[call-overload]


def _chroot(root: Path, *argv: str) -> None:
    """Run in the image's root with a clean environment (not this machine's pip settings)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
    _run("chroot", root, *argv, env=env, stdout=subprocess.DEVNULL)


def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:12]


def _layer(name: str, key: str, make: object) -> Path:
    """A cached directory: made by make(tmp) once per key; stale ones are removed."""
    target = CACHE / f"{name}-{key}"
    if (target / ".ready").exists():
        return target
    for old in CACHE.glob(f"{name}-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    tmp = CACHE / f"{name}-{key}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)  # type: ignore[operator]
    (tmp / ".ready").touch()
    tmp.rename(target)
    return target


def debian_root() -> Path:
    def make(tmp: Path) -> None:
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={PACKAGES}",
            "sid",
            tmp / "root",
            MIRROR,
            stdout=subprocess.DEVNULL,
        )

    return _layer("standin-debian", _key(RECIPE), make) / "root"


def python_root() -> Path:
    """The Debian root plus a virtualenv with binder-lite's dependencies and Jupyter."""
    base = debian_root()
    pyproject = (ROOT / "pyproject.toml").read_bytes()

    def make(tmp: Path) -> None:
        root = tmp / "root"
        _run("cp", "-a", base, root)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        # The host's certificate authorities while pip runs: some networks reach PyPI
        # through a proxy whose certificate only the host trusts.
        bundle = root / "etc/ssl/certs/ca-certificates.crt"
        own = bundle.read_bytes()
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", bundle)
        requirements = _dependencies() + ["notebook"]
        try:
            _chroot(root, "python3", "-m", "venv", "/opt/binder-lite")
            _chroot(
                root,
                "/opt/binder-lite/bin/pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *requirements,
            )
        finally:
            bundle.write_bytes(own)

    return _layer("standin-python", _key(RECIPE, pyproject), make) / "root"


def _dependencies() -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def wheel(out: Path) -> Path:
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        out,
        ROOT,
        stdout=subprocess.DEVNULL,
    )
    return next(out.glob("binder_lite-*.whl"))


def build(site: Site, out_dir: Path, secret: str) -> Path:
    """The stand-in image for `site` in `out_dir`, with its metadata as built images
    have it (without a build record: no Guix built it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = python_root()
    root = out_dir / "root"
    shutil.rmtree(root, ignore_errors=True)
    _run("cp", "-a", "--reflink=auto", base, root)
    whl = wheel(out_dir)
    shutil.copy(whl, root / "tmp")
    _chroot(
        root,
        "/opt/binder-lite/bin/pip",
        "install",
        "-q",
        "--no-deps",
        "--disable-pip-version-check",
        f"/tmp/{whl.name}",
    )
    _configure(root, site, secret)
    image = out_dir / f"{site.site.slug}-standin.img"
    image.unlink(missing_ok=True)
    _run(
        "mkfs.ext4", "-q", "-F", "-L", "standin", "-d", root, image, "3G", stdout=subprocess.DEVNULL
    )
    boot = root / "boot"
    kernel = next(boot.glob("vmlinuz-*"))
    initrd = next(boot.glob("initrd.img-*"))
    shutil.copy(kernel, out_dir / "vmlinuz")
    shutil.copy(initrd, out_dir / "initrd.img")
    shutil.rmtree(root)
    meta = ImageMeta(
        image=image.name,
        type="standin",
        format="raw",
        boot=Boot(
            firmware="bios",
            kernel="vmlinuz",
            initrd="initrd.img",
            append="root=/dev/vda rw console=ttyS0,115200 "
            "init=/sbin/standin-init net.ifnames=0 quiet",
        ),
        ssh_user=next(u.name for u in site.users if u.ssh_keys),
        ssh_port=22,
        http_port=site.binder.port,
    )
    imagemeta.write(image, meta)
    return image


def without_init(image: Path, broken: Path) -> Path:
    """`broken`: the stand-in `image` (linked, not copied) booting an init that does not
    exist, so the kernel panics and no SSH server ever answers."""
    meta = imagemeta.read(image)
    assert meta is not None and meta.boot.append and meta.boot.kernel and meta.boot.initrd
    broken.symlink_to(image)
    boot = dataclasses.replace(
        meta.boot,
        append=meta.boot.append.replace("init=/sbin/standin-init", "init=/nonexistent"),
        # Its own metadata sits beside the link: the kernel and initrd stay where they are.
        kernel=str(image.parent / meta.boot.kernel),
        initrd=str(image.parent / meta.boot.initrd),
    )
    imagemeta.write(broken, dataclasses.replace(meta, image=broken.name, boot=boot))
    return broken


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def _configure(root: Path, site: Site, secret: str) -> None:
    """What the rendered operating-system declares, done the Debian way."""
    _write(root, "/etc/hostname", site.host.hostname + "\n")
    _write(root, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {site.host.hostname}\n")
    _write(root, "/etc/timezone", site.host.timezone + "\n")
    localtime = root / "etc/localtime"
    localtime.unlink(missing_ok=True)
    localtime.symlink_to(f"/usr/share/zoneinfo/{site.host.timezone}")
    _write(root, "/etc/issue", issue_text(site))
    _write(root, "/etc/motd", motd_text(site))
    for user in site.users:
        _chroot(
            root,
            "useradd",
            "-m",
            "-s",
            "/bin/sh",
            "-G",
            "sudo" if user.admin else "users",
            user.name,
        )
        _write(
            root, f"/home/{user.name}/.ssh/authorized_keys", "\n".join(user.ssh_keys) + "\n", 0o600
        )
        _chroot(root, "chown", "-R", f"{user.name}:{user.name}", f"/home/{user.name}")
    _write(root, "/etc/sudoers.d/wheel", "%sudo ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    _write(
        root,
        "/etc/ssh/sshd_config.d/binder-lite.conf",
        f"Port {site.ssh.port}\nPermitRootLogin no\n"
        f"PasswordAuthentication {'yes' if site.ssh.password_authentication else 'no'}\n"
        "KbdInteractiveAuthentication no\n",
    )
    _chroot(
        root,
        "useradd",
        "--system",
        "-d",
        site.binder.state_dir,
        "-m",
        "-s",
        "/usr/sbin/nologin",
        site.binder.user,
    )
    # The site file and its logo; the secret file, for the service's account only;
    # and a /gnu/store holding what Guix would put there (the service's settings).
    site_text = site.path.read_text()
    _write(root, "/etc/binder-lite/site.yaml", site_text)
    if site.site.logo:
        logo = root / "etc/binder-lite" / site.site.logo.relative_to(site.path.parent)
        logo.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(site.site.logo, logo)
    if site.binder.push_credential_file:
        _write(root, site.binder.push_credential_file, f"{site.binder.user}:{secret}\n", 0o600)
        _chroot(root, "chown", site.binder.user, site.binder.push_credential_file)
    _write(root, "/gnu/store/00000000000000000000000000000000-binder-lite.yaml", site_text)
    serve = [
        "/opt/binder-lite/bin/binder-lite",
        "serve",
        "/etc/binder-lite/site.yaml",
        "--runtime",
        "local",
        "--allow-local-repos",
        "--address",
        "0.0.0.0",
    ]
    scm = (HERE / "init.scm").read_text().replace("@SERVE@", " ".join(json.dumps(a) for a in serve))
    _write(root, "/etc/shepherd/init.scm", scm)
    _write(root, "/sbin/standin-init", (HERE / "init.sh").read_text(), 0o755)
    _chroot(root, "sh", "-c", "rm -f /etc/ssh/ssh_host_*")  # made at each boot
