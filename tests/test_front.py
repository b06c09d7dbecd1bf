"""The front (the one listening socket) spoken to byte by byte: framings browsers and
other clients use, one connection carrying service and session requests, and
malformed requests refused before anything is passed on.  A real service with one
real Jupyter session (local runtime) answers throughout."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from launchkit import make_repo
from webkit import Client, Server

from binder_lite.launch import lifetime


@dataclass(frozen=True)
class Session:
    server: Server
    id: str
    token: str
    build_path: str  # where BinderHub's API launches the same repository again

    @property
    def repo(self) -> Path:
        return self.server.state_dir / "sessions" / self.id / "repo"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp("front")
    (tmp / "site.yaml").write_text("version: 1\nsite: {name: front, slug: front}\n")
    repo = make_repo(tmp / "repo")
    server = Server(tmp / "site.yaml", tmp / "state", ("--allow-local-repos",)).start()
    try:
        quoted = urllib.parse.quote(f"file://{repo}", safe="")
        build_path = f"/build/git/{quoted}/HEAD"
        ready = Client(server.url).events(build_path)[-1]
        assert ready["phase"] == "ready", ready
        sid = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
        yield Session(server, sid, str(ready["token"]), build_path)
    finally:
        server.stop()


class Raw:
    """One client connection, written and read byte by byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (100, 101, 204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self.file.readline().split(b";")[0], 16):
                body += self.file.read(size)
                self.file.readline()
            while self.file.readline() not in (b"\r\n", b""):
                pass
            return status, headers, body
        if "content-length" in headers:
            return status, headers, self.file.read(int(headers["content-length"]))
        return status, headers, self.file.read()

    def closed(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(session: Session) -> Iterator[Raw]:
    conn = Raw(session.server.port)
    yield conn
    conn.close()


def request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: binder.example"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_one_connection_carries_service_and_session_requests(session: Session, raw: Raw) -> None:
    auth = {"Authorization": f"token {session.token}"}
    status_path = f"/s/{session.id}/api/status"
    raw.send(request("GET", "/health", {}))
    assert raw.response()[0] == 200
    raw.send(request("GET", status_path, auth))
    status, _, body = raw.response()
    assert status == 200 and "kernels" in json.loads(body)
    # A HEAD answer names a length but carries no body: the next answer must still line up.
    raw.send(request("HEAD", f"/s/{session.id}/files/README.md", auth))
    status, headers, _ = raw.response("HEAD")
    assert status == 200 and int(headers["content-length"]) > 0
    raw.send(request("GET", "/metrics", {}))
    status, _, body = raw.response()
    assert status == 200 and re.search(rb'binder_lite_sessions\{state="running"\} [1-9]', body)
    # Without the token, and without a cookie, the session is nobody's business.
    raw.send(request("GET", status_path, {}))
    assert raw.response()[:1] == (404,)
    raw.send(request("GET", status_path, auth))
    assert raw.response()[0] == 200


def test_chunked_upload_after_100_continue(session: Session, raw: Raw) -> None:
    content = json.dumps({"type": "file", "format": "text", "content": "chunked ✓\n"}).encode()
    headers = {
        "Authorization": f"token {session.token}",
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        "Expect": "100-continue",
    }
    raw.send(request("PUT", f"/s/{session.id}/api/contents/upload.txt", headers))
    assert raw.response()[0] == 100  # the body is wanted before any is sent
    pieces = [content[:10], content[10:25], content[25:]]
    raw.send(b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
    status, _, body = raw.response()
    assert status in (200, 201), body
    assert (session.repo / "upload.txt").read_text() == "chunked ✓\n"


def test_a_large_download_arrives_whole(session: Session, raw: Raw) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (session.repo / "big.bin").write_bytes(data)
    raw.send(
        request(
            "GET", f"/s/{session.id}/files/big.bin", {"Authorization": f"token {session.token}"}
        )
    )
    status, _, body = raw.response()
    assert status == 200 and body == data


def test_an_http10_client_gets_its_answer_then_the_close(session: Session, raw: Raw) -> None:
    raw.send(
        f"GET /s/{session.id}/api/status HTTP/1.0\r\n"
        f"Authorization: token {session.token}\r\n\r\n".encode()
    )
    status, _, body = raw.response()
    assert status == 200 and "kernels" in json.loads(body)
    assert raw.closed()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        ("POST /launch HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked", 400),
        ("POST /launch HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5", 400),
        ("POST /launch HTTP/1.1\r\nContent-Length: -4", 400),
        ("POST /launch HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", 400),
        ("GET /health HTTP/1.1\r\nHost : x", 400),
        ("GET /health HTTP/1.1\r\nX-A: 1\r\n folded", 400),
        ("GET /health", 400),
        ("GET /health HTTP/2.0", 505),
        ("GET /health HTTP/1.1\r\nX-Big: " + "a" * 70_000, 431),
    ],
    ids=[
        "cl-and-te",
        "two-lengths",
        "negative-length",
        "te-not-chunked",
        "space-before-colon",
        "folded",
        "no-version",
        "http2",
        "huge-head",
    ],
)
def test_malformed_requests_are_refused_and_closed(raw: Raw, head: str, status: int) -> None:
    raw.send(head.encode() + b"\r\n\r\n")
    answer, headers, _ = raw.response()
    assert answer == status
    assert headers.get("connection") == "close" and raw.closed()


def test_an_unknown_session_with_a_body_is_refused_and_closed(raw: Raw) -> None:
    raw.send(request("POST", "/s/0123456789abcdef/api/kernels", {"Content-Length": "2"}, b"{}"))
    status, headers, body = raw.response()
    assert (status, body) == (404, b"not found\n")
    assert headers.get("connection") == "close" and raw.closed()


def test_a_refused_websocket_upgrade_is_answered_plainly(session: Session, raw: Raw) -> None:
    headers = {
        "Authorization": f"token {session.token}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    missing = "00000000-0000-0000-0000-000000000000"
    raw.send(request("GET", f"/s/{session.id}/api/kernels/{missing}/channels", headers))
    status, _, _ = raw.response()
    assert status == 404  # Jupyter's own answer: no such kernel, and no tunnel
    assert raw.closed()


def test_a_session_whose_jupyter_died_answers_502(session: Session, raw: Raw) -> None:
    server = session.server
    ready = Client(server.url).events(session.build_path)[-1]
    assert ready["phase"] == "ready", ready
    sid = str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]
    # The recorded pid is bubblewrap's outer process: the sandbox's handle finds
    # Jupyter (and everything else of the session) to kill.  What it killed may be
    # listed a moment longer, until its new parent has reaped it.
    folder = Path(server.session_field(sid, "session_dir"))
    handle = lifetime.load(folder)
    assert handle is not None and handle.alive()
    lifetime.stop(folder, grace=0)
    deadline = time.monotonic() + 10
    while handle.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not handle.alive()
    raw.send(request("GET", f"/s/{sid}/api/status", {"Authorization": f"token {ready['token']}"}))
    status, _, body = raw.response()
    assert (status, body) == (502, b"the notebook server is not answering\n")
    raw.send(request("GET", "/health", {}))  # the connection is still good
    assert raw.response()[0] == 200
