"""The Guix tier: the real Guix 1.5 must accept everything binder-lite renders."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EXAMPLES, MINIMAL_SITE, ROOT, SITES, CliResult

from binder_lite.guix import ImageCommand
from binder_lite.render import issue_text, motd_text, render_image_config, write_files
from binder_lite.site import load_site
from binder_lite.site.model import ImageType
from binder_lite.site.settings import SETTINGS, Kind, Layer

pytestmark = pytest.mark.guix

Cli = Callable[..., CliResult]
DRV = re.compile(r"derivation: (/gnu/store/[0-9a-z]{32}-\S+\.drv)")

SITE_FILES = sorted([*EXAMPLES.glob("*.yaml"), *SITES.glob("*.yaml")])
CASES = [
    pytest.param(path, image.type, id=f"{path.stem}-{image.type}")
    for path in SITE_FILES
    for image in load_site(path).images
]


def guix_run(guix: str, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [guix, *map(os.fspath, args)], capture_output=True, text=True, check=False, timeout=600
    )


@pytest.mark.parametrize(("site_file", "image_type"), CASES)
def test_every_image_type_lowers_to_a_derivation(
    guix: str, cli: Cli, tmp_path: Path, site_file: Path, image_type: ImageType
) -> None:
    result = cli(
        "image",
        "build",
        site_file,
        "--type",
        image_type,
        "--dry-run",
        "--no-grafts",
        "--work-dir",
        tmp_path,
    )
    assert result.code == 0, result.err
    assert f"guix system image --image-type={image_type} " in result.out
    assert DRV.search(result.out), result.out


@pytest.mark.parametrize("site_file", SITE_FILES, ids=lambda p: p.stem)
def test_installed_system_lowers(guix: str, cli: Cli, tmp_path: Path, site_file: Path) -> None:
    """system.scm, the configuration for init, reconfigure and deploy."""
    assert cli("render", site_file, "-o", tmp_path).code == 0
    proc = guix_run(
        guix,
        "system",
        "build",
        "-d",
        "--no-grafts",
        "-L",
        ROOT / "services",
        tmp_path / "system.scm",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("-system.drv")


def test_channel_module_in_a_handwritten_config(guix: str) -> None:
    proc = guix_run(
        guix,
        "system",
        "image",
        "-t",
        "qcow2",
        "-d",
        "--no-grafts",
        "-L",
        ROOT / "services",
        EXAMPLES / "channel-os.scm",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(".drv")


def test_guix_scm_package_and_dev_shell(guix: str) -> None:
    built = guix_run(guix, "build", "-f", ROOT / "guix.scm", "-d")
    assert built.returncode == 0, built.stderr
    assert re.search(r"-binder-lite-0\.1\.0\.drv$", built.stdout.strip())
    shell = guix_run(guix, "shell", "-D", "-f", ROOT / "guix.scm", "-n")
    assert shell.returncode == 0, shell.stderr


SOURCE_FILTER = """(use-modules (binder-lite packages))
(define keep? (@@ (binder-lite packages) binder-lite-source-file?))
(for-each (lambda (file) (format #t "~a ~a~%" (if (keep? file (lstat file)) "kept" "left") file))
          (list {files}))"""


def test_the_package_source_leaves_built_images_out(guix: str, tmp_path: Path) -> None:
    """`image build` writes images next to the image templates: a package built from
    the checkout afterwards must take the templates and not a previous ISO."""
    from binder_lite.scheme import scm_str

    images = tmp_path / "images"
    images.mkdir()
    files = [images / n for n in ("iso9660.scm.j2", "demo-iso9660.iso", "demo-qcow2.qcow2.json")]
    for file in files:
        file.write_text("x")
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.py").write_text("")
    script = tmp_path / "filter.scm"
    paths = [images, *files, src, src / "x.py", tmp_path / "node_modules"]
    (tmp_path / "node_modules").mkdir()
    script.write_text(SOURCE_FILTER.format(files=" ".join(scm_str(str(p)) for p in paths)))
    proc = guix_run(guix, "repl", "-L", ROOT / "services", "--", script)
    assert proc.returncode == 0, proc.stderr
    seen = dict(reversed(line.split(" ", 1)) for line in proc.stdout.splitlines())
    assert seen == {
        str(images): "kept",
        str(files[0]): "kept",
        str(files[1]): "left",
        str(files[2]): "left",
        str(src): "kept",
        str(src / "x.py"): "kept",
        str(tmp_path / "node_modules"): "left",
    }


def test_guix_errors_reach_the_user_readably(
    guix: str, cli: Cli, write_site: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_site(MINIMAL_SITE + "packages: [htop, htopp-does-not-exist]\n")
    result = cli("image", "build", path, "--type", "qcow2", "--dry-run", "--work-dir", tmp_path)
    assert result.code == 1
    assert "Traceback" not in result.err
    assert result.err.startswith("error: Guix rejected the configuration (exit 1):")
    assert "htopp-does-not-exist" in result.err and "unknown package" in result.err
    assert "guix pull" not in result.err  # Guix's staleness nag is not the user's problem


def test_bootloader_mismatch_is_what_guix_refuses(guix: str, tmp_path: Path) -> None:
    """Why each image type gets its own template: Guix rejects EFI GRUB on MBR images."""
    site = load_site(EXAMPLES / "bare-metal.yaml")
    config = write_files({"efi.scm": render_image_config(site, ImageType.EFI_RAW)}, tmp_path)[0]
    wrong = ImageCommand(site, ImageType.QCOW2, config, grafts=False)
    proc = subprocess.run(
        wrong.argv(derivation=True),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BINDER_LITE_GUIX": guix},
    )
    assert proc.returncode != 0
    assert "EFI bootloader required with GPT partitioning" in proc.stderr


def _store_text(guix: str, store_root: Path, drv: str, suffix: str) -> bytes:
    """The bytes of the one store item named *-SUFFIX among `drv`'s requisites."""
    proc = guix_run(guix, "gc", "--requisites", drv)
    assert proc.returncode == 0, proc.stderr
    items = [line for line in proc.stdout.split() if line.endswith(f"-{suffix}")]
    assert len(items) == 1, items
    return (store_root / items[0].lstrip("/")).read_bytes()


@pytest.mark.parametrize("name", ["hostile-text", "defaults-from-name"])
def test_text_reaches_the_store_byte_for_byte(
    guix: str, store_root: Path, cli: Cli, tmp_path: Path, name: str
) -> None:
    site_file = SITES / f"{name}.yaml"
    site = load_site(site_file)
    result = cli("image", "build", site_file, "--dry-run", "--no-grafts", "--work-dir", tmp_path)
    assert result.code == 0, result.err
    match = DRV.search(result.out)
    assert match, result.out
    drv = match.group(1)
    assert _store_text(guix, store_root, drv, "issue") == issue_text(site).encode("utf-8")
    assert _store_text(guix, store_root, drv, "motd") == motd_text(site).encode("utf-8")
    if site.site.issue is not None:
        assert issue_text(site) == site.site.issue  # exactly what the site file says
        assert motd_text(site) == site.site.motd
    else:
        assert issue_text(site).startswith(site.site.name + "\n")
    user = site.users[0]
    keys = _store_text(guix, store_root, drv, f"{user.name}.pub").decode("utf-8")
    assert keys == "\n".join(user.ssh_keys) + "\n"


SERVICE_JSON = """
(use-modules (gnu) (gnu services) (guix) (guix derivations) (binder-lite services)
             (srfi srfi-1))
(define config {config})
;; The builder Guix made for the service's binder-lite.json, run here (it only needs
;; Guile-JSON) instead of built in the store, which needs substitutes or hours.
(define builder
  (with-store store
    (last (derivation-builder-arguments
           (run-with-store store
             (lower-object ((@@ (binder-lite services) binder-lite-config-file) config)))))))
(setenv "out" {out})
(primitive-load builder)
"""
OS_CONFIG = """(service-value (find (lambda (s) (eq? (service-kind s) binder-lite-service-type))
                              (operating-system-user-services (load {system}))))"""


def service_json(guix: str, tmp_path: Path, config: str) -> Path:
    """The file `binder-lite serve` gets for `config` (a Scheme expression), as the
    service's own gexp writes it with Guile-JSON."""
    from binder_lite.scheme import scm_str

    out = tmp_path / "binder-lite.json"
    script = tmp_path / "service-json.scm"
    script.write_text(SERVICE_JSON.format(config=config, out=scm_str(str(out))))
    proc = guix_run(guix, "repl", "-L", ROOT / "services", "--", script)
    assert proc.returncode == 0, proc.stderr
    return out


ROUND_TRIP = [
    SITES / "all-images.yaml",
    SITES / "hostile-text.yaml",
    EXAMPLES / "genenetwork.yaml",
    EXAMPLES / "bare-metal.yaml",
]


@pytest.mark.parametrize("site_file", ROUND_TRIP, ids=lambda p: p.stem)
def test_service_configuration_round_trip(
    guix: str, store_root: Path, cli: Cli, tmp_path: Path, site_file: Path
) -> None:
    """site file → rendered system → Guix's binder-lite-configuration → the JSON file the
    service gives `binder-lite serve` → the same settings, read back by binder-lite."""
    from binder_lite.scheme import scm_str

    assert cli("render", site_file, "-o", tmp_path).code == 0
    system = scm_str(str(tmp_path / "system.scm"))
    written = service_json(guix, tmp_path, OS_CONFIG.format(system=system))
    site = load_site(site_file)
    settings = json.loads(written.read_text())
    logo = settings["site"]["logo_path"]
    if logo is not None:  # a store file, the site's logo byte for byte
        logo = settings["site"]["logo_path"] = str(store_root / logo.lstrip("/"))
        assert site.site.logo and Path(logo).read_bytes() == site.site.logo.read_bytes()
        written.write_text(json.dumps(settings))
    served = load_site(written, for_service=True)
    # The preloaded packages reach the service as store items, not names.
    assert served.binder == dataclasses.replace(site.binder, preload=())
    assert (served.site.name, served.site.slug, served.site.tagline) == (
        site.site.name,
        site.site.slug,
        site.site.tagline,
    )
    assert served.site.primary_color == site.site.primary_color
    assert (served.site.logo is None) == (site.site.logo is None)
    kept = settings["keep_in_store"]
    assert [Path(k).name[33:] for k in kept] == ["binder-lite-jupyter", "binder-lite-preload"]


def test_service_defaults_are_the_table_s(guix: str, tmp_path: Path) -> None:
    """`(binder-lite-configuration)` with nothing given: the service reads the defaults
    of the settings table."""
    from binder_lite.site.model import Binder

    written = service_json(guix, tmp_path, "(binder-lite-configuration)")
    served = load_site(written, for_service=True)
    assert served.binder == Binder()
    defaults = {s.key: s.default for s in SETTINGS}
    assert (served.site.name, served.site.slug) == (defaults["site.name"], defaults["site.slug"])
    assert served.site.tagline == defaults["site.tagline"]
    assert served.site.primary_color == defaults["site.primary_color"]
    assert served.site.logo is None


RECORD_FIELDS = """
(use-modules (gnu services configuration) (guix gexp) (binder-lite services) (json))
(define (plain value)
  (cond ((not (maybe-value-set? value)) 'null)
        ((file-like? value) "<file-like>")
        ((list? value) (list->vector value))
        (else value)))
(scm->json
 (list->vector
  (map (lambda (field)
         `(("name" . ,(configuration-field-name field))
           ("type" . ,(configuration-field-type field))
           ("documentation" . ,(configuration-field-documentation field))
           ("default" . ,(plain ((configuration-field-getter field)
                                 (binder-lite-configuration))))))
       binder-lite-configuration-fields)))
"""


def test_guix_record_fields_evaluated_by_guix_are_the_table_s(guix: str, tmp_path: Path) -> None:
    script = tmp_path / "fields.scm"
    script.write_text(RECORD_FIELDS)
    proc = guix_run(guix, "repl", "-L", ROOT / "services", "--", script)
    assert proc.returncode == 0, proc.stderr
    fields = json.loads(proc.stdout)
    table = [s for s in SETTINGS if Layer.GUIX in s.layers]
    assert [f["name"] for f in fields] == [s.guix for s in table]
    for field, setting in zip(fields, table, strict=True):
        assert field["type"] == setting.guix_type, setting.key
        assert field["documentation"] == setting.doc, setting.key
        if setting.kind is Kind.PACKAGE:
            assert field["default"] == "<file-like>"
        else:
            assert field["default"] == setting.guix_default, setting.key


FAKE_BUILD = """#!/bin/sh
# Guix for everything but the image build itself, which needs substitutes or hours:
# that step prints what Guix prints and names a file standing in for the image.
for arg in "$@"; do
  case "$arg" in --derivation|--version|-d) exec {real} "$@" ;; esac
done
echo "building /gnu/store/fake-image.drv..."
echo "/gnu/store/00000000000000000000000000000000-image.qcow2"
"""


def test_image_build_copies_describes_and_skips_unchanged(
    guix: str, store_root: Path, tmp_path: Path
) -> None:
    """The build pipeline around Guix: the real derivation, a stand-in for the build."""
    fake_dir = tmp_path / "fake-guix"
    fake_store = tmp_path / "fake-root" / "gnu" / "store"
    fake_store.mkdir(parents=True)
    (fake_store / "00000000000000000000000000000000-image.qcow2").write_bytes(b"QFI\xfb" * 1000)
    fake_dir.mkdir()
    program = fake_dir / "guix"
    program.write_text(FAKE_BUILD.format(real=guix))
    program.chmod(0o755)
    (fake_dir / "store-root").write_text(str(tmp_path / "fake-root"))
    env = {**os.environ, "BINDER_LITE_GUIX": str(program)}
    site = EXAMPLES / "demo.yaml"

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "binder_lite",
                "image",
                "build",
                str(site),
                "--no-grafts",
                "-o",
                str(tmp_path / "images"),
                "-w",
                str(tmp_path / "build"),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=600,
        )

    first = build()
    assert first.returncode == 0, first.stderr
    image = tmp_path / "images" / "demo-qcow2.qcow2"
    assert f"{image}: built in" in first.stdout
    assert "guix system image --image-type=qcow2" in first.stderr
    assert image.read_bytes() == b"QFI\xfb" * 1000 and image.stat().st_mode & 0o200
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert (tmp_path / "images/demo-qcow2.qcow2.sha256").read_text() == (
        f"{digest}  demo-qcow2.qcow2\n"
    )
    meta = json.loads((tmp_path / "images/demo-qcow2.qcow2.json").read_text())
    assert meta["derivation"].endswith("-image.qcow2.drv") and meta["type"] == "qcow2"
    assert meta["site_sha256"] == hashlib.sha256(site.read_bytes()).hexdigest()
    assert meta["guix_version"].startswith("guix (GNU Guix) 1.5")
    assert meta["size"] == "8GiB" and meta["ssh_user"] == "demo"
    again = build()
    assert again.returncode == 0
    assert f"{image}: up to date (derivation {meta['derivation']} unchanged)" in again.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "binder_lite", "image", "list", "-o", str(tmp_path / "images")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(image) in listed and meta["derivation"] in listed
