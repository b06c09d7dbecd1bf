"""What the installer's tests share: binder-lite's wheel, a wheel of a later version
whose database schema is one migration ahead, the bundle for Debian 12, and a command
run in a debootstrapped root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from binder_lite import bundle

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from (pyproject.toml's force-include).
SOURCES = ("pyproject.toml", "README.md", "src", "system", "services", "images", "installer")
UPGRADE_TABLE = "upgrade_marker"


def in_root(
    root: Path, *argv: str, network: bool = False, env: tuple[str, ...] = (), timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`argv` chrooted into `root` (with /proc and /dev, in a mount namespace of its own
    so nothing stays mounted), with a clean environment plus `env`; offline, in a
    network namespace of its own, unless `network`."""
    mount = (
        'mount -t proc proc "$R/proc" && mount --rbind /dev "$R/dev" && '
        'exec chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin '
        'HOME=/root LC_ALL=C.UTF-8 "$@"'
    )
    command = ["unshare", "--mount", "--propagation", "private", "--fork"]
    command += [] if network else ["--net"]
    command += ["sh", "-c", mount, "sh", *env, *argv]
    return subprocess.run(
        command,
        env={"R": str(root), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wheel(out: Path) -> Path:
    return bundle.own_wheel(out)


def bumped_wheel(work: Path, version: str) -> Path:
    """binder-lite's wheel as release `version`, whose store has one more migration (a
    table named UPGRADE_TABLE): an upgrade migrates the database, a roll-back finds it
    too new."""
    tree = work / "src-tree"
    shutil.rmtree(tree, ignore_errors=True)
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tree / name)
    _edit(tree / "pyproject.toml", r'(?m)^version = "[^"]+"', f'version = "{version}"')
    _edit(
        tree / "src/binder_lite/__init__.py",
        r'__version__ = "[^"]+"',
        f'__version__ = "{version}"',
    )
    _edit(
        tree / "src/binder_lite/web/store.py",
        r"(?m)^VERSION = MIGRATIONS\[-1\]\.version$",
        "MIGRATIONS = (*MIGRATIONS, Migration(MIGRATIONS[-1].version + 1, 'upgrade test', "
        f"_sql('CREATE TABLE {UPGRADE_TABLE} (id INTEGER)')))\n"
        "VERSION = MIGRATIONS[-1].version",
    )
    out = work / "bumped"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, tree],
        check=True,
        capture_output=True,
    )
    return next(out.glob(f"binder_lite-{version}-*.whl"))


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text, count = re.subn(pattern, lambda _: replacement, path.read_text())
    assert count == 1, f"{pattern} not found once in {path}"
    path.write_text(text)


def debian_bundle(out: Path, own: Path) -> Path:
    return bundle.make("debian-12", out / "bundle.tar", wheel=own)
