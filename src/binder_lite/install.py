"""Installing binder-lite on an existing Debian or Ubuntu server (the TLJH way).

The work on the server is `installer/bootstrap.sh` (POSIX sh: the server may have no
Python yet).  This module is its two ends:

- `binder-lite install SITE --target ssh://root@host` copies the installer, the site
  file and a bundle (or binder-lite's wheel) over SSH, the host key checked as
  `smoke` checks it, runs bootstrap.sh there and follows its `step N/M: …` lines;
- `python -m binder_lite.install facts SITE | schema DB`, which bootstrap.sh runs with
  the binder-lite it has just installed: the site's settings it needs, read by the
  real site loader (so the site is validated on the server too), quoted for sh.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from binder_lite.errors import InstallError, SiteError, UsageError

if TYPE_CHECKING:
    import paramiko

    from binder_lite.vm.ssh import Target

# What bootstrap.sh puts into sed expressions and the unit file: nothing that quotes,
# separates or substitutes.
_SAFE = re.compile(r"[A-Za-z0-9._/-]+")
INSTALLER_FILES = ("bootstrap.sh", "binder-lite.service.in")
STEP = re.compile(r"^step (\d+)/(\d+): (.*)$")
FAILED = re.compile(r"^failed: (.*)$")


def installer_dir() -> Path:
    """installer/: in a checkout at the top, in an installed wheel under binder_lite/data."""
    from binder_lite.paths import data_dir

    found = data_dir() / "installer"
    if not (found / "bootstrap.sh").is_file():
        raise InstallError(f"the installer is missing from {found}")
    return found


# -- the server's end: facts for bootstrap.sh ------------------------------------------


def facts(site_file: Path) -> dict[str, str]:
    """The settings bootstrap.sh needs from `site_file`; UsageError for a value that
    cannot go into a unit file or a shell command safely."""
    from binder_lite.site import load_site

    site = load_site(site_file, for_service=True)
    b = site.binder
    named = {
        "binder.auth.client_secret_file": b.auth.client_secret_file,
        "binder.push_credential_file": b.push_credential_file,
        "binder.api_token_file": b.api_token_file,
    }
    secrets = {name: path for name, path in named.items() if path}
    for name, value in {"binder.user": b.user, "binder.state_dir": b.state_dir, **secrets}.items():
        if not _SAFE.fullmatch(value):
            raise UsageError(
                f"{site_file}: {name} is {value!r}: the installer takes only letters, "
                "digits and . _ / - there"
            )
    return {
        "USER_NAME": b.user,
        "STATE_DIR": b.state_dir,
        "PORT": str(b.port),
        "RUNTIME": b.runtime.value,
        "SECRET_FILES": " ".join(secrets.values()),
        "PUBLIC_URL": b.public_url or "",
    }


def shell_assignments(values: dict[str, str]) -> str:
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def schema(db: Path) -> tuple[int, int]:
    """(the schema version of the database at `db`, the one this binder-lite knows)."""
    from binder_lite.web.store import VERSION

    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found: int = connection.execute("PRAGMA user_version").fetchone()[0]
    finally:
        connection.close()
    return found, VERSION


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("facts", "schema"):
        print("usage: python -m binder_lite.install facts SITE | schema DB", file=sys.stderr)  # noqa: T201
        return 2
    try:
        if args[0] == "facts":
            sys.stdout.write(shell_assignments(facts(Path(args[1]))))
        else:
            found, known = schema(Path(args[1]))
            sys.stdout.write(f"{found} {known}\n")
    except (SiteError, UsageError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


# -- the workstation's end: install over SSH -------------------------------------------


@dataclass(frozen=True)
class Payload:
    """What goes to the target: the site file, and a bundle or binder-lite's wheel."""

    site: Path
    bundle: Path | None = None
    wheel: Path | None = None


@dataclass(frozen=True)
class Outcome:
    steps: int  # the steps the installer announced
    last: str  # its last line


def bootstrap_argv(
    directory: str,
    payload: Payload,
    *,
    roll_back: bool = False,
    uninstall: bool = False,
    purge: bool = False,
    serve_args: Sequence[str] = (),
) -> list[str]:
    """The command run on the target, in `directory` (pure)."""
    argv = ["sh", f"{directory}/bootstrap.sh"]
    if uninstall:
        return [*argv, "--uninstall", *(["--purge"] if purge else [])]
    argv += ["--site", f"{directory}/site.yaml"]
    if roll_back:
        return [*argv, "--roll-back"]
    if payload.bundle is not None:
        argv += ["--bundle", f"{directory}/bundle.tar"]
    if payload.wheel is not None:
        argv += ["--wheel", f"{directory}/wheels/{payload.wheel.name}"]
    for arg in serve_args:
        argv += ["--serve-arg", arg]
    return argv


def install(
    target: Target,
    host_keys: paramiko.HostKeys,
    identity: Path | None,
    payload: Payload,
    argv_for: Callable[[str], list[str]],
    progress: Callable[[str], None],
    timeout: float = 3600.0,
) -> Outcome:
    """Copy the installer and `payload` to `target`, run `argv_for(directory)` there as
    root, report each line to `progress`; InstallError naming the failing step."""
    from binder_lite.vm import ssh

    client = ssh.connect(target, host_keys, identity)
    try:
        directory = f"/var/tmp/binder-lite-install-{uuid.uuid4().hex[:12]}"
        sudo = "" if target.user == "root" else "sudo -n "
        _check(client, f"{sudo}mkdir -m 0700 {directory}", "making the upload directory")
        if sudo:
            _check(client, f"{sudo}chown {shlex.quote(target.user)} {directory}", "chown")
        try:
            _upload(client, directory, payload)
            command = sudo + shlex.join(argv_for(directory))
            return _follow(client, command, progress, timeout)
        finally:
            _run(client, f"{sudo}rm -rf {directory}", 120)
    finally:
        client.close()


def _upload(client: paramiko.SSHClient, directory: str, payload: Payload) -> None:
    here = installer_dir()
    sftp = client.open_sftp()
    try:
        for name in INSTALLER_FILES:
            sftp.put(str(here / name), f"{directory}/{name}")
        sftp.put(str(payload.site), f"{directory}/site.yaml")
        if payload.bundle is not None:
            sftp.put(str(payload.bundle), f"{directory}/bundle.tar")
        if payload.wheel is not None:
            sftp.mkdir(f"{directory}/wheels")
            sftp.put(str(payload.wheel), f"{directory}/wheels/{payload.wheel.name}")
    finally:
        sftp.close()


def _follow(
    client: paramiko.SSHClient, command: str, progress: Callable[[str], None], timeout: float
) -> Outcome:
    _, stdout, _ = client.exec_command(command + " 2>&1", timeout=timeout)
    steps, current, failure, last = 0, "", "", ""
    for raw in stdout:
        line = raw.rstrip("\n")
        progress(line)
        last = line or last
        if m := STEP.match(line):
            steps, current = int(m.group(2)), f"step {m.group(1)}/{m.group(2)}: {m.group(3)}"
        elif m := FAILED.match(line):
            failure = m.group(1)
    status = stdout.channel.recv_exit_status()
    if status != 0:
        raise InstallError(
            f"the installer failed (exit {status}): "
            + (failure or (f"during {current}: {last}" if current else last or "no output"))
        )
    return Outcome(steps, last)


def _run(client: paramiko.SSHClient, command: str, timeout: float) -> tuple[int, str]:
    _, stdout, _ = client.exec_command(command + " 2>&1", timeout=timeout)
    output = stdout.read().decode("utf-8", "replace")
    return stdout.channel.recv_exit_status(), output


def _check(client: paramiko.SSHClient, command: str, what: str) -> None:
    status, output = _run(client, command, 120)
    if status != 0:
        raise InstallError(f"{what} on the target failed (exit {status}): {output.strip()}")


if __name__ == "__main__":
    sys.exit(main())
