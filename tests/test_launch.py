"""Launching real Jupyter servers from real git repositories (local runtime)."""

from __future__ import annotations

import html
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

import pytest
from launchkit import (
    execute,
    get_json,
    git,
    http_status,
    make_repo,
    processes_mentioning,
    served_over_http,
)

from binder_lite.errors import JupyterError, LaunchError, SourceError
from binder_lite.launch import Event, Phase, Session, launch, lifetime
from binder_lite.launch import runtime as runtime_module
from binder_lite.site.model import Runtime


def local(source: str, tmp_path: Path, **kwargs: object) -> Session:
    return launch(source, runtime_kind=Runtime.LOCAL, cache_dir=tmp_path / "cache", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"requirements.txt": "numpy\n"})


def test_launch_serves_the_notebook_with_its_token_only(repo: Path, tmp_path: Path) -> None:
    events: list[Event] = []
    session = launch(
        f"file://{repo}",
        runtime_kind=Runtime.LOCAL,
        cache_dir=tmp_path / "c",
        on_event=events.append,
    )
    try:
        assert re.fullmatch(
            rf"http://127\.0\.0\.1:{session.port}/notebooks/index\.ipynb\?token=[0-9a-f]{{48}}",
            session.url,
        )
        assert http_status(session.url) == 200
        assert http_status(session.url.split("?")[0]) in (302, 403)  # to the login page
        assert http_status(f"{session.base_url}api/contents") == 403
        assert http_status(f"{session.base_url}api/contents?token=wrong") == 403
        specs = get_json(f"{session.base_url}api/kernelspecs", session.token)
        assert isinstance(specs, dict) and specs["default"] == "python3"
        assert execute(session.base_url, session.token, "6 * 7") == "42"
        phases = [e.phase for e in events]
        assert phases[0] is Phase.FETCHING and phases[-1] is Phase.READY
        assert Phase.RESOLVING in phases and Phase.STARTING in phases
        assert all(session.token not in e.message for e in events[:-1])
        prov = session.provenance
        assert prov.commit == git(repo, "rev-parse", "HEAD")
        assert prov.environment == "requirements" and '"python-numpy"' in prov.manifest
        assert prov.runtime == "local" and prov.guix_version is None
        assert session.open_file().stat().st_mode & 0o077 == 0
        assert session.url in session.open_file().read_text().replace("&amp;", "&")
    finally:
        session.stop()
    assert not session.alive()
    assert processes_mentioning(str(session.session_dir)) == []


def test_kernel_override(repo: Path, tmp_path: Path) -> None:
    session = local(str(repo), tmp_path, kernel="my-kernel")
    try:
        specs = get_json(f"{session.base_url}api/kernelspecs", session.token)
        assert isinstance(specs, dict) and specs["default"] == "my-kernel"
    finally:
        session.stop()


OPENED = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["opened by name"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.parametrize(
    ("open_path", "view", "kind"),
    [
        ("my notes/a b.ipynb", "notebooks", "notebook"),
        ("my notes", "tree", "directory"),
        ("my notes/data.csv", "edit", "file"),
    ],
)
def test_open_path_leads_to_what_it_names(
    tmp_path: Path, open_path: str, view: str, kind: str
) -> None:
    files = {"my notes/a b.ipynb": json.dumps(OPENED), "my notes/data.csv": "a,b\n1,2\n"}
    session = local(str(make_repo(tmp_path / "repo", files)), tmp_path, open_path=open_path)
    try:
        # The page given to the browser forwards to the URL the launcher prints ...
        forward = re.search(r'content="1;url=([^"]*)"', session.open_file().read_text())
        assert forward is not None and html.unescape(forward[1]) == session.url
        # ... which is the server's view of the path asked for, with the token ...
        url = urllib.parse.urlsplit(session.url)
        prefix = urllib.parse.urlsplit(session.base_url).path + view + "/"
        assert url.path.startswith(prefix)
        named = urllib.parse.unquote(url.path.removeprefix(prefix))
        assert named == open_path
        assert urllib.parse.parse_qs(url.query) == {"token": [session.token]}
        assert http_status(session.url) == 200
        # ... and the server finds there the notebook, folder or file of the repository.
        found = get_json(
            f"{session.base_url}api/contents/{urllib.parse.quote(named)}", session.token
        )
        assert isinstance(found, dict) and (found["type"], found["path"]) == (kind, open_path)
        if kind == "notebook":
            assert found["content"]["cells"][0]["source"] == "opened by name"
        elif kind == "file":
            assert found["content"] == "a,b\n1,2\n"
        else:
            assert {c["name"] for c in found["content"]} == {"a b.ipynb", "data.csv"}
    finally:
        session.stop()


def test_base_url(repo: Path, tmp_path: Path) -> None:
    session = local(str(repo), tmp_path, base_url="/s/abc/")
    try:
        assert session.base_url.endswith("/s/abc/")
        assert "/s/abc/notebooks/index.ipynb?token=" in session.url
        assert http_status(session.url) == 200
    finally:
        session.stop()


def test_users_tree_is_never_modified(repo: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    session = local(str(repo), tmp_path)
    try:
        (session.work_dir / "index.ipynb").write_text("changed in the session")
        (session.work_dir / "new.txt").write_text("new")
    finally:
        session.stop()
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before
    assert git(repo, "status", "--porcelain") == ""
    assert session.work_dir != repo


def test_refs_over_http_and_the_cache(repo: Path, tmp_path: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "v1", "-m", "v1")
    (repo / "second.txt").write_text("2")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    git(repo, "checkout", "-q", "-b", "other")
    with served_over_http(repo) as url:
        from binder_lite.launch.sources import check_out

        cache = tmp_path / "cache"
        log: list[str] = []
        main = check_out(url, "main", cache, tmp_path / "s1", log.append)
        assert main.commit == git(repo, "rev-parse", "main")
        assert any(line.startswith("fetching") for line in log)
        tagged = check_out(url, "v1", cache, tmp_path / "s2", log.append)
        assert tagged.commit == first and not (tagged.path / "second.txt").exists()
        by_sha = check_out(url, first[:10], cache, tmp_path / "s3", log.append)
        assert by_sha.commit == first
        log.clear()
        again = check_out(url, "main", cache, tmp_path / "s4", log.append)
        assert again.commit == main.commit
        assert not any(line.startswith("fetching") for line in log), log
        assert git(again.path, "remote", "get-url", "origin") == url
        with pytest.raises(SourceError, match="unknown ref 'nope'"):
            check_out(url, "nope", cache, tmp_path / "s5", log.append)


def test_a_checkout_made_already_is_taken_only_at_its_commit(repo: Path, tmp_path: Path) -> None:
    """A Slurm job takes the checkout its service made (launch/node.py): moved, not
    cloned, and only when it is a real directory whose HEAD is the commit asked for."""
    from binder_lite.launch.sources import check_out, take_checkout

    made = check_out(str(repo), None, tmp_path / "cache", tmp_path / "made", lambda _: None)
    other = "0" * 40
    assert take_checkout(made.path, "u", other, tmp_path / "a") is None
    assert take_checkout(made.path, "u", made.commit[:12], tmp_path / "a") is None
    link = tmp_path / "link"
    link.symlink_to(made.path)
    assert take_checkout(link, "u", made.commit, tmp_path / "a") is None
    (tmp_path / "plain").mkdir()
    assert take_checkout(tmp_path / "plain", "u", made.commit, tmp_path / "a") is None
    (tmp_path / "borrowed").mkdir()  # a .git that leads elsewhere is not the checkout's
    (tmp_path / "borrowed" / ".git").symlink_to(made.path / ".git")
    assert take_checkout(tmp_path / "borrowed", "u", made.commit, tmp_path / "a") is None
    assert take_checkout(tmp_path / "missing", "u", made.commit, tmp_path / "a") is None
    assert made.path.is_dir() and not (tmp_path / "a").exists()  # nothing moved
    taken = take_checkout(made.path, "u", made.commit, tmp_path / "job" / "repo")
    assert taken is not None and taken.commit == made.commit
    assert taken.path == tmp_path / "job" / "repo" and not made.path.exists()
    assert git(taken.path, "rev-parse", "HEAD") == made.commit


def test_a_manifest_the_service_checked_is_not_checked_with_guix_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slurm job's generated manifest is the one its service made and had Guix check
    (session.Prepared): Guix is not asked again on the node.  A repository's own
    manifest.scm is read from the checkout, as always."""
    from binder_lite import guix
    from binder_lite.launch import session as session_module

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text("numpy\nnot-a-package-anywhere\n")
    asked: list[list[str]] = []

    def available(names: list[str]) -> set[str]:
        asked.append(names)
        return {"python-numpy"}

    monkeypatch.setattr(guix, "available_packages", available)
    monkeypatch.setattr(runtime_module, "guix_available", lambda: True)
    events: list[Event] = []
    here = session_module._environment(repo, Runtime.GUIX, events.append)
    assert asked and "python-numpy" in here.manifest
    asked.clear()
    checked = here.manifest + ";; as the service made it\n"
    there = session_module._environment(repo, Runtime.GUIX, events.append, checked)
    assert there.manifest == checked and asked == []
    assert "as the service's Guix checked them" in events[-1].message
    (repo / "manifest.scm").write_text('(specifications->manifest (list "python"))\n')
    own = session_module._environment(repo, Runtime.GUIX, events.append, checked)
    assert own.kind == "manifest" and own.manifest != checked
    assert str(repo / "manifest.scm") in own.manifest


def test_warm_relaunch_does_not_fetch(repo: Path, tmp_path: Path) -> None:
    events: list[Event] = []
    for _ in range(2):
        events.clear()
        session = local(str(repo), tmp_path, on_event=events.append)
        session.stop()
    assert any("already in the cache" in e.message for e in events)
    assert not any(e.message.startswith("fetching file") for e in events)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/repo", "no such directory"),
        ("ftp://example.org/x", "unsupported URL scheme 'ftp'"),
        ("http://127.0.0.1:9/x.git", "cannot reach the repository"),
    ],
)
def test_bad_sources(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        local(source, tmp_path)


def test_not_a_git_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(SourceError, match="not a git repository"):
        local(str(tmp_path / "plain"), tmp_path)


def test_open_path_outside_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b"):
        with pytest.raises(LaunchError, match="inside the repository"):
            local(str(repo), tmp_path, open_path=bad)


def test_port_in_use(repo: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LaunchError, match=f"port {taken.getsockname()[1]} is already in use"):
            local(str(repo), tmp_path, port=taken.getsockname()[1])


def test_jupyter_failing_shows_its_log(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(spec: runtime_module.ServerSpec) -> list[str]:
        return [
            sys.executable,
            "-c",
            "import sys; print('config error: no such option'); sys.exit(3)",
        ]

    monkeypatch.setattr(runtime_module, "local_argv", broken)
    with pytest.raises(JupyterError) as info:
        local(str(repo), tmp_path)
    assert "exited with status 3" in str(info.value)
    assert "config error: no such option" in str(info.value)


def _sigint_as_at_a_terminal() -> None:
    """In the launcher, before exec: SIGINT's default action.  A `&` job of a
    non-interactive shell starts with SIGINT ignored, and the launcher would inherit
    that (Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lines(stream: IO[str]) -> queue.Queue[str]:
    """The lines of `stream`, read to its end by a thread (so every wait is bounded);
    "" marks the end."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _end(proc: subprocess.Popen[str]) -> None:
    """After a failure: SIGTERM, which the launcher handles as Ctrl-C (stopping its
    session), then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_launcher_command_prints_urls_and_ctrl_c_stops_everything(
    repo: Path, tmp_path: Path
) -> None:
    launcher = Path(sys.executable).parent / "guix-notebook-launcher"
    # Its stderr (progress, Jupyter's log while it starts) goes to a file: a pipe that
    # nobody reads fills up and blocks the launcher.
    stderr_path = tmp_path / "launcher.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [
                launcher,
                f"file://{repo}",
                "--runtime",
                "local",
                "--no-browser",
                "--cache-dir",
                tmp_path / "cache",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=_sigint_as_at_a_terminal,
        )
    try:
        assert proc.stdout is not None
        stdout = _lines(proc.stdout)
        lines = [stdout.get(timeout=180) for _ in range(5)]
        intro = "To access the notebook, open this file in a browser:\n"
        assert lines[0] == intro, (lines, stderr_path.read_text())
        assert lines[1].startswith("    file:///") and lines[1].rstrip().endswith("/open.html")
        assert lines[2] == "Or copy and paste one of these URLs:\n"
        assert re.fullmatch(
            r"    http://localhost:\d+/notebooks/index\.ipynb\?token=\w+\n", lines[3]
        )
        assert re.fullmatch(
            r" or http://127\.0\.0\.1:\d+/notebooks/index\.ipynb\?token=\w+\n", lines[4]
        )
        url = lines[4].split()[-1]
        assert http_status(url) == 200
        session_dir = Path(lines[1].strip().removeprefix("file://").removesuffix("/open.html"))
        handle = lifetime.load(session_dir)
        assert handle is not None and handle.namespaces
        server = handle.members()
        execute(url.split("notebooks/")[0], url.split("token=")[1], "1")  # start a kernel too
        assert handle.members() - server, "no kernel process in the session's sandbox"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, stderr_path.read_text()
    finally:
        _end(proc)
    # A clean stop after Ctrl-C says so, and nothing else: no "aborted", no traceback.
    said = stderr_path.read_text().splitlines()
    assert said[-1] == "stopped the notebook server", said[-5:]
    assert "aborted" not in said and not any("Traceback" in line for line in said), said
    # Nothing of the session is left: no process in its sandbox (server, kernel), none
    # naming its files, no network helper, and nothing answering at the URL.
    assert handle.members() == set()  # zombies aside
    assert processes_mentioning(str(session_dir)) == []
    assert not any(helper.alive() for helper in handle.helpers)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_manifest_command(repo: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["BINDER_LITE_GUIX"] = str(tmp_path / "no-guix")
    binder_lite = Path(sys.executable).parent / "binder-lite"
    shown = subprocess.run(
        [binder_lite, "manifest", repo], capture_output=True, text=True, env=env, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert '"python-numpy"' in shown.stdout and "no guix here" in shown.stderr
    written = subprocess.run(
        [binder_lite, "manifest", repo, "--write", "--no-check"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert written.returncode == 0
    assert (repo / "manifest.scm").read_text() == shown.stdout
    again = subprocess.run(
        [binder_lite, "manifest", repo, "--write"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert again.returncode == 2 and "exists; nothing to write" in again.stderr
