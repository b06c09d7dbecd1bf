"""Helpers for tests that launch real Jupyter servers: git repositories (local and
over HTTP on loopback), HTTP requests and running a cell over a kernel websocket."""

from __future__ import annotations

import functools
import http.server
import json
import os
import secrets
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from binder_lite.kernel import run_cell

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": ["6 * 7"],
        }
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository with index.ipynb, a README and `files`; one commit on main."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "index.ipynb").write_text(json.dumps(NOTEBOOK))
    (path / "README.md").write_text("# test repository\n")
    for name, text in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@contextmanager
def served_over_http(repo: Path) -> Iterator[str]:
    """Serve a bare copy of `repo` with git's "dumb" HTTP protocol on 127.0.0.1."""
    bare = repo.parent / f"{repo.name}-{uuid.uuid4().hex[:6]}.git"
    subprocess.run(["git", "clone", "-q", "--bare", repo, bare], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    handler = functools.partial(_QuietHandler, directory=str(bare.parent))
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        yield f"http://127.0.0.1:{port}/{bare.name}"


@contextmanager
def serving(server: http.server.HTTPServer) -> Iterator[int]:
    """Run `server` in a thread; yield its port; shut it down afterwards."""
    # A connection reset between serve_forever's select and its accept() (seen under
    # load) would leave accept() waiting, and shutdown() waiting on it, for ever: with
    # a timeout it gives up and serve_forever sees the shutdown.
    server.socket.settimeout(1.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def get_json(url: str, token: str) -> object:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def execute(base_url: str, token: str, code: str, headers: dict[str, str] | None = None) -> str:
    """Start a kernel through the REST API, run `code` over its websocket, return the
    text/plain result."""
    return run_cell(base_url, token, code, headers)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (to prove nothing was left running)."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass
class Target:
    """What a hostile session's probe aims at, as the host sees it: the service's
    state folder with a secret in it, and a port on the host's loopback."""

    state: Path
    secret: Path
    marker: str
    port: int


@contextmanager
def hostile_target(state: Path, who: str = "a session") -> Iterator[Target]:
    """A Target in `state`; fails afterwards if anything connected to its port."""
    state.mkdir(parents=True, exist_ok=True)
    marker = secrets.token_hex(16)
    (state / "sessions.sqlite").write_text(f"tokens {marker}")
    secret = state / "push-credential"
    secret.write_text(f"git:{marker}")
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield Target(state, secret, marker, listener.getsockname()[1])
    listener.close()
    assert not accepted, f"{who} connected to a port on the host's loopback"
