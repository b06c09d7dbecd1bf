"""Rendering sites to Scheme: structure, per-image bootloaders, secrets, packaging."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import venv
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EXAMPLES, MINIMAL_SITE, ROOT

from binder_lite.render import render_all, render_image_config, write_files
from binder_lite.scheme import scm_str
from binder_lite.site import load_site
from binder_lite.site.model import ImageType

GUILE = shutil.which("guile") or shutil.which("guile-3.0")
WriteSite = Callable[..., Path]

ALL_TYPES = "images:\n" + "".join(f"  - type: {t}\n" for t in ImageType)


def datums(path: Path) -> int:
    """How many top-level forms Guile's reader finds in `path` (nothing is evaluated)."""
    assert GUILE is not None, "guile is required in CI (scripts/setup installs it)"
    # Guix's reader extensions for gexps (#~ #$ #$@), as (guix gexp) installs them.
    hashes = "".join(
        f"(read-hash-extend #\\{c} (lambda (c port) (list 'gexp-syntax (read port))))" for c in "~$"
    )
    program = hashes + (
        f"(call-with-input-file {scm_str(str(path))} (lambda (port) (let loop ((n 0)) "
        "(if (eof-object? (read port)) (begin (display n) (newline)) (loop (+ n 1))))))"
    )
    proc = subprocess.run(
        [GUILE, "--no-auto-compile", "-c", program], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.skipif(  # outside CI only: there these run, and fail
    GUILE is None and not os.environ.get("CI"), reason="guile not installed (scripts/setup)"
)
@pytest.mark.parametrize("name", ["genenetwork", "demo", "bare-metal"])
def test_rendered_examples_read_as_scheme(name: str, tmp_path: Path) -> None:
    files = write_files(render_all(load_site(EXAMPLES / f"{name}.yaml")), tmp_path)
    for path in files:
        # use-modules, use-service-modules, use-package-modules, %site-services, the OS.
        assert datums(path) == 5, path.read_text()


def test_bootloader_follows_the_image_type(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE + ALL_TYPES))
    for image_type in ImageType:
        text = render_image_config(site, image_type)
        efi = image_type in (ImageType.EFI_RAW, ImageType.QCOW2_GPT)
        assert ("(bootloader grub-efi-bootloader)" in text) == efi, image_type
        assert ('(mount-point "/boot/efi")' in text) == efi, image_type
        assert ("(bootloader grub-bootloader)" in text) != efi, image_type
        assert "console=ttyS0,115200" in text and "(serial-unit 0)" in text


def test_render_all_names(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE + ALL_TYPES))
    assert sorted(render_all(site)) == sorted(["system.scm"] + [f"test-{t}.scm" for t in ImageType])


def test_system_scm_boots_like_the_first_disk_image(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE + "images:\n  - type: iso9660\n  - type: efi-raw\n"))
    assert "(bootloader grub-efi-bootloader)" in render_all(site)["system.scm"]


def test_no_secret_file_content_is_rendered(write_site: WriteSite, tmp_path: Path) -> None:
    secret = tmp_path / "oauth-secret"
    secret.write_text("top-secret-client-secret-9f8e7d\n")
    path = write_site(
        MINIMAL_SITE + "binder:\n  auth:\n    provider: github\n    client_id: abc\n"
        f"    client_secret_file: {secret}\n" + ALL_TYPES
    )
    files = render_all(load_site(path))
    for text in files.values():
        assert str(secret) in text  # the path is there, for the service to read at run time
        assert "top-secret-client-secret-9f8e7d" not in text


def test_static_network_and_services(write_site: WriteSite) -> None:
    path = write_site(
        MINIMAL_SITE
        + "network:\n  static: {interface: eno1, address: 192.0.2.10/24, gateway: 192.0.2.1,"
        " dns: [192.0.2.53]}\n"
        + "services:\n  - name: gn-sync\n    command: [/bin/sh, -c, 'echo \"$HOME\"']\n"
        "    requirement: [networking]\n    environment: {LANG: C.UTF-8}\n"
    )
    text = render_all(load_site(path))["system.scm"]
    assert "(service dhcpcd-service-type)" not in text
    assert '(device "eno1")' in text and '(value "192.0.2.10/24")' in text
    assert '(gateway "192.0.2.1")' in text and '(name-servers \'("192.0.2.53"))' in text
    assert "(provision '(gn-sync))" in text
    assert "(requirement '(user-processes networking))" in text
    assert '(list "/bin/sh" "-c" "echo \\"$HOME\\"")' in text
    assert '"LANG=C.UTF-8"' in text


def test_write_files_is_atomic(tmp_path: Path) -> None:
    """A write that fails part-way (at the file-size limit, as on a full disk) leaves
    the old file as it was and no temporary file."""
    (tmp_path / "system.scm").write_text("old")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
    try:
        with pytest.raises(OSError) as caught:
            write_files({"system.scm": "x" * 2**20}, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert caught.value.errno == errno.EFBIG  # 64 KiB were written, then the limit hit
    assert (tmp_path / "system.scm").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["system.scm"]


@pytest.mark.slow
def test_installed_wheel_works_outside_the_checkout(tmp_path: Path) -> None:
    """Build a wheel, install it into a fresh venv and render from elsewhere."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT],
        check=True,
        capture_output=True,
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, capture_output=True
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copytree(EXAMPLES, work / "examples")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [env_dir / "bin" / "binder-lite", "render", "examples/genenetwork.yaml", "-o", "out"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (work / "out" / "genenetwork-iso9660.scm").exists()
    located = subprocess.run(
        [python, "-c", "from binder_lite.paths import data_dir; print(data_dir())"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    assert located.startswith(str(env_dir)), located
    data = Path(located)
    for name in (
        "services/binder-lite/services.scm",
        "services/binder-lite/packages.scm",
        "system/operating-system.scm.j2",
        "images/efi.scm.j2",
        "pyproject.toml",
        "src/binder_lite/cli.py",
    ):
        assert (data / name).is_file(), name
