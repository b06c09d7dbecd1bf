"""The one place where binder-lite starts other programs."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from binder_lite.errors import CommandError, ToolNotFoundError

log = logging.getLogger(__name__)

Arg = str | os.PathLike[str]


def _argv(cmd: Sequence[Arg]) -> list[str]:
    return [os.fspath(a) for a in cmd]


def _environment(
    extra: dict[str, str] | None, inherit: bool = True, fixed_locale: bool = True
) -> dict[str, str]:
    # A fixed locale: Guix and git messages are parsed and shown to users, and
    # non-ASCII text (site names, /etc/issue) must survive as UTF-8.
    env = dict(os.environ) if inherit else {}
    if fixed_locale:
        env.setdefault("LC_ALL", "C.UTF-8")
    env.update(extra or {})
    return env


def run(
    cmd: Sequence[Arg],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    error: type[CommandError] = CommandError,
    timeout: float | None = None,
    with_stderr: bool = False,
    inherit_env: bool = True,
) -> str:
    """Run `cmd`, return its standard output (and error, if asked); on failure raise
    `error` with its output.  Without `inherit_env`, `env` is all it gets."""
    argv = _argv(cmd)
    log.debug("+ %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_environment(env, inherit_env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise ToolNotFoundError(f"{argv[0]} not found; is it installed and on PATH?") from e
    except subprocess.TimeoutExpired as e:
        raise error(argv, -1, f"timed out after {timeout} s") from e
    if proc.returncode != 0:
        log.debug("%s", proc.stderr)
        raise error(argv, proc.returncode, proc.stderr + proc.stdout)
    return proc.stdout + proc.stderr if with_stderr else proc.stdout


def stream(
    cmd: Sequence[Arg],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    error: type[CommandError] = CommandError,
) -> Iterator[str]:
    """Run `cmd`, yielding its merged output line by line; raise `error` if it fails."""
    argv = _argv(cmd)
    log.debug("+ %s", shlex.join(argv))
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as e:
        raise ToolNotFoundError(f"{argv[0]} not found; is it installed and on PATH?") from e
    tail: list[str] = []
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            tail = [*tail[-199:], line]
            yield line.rstrip("\n")
    if proc.returncode != 0:
        raise error(argv, proc.returncode, "".join(tail))


def spawn(
    cmd: Sequence[Arg],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    inherit_env: bool = True,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    new_session: bool = False,
    pass_fds: Sequence[int] = (),
    missing: str | None = None,
    fixed_locale: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `cmd` in the background and hand back the process: for servers, VMs and
    pipelines the caller watches.  A missing program raises `ToolNotFoundError` (with
    `missing` as its message, if given) instead of a bare FileNotFoundError.  Without
    `fixed_locale` the program keeps the locale `env` gives it (a user's own server)."""
    argv = _argv(cmd)
    log.debug("+ %s &", shlex.join(argv))
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=_environment(env, inherit_env, fixed_locale),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=new_session,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as e:
        raise ToolNotFoundError(
            missing or f"{argv[0]} not found; is it installed and on PATH?"
        ) from e


def replace_with(cmd: Sequence[Arg]) -> NoReturn:
    """Become `cmd` (exec): for interactive programs such as `ssh` that own the
    terminal from then on.  A missing program raises `ToolNotFoundError`."""
    argv = _argv(cmd)
    log.debug("exec %s", shlex.join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError as e:
        raise ToolNotFoundError(f"{argv[0]} not found; is it installed and on PATH?") from e
