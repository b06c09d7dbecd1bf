"""The stand-in image's binder-lite service, as Guix generates it: the real Guix lowers
the site's operating-system with `(binder-lite services)` (tests/standin/lower.scm), and
the Shepherd service file it makes, with the JSON file it names, go into the stand-in
with each /gnu/store file name replaced by its stand-in counterpart.  A store name with
no counterpart stops the build: the stand-in would otherwise boot something else than
what Guix would."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from binder_lite.errors import BuildError
from binder_lite.guix import guix_program
from binder_lite.render import render_all, write_files
from binder_lite.site.model import Site

ROOT = Path(__file__).resolve().parents[1]
LOWER = Path(__file__).parent / "standin" / "lower.scm"
SERVICE_FILE = "shepherd-binder-lite.scm"
CONFIG_FILE = "binder-lite.json"
# The store items' names (after the hash) that Guix's files for the service name, and
# what stands for each in the stand-in image.
STORE_NAME = re.compile(r"/gnu/store/[0-9a-z]{32}-([^/\"\s()]+)")
COUNTERPARTS = (
    # The binder-lite package: a wrapper that runs the stand-in's binder-lite (a
    # virtualenv of this checkout) with --allow-local-repos, the one flag added to
    # Guix's command line: the smoke's notebook check launches a file:// repository it
    # makes inside the VM, which has no internet.
    (re.compile(r"binder-lite-\d[^/]*"), "/opt/standin/binder-lite"),
    (re.compile(r"binder-lite\.json"), "/etc/binder-lite/binder-lite.json"),
    # The modules Guix imports for the service's file, copied from Guix's installation.
    (re.compile(r"module-import"), "/opt/standin/module-import"),
    (re.compile(r"module-import-compiled"), "/opt/standin/module-import-compiled"),
    # Store items the JSON file names only to keep them alive: the Jupyter profile
    # (the stand-in's Jupyter is in binder-lite's virtualenv) and preloaded packages.
    (re.compile(r"binder-lite-jupyter"), "/opt/binder-lite"),
    (re.compile(r"binder-lite-preload"), "/opt/standin/preload"),
)


@dataclass(frozen=True)
class Lowered:
    """What Guix made for the service, in a directory (see lower.scm)."""

    directory: Path

    @property
    def origins(self) -> tuple[str, str]:
        """The store file names of the service file and the JSON file on Guix System."""
        service, config = (self.directory / "origin").read_text().split()
        return service, config

    def service_file(self) -> str:
        """The service file for the stand-in: Guix's, store names mapped."""
        text = (self.directory / SERVICE_FILE).read_text()
        origin = self.origins[0]
        header = f";; {origin}, as Guix made it from (binder-lite services); store names mapped.\n"
        return header + map_store_names(text, origin) + "\n"

    def config_file(self) -> str:
        return map_store_names((self.directory / CONFIG_FILE).read_text(), self.origins[1])


def map_store_names(text: str, origin: str) -> str:
    """`text` with each /gnu/store file name replaced by its stand-in counterpart;
    BuildError naming the first one without a counterpart."""

    def counterpart(match: re.Match[str]) -> str:
        name = match.group(1)
        for pattern, path in COUNTERPARTS:
            if pattern.fullmatch(name):
                return path
        raise BuildError(
            f"{origin}: the stand-in has no counterpart for the store item {match.group(0)} "
            f"(name {name!r}); give it one in tests/standin_guix.py COUNTERPARTS"
        )

    return STORE_NAME.sub(counterpart, text)


def key(site: Site, services: Path) -> str:
    """What the lowering depends on: the rendered system (site file and templates),
    the services' Scheme modules and lower.scm."""
    digest = hashlib.sha256()
    for name, text in sorted(render_all(site).items()):
        digest.update(f"{name}\0{text}\0".encode())
    for path in sorted(p for p in services.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(services)}\0".encode() + path.read_bytes() + b"\0")
    digest.update(LOWER.read_bytes())
    return digest.hexdigest()[:12]


def lower(site: Site, services: Path, out: Path) -> Lowered:
    """Run the real Guix on the site's rendered system; its files go into `out`."""
    guix = shutil.which(guix_program()) or guix_program()
    out.mkdir(parents=True, exist_ok=True)
    # Guix runs in a chroot that sees /tmp (not /var/cache): it works there.
    with tempfile.TemporaryDirectory(prefix="standin-guix-", dir="/tmp") as tmp:
        work = Path(tmp)
        write_files(render_all(site), work / "system")
        made = work / "out"
        made.mkdir()
        proc = subprocess.run(
            [guix, "repl", "-L", services, "--", LOWER, work / "system" / "system.scm", made],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"Guix could not lower the site's system:\n{proc.stderr[-3000:]}")
        shutil.copytree(made, out, dirs_exist_ok=True)
    return Lowered(out)
