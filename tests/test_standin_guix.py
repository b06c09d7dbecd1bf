"""The stand-in image's binder-lite service comes from Guix's lowering of
`(binder-lite services)` (tests/standin_guix.py): a change there changes what the
stand-in boots, and a store item the stand-in has no counterpart for stops its build."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import standin
import standin_guix
from conftest import ROOT

from binder_lite.errors import BuildError
from binder_lite.site import load_site
from binder_lite.site.model import Site

pytestmark = pytest.mark.guix

SITE = """\
version: 1
site:
  name: "Lowered"
  slug: lowered
host:
  hostname: lowered
  timezone: UTC
users:
  - name: tester
    admin: true
    ssh_keys: ["{key}"]
binder:
  runtime: local
"""
SERVICES = ROOT / "services"
SERVICES_SCM = "binder-lite/services.scm"


@pytest.fixture
def site(tmp_path: Path) -> Site:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(key=key.with_suffix(".pub").read_text().strip()))
    return load_site(path)


def altered_services(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the project's services with `old` replaced by `new` in services.scm."""
    copy = tmp_path / "services"
    shutil.copytree(SERVICES, copy)
    scm = copy / SERVICES_SCM
    text = scm.read_text()
    assert text.count(old) == 1, old
    scm.write_text(text.replace(old, new))
    return copy


def test_a_change_to_the_service_type_changes_what_the_standin_runs(
    guix: str, site: Site, tmp_path: Path
) -> None:
    ours = standin_guix.lower(site, SERVICES, tmp_path / "ours").service_file()
    assert "#:respawn-delay 1 " in ours
    assert '(list "/opt/standin/binder-lite/bin/binder-lite" "serve" ' in ours
    assert '"/etc/binder-lite/binder-lite.json" "--port" "8080"' in ours
    assert "/gnu/store/" not in ours.split("\n", 1)[1]  # only the origin comment names one
    changed = altered_services(tmp_path, "(respawn-delay 1)", "(respawn-delay 7)")
    theirs = standin_guix.lower(site, changed, tmp_path / "theirs").service_file()
    assert "#:respawn-delay 7 " in theirs and "#:respawn-delay 1 " not in theirs
    # The cached lowering is keyed by the services' modules (and the rendered site).
    assert standin_guix.key(site, changed) != standin_guix.key(site, SERVICES)
    moved = dataclasses.replace(site, binder=dataclasses.replace(site.binder, port=9090))
    assert standin_guix.key(moved, SERVICES) != standin_guix.key(site, SERVICES)


def test_the_site_decides_the_json_file_the_service_reads(
    guix: str, site: Site, tmp_path: Path
) -> None:
    lowered = standin_guix.lower(site, SERVICES, tmp_path / "lowered")
    config = lowered.config_file()
    assert '"name": "Lowered"' in config and '"runtime": "local"' in config
    # The Jupyter profile it keeps alive is the stand-in's Jupyter.
    assert '"/opt/binder-lite"' in config and "/gnu/store/" not in config


def test_an_unmapped_store_name_stops_the_standin_build(
    guix: str, site: Site, tmp_path: Path
) -> None:
    changed = altered_services(
        tmp_path,
        '"LC_ALL=C.UTF-8"',
        '"LC_ALL=C.UTF-8" #$(plain-file "standin-unknown" "x")',
    )
    out = tmp_path / "image"
    with pytest.raises(BuildError) as error:
        standin.build(site, out, "secret", services=changed)
    message = str(error.value)
    assert "-shepherd-binder-lite.scm: the stand-in has no counterpart" in message
    assert "-standin-unknown (name 'standin-unknown')" in message
    assert "COUNTERPARTS" in message
    assert not list(out.glob("*.img"))  # refused before the image was made


def test_store_names_are_mapped_or_refused() -> None:
    digest = "0" * 32
    text = f'"/gnu/store/{digest}-binder-lite-0.1.0/bin/binder-lite"'
    assert standin_guix.map_store_names(text, "f") == '"/opt/standin/binder-lite/bin/binder-lite"'
    with pytest.raises(BuildError, match=r"^f: .*-binder-lite-jupyterx \(name"):
        standin_guix.map_store_names(f"/gnu/store/{digest}-binder-lite-jupyterx", "f")
