"""The stand-in for a binder-lite Guix System image (none can be built here: no
substitutes).  Built from Debian packages: a kernel, OpenSSH, the Shepherd (Debian
sid's, as Guix uses), binder-lite installed from this checkout and configured from a
site file; booted by binder-lite's own `vm` code and smoke-tested by its own suite.

Its binder-lite service is the one Guix generates from `(binder-lite services)` for
the site (tests/standin_guix.py), store file names mapped to the stand-in's.

Layers are cached under /var/cache/binder-lite, each keyed by what it is made of:
the Debian root (this file's recipe), the Python dependencies (pyproject.toml), Guix's
lowering (the rendered system and the services' modules), then the site's image
(binder-lite's wheel and the site), which is cheap to remake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import standin_guix

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
CURRENT_SYSTEM = "/usr/lib/standin/current-system"  # see _current_system; init.sh


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


def lowered(site: Site, services: Path, out_dir: Path) -> standin_guix.Lowered:
    """What Guix makes for the site's binder-lite service: for the project's own
    services, a layer cached by what decides it; for others (a test's altered copy),
    made afresh in `out_dir`, so they never evict the project's."""
    if services.resolve() != (ROOT / "services").resolve():
        return standin_guix.lower(site, services, out_dir / "guix")

    def make(tmp: Path) -> None:
        standin_guix.lower(site, services, tmp)

    return standin_guix.Lowered(_layer("standin-guix", standin_guix.key(site, services), make))


def build(site: Site, out_dir: Path, secret: str, services: Path = ROOT / "services") -> Path:
    """The stand-in image for `site` in `out_dir`, with its metadata as built images
    have it (without a build record: no Guix built it), running the binder-lite
    service Guix generates from the Scheme modules in `services`."""
    guix = lowered(site, services, out_dir)
    service_file = guix.service_file()  # refused before the image is made
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
    _install_service(root, guix, service_file)
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
    exist, without its initrd, so the kernel panics and no SSH server ever answers.
    (With the initrd, initramfs-tools falls back to the root's /sbin/init, which is
    systemd: a boot whose console need not mention init at all.)"""
    meta = imagemeta.read(image)
    assert meta is not None and meta.boot.append and meta.boot.kernel
    broken.symlink_to(image)
    boot = dataclasses.replace(
        meta.boot,
        append=meta.boot.append.replace("init=/sbin/standin-init", "init=/nonexistent"),
        # Its own metadata sits beside the link: the kernel stays where it is.
        kernel=str(image.parent / meta.boot.kernel),
        initrd=None,
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
    _write(root, "/etc/shepherd/init.scm", (HERE / "init.scm").read_text())
    _write(root, "/sbin/standin-init", (HERE / "init.sh").read_text(), 0o755)
    _chroot(root, "sh", "-c", "rm -f /etc/ssh/ssh_host_*")  # made at each boot


def _install_service(root: Path, guix: standin_guix.Lowered, service_file: str) -> None:
    """Guix's binder-lite service and the counterparts of the store items it names
    (standin_guix.COUNTERPARTS); the Guix-made files also go into a /gnu/store under
    their own names, as on Guix System (the smoke looks for secrets there)."""
    service_origin, config_origin = guix.origins
    _write(root, "/etc/shepherd/binder-lite.scm", service_file)
    _write(root, "/etc/binder-lite/binder-lite.json", guix.config_file())
    _write(root, service_origin, (guix.directory / standin_guix.SERVICE_FILE).read_text())
    _write(root, config_origin, (guix.directory / standin_guix.CONFIG_FILE).read_text())
    for name in ("module-import", "module-import-compiled"):
        # copytree keeps modification times: each .go stays newer than its source.
        shutil.copytree(guix.directory / name, root / "opt/standin" / name)
    (root / "opt/standin/preload").mkdir(parents=True)
    _write(
        root,
        "/opt/standin/binder-lite/bin/binder-lite",
        '#!/bin/sh\nexec /opt/binder-lite/bin/binder-lite "$@" --allow-local-repos\n',
        0o755,
    )
    _current_system(root)


def _current_system(root: Path) -> None:
    """/run/current-system/profile/bin, the PATH Guix's service runs with: a link to
    each command of the Debian system and of binder-lite's virtualenv (first, as
    binder-lite's package comes first in a Guix system profile).  standin-init links
    /run/current-system here at boot, as Guix System's boot script links it into the
    store.  Under /usr, which sessions' sandboxes see (as Guix's see /gnu/store): they
    make the same link, and find their commands through it."""
    bin_dir = root / CURRENT_SYSTEM.lstrip("/") / "profile/bin"
    bin_dir.mkdir(parents=True)
    for directory in ("/usr/sbin", "/usr/bin", "/opt/binder-lite/bin"):
        for command in sorted((root / directory.lstrip("/")).iterdir()):
            link = bin_dir / command.name
            link.unlink(missing_ok=True)
            link.symlink_to(f"{directory}/{command.name}")
