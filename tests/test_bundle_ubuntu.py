"""`binder-lite bundle --for ubuntu-24.04` and installer/bootstrap.sh on Ubuntu 24.04,
for real: the bundle is made from Ubuntu's archive (its Release files checked with
Ubuntu's keys), and bootstrap.sh installs from it with no network (`unshare --net`) in
an Ubuntu 24.04 minbase root (no Python) to which the tests add Ubuntu's apparmor
package, as an Ubuntu server has it.  The root is bundle.py's own, cached under
/var/cache/binder-lite keyed by its recipe, copied for each run.

No systemd runs in a chroot, and this host's kernel has no AppArmor: the script runs
with --no-start, so the profile it writes is compiled by Ubuntu's apparmor_parser but
not loaded, and the service is not started (Debian 12's VM test covers the service).

The tests of this module run in order on one root, as an administrator would."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import installkit
import pytest

from binder_lite import bundle
from binder_lite.errors import UsageError

pytestmark = pytest.mark.slow

UBUNTU = bundle.release("ubuntu-24.04")
INSTALLER = installkit.ROOT / "installer"
SITE = """\
version: 1
site:
  name: Ubuntu test
  slug: ubuntu-test
binder:
  runtime: local
  user: blubuntu
  port: 8932
"""
PROFILE = "/etc/apparmor.d/binder-lite"
DROPIN = "/etc/systemd/system/binder-lite.service.d/apparmor.conf"


def test_debootstrap_is_told_ubuntus_keys_and_script(tmp_path: Path) -> None:
    argv = [os.fspath(a) for a in bundle.debootstrap_argv(UBUNTU, tmp_path)]
    assert argv[:4] == [
        "debootstrap",
        "--variant=minbase",
        "--components=main,universe",
        "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    ]
    assert argv[4:] == [
        "noble",
        os.fspath(tmp_path),
        "http://archive.ubuntu.com/ubuntu",
        "/usr/share/debootstrap/scripts/gutsy",
    ]
    assert bundle.sources_list(UBUNTU).splitlines()[1:] == [
        "deb http://archive.ubuntu.com/ubuntu noble-updates main universe",
        "deb http://archive.ubuntu.com/ubuntu noble-security main universe",
    ]


def test_a_missing_keyring_is_refused_not_skipped(tmp_path: Path) -> None:
    # debootstrap alone would only warn and go on unchecked.
    keyless = replace(UBUNTU, keyring=os.fspath(tmp_path / "none.gpg"))
    with pytest.raises(UsageError, match="none.gpg is missing: it checks ubuntu-24.04's archive"):
        bundle.debootstrap_argv(keyless, tmp_path / "root")


def test_the_apt_index_reads_zstd_control_files(tmp_path: Path) -> None:
    # Ubuntu's .debs carry control.tar.zst, which this Python's tarfile cannot open.
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        "Package: bl-zst\nVersion: 2.0-1\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: a test\n"
    )
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = debs / "bl-zst_2.0-1_all.deb"
    subprocess.run(["dpkg-deb", "-Zzstd", "--build", tree, deb], check=True, capture_output=True)
    assert b"\ncontrol.tar.zst " in deb.read_bytes()[:200]  # its ar member header
    index = bundle.packages_index(debs)
    assert index.startswith("Package: bl-zst\nVersion: 2.0-1\n")
    assert "\nFilename: ./bl-zst_2.0-1_all.deb\n" in index


def test_debian_roots_keep_their_cache_keys() -> None:
    debian = bundle.release("debian-12")
    assert bundle._recipe(debian) == ("bookworm", debian.mirror, bundle.RECIPE)
    assert bundle.debootstrap_argv(debian, Path("/r")) == [
        "debootstrap",
        "--variant=minbase",
        "bookworm",
        Path("/r"),
        debian.mirror,
    ]


def test_a_release_file_signed_by_other_keys_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _missing():
        pytest.skip(f"needs {', '.join(_missing())}")
    # Debian's keys instead of Ubuntu's: debootstrap checks noble's Release file
    # against them and stops before it takes any package.
    monkeypatch.setenv("BINDER_LITE_CACHE", str(tmp_path))
    wrong = replace(UBUNTU, keyring="/usr/share/keyrings/debian-archive-keyring.gpg")
    with pytest.raises(bundle.BundleError, match="Release signed by unknown key"):
        bundle.minbase_root(wrong, lambda _: None)
    assert not list(tmp_path.glob("bundle-root-*/usr"))


def _missing() -> list[str]:
    missing = [t for t in ("debootstrap", "unshare", "chroot") if shutil.which(t) is None]
    if UBUNTU.keyring is not None and not Path(UBUNTU.keyring).is_file():
        missing.append("ubuntu-keyring")
    return missing + (["root"] if os.geteuid() != 0 else [])


@dataclass
class Ubuntu:
    root: Path
    bundle: Path
    wheel: Path
    work: Path

    def chroot(
        self, *argv: str, network: bool = False, timeout: float = 1800
    ) -> subprocess.CompletedProcess[str]:
        """`argv` in the root, offline unless `network`."""
        env = ("DEBIAN_FRONTEND=noninteractive",)
        return installkit.in_root(self.root, *argv, network=network, env=env, timeout=timeout)

    def bootstrap(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.chroot("sh", "/installer/bootstrap.sh", *args)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


@pytest.fixture(scope="module")
def ubuntu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ubuntu]:
    if _missing():
        reason = f"needs {', '.join(_missing())} (scripts/setup installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("ubuntu")
    own = installkit.wheel(work / "own")
    # with Guix: Ubuntu packages it (Debian 12 does not)
    made = bundle.make("ubuntu-24.04", work / "bundle.tar", wheel=own, with_guix=True)
    base = bundle.minbase_root(UBUNTU, lambda _: None)
    root = work / "root"
    subprocess.run(["cp", "-a", base, root], check=True)
    box = Ubuntu(root, made, own, work)
    assert not box.path("/usr/bin/python3").exists(), "the minbase root has Python"
    # What an Ubuntu server has and a minbase root lacks: the apparmor package, which
    # restricts user namespaces.  Added before the network goes.
    added = box.chroot(
        "apt-get", "-q", "install", "-y", "--no-install-recommends", "apparmor", network=True
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert not box.path("/usr/bin/python3").exists(), "apparmor brought Python"
    shutil.copytree(INSTALLER, root / "installer")
    shutil.copy(made, root / "root/bundle.tar")
    (root / "root/site.yaml").write_text(SITE)
    yield box
    shutil.rmtree(root, ignore_errors=True)


def test_the_bundle_is_nobles(ubuntu: Ubuntu) -> None:
    with tarfile.open(ubuntu.bundle) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("MANIFEST")
        assert manifest is not None
        lines = manifest.read().decode().splitlines()
        assert lines[0] == "release=ubuntu-24.04" and "sets=base guix" in lines
        packages = tar.extractfile("debs/base/Packages")
        assert packages is not None
        index = packages.read().decode()
    debs = {n.split("/")[-1].split("_")[0] for n in names if n.endswith(".deb")}
    # universe's slirp4netns too; and Python 3.12, which the wheels are for
    assert {"python3.12-minimal", "python3-venv", "bubblewrap", "slirp4netns"} <= debs
    # Ubuntu's control files are zstd-compressed: read through dpkg-deb
    assert "\nPackage: slirp4netns\n" in f"\n{index}" and "\nSHA256: " in index
    compiled = [n for n in names if n.startswith("wheels/") and "-cp312-" in n]
    assert compiled, "no wheel built for CPython 3.12"
    # none for 3.11 alone (abi3 wheels from 3.11 on serve 3.12 too)
    assert not [n for n in names if "-cp311-cp311-" in n]


def test_installs_offline_from_the_bundle(ubuntu: Ubuntu) -> None:
    done = ubuntu.bootstrap(
        "--site", "/root/site.yaml", "--bundle", "/root/bundle.tar", "--no-start"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("step ")]
    assert steps == [f"step {n}/10" for n in range(1, 11)]
    assert "  ubuntu-24.04\n" in done.stdout
    version = bundle.wheel_version(ubuntu.wheel)
    assert os.readlink(ubuntu.path("/opt/binder-lite/current")) == version
    ran = ubuntu.chroot("/opt/binder-lite/current/bin/binder-lite", "--version")
    assert ran.returncode == 0 and version in ran.stdout, ran.stdout + ran.stderr
    python = ubuntu.chroot(
        "/opt/binder-lite/current/bin/python", "-c", "import sys; print(sys.version)"
    )
    assert python.stdout.startswith("3.12."), python.stdout + python.stderr
    assert ubuntu.path(f"/opt/binder-lite/{version}/bin/jupyter-lab").exists()


def test_the_service_gets_a_profile_allowing_user_namespaces(ubuntu: Ubuntu) -> None:
    profile = ubuntu.path(PROFILE).read_text()
    assert "\nprofile binder-lite flags=(unconfined) {\n  userns,\n" in profile
    assert "include if exists <local/binder-lite>" in profile
    assert stat.S_IMODE(ubuntu.path(PROFILE).stat().st_mode) == 0o644
    # only the profile itself in /etc/apparmor.d, which is loaded whole at boot
    assert not list(ubuntu.path("/etc/apparmor.d").glob("binder-lite?*"))
    # by name, for the service alone: no path attachment that every bwrap would get
    assert "/usr/bin/bwrap" not in profile
    assert ubuntu.path(DROPIN).read_text() == "[Service]\nAppArmorProfile=binder-lite\n"
    # Ubuntu's own parser compiles it (bootstrap.sh checked it the same way)
    parsed = ubuntu.chroot("apparmor_parser", "--skip-kernel-load", "--skip-cache", PROFILE)
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    marks = ubuntu.path("/etc/binder-lite/.installed-by-bootstrap").read_text().splitlines()
    assert f"apparmor={PROFILE}" in marks and f"dropin={DROPIN}" in marks


def test_running_it_again_changes_nothing(ubuntu: Ubuntu) -> None:
    before = ubuntu.path(PROFILE).stat().st_mtime_ns
    done = ubuntu.bootstrap(
        "--site", "/root/site.yaml", "--bundle", "/root/bundle.tar", "--no-start"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "AppArmor profile binder-lite unchanged" in done.stdout
    assert "written" not in done.stdout and "created" not in done.stdout
    assert ubuntu.path(PROFILE).stat().st_mtime_ns == before


def test_the_guix_runtime_gets_ubuntus_guix_from_the_bundle(ubuntu: Ubuntu) -> None:
    ubuntu.path("/root/guix.yaml").write_text(SITE.replace("runtime: local", "runtime: guix"))
    done = ubuntu.bootstrap(
        "--site", "/root/guix.yaml", "--bundle", "/root/bundle.tar", "--no-start"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "step 5/10: guix and its daemon\n  installing guix\n" in done.stdout
    version = ubuntu.chroot("guix", "--version")
    assert version.stdout.startswith("guix (GNU Guix) 1.4"), version.stdout + version.stderr
    unit = ubuntu.path("/etc/systemd/system/binder-lite.service").read_text()
    assert "\nAfter=network-online.target guix-daemon.service\n" in unit
    assert "--runtime guix\n" in unit


def test_other_releases_and_other_bundles_are_refused(ubuntu: Ubuntu) -> None:
    os_release = ubuntu.path("/etc/os-release").resolve()
    real = os_release.read_text()
    try:
        os_release.write_text(real.replace('VERSION_ID="24.04"', 'VERSION_ID="22.04"'))
        done = ubuntu.bootstrap("--site", "/root/site.yaml", "--no-start")
    finally:
        os_release.write_text(real)
    assert done.returncode == 1
    assert (
        "failed: step 1/10: checking this host: this host is ubuntu-22.04: "
        "binder-lite installs on debian-12 or debian-13 or ubuntu-24.04" in done.stderr
    )
    debian = ubuntu.work / "debian.tar"
    manifest = ubuntu.work / "MANIFEST"
    manifest.write_text("release=debian-12\nversion=0.1.0\nsets=base\n")
    with tarfile.open(debian, "w") as tar:
        tar.add(manifest, arcname="MANIFEST")
    shutil.copy(debian, ubuntu.path("/root/debian.tar"))
    done = ubuntu.bootstrap(
        "--site", "/root/site.yaml", "--bundle", "/root/debian.tar", "--no-start"
    )
    assert done.returncode == 1
    assert "was made for debian-12, this host is ubuntu-24.04" in done.stderr


def test_uninstall_removes_the_profile(ubuntu: Ubuntu) -> None:
    done = ubuntu.bootstrap("--uninstall", "--purge")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed {PROFILE}" in done.stdout and f"removed {DROPIN}" in done.stdout
    assert not ubuntu.path(PROFILE).exists()
    assert not ubuntu.path(DROPIN).parent.exists()
    assert ubuntu.path("/etc/apparmor.d/slirp4netns").exists()  # Ubuntu's own stay
    assert not ubuntu.path("/opt/binder-lite").exists()
