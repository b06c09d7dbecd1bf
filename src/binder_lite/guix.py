"""Stage 3: the Guix commands that turn rendered files into images (and their checks)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from binder_lite import run
from binder_lite.errors import GuixError
from binder_lite.paths import guile_load_path
from binder_lite.site.model import Firmware, ImageType, Site


def guix_program() -> str:
    """The `guix` to run: $BINDER_LITE_GUIX, else `guix` on PATH, else one installed next
    to the Python running binder-lite (scripts/setup links its Guix chroot there)."""
    if "BINDER_LITE_GUIX" in os.environ:
        return os.environ["BINDER_LITE_GUIX"]
    if shutil.which("guix"):
        return "guix"
    beside = Path(sys.executable).parent / "guix"
    return os.fspath(beside) if beside.exists() else "guix"


def site_guix(site: Site) -> list[str]:
    """The `guix` command a site's builds and deploys run: through `guix time-machine`
    when the site pins channels, so that every machine gets the same Guix, hence the
    same system."""
    prefix = [guix_program()]
    if site.guix.channels is not None:
        prefix += ["time-machine", "-C", os.fspath(site.guix.channels), "--"]
    return prefix


@dataclass(frozen=True)
class ImageCommand:
    """One `guix system image` invocation for one image type of a site."""

    site: Site
    image_type: ImageType
    config: Path  # the rendered operating-system file
    size: str | None = None
    grafts: bool = True

    def argv(self, *, derivation: bool = False) -> list[str]:
        prefix = site_guix(self.site)
        # Guix's long options take their value after "=", never as the next argument.
        argv = [
            *prefix,
            "system",
            "image",
            f"--image-type={self.image_type.guix_type}",
            f"--load-path={os.fspath(guile_load_path())}",
        ]
        size = self.size or self.site.image(self.image_type).size
        if size is not None and self.image_type.firmware is not Firmware.HYBRID:
            argv.append(f"--image-size={size}")
        if self.image_type.firmware is Firmware.HYBRID:
            # The ISO's volume label; Guix upper-cases it.
            argv.append(f"--label={self.site.site.slug}")
        if not self.grafts:
            argv.append("--no-grafts")
        if derivation:
            argv.append("--derivation")
        argv.append(os.fspath(self.config))
        return argv

    def shell(self, *, derivation: bool = False) -> str:
        return shlex.join(self.argv(derivation=derivation))


_DRV = re.compile(r"^/gnu/store/[0-9a-z]{32}-[^/\s]+\.drv$")


def derivation(command: ImageCommand) -> str:
    """Ask Guix to lower the image to a derivation; return its file name."""
    output = run.run(command.argv(derivation=True), error=GuixError)
    drvs = [line.strip() for line in output.splitlines() if _DRV.match(line.strip())]
    if not drvs:
        raise GuixError(command.argv(derivation=True), 0, f"no derivation in output:\n{output}")
    return drvs[-1]


def version() -> str:
    """The first line of `guix --version`, e.g. 'guix (GNU Guix) 1.5.0'."""
    return run.run([guix_program(), "--version"], error=GuixError).splitlines()[0]


def available_packages(names: list[str]) -> set[str]:
    """Which of `names` the Guix at hand has (one `guix package -A` call for all)."""
    if not names:
        return set()
    pattern = "^(" + "|".join(re.escape(n) for n in sorted(set(names))) + ")$"
    output = run.run([guix_program(), "package", f"--list-available={pattern}"], error=GuixError)
    return {line.split("\t", 1)[0].strip() for line in output.splitlines() if line.strip()}


def dry_run_shell(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a `guix … shell …` command with --dry-run added: Guix evaluates the manifest
    and lists what it would build, running nothing.  Returns its report.  `env`: the
    whole environment (a sandboxed command gets nothing of ours)."""
    at = argv.index("shell") + 1
    return run.run(
        [*argv[:at], "--dry-run", *argv[at:]],
        error=GuixError,
        with_stderr=True,
        env=env,
        inherit_env=env is None,
    )
