"""Typed errors.  Library code raises these; the CLI turns them into exit codes once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class BinderLiteError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One located problem in a user's file."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class SiteError(BinderLiteError):
    """The site file is invalid; carries every problem found, in file order."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        count = len(self.problems)
        summary = f"{count} problem{'s' if count != 1 else ''} in the site file"
        super().__init__("\n".join([*map(str, self.problems), summary]))


class UsageError(BinderLiteError):
    """A command was asked for something it cannot do (bad option combination, ...)."""

    exit_code = 2


class ToolNotFoundError(BinderLiteError):
    """An external program (guix, qemu, git) is not installed."""

    exit_code = 127


class CommandError(BinderLiteError):
    """An external program failed; the message carries its own words."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.rstrip().splitlines()[-40:])
        super().__init__(f"`{argv[0]}` failed (exit {returncode}):\n{tail}".rstrip())


class GuixError(CommandError):
    """Guix rejected something we gave it; `output` is Guix's own message."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        super().__init__(argv, returncode, _without_noise(output))
        tail = "\n".join(self.output.rstrip().splitlines()[-40:])
        self.args = (f"Guix rejected the configuration (exit {returncode}):\n{tail}",)


# Guix prints this on every command when its channel is older than a few weeks;
# it says nothing about the user's configuration, so it is dropped from errors.
_NOISE = (
    "Consider running 'guix pull' followed by",
    "'guix system reconfigure' to get up-to-date packages and security updates.",
)


def _without_noise(output: str) -> str:
    lines = [line for line in output.splitlines() if not any(n in line for n in _NOISE)]
    return "\n".join(line for line in lines if line.strip() or lines)


class LaunchError(BinderLiteError):
    """A notebook session could not be started; the message says why and what to do."""


class SourceError(LaunchError):
    """The repository or ref could not be found or fetched."""


class EnvironmentSpecError(LaunchError):
    """The repository's environment (manifest, requirements, ...) cannot be used."""


class JupyterError(LaunchError):
    """Jupyter did not start or did not answer in time."""


class RemoteError(BinderLiteError):
    """A binder-lite service (its API) refused or failed a request, or could not be
    reached.  `code` is the API's error code (`unauthorized`, `capacity`, ...), or the
    client's own: `unreachable`, `timeout`, `failed` (the launch), `protocol`."""

    def __init__(self, url: str, code: str, message: str, status: int | None = None) -> None:
        self.url, self.code, self.message, self.status = url, code, message, status
        # A 4xx is the caller's to fix (token, files, ID): a usage error's exit code.
        self.exit_code = 2 if status is not None and 400 <= status < 500 else 1
        super().__init__(f"{url}: {message} ({code})")


class BootError(BinderLiteError):
    """A virtual machine did not start or did not become reachable; the message
    carries the evidence (the end of its serial console)."""


class SmokeError(BinderLiteError):
    """The smoke tests found the target broken (or could not reach it)."""


class BuildError(BinderLiteError):
    """An image could not be built or copied out of the store."""


class DeployError(BinderLiteError):
    """`guix deploy` or `guix system reconfigure` failed; Guix's own words follow."""


class InstallError(BinderLiteError):
    """The installation on the target failed; the message names the failing step."""


class BundleError(BinderLiteError):
    """A bundle could not be made (a download or the package resolution failed)."""


class StateError(BinderLiteError):
    """The service's state database cannot be used by this version of binder-lite."""


class StateTooNewError(StateError):
    """The state database was migrated by a newer binder-lite (this is a roll-back);
    it is refused untouched, and `backup` is the copy that newer version made before
    migrating, when there is one."""

    def __init__(self, path: Path, found: int, known: int, backup: Path | None) -> None:
        self.path, self.found, self.known, self.backup = path, found, known, backup
        restore = (
            f"; the copy made before that upgrade is {backup}: with the service stopped, "
            f"move it to {path} and delete {path.name}-wal and {path.name}-shm"
            if backup
            else ""
        )
        super().__init__(
            f"{path}: the state database is at schema version {found}, newer than the "
            f"{known} this binder-lite knows; run the newer binder-lite{restore}"
        )


class StateMigrationError(StateError):
    """A migration of the state database failed; the database is as it was."""

    def __init__(self, path: Path, found: int, target: int, backup: Path | None, why: str) -> None:
        self.path, self.found, self.target, self.backup = path, found, target, backup
        kept = f"; a copy from before is {backup}" if backup else ""
        super().__init__(
            f"{path}: migrating the state database from schema version {found} to "
            f"{target} failed ({why}); it is unchanged{kept}"
        )
