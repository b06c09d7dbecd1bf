"""Attacks on "Push changes" from code inside a session (issue 8, finding 3).

The session's checkout, and its `.git`, are writable by whatever runs in the session.
Each test plants something there, the way a notebook could, then pushes as the
owner would, with real git against a real `git http-backend` on loopback that wants
a credential: nothing planted may run on the host, and the credential may reach no
one but the origin recorded at launch."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from launchkit import git, make_repo, serving
from webkit import Client, Server, _GitHandler, git_http_server

from binder_lite.launch.sources import check_out
from binder_lite.web.push import Credential, Pushed, PushError, PushSource, push_changes

AUTHOR = ("Alice", "alice@example.org")
TOKEN = "push-token-that-must-stay-home"
CREDENTIAL = Credential("u", TOKEN)


# -- a listener that wants credentials, and records whatever reaches it ----------------


@dataclass
class Listener:
    """A TCP server on 127.0.0.1 that answers every HTTP request "401, send Basic
    credentials", as a git server would, and keeps every byte it was sent."""

    received: list[bytes] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def everything(self) -> bytes:
        return b"".join(self.received)


@contextmanager
def listening() -> Iterator[Listener]:
    listener = Listener()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    listener.port = sock.getsockname()[1]
    done = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            buffered = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                listener.received.append(data)
                buffered += data
                while b"\r\n\r\n" in buffered:
                    _, _, buffered = buffered.partition(b"\r\n\r\n")
                    conn.sendall(
                        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm="x"'
                        b"\r\nContent-Length: 0\r\n\r\n"
                    )

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        done.set()
        thread.join(timeout=5)
        sock.close()


# -- a forge, and a session launched from it ------------------------------------------


@dataclass
class Forge:
    root: Path
    url: str  # of project.git

    @property
    def bare(self) -> Path:
        return self.root / "project.git"

    def tree(self, ref: str) -> dict[str, tuple[str, str]]:
        """path → (mode, blob contents) of every file in `ref`."""
        listing = git(self.bare, "ls-tree", "-r", "-z", ref).strip("\0").split("\0")
        files = {}
        for line in listing:
            meta, _, path = line.partition("\t")
            mode, _, oid = meta.split(" ")
            files[path] = (mode, git(self.bare, "cat-file", "blob", oid))
        return files

    def all_objects(self) -> bytes:
        return subprocess.run(
            ["git", "cat-file", "--batch-all-objects", "--batch"],
            cwd=self.bare,
            capture_output=True,
            check=True,
        ).stdout


def make_forge(tmp_path: Path) -> Path:
    root = tmp_path / "forge"
    root.mkdir()
    source = make_repo(tmp_path / "source", {"data/numbers.csv": "1,2,3\n"})
    git(tmp_path, "clone", "-q", "--bare", str(source), str(root / "project.git"))
    git(root / "project.git", "config", "http.receivepack", "true")
    return root


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[Forge]:
    root = make_forge(tmp_path)
    with git_http_server(root, "u", lambda p: p == TOKEN) as url:
        yield Forge(root, f"{url}/project.git")


def launch(forge_url: str, state: Path, sid: str = "0123456789abcdef") -> PushSource:
    """The checkout a launch makes: the cache's mirror, and a clone of it for the session."""
    work = state / "sessions" / sid / "repo"
    checkout = check_out(forge_url, None, state / "cache", work, lambda _: None)
    return PushSource(sid, work, forge_url, checkout.commit)


def attempt(source: PushSource, credential: Credential, state: Path) -> Pushed | PushError:
    """Push; a refusal is returned, so that what the listener saw is checked first."""
    try:
        return push_changes(source, AUTHOR, credential, state)
    except PushError as e:
        return e


def session_git(source: PushSource, *args: str) -> str:
    """git in the session's checkout, as code in the session would run it."""
    return git(source.files, *args)


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# -- the attacks ----------------------------------------------------------------------


def plant_hook(source: PushSource, marker: Path) -> None:
    for hook in ("pre-commit", "commit-msg", "post-commit", "pre-push", "post-index-change"):
        executable(source.files / ".git" / "hooks" / hook, f"#!/bin/sh\necho {hook} >> {marker}\n")


def plant_fsmonitor(source: PushSource, marker: Path) -> None:
    script = executable(source.files / ".git" / "watch", f"#!/bin/sh\necho fsmonitor >> {marker}\n")
    session_git(source, "config", "core.fsmonitor", str(script))


def plant_hooks_path(source: PushSource, marker: Path) -> None:
    hooks = source.files / ".git" / "elsewhere"
    executable(hooks / "pre-commit", f"#!/bin/sh\necho hooksPath >> {marker}\n")
    session_git(source, "config", "core.hooksPath", str(hooks))


def plant_filter(source: PushSource, marker: Path) -> None:
    # The attributes travel with the files; the driver they name exists only in the
    # session's .git/config, which the push must not read.
    (source.files / ".gitattributes").write_text("* filter=evil diff=evil\n")
    command = f"sh -c 'echo filter >> {marker}; cat'"
    for key in ("filter.evil.clean", "filter.evil.smudge", "diff.evil.textconv"):
        session_git(source, "config", key, command)
    session_git(source, "config", "filter.evil.required", "true")


@pytest.mark.parametrize(
    "plant",
    [plant_hook, plant_fsmonitor, plant_hooks_path, plant_filter],
    ids=["hooks", "fsmonitor", "hooksPath", "gitattributes-filter"],
)
def test_nothing_planted_in_the_sessions_git_runs(
    plant: object, forge: Forge, tmp_path: Path
) -> None:
    source = launch(forge.url, tmp_path / "state")
    marker = tmp_path / "ran-on-the-host"
    plant(source, marker)  # type: ignore[operator]
    (source.files / "results.txt").write_text("results\n")
    pushed = push_changes(source, AUTHOR, CREDENTIAL, tmp_path / "state")
    assert not marker.exists(), marker.read_text()
    tree = forge.tree(pushed.branch)
    assert tree["results.txt"] == ("100644", "results")
    assert tree["data/numbers.csv"] == ("100644", "1,2,3")
    assert git(forge.bare, "rev-parse", f"{pushed.branch}^") == source.base_commit


def test_a_gitattributes_filter_with_no_driver_runs_nothing(forge: Forge, tmp_path: Path) -> None:
    source = launch(forge.url, tmp_path / "state")
    (source.files / ".gitattributes").write_text("*.txt filter=lfs diff=lfs merge=lfs -text\n")
    (source.files / "notes.txt").write_text("plain text\n")
    pushed = push_changes(source, AUTHOR, CREDENTIAL, tmp_path / "state")
    tree = forge.tree(pushed.branch)
    assert tree["notes.txt"] == ("100644", "plain text")
    assert tree[".gitattributes"][1] == "*.txt filter=lfs diff=lfs merge=lfs -text"


def test_a_changed_remote_gets_nothing_and_the_push_goes_to_the_origin(
    forge: Forge, tmp_path: Path
) -> None:
    source = launch(forge.url, tmp_path / "state")
    with listening() as listener:
        session_git(source, "remote", "set-url", "origin", f"{listener.url}/project.git")
        session_git(source, "config", "remote.origin.pushurl", f"{listener.url}/project.git")
        session_git(source, "config", "credential.helper", "store")
        (source.files / "results.txt").write_text("results\n")
        outcome = attempt(source, CREDENTIAL, tmp_path / "state")
        assert listener.received == [], listener.everything()
    assert isinstance(outcome, Pushed), outcome
    pushed = outcome
    assert pushed.remote == forge.url
    assert forge.tree(pushed.branch)["results.txt"] == ("100644", "results")


def test_without_its_git_folder_a_session_still_pushes(forge: Forge, tmp_path: Path) -> None:
    source = launch(forge.url, tmp_path / "state")
    subprocess.run(["rm", "-rf", str(source.files / ".git")], check=True)
    (source.files / ".git").write_text("gitdir: /nonexistent\n")  # a gitfile pointing away
    (source.files / "README.md").unlink()
    pushed = push_changes(source, AUTHOR, CREDENTIAL, tmp_path / "state")
    tree = forge.tree(pushed.branch)
    assert "README.md" not in tree and ".git" not in tree and "index.ipynb" in tree


def test_links_are_committed_as_links_and_special_files_left_out(
    forge: Forge, tmp_path: Path
) -> None:
    secret = tmp_path / "host" / "push-credential"
    secret.parent.mkdir()
    secret.write_text("host-secret-content\n")
    source = launch(forge.url, tmp_path / "state")
    (source.files / "leak").symlink_to(secret)
    (source.files / "leaked-dir").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(source.files / "a-fifo")  # a copy that read it would wait forever
    with socket.socket(socket.AF_UNIX) as unix, tempfile.TemporaryDirectory() as short:
        # Bound where the path is short (a socket address holds 107 bytes), then moved.
        unix.bind(os.path.join(short, "s"))
        os.rename(os.path.join(short, "s"), source.files / "a-socket")
        pushed = push_changes(source, AUTHOR, CREDENTIAL, tmp_path / "state")
    tree = forge.tree(pushed.branch)
    assert tree["leak"] == ("120000", str(secret))
    assert tree["leaked-dir"] == ("120000", str(secret.parent))
    assert "a-fifo" not in tree and "a-socket" not in tree
    assert b"host-secret-content" not in forge.all_objects()


def test_the_session_files_are_bounded(forge: Forge, tmp_path: Path) -> None:
    source = launch(forge.url, tmp_path / "state")
    (source.files / "big.bin").write_bytes(b"x" * 200_000)
    with pytest.raises(PushError) as refused:
        push_changes(source, AUTHOR, CREDENTIAL, tmp_path / "state", max_size=100_000)
    assert str(refused.value) == "the session's files are larger than this site pushes"
    assert "binder-lite/" not in git(forge.bare, "branch", "--list")


@dataclass
class Switch:
    redirect_to: str | None = None


def test_a_redirect_from_the_origin_carries_no_credential(tmp_path: Path) -> None:
    root = make_forge(tmp_path)
    switch = Switch()

    class Redirecting(_GitHandler):
        def _cgi(self) -> None:
            if switch.redirect_to is None:
                super()._cgi()
                return
            self.send_response(302)
            self.send_header("Location", switch.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    handler = type(
        "R",
        (Redirecting,),
        {"root": root, "user": "u", "check": staticmethod(lambda p: p == TOKEN)},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(server) as port, listening() as listener:
        origin = f"http://127.0.0.1:{port}/project.git"
        source = launch(origin, tmp_path / "state")  # launched before the origin turned
        switch.redirect_to = listener.url
        (source.files / "results.txt").write_text("results\n")
        outcome = attempt(source, CREDENTIAL, tmp_path / "state")
        assert b"authorization" not in listener.everything().lower(), listener.everything()
        assert listener.received == []
    assert str(outcome) == "cannot reach the repository to push"
    assert "binder-lite/" not in git(root / "project.git", "branch", "--list")


def test_credentials_travel_over_http_to_loopback_only(tmp_path: Path) -> None:
    source = PushSource("s", tmp_path, "http://forge.example.org/p.git", "0" * 40)
    (tmp_path / "state").mkdir()
    with pytest.raises(PushError) as refused:
        push_changes(source, AUTHOR, CREDENTIAL, tmp_path / "state")
    assert "https:// only" in str(refused.value)


def test_a_logins_token_goes_to_its_providers_host_only(forge: Forge, tmp_path: Path) -> None:
    source = launch(forge.url, tmp_path / "state")
    (source.files / "results.txt").write_text("results\n")
    github = Credential.for_provider("github", TOKEN, "https://github.com")
    assert not github.fits(forge.url)
    with pytest.raises(PushError) as refused:
        push_changes(source, AUTHOR, github, tmp_path / "state")
    assert str(refused.value).startswith("your login's token is only ever sent to github.com")


# -- end to end, through `binder-lite serve` ------------------------------------------


def test_push_through_the_service_ignores_a_booby_trapped_git(tmp_path: Path) -> None:
    root = make_forge(tmp_path)
    credential_file = tmp_path / "push-credential"
    credential_file.write_text(f"u:{TOKEN}\n")
    credential_file.chmod(0o600)
    site = tmp_path / "site.yaml"
    site.write_text(
        "version: 1\nsite: {name: x, slug: x}\n"
        f"binder: {{push_credential_file: {credential_file}}}\n"
    )
    srv = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    marker = tmp_path / "ran-on-the-host"
    try:
        with git_http_server(root, "u", lambda p: p == TOKEN) as url, listening() as listener:
            client = Client(srv.url)
            sid = client.post("/launch", {"repo": f"{url}/project.git"}).headers["Location"]
            sid = sid.split("/")[2]
            assert client.events(f"/sessions/{sid}/events")[-1]["phase"] == "ready"
            work = Path(srv.session_field(sid, "work_dir"))
            source = PushSource(sid, work, f"{url}/project.git", "")
            plant_hook(source, marker)
            plant_fsmonitor(source, marker)
            session_git(source, "remote", "set-url", "origin", f"{listener.url}/project.git")
            (work / "results.txt").write_text("results\n")
            pushed = client.post(f"/sessions/{sid}/push")
            assert listener.received == [], listener.everything()
        assert not marker.exists(), marker.read_text()
        assert pushed.status == 200, pushed.text
        bare = root / "project.git"
        assert git(bare, "show", f"binder-lite/{sid}:results.txt") == "results"
    finally:
        srv.stop()
