"""Attacks on the front (issue 8, finding 1), and the differential test of its parser.

The differential test feeds one corpus (the issue's byte streams, the classic
request-smuggling forms, and a bounded hypothesis-generated set) to the front's own
request reading (front.next_request and upstream.body) and to tornado's HTTP/1
server connection (what the application and every Jupyter run), and fails wherever
the two read different messages (method, target, version, headers, body, or where
the next message starts) unless the front refused.  The end-to-end tests speak bytes
to a real `binder-lite serve`, or to a real Front in front of a small counting server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from launchkit import make_repo
from test_front import Raw, request
from test_upstream import SID, TOKEN, session_record
from tornado import httputil
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.iostream import IOStream
from webkit import Client, Server

from binder_lite.web import front, proxy, upstream
from binder_lite.web.origins import Origins
from binder_lite.web.upstream import MAX_BODY, MAX_HEAD, MessageError


class Message(NamedTuple):
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # lower-case names, sorted
    body: bytes


# -- the two readers ---------------------------------------------------------------


async def front_reads(data: bytes) -> tuple[list[Message], bool]:
    """The messages the front reads from `data`, and whether it would read on after
    them (False: it refused, or closes the connection after the last)."""
    reader = asyncio.StreamReader(limit=MAX_HEAD)
    reader.feed_data(data)
    reader.feed_eof()
    messages: list[Message] = []
    while True:
        try:
            request = await front.next_request(reader)
            if request is None:
                return messages, True
            head = request.head
            content = b"".join([piece async for piece in upstream.body(reader, request.framing)])
        except (MessageError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return messages, False
        headers = sorted(_header(name, value) for name, value in head.headers)
        messages.append(Message(*head.start, headers, content))
        if not request.keep:
            return messages, False


async def tornado_reads(data: bytes) -> list[Message]:
    """The messages tornado's HTTP/1 server reads from `data` (each answered 204, as
    a server behind the front would answer it), up to its refusal or the end."""
    messages: list[Message] = []
    closed = asyncio.Event()

    class Delegate(httputil.HTTPMessageDelegate):
        def __init__(self, conn: httputil.HTTPConnection) -> None:
            self.conn = conn
            self.start: Any = None
            self.headers = httputil.HTTPHeaders()
            self.chunks: list[bytes] = []

        def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
            self.start, self.headers = start_line, headers

        def data_received(self, chunk: bytes) -> None:
            self.chunks.append(chunk)

        def finish(self) -> None:
            pairs = sorted(_header(name, value) for name, value in self.headers.get_all())
            messages.append(
                Message(
                    self.start.method,
                    self.start.path,
                    self.start.version,
                    pairs,
                    b"".join(self.chunks),
                )
            )
            self.conn.write_headers(
                httputil.ResponseStartLine("HTTP/1.1", 204, "No Content"), httputil.HTTPHeaders()
            )
            self.conn.finish()

        def on_connection_close(self) -> None:
            pass

    class Server(httputil.HTTPServerConnectionDelegate):
        def start_request(self, server_conn: object, request_conn: Any) -> Delegate:
            return Delegate(request_conn)

        def on_close(self, server_conn: object) -> None:
            closed.set()

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    params = HTTP1ConnectionParameters(max_body_size=MAX_BODY, decompress=False)
    HTTP1ServerConnection(IOStream(theirs), params).start_serving(Server())
    loop = asyncio.get_running_loop()

    async def drain() -> None:  # tornado's answers, so that it never waits to write
        while await loop.sock_recv(ours, 65536):
            pass

    draining = asyncio.create_task(drain())
    try:
        await loop.sock_sendall(ours, data)
        ours.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(20):
            await closed.wait()
    finally:
        draining.cancel()
        ours.close()
    return messages


def _header(name: str, value: str) -> tuple[str, str]:
    # Transfer codings are case-insensitive (RFC 9112, 7), and h11 gives them in
    # lower case: a difference of spelling, not of meaning.
    name = name.lower()
    return name, value.lower() if name == "transfer-encoding" else value


def disagreement(data: bytes) -> str | None:
    """How the front and tornado read `data` differently (None if they do not)."""

    async def both() -> tuple[tuple[list[Message], bool], list[Message]]:
        return await front_reads(data), await tornado_reads(data)

    (ours, goes_on), theirs = asyncio.run(both())
    # Where the front stopped (refused, or closes after its last message), what it
    # did read must be what tornado read first; otherwise, all of it.
    expected = theirs if goes_on else theirs[: len(ours)]
    if ours == expected:
        return None
    return f"front read {ours!r} (reads on: {goes_on}), tornado read {theirs!r}"


# -- the corpus --------------------------------------------------------------------

NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"  # where does the next message start?


def post(*headers: str, body: bytes = b"") -> bytes:
    lines = ["POST /launch HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body + NEXT


def te(value: str, body: bytes = b"5\r\nhello\r\n0\r\n\r\n") -> bytes:
    return post(f"Transfer-Encoding: {value}", body=body)


def cl(value: str, body: bytes = b"hello") -> bytes:
    return post(f"Content-Length: {value}", body=body)


def chunked(body: bytes) -> bytes:
    return post("Transfer-Encoding: chunked", body=body)


CORPUS: dict[str, bytes] = {
    # The issue's findings.
    "issue-desync-bare-lf": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\nExpect: 100-continue"
    b"\r\n\r\n" + NEXT,
    "issue-negative-chunk": chunked(b"-1\r\n" + b"x" * 4096),
    "issue-client-forwarding": b"GET / HTTP/1.1\r\nHost: x\r\nX-Real-Ip: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-For: 198.51.100.1\r\n"
    b"Forwarded: for=192.0.2.1;proto=https\r\n\r\n" + NEXT,
    "issue-post-with-expect": post("Content-Length: 5", "Expect: 100-continue", body=b"hello"),
    # CL.TE and TE.CL.
    "cl-te": post("Content-Length: 6", "Transfer-Encoding: chunked", body=b"0\r\n\r\nX"),
    "te-cl": post(
        "Transfer-Encoding: chunked", "Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"
    ),
    # Transfer-Encoding obfuscations.
    "te-xchunked": te("xchunked"),
    "te-chunk": te("chunk"),
    "te-leading-space": te(" chunked"),
    "te-tab": te("\tchunked"),
    "te-vertical-tab": te("\x0bchunked"),
    "te-upper": te("CHUNKED"),
    "te-chunked-identity": te("chunked, identity"),
    "te-identity-chunked": te("identity, chunked"),
    "te-comma-chunked": te(",chunked"),
    "te-twice": post(
        "Transfer-Encoding: chunked", "Transfer-Encoding: identity", body=b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "te-space-before-colon": post("Transfer-Encoding : chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-underscore": post("Transfer_Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-folded": post("Transfer-Encoding:", " chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-after-fold": post("X-A: b", " Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
    "te-http10": b"POST /launch HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n" + NEXT,
    # Content-Length forms.
    "cl-twice-same": post("Content-Length: 5", "Content-Length: 5", body=b"hello"),
    "cl-twice-different": post("Content-Length: 5", "Content-Length: 6", body=b"hello!"),
    "cl-list": cl("5, 5"),
    "cl-plus": cl("+5"),
    "cl-minus": cl("-5"),
    "cl-spaces": cl(" 5 "),
    "cl-inner-space": cl("5 5"),
    "cl-hex": cl("0x5"),
    "cl-leading-zeros": cl("005"),
    "cl-underscore": cl("0_5"),
    "cl-too-large": cl(str(MAX_BODY + 1)),
    "cl-get-body": b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + NEXT,
    # Line ends and control characters.
    "bare-lf-everywhere": b"GET / HTTP/1.1\nHost: x\n\n" + NEXT,
    "bare-lf-request-line": b"GET / HTTP/1.1\nHost: x\r\n\r\n" + NEXT,
    "bare-lf-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\nContent-Length: 5\r\n\r\n"
    b"hello" + NEXT,
    "bare-cr-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rExpect: 100-continue\r\n\r\n" + NEXT,
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n" + NEXT,
    "control-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x01c\x7f\r\n\r\n" + NEXT,
    "nul-in-name": b"GET / HTTP/1.1\r\nHost: x\r\nX\x00A: b\r\n\r\n" + NEXT,
    "obs-text-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n\r\n" + NEXT,
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n" + NEXT,
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n" + NEXT,
    "tab-before-colon": b"GET / HTTP/1.1\r\nHost\t: x\r\n\r\n" + NEXT,
    "lf-lf-head-end": b"GET / HTTP/1.1\r\nHost: x\n\nGET /hidden HTTP/1.1\r\nHost: x\r\n\r\n",
    "leading-crlf": b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    # Request lines.
    "absolute-form": b"GET http://evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    "authority-form": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    "double-space": b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    "tab-in-line": b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    "lower-method": b"get / HTTP/1.1\r\nHost: x\r\n\r\n" + NEXT,
    "http-1-2": b"GET / HTTP/1.2\r\nHost: x\r\n\r\n" + NEXT,
    "http-2": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n" + NEXT,
    "no-host": b"GET / HTTP/1.1\r\n\r\n" + NEXT,
    "two-hosts": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + NEXT,
    "huge-head": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n" + NEXT,
    # Chunk sizes, extensions, trailers.
    "chunk-16-digits": chunked(b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk-17-digits": chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunk-huge": chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunk-long-zeros": chunked(b"0" * 100 + b"5\r\nhello\r\n0\r\n\r\n"),
    "chunk-upper-hex": chunked(b"A\r\nhellohello\r\n0\r\n\r\n"),
    "chunk-extension": chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    "chunk-last-extension": chunked(b"5\r\nhello\r\n0;name=value\r\n\r\n"),
    "chunk-space": chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunk-plus": chunked(b"+5\r\nhello\r\n0\r\n\r\n"),
    "chunk-0x": chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunk-bare-lf": chunked(b"5\nhello\n0\n\n"),
    "chunk-short-data": chunked(b"5\r\nhel\r\n0\r\n\r\n"),
    "chunk-long-data": chunked(b"5\r\nhello!!\r\n0\r\n\r\n"),
    "chunk-trailer": chunked(b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "chunk-trailer-smuggle": chunked(b"0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    # Connections.
    "pipelined": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
    "connection-close": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + NEXT,
    "connection-close-listed": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, x\r\n\r\n" + NEXT,
    "http10-keep-alive": b"POST /launch HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5"
    b"\r\n\r\nhello" + NEXT,
    "upgrade-with-body": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello" + NEXT,
    "truncated-head": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "truncated-body": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
}


@pytest.mark.parametrize("data", CORPUS.values(), ids=CORPUS.keys())
def test_the_front_and_tornado_read_the_corpus_alike(data: bytes) -> None:
    problem = disagreement(data)
    assert problem is None, problem


# -- generated streams -------------------------------------------------------------

_BYTES = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\x00",
        b"\t",
        b" ",
        b",",
        b":",
        b";",
        b"-",
        b"+",
        b"0",
        b"5",
        b"a",
        b"\x0b",
        b"\x7f",
        b"\xe9",
        b"\r\n",
    ]
)
_NAMES = st.sampled_from(
    [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Expect",
        "X-A",
        "Upgrade",
        "content-length",
        "transfer-encoding",
    ]
)
_VALUES = st.sampled_from(
    [
        "x",
        "5",
        "0",
        "chunked",
        "close",
        "keep-alive",
        "100-continue",
        "upgrade",
        "websocket",
        "5, 5",
        " chunked",
        "identity",
        "",
    ]
)
_ENDS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r"])


def _mutated(base: bytes, extra: st.DrawFn) -> bytes:
    for _ in range(extra(st.sampled_from([0, 0, 0, 1, 2]))):
        at = extra(st.integers(0, len(base)))
        action = extra(st.sampled_from(["insert", "delete", "replace"]))
        piece = extra(_BYTES)
        if action == "insert":
            base = base[:at] + piece + base[at:]
        elif action == "delete":
            base = base[:at] + base[at + 1 :]
        else:
            base = base[:at] + piece + base[at + 1 :]
    return base


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A request (its head, its body in the framing its headers name or not) and a
    second one after it, with a few bytes inserted, dropped or replaced anywhere."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]))
    lines = [f"{method} /{draw(st.sampled_from(['', 'a', 'health', 's/x/']))} {version}"]
    lines += ["Host: x"] if draw(st.integers(0, 9)) else []
    lines += [f"{draw(_NAMES)}: {draw(_VALUES)}" for _ in range(draw(st.integers(0, 4)))]
    ends = [draw(_ENDS) for _ in lines]
    head = b"".join(line.encode() + end for line, end in zip(lines, ends, strict=True))
    content = draw(st.binary(max_size=12))
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 6), max_size=3))
        body, at = b"", 0
        for size in sizes:
            body += b"%x\r\n%s\r\n" % (size, content[at : at + size].ljust(size, b"z"))
            at += size
        body += b"0\r\n\r\n"
    else:
        body = content
    stream = head + draw(_ENDS) + body + NEXT
    return _mutated(stream, draw)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(streams())
def test_the_front_and_tornado_read_generated_streams_alike(data: bytes) -> None:
    problem = disagreement(data)
    assert problem is None, problem


# -- a real service ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("front-attacks")
    (tmp / "site.yaml").write_text("version: 1\nsite: {name: front, slug: front}\n")
    make_repo(tmp / "repo")
    server = Server(tmp / "site.yaml", tmp / "state", ("--allow-local-repos",)).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_issues_desync_stream_does_not_reach_the_next_visitor(server: Server) -> None:
    attacker = Raw(server.port)
    attacker.send(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\nExpect: 100-continue\r\n\r\n")
    status, _, _ = attacker.response()
    visitor = Raw(server.port)
    try:
        visitor.send(request("GET", "/", {}))
        status_v, headers_v, page = visitor.response()
        assert status_v == 200 and headers_v["content-type"].startswith("text/html"), page[:200]
        assert b'"status": "ok"' not in page
        # The attacker's next answer is its own, not the visitor's (with its cookie).
        with contextlib.suppress(OSError, IndexError):
            attacker.send(request("GET", "/health", {}))
            status_a, headers_a, answer = attacker.response()
            assert "set-cookie" not in headers_a and b"<html" not in answer.lower()
        assert status == 400
    finally:
        attacker.close()
        visitor.close()


def _rss(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert m
    return int(m.group(1)) * 1024


def test_a_negative_chunk_size_is_refused_at_once_and_nothing_is_kept(server: Server) -> None:
    assert server.proc is not None
    before = _rss(server.proc.pid)
    conn = Raw(server.port)
    try:
        conn.sock.settimeout(5)
        conn.send(b"POST /launch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n")
        status, headers, _ = conn.response()  # at once: before any more is sent
        assert status == 400 and headers.get("connection") == "close"
        piece = b"x" * (1024 * 1024)
        with contextlib.suppress(OSError):
            for _ in range(50):
                conn.sock.sendall(piece)
    finally:
        conn.close()
    assert _rss(server.proc.pid) - before < 20 * 1024 * 1024


LIES = {
    "X-Real-Ip": "203.0.113.7",
    "X-Forwarded-For": "198.51.100.9",
    "X-Forwarded-Proto": "https",
    "X-Scheme": "https",
}


def test_forwarding_headers_from_a_client_do_not_give_its_address(server: Server) -> None:
    # Without an _xsrf field, tornado refuses the form and logs the caller's address.
    answer = Client(server.url).request("POST", "/launch", {"repo": "x"}, headers=LIES)
    assert answer.status == 403
    assert server.log is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = re.findall(r"403 POST /launch \(([^)]*)\)", server.log.read_text())
        if logged:
            break
        time.sleep(0.05)
    assert logged and set(logged) == {"127.0.0.1"}, logged


def test_forwarding_headers_from_a_client_do_not_give_its_scheme(server: Server) -> None:
    # A launch's events name the session's address with the scheme the browser used.
    repo = server.state_dir.parent / "repo"
    path = f"/build/git/{urllib.parse.quote(f'file://{repo}', safe='')}/HEAD"
    text = Client(server.url).request("GET", path, headers=LIES).text
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    urls = [str(event["url"]) for event in events if "url" in event]
    assert urls and all(url.startswith(f"{server.url}/s/") for url in urls), events[-1]


# -- a real Front before a small counting server -------------------------------------


class Upstream:
    """A server that records each request head; the first POST is read and then
    the connection dropped without an answer, as a crashing server would."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.posts = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                await reader.readexactly(int(m.group(1)) if m else 0)
                if head.startswith(b"POST"):
                    self.posts += 1
                    if self.posts == 1:
                        break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()


async def _through_front(
    exchange: bytes, trusted: tuple[str, ...] = ()
) -> tuple[Upstream, list[bytes]]:
    """Send `exchange` through a real Front to an Upstream, part by part ("|" between
    parts), reading one answer after each; the answers."""
    up = Upstream()
    up_server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    # No sessions here: the service stands in with only where it is (origins.py).
    service = types.SimpleNamespace(origins=Origins("http", "x", None))
    the_front = front.Front(
        service,
        "secret",
        up_server.sockets[0].getsockname()[1],  # type: ignore[arg-type]
        trusted,
    )
    listening = await the_front.listen("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", listening.sockets[0].getsockname()[1]
    )
    received = []
    try:
        async with asyncio.timeout(20):
            for part in exchange.split(b"|"):
                writer.write(part)
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                received.append(head + await reader.readexactly(int(m.group(1)) if m else 0))
    finally:
        writer.close()
        listening.close()
        the_front.close_clients()
        up_server.close()
    return up, received


def test_a_post_whose_upstream_connection_died_is_sent_once() -> None:
    exchange = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n|"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    )
    up, received = asyncio.run(_through_front(exchange))
    assert received[0].startswith(b"HTTP/1.1 200")
    assert up.posts == 1, f"the POST reached the upstream {up.posts} times"
    assert received[1].startswith(b"HTTP/1.1 502")


def test_only_the_front_says_who_the_client_is() -> None:
    exchange = (
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Real-Ip: 203.0.113.7\r\nX-Scheme: https\r\n"
        b"X-Forwarded-For: 198.51.100.9\r\nX-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil.example\r\nForwarded: for=192.0.2.1\r\n\r\n"
    )
    up, _ = asyncio.run(_through_front(exchange))
    head = up.heads[0].decode().lower()
    for lie in ("203.0.113.7", "198.51.100.9", "https", "evil.example", "192.0.2.1"):
        assert lie not in head, head
    assert "\r\nx-forwarded-for: 127.0.0.1\r\n" in head and "x-forwarded-proto: http\r\n" in head
    # From a trusted proxy, its word on the client is taken (the hops it vouches for).
    up, _ = asyncio.run(_through_front(exchange, trusted=("127.0.0.0/8",)))
    head = up.heads[0].decode().lower()
    assert "\r\nx-forwarded-for: 198.51.100.9\r\n" in head
    assert "\r\nx-forwarded-proto: https\r\n" in head
    assert "203.0.113.7" not in head and "evil.example" not in head


def test_expect_is_answered_by_the_front_and_never_passed_on() -> None:
    exchange = b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n|{}"
    up, received = asyncio.run(_through_front(exchange))
    assert received[0].startswith(b"HTTP/1.1 100 ") and received[1].startswith(b"HTTP/1.1 200")
    assert b"expect" not in up.heads[0].lower()


# -- what a session is sent, and what reaches the client (proxy.py, no sockets) --------


def test_a_session_is_sent_end_to_end_headers_only() -> None:
    head = upstream.parse_request(
        f"GET /s/{SID}/api HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n"
        "Connection: keep-alive, X-Secret\r\n"
        "X-Secret: s\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Forwarded-For: 192.0.2.1\r\n"
        "Authorization: token other\r\nCookie: a=1; binder-lite-user=u; b=2\r\n"
        "Origin: http://x\r\nX-Kept: k\r\n\r\n".encode()
    )
    sent = proxy.session_headers(
        head, session_record("/nonexistent/jupyter.sock"), False, proxy.Client("127.0.0.1", "http")
    )
    assert sent == [
        ("Host", "localhost"),
        ("Authorization", f"token {TOKEN}"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("accept", "*/*"),
        ("cookie", "a=1; b=2"),
        ("origin", "http://localhost"),
        ("x-kept", "k"),
    ]
    # Without a Connection header, nothing more is left out.
    plain = upstream.parse_request(b"GET / HTTP/1.1\r\nHost: x\r\nX-Secret: s\r\n\r\n")
    assert proxy.forwarded(plain) == [("host", "x"), ("x-secret", "s")]


def test_a_session_s_answer_loses_its_cors_headers_and_wide_cookies() -> None:
    raw = (
        "HTTP/1.1 200 OK\r\nACCESS-CONTROL-Allow-Origin: *\r\n"
        "Access-Control-Allow-Credentials: true\r\nX-Access-Control-Kept: k\r\n"
        f"Set-Cookie: _xsrf=1; Path=/s/{SID}/\r\nSet-Cookie: binder-lite-user=u; Path=/s/{SID}/\r\n"
        "Set-Cookie: wide=1; Path=/\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    answer = proxy.session_response_head(upstream.parse_response(raw))
    assert (
        answer
        == (
            "HTTP/1.1 200 OK\r\nx-access-control-kept: k\r\n"
            f"set-cookie: _xsrf=1; Path=/s/{SID}/\r\ncontent-length: 0\r\n\r\n"
        ).encode()
    )
    # An answer with nothing to leave out goes as it came.
    for kept in (
        b"HTTP/1.1 200 OK\r\nX-Access-Control: k\r\nContent-Length: 0\r\n\r\n",
        f"HTTP/1.1 200 OK\r\nSet-Cookie: _xsrf=1; Path=/s/{SID}/\r\n\r\n".encode(),
    ):
        assert proxy.session_response_head(upstream.parse_response(kept)) == kept


@pytest.mark.parametrize(
    ("target", "token"),
    [
        (f"/s/{SID}/api", None),
        (f"/s/{SID}/lab?token=abc", "abc"),
        (f"/s/{SID}/lab?a=1&%74oken=abc", "abc"),  # as a server unquotes it
        (f"/s/{SID}/lab#?token=abc", None),  # a fragment is no query
        ("//h/?token=abc", "abc"),
        (f"/s/{SID}/lab?", None),
    ],
)
def test_a_token_is_read_from_the_query(target: str, token: str | None) -> None:
    head = upstream.parse_request(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert proxy.token_in(head) == token
