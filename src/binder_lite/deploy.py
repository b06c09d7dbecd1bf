"""`binder-lite deploy` and `binder-lite reconfigure`: the site's system onto Guix
System machines, with `guix deploy` from a workstation or `guix system reconfigure`
on the machine itself.

Both render the same `system.scm` as `binder-lite render`; `deploy.scm` beside it
lists the `deploy:` machines, each with the host key Guix must see before it sends
anything.  Guix runs through `guix time-machine -C` when the site pins channels, as
image builds do, so every machine gets the system the pinned Guix makes.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from binder_lite import __version__, render, run
from binder_lite.errors import CommandError, DeployError, UsageError
from binder_lite.guix import site_guix
from binder_lite.paths import guile_load_path
from binder_lite.scheme import environment
from binder_lite.site.model import Site

DEPLOY_FILE = "deploy.scm"
TEMPLATE = "system/deploy.scm.j2"
# Present on every Guix System (the running system's profile); nowhere else.
CURRENT_SYSTEM = Path("/run/current-system")

Progress = Callable[[str], None]


def render_deploy(site: Site) -> str:
    """deploy.scm: one `machine` per entry of `deploy:`, all running system.scm."""
    if not site.deploy:
        raise UsageError(f"{site.path}: no machines to deploy to: add a `deploy:` list")
    unresolved = [m.host for m in site.deploy if m.host_key is None]
    if unresolved:
        # load_site(known_hosts=...) fills these in or refuses; never render without.
        raise UsageError(f"no host key for {', '.join(unresolved)}")
    template = environment().get_template(TEMPLATE)
    return template.render(
        site=site,
        machines=site.deploy,
        version=__version__,
        system_file=render.SYSTEM_FILE,
    )


def write_deploy(site: Site, work_dir: Path) -> Path:
    """Write system.scm and deploy.scm into WORK_DIR/<slug>/; return deploy.scm."""
    files = {render.SYSTEM_FILE: render.render_system(site), DEPLOY_FILE: render_deploy(site)}
    out = work_dir.absolute() / site.site.slug
    render.write_files(files, out)
    return out / DEPLOY_FILE


def write_system(site: Site, work_dir: Path) -> Path:
    """Write system.scm into WORK_DIR/<slug>/ (for `reconfigure`); return it."""
    out = work_dir.absolute() / site.site.slug
    return render.write_files({render.SYSTEM_FILE: render.render_system(site)}, out)[0]


@dataclass(frozen=True)
class DeployCommand:
    """One `guix deploy` of a site's deploy.scm."""

    site: Site
    config: Path  # the rendered deploy.scm
    dry_run: bool = False
    roll_back: bool = False

    def argv(self) -> list[str]:
        # Guix's long options take their value after "=", never as the next argument.
        argv = [*site_guix(self.site), "deploy", f"--load-path={os.fspath(guile_load_path())}"]
        if self.dry_run:
            argv.append("--dry-run")  # Guix lists the machines; nothing is built or sent
        if self.roll_back:
            argv.append("--roll-back")
        return [*argv, os.fspath(self.config)]

    def shell(self) -> str:
        return shlex.join(self.argv())


@dataclass(frozen=True)
class ReconfigureCommand:
    """`guix system reconfigure` of the site's system.scm, on this machine."""

    site: Site
    config: Path  # the rendered system.scm
    dry_run: bool = False

    def argv(self) -> list[str]:
        argv = [*site_guix(self.site), "system", "reconfigure"]
        argv.append(f"--load-path={os.fspath(guile_load_path())}")
        if self.dry_run:
            argv.append("--dry-run")
        return [*argv, os.fspath(self.config)]

    def shell(self) -> str:
        return shlex.join(self.argv())


def check_guix_system(marker: Path = CURRENT_SYSTEM) -> None:
    """`reconfigure` changes the running Guix System; anything else is refused."""
    if not marker.exists():
        raise UsageError(
            f"this machine is not running Guix System (there is no {marker}); "
            "`binder-lite reconfigure` runs on the machine it changes. From a "
            "workstation use `binder-lite deploy`; on a bare machine install first"
        )


def execute(argv: list[str], what: str, progress: Progress) -> None:
    """Run a Guix command showing its output as it comes; fail with its errors."""
    try:
        for line in run.stream(argv):
            progress(line)
    except CommandError as e:
        raise DeployError(
            f"{what} failed (exit {e.returncode}): {_first_error(e.output)}"
        ) from None


def _first_error(output: str) -> str:
    """Guix's first error line: its whole output has just been shown."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[-1] if lines else "")
