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
    interrupted = False
    try:
        _print_urls(session)
        if not no_browser:
            webbrowser.open(session.url)
        _serve(session)
    except KeyboardInterrupt:
        interrupted = True  # how the user stops the server: not an error
    finally:
        _stop(session)
    if interrupted:
        # Exits as a program ended by SIGINT does, without click's "Aborted!".
        raise SystemExit(128 + signal.SIGINT)


def _stop(session: Session) -> None:
    """Stop the session; a second Ctrl-C (or SIGTERM) meanwhile does not cut the
    stop short, which would leave its processes behind (the stop is bounded)."""
    previous = (
        signal.signal(signal.SIGINT, signal.SIG_IGN),
        signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )
    try:
        session.stop()
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
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


def run_manifest(repo: Path, *, write: bool, check: bool, explain: bool = False) -> None:
    from binder_lite import guix
    from binder_lite.launch.runtime import guix_available

    env = detect.detect(repo)
    if explain and env.kind == "manifest":
        from binder_lite.launch.explain import explain as explanation

        click.echo(explanation(env), nl=False)
        return
    if env.kind == "manifest":
        if write:
            raise UsageError(f"{env.config_dir / 'manifest.scm'} exists; nothing to write")
        click.echo(env.manifest, nl=False)
        return
    if check and guix_available():
        env = detect.with_checked_names(env, guix.available_packages)
    elif check:
        click.echo("no guix here: package names are not checked", err=True)
    if explain:
        from binder_lite.launch.explain import explain as explanation

        click.echo(explanation(env), nl=False)
        return
    for r in env.unavailable:
        click.echo(f"not in Guix: {r.source} ({r.note})", err=True)
    for s in env.skipped:  # by file and line, as the web progress shows them
        click.echo(f"skipped {s.where}: {s.reason}", err=True)
    if write:
        from binder_lite.render import write_files

        target = env.config_dir / "manifest.scm"
        write_files({target.name: env.manifest}, env.config_dir)
        click.echo(f"wrote {target}", err=True)
    else:
        click.echo(env.manifest, nl=False)
