"""`binder-lite bundle --for debian-12|ubuntu-24.04`: everything bootstrap.sh needs on
a server with no network, in one tar.

- wheels/: binder-lite's wheel (built from this installation's sources) and its
  dependencies' wheels, with the `local` extra's Jupyter, for the release's Python
  (`pip download` for that interpreter and platform, binary wheels only);
- debs/base/, debs/guix/: the distribution's packages bootstrap.sh installs, with every
  dependency a minimal system of that release lacks.  They are resolved honestly, by
  apt itself, in a throwaway `debootstrap --variant=minbase` root of the release (which
  is what a minimal server has); the root and the .debs are cached, keyed by the
  release and the package list.  Ubuntu's root is made by the host's debootstrap with
  its Ubuntu script and Ubuntu's archive keys (package ubuntu-keyring): every Release
  file is checked, and apt in the root reads main and universe of the release and its
  updates and security pockets;
- MANIFEST: `release=`, `version=` lines bootstrap.sh reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from binder_lite import run
from binder_lite.errors import BundleError, CommandError, UsageError


@dataclass(frozen=True)
class Release:
    name: str  # what /etc/os-release says: ID-VERSION_ID
    codename: str
    mirror: str
    python: str  # the release's python3, which the wheels are for
    glibc: str  # its C library: the newest manylinux wheels it runs
    has_guix: bool  # whether the release packages Guix
    components: tuple[str, ...] = ("main",)
    # Suites besides the release's own that apt reads in the root: what a server
    # installed today has.  debootstrap itself takes the release's.
    pockets: tuple[str, ...] = ()
    # The archive's keys, when debootstrap's default is not the host's own
    # distribution's; and debootstrap's script, when its own may not know the codename.
    keyring: str | None = None
    script: str | None = None


RELEASES = {
    "debian-12": Release(
        "debian-12", "bookworm", "http://deb.debian.org/debian", "3.11", "2_36", False
    ),
    # slirp4netns and passt are in universe; Debian 12's debootstrap has no `noble`,
    # and every Ubuntu suite it knows is its `gutsy` script.
    "ubuntu-24.04": Release(
        "ubuntu-24.04",
        "noble",
        "http://archive.ubuntu.com/ubuntu",
        "3.12",
        "2_39",
        True,  # guix 1.4, in universe
        components=("main", "universe"),
        pockets=("noble-updates", "noble-security"),
        keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
        script="gutsy",
    ),
}
# The package sets bootstrap.sh installs (its PACKAGES, plus the network helper); the
# guix set only for sites whose runtime is guix.
NETWORK_HELPER = "slirp4netns"
GUIX_PACKAGES = ("guix",)
# A change to how the roots are made changes this, and so the cache keys.
RECIPE = "minbase v1"


def cache_dir() -> Path:
    base = os.environ.get("BINDER_LITE_CACHE")
    if base:
        return Path(base)
    return Path("/var/cache/binder-lite") if os.geteuid() == 0 else _user_cache()


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "binder-lite"


def release(name: str) -> Release:
    try:
        return RELEASES[name]
    except KeyError:
        known = ", ".join(RELEASES)
        raise UsageError(f"--for {name}: bundles are made for {known}") from None


def base_packages() -> tuple[str, ...]:
    """bootstrap.sh's own list, read from it: one list, no copy to drift."""
    from binder_lite.install import installer_dir

    text = (installer_dir() / "bootstrap.sh").read_text()
    m = re.search(r'^PACKAGES="([^"]+)"', text, re.M)
    if m is None:
        raise BundleError("installer/bootstrap.sh has no PACKAGES line")
    return (*m.group(1).split(), NETWORK_HELPER)


def own_wheel(out: Path) -> Path:
    """binder-lite's wheel, built from the sources this installation carries."""
    from binder_lite.paths import data_dir

    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("binder_lite-*.whl"))
    run.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, data_dir()],
        error=_BundleCommandError,
    )
    made = set(out.glob("binder_lite-*.whl")) - before or set(out.glob("binder_lite-*.whl"))
    return max(made, key=lambda p: p.stat().st_mtime)


class _BundleCommandError(CommandError, BundleError):
    pass


def download_wheels(wheel: Path, target: Release, out: Path, *, extras: str = "local") -> None:
    """`wheel`'s dependencies (and `extras`'), as binary wheels for `target`'s Python."""
    spec = f"{wheel}[{extras}]" if extras else str(wheel)
    run.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            target.python,
            *_platforms(target),
            "-d",
            out,
            spec,
        ],
        error=_BundleCommandError,
        timeout=1800,
    )


def _platforms(target: Release) -> list[str]:
    """--platform for every manylinux tag the release's C library runs: pip does not
    widen one tag to the older ones itself (no --abi: pip's default adds abi3)."""
    major, minor = (int(p) for p in target.glibc.split("_"))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _recipe(target: Release) -> tuple[str, ...]:
    """What a root is made from.  Only what differs from Debian's defaults is added,
    so Debian 12's roots keep the keys they had."""
    parts = [target.codename, target.mirror, RECIPE]
    if target.components != ("main",):
        parts.append("components=" + ",".join(target.components))
    if target.pockets:
        parts.append("pockets=" + ",".join(target.pockets))
    return tuple(parts)


def minbase_root(target: Release, progress: Callable[[str], None]) -> Path:
    """A cached minimal root of `target` (what a minimal server has), with apt lists."""
    root = cache_dir() / f"bundle-root-{target.name}-{_key(*_recipe(target))}"
    if (root / ".ready").exists():
        return root
    if os.geteuid() != 0:
        raise UsageError("resolving the .deb files needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise UsageError(
            "debootstrap is needed to resolve the .deb files (apt install debootstrap)"
        )
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    progress(f"making a {target.codename} minbase root to resolve packages in (once)")
    run.run(debootstrap_argv(target, partial), error=_BundleCommandError, timeout=1800)
    if target.pockets:
        (partial / "etc/apt/sources.list").write_text(sources_list(target))
    (partial / ".ready").touch()
    partial.rename(root)
    return root


def debootstrap_argv(target: Release, root: Path) -> list[str | os.PathLike[str]]:
    argv: list[str | os.PathLike[str]] = ["debootstrap", "--variant=minbase"]
    if target.components != ("main",):
        argv.append("--components=" + ",".join(target.components))
    if target.keyring is not None:
        # Named, never left to debootstrap: without its keyring it only warns, and
        # goes on unchecked.
        if not Path(target.keyring).is_file():
            raise UsageError(
                f"{target.keyring} is missing: it checks {target.name}'s archive "
                "(apt install ubuntu-keyring; on Debian 12 from bookworm-backports)"
            )
        argv.append(f"--keyring={target.keyring}")
    argv += [target.codename, root, target.mirror]
    if target.script is not None:
        script = Path("/usr/share/debootstrap/scripts") / target.script
        if not script.is_file():
            raise UsageError(f"debootstrap has no {script}: it makes {target.name}'s root")
        argv.append(script)
    return argv


def sources_list(target: Release) -> str:
    components = " ".join(target.components)
    suites = (target.codename, *target.pockets)
    return "".join(f"deb {target.mirror} {suite} {components}\n" for suite in suites)


def _in_root(root: Path, *argv: str, timeout: float = 1800) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return run.run(
        ["chroot", root, *argv],
        env=env,
        inherit_env=False,
        error=_BundleCommandError,
        timeout=timeout,
    )


def debs(target: Release, packages: tuple[str, ...], progress: Callable[[str], None]) -> Path:
    """A cached folder of the .debs `packages` need on a minimal `target`."""
    key = _key(target.name, target.codename, target.mirror, RECIPE, *sorted(packages))
    folder = cache_dir() / f"bundle-debs-{target.name}-{key}"
    if (folder / ".ready").exists():
        return folder
    root = minbase_root(target, progress)
    progress(f"resolving {' '.join(packages)} for a minimal {target.name}")
    archives = root / "var/cache/apt/archives"
    _in_root(root, "apt-get", "-q", "update")
    _in_root(root, "apt-get", "clean")
    # --download-only in a root that has none of them: apt resolves exactly what a
    # minimal server lacks, and installs nothing (the root stays minimal for the next).
    _in_root(
        root,
        "apt-get",
        "install",
        "-q",
        "-y",
        "--download-only",
        "--no-install-recommends",
        *packages,
    )
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for deb in archives.glob("*.deb"):
        shutil.copy2(deb, partial / deb.name)
    _in_root(root, "apt-get", "clean")
    if not any(partial.glob("*.deb")):
        raise BundleError(f"apt downloaded no packages for {' '.join(packages)}")
    (partial / ".ready").touch()
    partial.rename(folder)
    return folder


def packages_index(folder: Path) -> str:
    """The `Packages` file of a flat apt repository of the .debs in `folder`: the
    server's apt installs from it (`deb [trusted=yes] file:… ./`) and resolves there
    alone, never against its own, possibly newer, lists.  Written here so making a
    bundle needs no dpkg-dev."""
    stanzas = []
    for deb in sorted(folder.glob("*.deb")):
        data = deb.read_bytes()
        control = _control(deb, data).rstrip("\n")
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    return "\n".join(stanzas)


def _control(deb: Path, data: bytes) -> str:
    """The `control` file of a .deb (an ar archive holding control.tar.*)."""
    if not data.startswith(b"!<arch>\n"):
        raise BundleError(f"{deb}: not a .deb")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        if name == "control.tar.zst":
            # Ubuntu's (since 21.10): tarfile reads zstd only from Python 3.14, and
            # dpkg-deb is on every Debian or Ubuntu host (package dpkg, essential).
            return run.run(["dpkg-deb", "--info", deb, "control"], error=_BundleCommandError)
        if name.startswith("control.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                member = tar.extractfile("./control") or tar.extractfile("control")
                if member is None:
                    break
                return member.read().decode("utf-8")
        offset += 60 + size + size % 2
    raise BundleError(f"{deb}: no control file")


def wheel_version(wheel: Path) -> str:
    m = re.fullmatch(r"binder_lite-([^-]+)-.*\.whl", wheel.name)
    if m is None:
        raise UsageError(f"{wheel}: not a binder-lite wheel")
    return m.group(1)


def make(
    release_name: str,
    output: Path,
    *,
    with_guix: bool = False,
    wheel: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Path:
    """Write the bundle for `release_name` to `output` (atomically)."""
    target = release(release_name)
    if with_guix and not target.has_guix:
        raise UsageError(
            f"{release_name} has no guix package: install Guix on the server with its binary "
            "installation, then bundle without --with-guix"
        )
    with tempfile.TemporaryDirectory(prefix="binder-lite-bundle-") as tmp:
        stage = Path(tmp) / "bundle"
        wheels = stage / "wheels"
        wheels.mkdir(parents=True)
        if wheel is None:
            progress("building binder-lite's wheel")
            wheel = own_wheel(Path(tmp) / "own")
        shutil.copy(wheel, wheels / wheel.name)
        progress(f"downloading the wheels binder-lite needs for Python {target.python}")
        download_wheels(wheels / wheel.name, target, wheels)
        sets = {"base": base_packages(), **({"guix": GUIX_PACKAGES} if with_guix else {})}
        for name, packages in sets.items():
            found = debs(target, packages, progress)
            (stage / "debs" / name).mkdir(parents=True)
            for deb in found.glob("*.deb"):
                shutil.copy2(deb, stage / "debs" / name / deb.name)
            (stage / "debs" / name / "Packages").write_text(packages_index(stage / "debs" / name))
        (stage / "MANIFEST").write_text(
            f"release={target.name}\nversion={wheel_version(wheel)}\nsets={' '.join(sets)}\n"
        )
        partial = output.with_name(f".{output.name}.partial")
        with tarfile.open(partial, "w") as tar:
            for path in sorted(stage.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(stage)), recursive=False)
        os.replace(partial, output)
    return output
