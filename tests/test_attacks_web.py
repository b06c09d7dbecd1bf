"""Code inside a session against the real service: `binder-lite serve` (local runtime,
sandboxed), two visitors, two sessions; the first visitor's kernel attacks.

What it tries is what worked before sessions had a sandbox (issue #8, finding 4): read
the state directory (every session's token, the cookie secret, the push credential),
list and read the other session's files, connect to the other session's socket and to
the service's port, read the service's /proc and signal it, and keep a process running
after its session was stopped.
"""

from __future__ import annotations

import ast
import http.client
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import execute, make_repo, processes_mentioning
from test_attacks_launch import bare_copy, misbehaving, url_of, wait_for
from test_attacks_sandbox import FORKS, SERVICE_ATTEMPTS, assert_refused, probe_code
from test_web import build_path, session_id, write_site
from webkit import Client, Server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    marker = secrets.token_hex(16)
    credential = tmp_path / "push-credential"
    credential.write_text(f"git:{marker}")
    extra = f"  push_credential_file: {credential}\n  session_network: none\n"
    srv = Server(
        write_site(tmp_path, extra=extra), tmp_path / "state", ("--allow-local-repos",)
    ).start()
    yield srv, marker
    srv.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


def open_session(server: Server, repo: Path) -> tuple[Client, str, str]:
    """A new visitor launches `repo`: (their client, the session id, its proxied base)."""
    client = Client(server.url)
    events = client.events(build_path(f"file://{repo}"))
    assert events[-1]["phase"] == "ready", events[-1]
    sid = session_id(events[-1])
    return client, sid, f"{server.url}/s/{sid}/"


def cookie_of(client: Client) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{c.name}={c.value}" for c in client.jar)}


def test_a_kernel_cannot_reach_the_service_or_another_session(
    served: tuple[Server, str], tmp_path: Path
) -> None:
    server, marker = served
    assert server.proc is not None
    mallory, _, base = open_session(server, make_repo(tmp_path / "attacker"))
    alice, other, _ = open_session(server, make_repo(tmp_path / "victim", {"diary.txt": marker}))
    other_socket = server.session_field(other, "socket")
    other_dir = server.session_field(other, "work_dir")
    assert other_socket and other_dir
    code = probe_code(
        STATE=str(server.state_dir),
        SECRET=str(tmp_path / "push-credential"),
        OTHER_REPO=other_dir,
        OTHER_SOCKET=other_socket,
        SERVICE_PID=server.proc.pid,
        PORT=server.port,
    )
    seen = json.loads(ast.literal_eval(execute(base, "", code, cookie_of(mallory))))
    assert_refused(seen, SERVICE_ATTEMPTS)
    assert marker not in json.dumps(seen)
    # Alice's session is untouched and still hers alone.
    assert alice.get(f"/s/{other}/api/contents/diary.txt").status == 200
    assert mallory.get(f"/s/{other}/api/contents/diary.txt").status == 404


def test_stopping_a_session_ends_everything_it_started(
    served: tuple[Server, str], tmp_path: Path
) -> None:
    server, _ = served
    client, sid, base = open_session(server, make_repo(tmp_path / "repo"))
    tag = f"lingering-{secrets.token_hex(6)}"
    code = (
        "import subprocess, socket\n"
        f"subprocess.Popen(['sh', '-c', '(sleep 600; echo {tag}) & exit'], "
        "start_new_session=True)\n"
        f"subprocess.Popen(['python3', '-c', '# {tag}\\n"
        "import socket, time\\ns = socket.socket(socket.AF_UNIX)\\n"
        's.bind("/notebooks/listener.sock"); s.listen(); time.sleep(600)\'])\n'
        "'started'"
    )
    assert execute(base, "", code, cookie_of(client)) == "'started'"
    deadline = time.monotonic() + 10
    while len(processes_mentioning(tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(processes_mentioning(tag)) >= 2
    stop = client.post(f"/sessions/{sid}/stop")
    assert stop.status in (200, 302, 303)
    assert processes_mentioning(tag) == []
    assert server.session_field(sid, "status") == "stopped"
    # Its folder is gone with it: nothing of the session stays on the host.
    assert not (server.state_dir / "sessions" / sid).exists()


def test_state_is_the_services_alone(served: tuple[Server, str], tmp_path: Path) -> None:
    server, _ = served
    open_session(server, make_repo(tmp_path / "repo"))
    assert server.state_dir.stat().st_mode & 0o777 == 0o700
    for name in ("sessions.sqlite", "sessions.sqlite-wal", "sessions.sqlite-shm", "cookie-secret"):
        path = server.state_dir / name
        if path.exists():
            assert path.stat().st_mode & 0o777 == 0o600, name


def test_a_session_that_hits_its_limits_is_told_why(tmp_path: Path) -> None:
    extra = (
        "  session_network: none\n  session_limits: {memory: 400MiB, processes: 128, disk: 64MiB}\n"
    )
    server = Server(
        write_site(tmp_path, extra=extra),
        tmp_path / "state",
        ("--allow-local-repos", "--cull-interval", "0.5"),
    ).start()
    try:
        client, sid, base = open_session(server, make_repo(tmp_path / "repo"))
        code = (
            "import subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', 'b = bytearray(2**30)']).returncode"
        )
        assert execute(base, "", code, cookie_of(client)) == "-9"
        deadline = time.monotonic() + 20
        page = client.get(f"/sessions/{sid}").text
        while "memory limit of 400 MiB" not in page and time.monotonic() < deadline:
            time.sleep(0.2)
            page = client.get(f"/sessions/{sid}").text
        assert "memory limit of 400 MiB" in page
        # The notebook server itself carries on.
        assert execute(base, "", "6 * 7", cookie_of(client)) == "42"
        # Tasks: forking past the limit fails in the notebook, and the page says why.
        forks = execute(base, "", FORKS, cookie_of(client))
        assert forks.startswith("(True, '") and "Error" in forks
        deadline = time.monotonic() + 20
        while "limit of 128 processes" not in page and time.monotonic() < deadline:
            time.sleep(0.2)
            page = client.get(f"/sessions/{sid}").text
        assert "limit of 128 processes" in page
    finally:
        server.stop()


def test_a_launch_whose_stream_is_closed_before_ready_is_stopped(
    served: tuple[Server, str], tmp_path: Path
) -> None:
    server, _ = served
    bare_copy(make_repo(tmp_path / "repo"), tmp_path / "srv")
    with misbehaving(tmp_path / "srv") as slow:  # the launch stays at fetching
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", build_path(url_of(slow, "repo.git")))
        stream = conn.getresponse()
        assert stream.status == 200
        first = next(line for line in iter(stream.fp.readline, b"") if line.startswith(b"data: "))
        assert json.loads(first[6:])["phase"] == "fetching"
        assert slow.asked.wait(20)
        health = Client(server.url).get("/health").text
        assert json.loads(health)["sessions"] == 1
        conn.close()  # the client goes away before ready
        # Stopped, not failed: git gives up on this server only after 30 s.
        wait_for(
            lambda: json.loads(Client(server.url).get("/health").text)["sessions"] == 0,
            25,
            "the stop",
        )
    db = sqlite3.connect(server.state_dir / "sessions.sqlite")
    try:
        rows = db.execute("SELECT status, message FROM sessions").fetchall()
    finally:
        db.close()
    assert rows == [
        ("stopped", "its launch's event stream was closed before the server was ready")
    ], rows
    assert processes_mentioning(str(server.state_dir / "sessions")) == []
