"""Shared fixtures.  The Guix tier needs a real Guix 1.5 (scripts/setup provides one);
without it those tests skip loudly, except under CI, where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from binder_lite.guix import guix_program

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SITES = Path(__file__).parent / "sites"
# A real public key (its private half was thrown away): validation decodes keys.
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILqM8rZqr0pY2LG6GBhdHHdKBNRnmbWFoLGOOBH6PI57 you@laptop"
)

MINIMAL_SITE = f"""\
version: 1
site:
  name: Test
  slug: test
host:
  hostname: test
users:
  - name: alice
    ssh_keys: ["{SSH_KEY}"]
"""


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[..., Path]:
    """Write a site file (dedented text or bytes) into tmp_path and return its path."""

    def write(content: str | bytes, name: str = "site.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
        return path

    return write


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run the real `binder-lite` entry point in a subprocess."""

    def run(*args: str | os.PathLike[str], cwd: Path | None = None) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "binder_lite", *(os.fspath(a) for a in args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            check=False,
            timeout=600,
        )
        return CliResult(proc)

    return run


def _find_guix() -> str | None:
    program = guix_program()
    return shutil.which(program) or (program if Path(program).exists() else None)


@pytest.fixture(scope="session")
def guix() -> str:
    """The real Guix, or a skip (locally) / a failure (CI) saying why there is none."""
    program = _find_guix()
    if program is None:
        reason = (
            "NO GUIX: the Guix tier did not run. Run scripts/setup (as root it builds "
            "Guix 1.5 in a Debian sid chroot) or put guix on PATH."
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return program


@pytest.fixture(scope="session")
def store_root(guix: str) -> Path:
    """Where /gnu/store is seen from here: / on Guix, the chroot for scripts/setup's Guix."""
    marker = Path(guix).resolve().parent / "store-root"
    return Path(marker.read_text().strip()) if marker.exists() else Path("/")
