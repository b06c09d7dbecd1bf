"""What `binder-lite launch`, `guix-notebook-launcher` and `binder-lite manifest` do."""

from __future__ import annotations

import signal
import sys
import time
import webbrowser
from pathlib import Path
from types import FrameType

import click

from binder_lite.errors import UsageError
from binder_lite.launch import detect
from binder_lite.launch.session import Event, Isolation, Phase, Session, launch
from binder_lite.site.model import Runtime, SessionNetwork


def run_launcher(
    source: str,
    ref: str | None,
    open_path: str | None,
    runtime: str,
    kernel: str | None,
    port: int | None,
    no_browser: bool,
    timeout: float | None,
    cache_dir: Path | None,
    quiet: bool,
    network: str = "outbound",
    unsandboxed: bool = False,
) -> None:
    def progress(event: Event) -> None:
        if not quiet and event.phase is not Phase.READY:
            click.echo(f"[{event.phase}] {event.message}", err=True)

    # A service manager stops us with SIGTERM: clean up as for Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    session = launch(
        source,
        ref,
        runtime_kind=Runtime(runtime),
        open_path=open_path,
        kernel=kernel,
        port=port,
        cache_dir=cache_dir,
        timeout=timeout,
        on_event=progress,
        isolation=Isolation(sandboxed=not unsandboxed, network=SessionNetwork(network)),
    )
    try:
        _print_urls(session)
        if not no_browser:
            webbrowser.open(session.url)
        _serve(session)
    finally:
        session.stop()
        click.echo("stopped the notebook server", err=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_urls(session: Session) -> None:
    local = session.url.replace("://127.0.0.1:", "://localhost:", 1)
    click.echo(
        "To access the notebook, open this file in a browser:\n"
        f"    {session.open_file().as_uri()}\n"
        "Or copy and paste one of these URLs:\n"
        f"    {local}\n"
        f" or {session.url}"
    )
    click.echo(
        f"Repository {session.provenance.repository} at {session.provenance.commit}, "
        f"files in {session.work_dir}; Ctrl-C stops the server.",
        err=True,
    )
    sys.stdout.flush()


def _serve(session: Session) -> None:
    while session.alive():
        time.sleep(0.5)
    click.echo(
        f"the notebook server exited (status {session.process.returncode}); "
        f"its log: {session.log_file}",
        err=True,
    )
    raise SystemExit(1)


def run_manifest(repo: Path, *, write: bool, check: bool) -> None:
    from binder_lite import guix
    from binder_lite.launch.runtime import guix_available

    env = detect.detect(repo)
    if env.kind == "manifest":
        if write:
            raise UsageError(f"{env.config_dir / 'manifest.scm'} exists; nothing to write")
        click.echo(env.manifest, nl=False)
        return
    if check and guix_available():
        env = detect.with_checked_names(env, guix.available_packages)
    elif check:
        click.echo("no guix here: package names are not checked", err=True)
    for r in env.unavailable:
        click.echo(f"not in Guix: {r.source} ({r.note})", err=True)
    if write:
        from binder_lite.render import write_files

        target = env.config_dir / "manifest.scm"
        write_files({target.name: env.manifest}, env.config_dir)
        click.echo(f"wrote {target}", err=True)
    else:
        click.echo(env.manifest, nl=False)
