"""`binder-lite remote`: a binder-lite service used from here, through its API
(client.py).  The API token comes from a file or BINDER_LITE_TOKEN, never from the
command line, where every user of the machine would see it (`ps`)."""

from __future__ import annotations

import os
import re
import webbrowser
from pathlib import Path

import click

from binder_lite.client import Client, Event, Session
from binder_lite.errors import UsageError

TOKEN_VARIABLE = "BINDER_LITE_TOKEN"

url_argument = click.argument("url", metavar="URL")
token_file_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"A file holding the API token [default: ${TOKEN_VARIABLE}; without either, "
    "an anonymous visitor, on a site without logins].",
)


@click.group()
def remote() -> None:
    """Launch and manage sessions of a binder-lite service through its API."""


@remote.command("launch")
@url_argument
@click.argument("sources", nargs=-1, required=True, metavar="REPO|FILES...")
@click.option("--ref", help="The branch, tag or commit of REPO [default: its HEAD].")
@click.option("--open", "open_path", metavar="PATH", help="The file to show first.")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The folder FILES are sent from [default: the one folder given, else the "
    "current directory].",
)
@token_file_option
@click.option("--wait", is_flag=True, help="Follow the launch (on stderr) until it is ready.")
@click.option("--open-browser", is_flag=True, help="Wait, then open the session in a browser.")
@click.option(
    "--timeout", type=click.IntRange(min=1), default=600, show_default=True, help="Seconds."
)
def launch_command(
    url: str,
    sources: tuple[str, ...],
    ref: str | None,
    open_path: str | None,
    root: Path | None,
    token_file: Path | None,
    wait: bool,
    open_browser: bool,
    timeout: int,
) -> None:
    """Launch a session on the service at URL, from a git repository REPO or from
    FILES (notebooks, data, folders; with a manifest.scm or requirements.txt at the
    top).  Prints the session's URL, with its token, once it is ready (--wait), or
    its ID at once."""
    client = Client(url, read_token(token_file))
    if is_repository(sources):
        if root is not None:
            raise UsageError("--root is for FILES, not a repository")
        session = client.launch(sources[0], ref=ref, open=open_path)
    else:
        if ref is not None:
            raise UsageError("--ref is for a repository, not FILES")
        session = client.launch_files(list(sources), root=root, open=open_path)
    if not (wait or open_browser):
        click.echo(f"Session {session.id} is starting; its page: {session.urls['page']}", err=True)
        click.echo(session.id)
        return
    ready = client.wait_ready(session.id, timeout=timeout, on_event=_progress)
    opened = ready.open_url or ready.urls["page"]
    click.echo("The session is ready; open it with this URL (it carries its token):", err=True)
    click.echo(f"    {opened}")
    if open_browser and not webbrowser.open(opened):
        click.echo("No browser could be started here; copy the URL instead.", err=True)


@remote.command("list")
@url_argument
@token_file_option
def list_command(url: str, token_file: Path | None) -> None:
    """List the caller's sessions on the service at URL, newest first."""
    for session in Client(url, read_token(token_file)).sessions():
        click.echo(_line(session))


@remote.command("stop")
@url_argument
@click.argument("session_id", metavar="ID")
@token_file_option
def stop_command(url: str, session_id: str, token_file: Path | None) -> None:
    """Stop the session ID on the service at URL."""
    stopped = Client(url, read_token(token_file)).stop(session_id)
    click.echo(f"{stopped.id} {stopped.status}")


def read_token(token_file: Path | None) -> str | None:
    """The token from `token_file`, else from the environment, else none."""
    if token_file is None:
        return os.environ.get(TOKEN_VARIABLE, "").strip() or None
    try:
        token = token_file.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{token_file}: cannot read the token: {e}") from None
    if not token:
        raise UsageError(f"{token_file}: the file is empty; it should hold an API token")
    return token


_REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:)", re.IGNORECASE)


def is_repository(sources: tuple[str, ...]) -> bool:
    """One argument that names a repository (a URL, or git's user@host:path) and no
    file here: anything else is files to send."""
    return len(sources) == 1 and bool(_REMOTE.match(sources[0])) and not Path(sources[0]).exists()


def _progress(event: Event) -> None:
    for line in event.message.rstrip().splitlines():
        click.echo(f"[{event.phase}] {line}", err=True)


def _line(session: Session) -> str:
    fields = [session.id, session.status, session.repository, session.open_url]
    return "  ".join(f for f in fields if f)
