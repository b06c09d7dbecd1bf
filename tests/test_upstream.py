"""Response heads from a session are hostile: its code can replace its Jupyter.

The front reads a response head with one grammar (upstream.RESPONSE_HEAD) instead of
h11, which cost a quarter of the front's time per request (benchmarks/proxy.py).
These tests hold that grammar to h11's reading of the same bytes (a differential
test over a corpus and a bounded hypothesis-generated set: what the front accepts,
h11 reads alike), refuse the forms a hostile server would try, and check through a
real Front that a refused or overlong answer ends that upstream connection with a
502 while the client's connection stays in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binder_lite.web import front, upstream
from binder_lite.web.origins import Origins
from binder_lite.web.store import Record
from binder_lite.web.upstream import (
    CHUNKED,
    MAX_HEAD,
    UNTIL_CLOSE,
    Head,
    MessageError,
    read_response,
    response_framing,
)

SID = "0123456789abcdef"
TOKEN = "t" * 48
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[object, object, None]]

# -- the two readers ---------------------------------------------------------------

Reading = tuple[tuple[str, str, str], list[tuple[str, str]], int]  # start, headers, framing


def ours(raw: bytes, method: str = "GET", upgrade: bool = False) -> Reading | None:
    """What the front reads from a response head: None where it refuses it."""

    async def read() -> Reading | None:
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        reader.feed_data(raw)
        reader.feed_eof()
        try:
            head = await read_response(reader, upgrade)
            if head is None:
                return None
            return head.start, head.headers, response_framing(method, head)
        except (MessageError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None

    return asyncio.run(read())


def h11_reads(raw: bytes, method: str = "GET", upgrade: bool = False) -> Reading | None:
    """What h11, as the client of a `method` request, reads from the same head."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    extra = [("Connection", "Upgrade"), ("Upgrade", "websocket")] if upgrade else []
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x"), *extra]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Response | h11.InformationalResponse):
        return None
    headers = [(n.decode("ascii"), v.decode("latin-1")) for n, v in event.headers]
    start = (
        "HTTP/" + event.http_version.decode(),
        str(event.status_code),
        event.reason.decode("latin-1"),
    )
    return start, headers, _framing(method, event.status_code, headers)


def _normal(reading: Reading) -> Reading:
    # Transfer codings are case-insensitive (RFC 9112, 7) and h11 gives them in lower
    # case: a difference of spelling, not of meaning.
    start, headers, framing = reading
    lowered = [(n, v.lower() if n == "transfer-encoding" else v) for n, v in headers]
    return start, lowered, framing


def _framing(method: str, status: int, headers: list[tuple[str, str]]) -> int:
    """The framing RFC 9112 (6.3) gives a response with these headers."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0
    named = dict(headers)
    if "transfer-encoding" in named:
        return CHUNKED
    return int(named["content-length"]) if "content-length" in named else UNTIL_CLOSE


def disagreement(raw: bytes, method: str = "GET", upgrade: bool = False) -> str | None:
    """How the front's reading differs from h11's, when the front accepts `raw`."""
    mine = ours(raw, method, upgrade)
    if mine is None:
        return None
    theirs = h11_reads(raw, method, upgrade)
    if theirs is None:
        return f"the front accepts what h11 refuses: {raw!r}"
    mine, theirs = _normal(mine), _normal(theirs)
    if mine != theirs:
        return f"{raw!r}: the front reads {mine}, h11 {theirs}"
    return None


# -- corpus ------------------------------------------------------------------------

TORNADO = (
    b"HTTP/1.1 200 OK\r\nServer: TornadoServer/6.6.1\r\n"
    b"Content-Type: application/json\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n"
    b"Content-Security-Policy: frame-ancestors 'self'; report-uri /api/security/csp\r\n"
    b'Etag: "5c2c5c9b0b4b1f0a"\r\nContent-Length: 11\r\n\r\n'
)

ACCEPTED = [
    TORNADO,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",  # until the connection closes
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",  # no reason phrase
    b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 404 Not\tFound \xe9\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Obs: caf\xe9\r\n"
    b"Content-Length: 5\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: /s/x/lab?a=1\r\nSet-Cookie: a=b; Path=/s/x/\r\n"
    b"Set-Cookie: c=d\r\nContent-Length: 0\r\n\r\n",
    # Where a value starts and ends: colons inside it, spaces and tabs inside and
    # around it, obs-text (0xa0 is no space here), nothing but spaces and tabs.
    b"HTTP/1.1 200 OK\r\nX-Colons: :a: b:\r\nX-Inner: a \t b\r\nX-Blank: \t \r\n"
    b"X-High:\t\x80\xff \xa0\xa0\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",
]

REFUSED = {
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "bare-lf-in-value": b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 5\r\n\r\n",
    "bare-cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: b\rContent-Length: 5\r\n\r\n",
    "nul": b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\n\r\n",
    "control": b"HTTP/1.1 200 OK\r\nX-A: b\x01c\r\n\r\n",
    "del": b"HTTP/1.1 200 OK\r\nX-A: b\x7fc\r\n\r\n",
    "control-in-reason": b"HTTP/1.1 200 O\x0bK\r\n\r\n",
    "folded": b"HTTP/1.1 200 OK\r\nX-A: b\r\n Content-Length: 5\r\n\r\n",
    "folded-tab": b"HTTP/1.1 200 OK\r\nX-A: b\r\n\tc\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
    "no-colon": b"HTTP/1.1 200 OK\r\nContent-Length 5\r\n\r\n",
    "empty-name": b"HTTP/1.1 200 OK\r\n: 5\r\n\r\n",
    "name-not-token": b"HTTP/1.1 200 OK\r\nX(A): 5\r\n\r\n",
    "name-obs-text": b"HTTP/1.1 200 OK\r\nX\xe9: 5\r\n\r\n",
    "http2": b"HTTP/2 200 OK\r\n\r\n",
    "http12": b"HTTP/1.2 200 OK\r\n\r\n",
    "lower-case-version": b"http/1.1 200 OK\r\n\r\n",
    "two-spaces": b"HTTP/1.1  200 OK\r\n\r\n",
    "four-digit-status": b"HTTP/1.1 2000 OK\r\n\r\n",
    "two-digit-status": b"HTTP/1.1 20 OK\r\n\r\n",
    "status-600": b"HTTP/1.1 600 What\r\n\r\n",
    "status-099": b"HTTP/1.1 099 What\r\n\r\n",
    "no-status-line": b"Content-Length: 0\r\n\r\n",
    "plus-length": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "hex-length": b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
    "underscore-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n",
    "spaced-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n",
    "listed-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    "huge-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
    "superscript-length": b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
    "te-and-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "te-twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    "te-on-http10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "bad-length-on-204": b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
    "switching-unasked": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    "ends-inside-head": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
    "too-large": b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw", ACCEPTED)
def test_heads_servers_send_are_read_as_h11_reads_them(raw: bytes) -> None:
    assert ours(raw) is not None, raw
    assert disagreement(raw) is None
    assert disagreement(raw, method="HEAD") is None


def test_a_switch_of_protocols_is_read_only_after_an_upgrade() -> None:
    raw = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    assert ours(raw, upgrade=True) is not None
    assert disagreement(raw, upgrade=True) is None
    assert ours(raw) is None


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_malformed_response_heads_are_refused(raw: bytes) -> None:
    assert ours(raw) is None
    assert ours(raw, method="HEAD") is None


def test_a_refusal_is_a_502() -> None:
    async def status() -> int:
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        reader.feed_data(REFUSED["bare-lf-in-value"])
        with pytest.raises(MessageError) as refused:
            await read_response(reader)
        return refused.value.status

    assert asyncio.run(status()) == 502


# -- generated heads ---------------------------------------------------------------

# Mostly what servers send, with now and then a piece a hostile one would try: a
# generated head is accepted often enough for the comparison to mean something.
_NAMES = st.sampled_from(
    [
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "Set-Cookie",
        "X-A",
        "ETag",
    ]
    * 3
    + ["X A", "X:A", "", "X\xe9", "X\x00"]
)
_VALUE_BYTES = st.sampled_from(
    [
        "5",
        "0",
        "12",
        "chunked",
        "gzip",
        "close",
        ",",
        " ",
        "\t",
        "\xe9",
        "+",
        "-",
        "a",
        "b=c; Path=/",
        '"x"',
        ":",
        "\xa0",
    ]
    * 3
    + ["\r", "\n", "\r\n", "\x00", "\x01", "\x7f"]
)
_SEPARATORS = st.sampled_from([": ", ":", ":\t", ":  "] * 3 + [" : ", " :"])
_STATUS_LINES = st.sampled_from(
    [
        "HTTP/1.1 200 OK",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.1 100 Continue",
        "HTTP/1.1 200",
        "HTTP/1.1 404 Not\tFound",
        "HTTP/1.1 200 O\rK",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 101 Switching",
    ]
)
_LINE_ENDS = st.sampled_from(["\r\n"] * 12 + ["\n", "\r", " \r\n", "\r\n "])


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    lines = [draw(_STATUS_LINES) + draw(_LINE_ENDS)]
    for _ in range(draw(st.integers(0, 5))):
        value = "".join(draw(st.lists(_VALUE_BYTES, max_size=4)))
        separator = draw(_SEPARATORS)
        lines.append(draw(_NAMES) + separator + value + draw(_LINE_ENDS))
    return ("".join(lines) + "\r\n").encode("latin-1")


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(response_heads(), st.sampled_from(["GET", "HEAD"]), st.booleans())
def test_the_front_and_h11_read_generated_heads_alike(
    raw: bytes, method: str, upgrade: bool
) -> None:
    assert disagreement(raw, method, upgrade) is None


# -- the grammar's field-lines, and what a head answers ------------------------------

# RFC 9112's OWS field-value OWS, as the grammar once spelled it (one character class
# now: upstream._OWS_VALUE_OWS); the value is the group.
_SPELLED_OUT = re.compile(rb"[ \t]*((?:[!-~\x80-\xff]+(?:[ \t]+[!-~\x80-\xff]+)*)?)[ \t]*")
_PIECES = st.sampled_from([b" ", b"\t", b"a", b":", b"\xa0", b"\xff", b"\x7f", b"\x00", b"\r"])


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(_PIECES, max_size=8).map(b"".join) | st.binary(max_size=8))
def test_one_character_class_is_the_field_value_grammar(text: bytes) -> None:
    spelled = _SPELLED_OUT.fullmatch(text)
    assert (spelled is None) == (re.fullmatch(upstream._OWS_VALUE_OWS, text) is None)
    if spelled is not None:
        # And the value is what lies between the spaces and tabs at either end.
        assert spelled.group(1).decode("latin-1") == text.decode("latin-1").strip(" \t")


def test_a_head_answers_by_name() -> None:
    once = Head(("GET", "/", "HTTP/1.1"), [("host", "x"), ("connection", "Keep-Alive, Close")], b"")
    assert once.get("Host") == "x" and once.get("cookie") is None
    assert once.all("HOST") == ("x",) and once.all("cookie") == ()
    assert once.has_token("Connection", "close") and not once.has_token("connection", "keep")
    assert not once.has_token("upgrade", "websocket")
    twice = Head(
        ("GET", "/", "HTTP/1.1"),
        [("cookie", "a=1"), ("host", "x"), ("cookie", "b=2"), ("connection", "x, upgrade")],
        b"",
    )
    assert twice.get("cookie") == "a=1" and twice.all("Cookie") == ("a=1", "b=2")
    assert twice.all("host") == ("x",) and twice.all("te") == ()
    assert twice.has_token("connection", "upgrade")
    assert set(twice.names()) == {"cookie", "host", "connection"}


# -- through a real Front ----------------------------------------------------------


class Session:
    """A stand-in for a session's Jupyter on a Unix socket: each connection is
    answered by `answer` (the connection's number, the request head → bytes), and
    the request heads it was sent are kept by connection."""

    def __init__(self, answer: Callable[[int, bytes], bytes]) -> None:
        self.answer = answer
        self.connections: list[list[bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads: list[bytes] = []
        self.connections.append(heads)
        number = len(self.connections)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(self.answer(number, heads[-1]))
                await writer.drain()
        writer.close()


class Manager:
    def __init__(self, record: Record) -> None:
        self.running = {record.id: record}

    def touch(self, session_id: str) -> None:
        pass


def session_record(socket: str) -> Record:
    """The running session SID, owned by "someone", with TOKEN, served at `socket`."""
    return Record(
        id=SID,
        owner="someone",
        repository="r",
        ref="HEAD",
        open_path=None,
        status="running",
        socket=socket,
        token=TOKEN,
    )


@contextlib.asynccontextmanager
async def front_before(tmp: Path, handle: Handler) -> AsyncIterator[int]:
    """A front on 127.0.0.1 (its port yielded) whose one session, SID with TOKEN, is
    served by `handle` on a Unix socket."""
    async with a_front(tmp, handle) as (_, port):
        yield port


@contextlib.asynccontextmanager
async def a_front(tmp: Path, handle: Handler) -> AsyncIterator[tuple[front.Front, int]]:
    """front_before's front, and its port."""
    path = str(tmp / "jupyter.sock")
    up_server = await asyncio.start_unix_server(handle, path)
    record = session_record(path)
    service = types.SimpleNamespace(
        manager=Manager(record), oauth=None, origins=Origins("http", "x", None)
    )
    the_front = front.Front(service, "secret", 1)  # type: ignore[arg-type]
    listening = await the_front.listen("127.0.0.1", 0)
    try:
        yield the_front, listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        the_front.close_clients()
        up_server.close()


async def _through_front(
    tmp: Path, session: Session, requests: int, check: Callable[[list[bytes]], Awaitable[None]]
) -> None:
    async with front_before(tmp, session.handle) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        try:
            async with asyncio.timeout(20):
                for n in range(requests):
                    writer.write(
                        f"GET /s/{SID}/api/{n} HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: token {TOKEN}\r\n\r\n".encode()
                    )
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    answers.append(head + await reader.readexactly(length))
                await check(answers)
        finally:
            writer.close()


def test_a_malformed_answer_is_a_502_and_the_client_stays_in_step(tmp_path: Path) -> None:
    """The session's first connection answers with a smuggling head (a bare LF hides
    a length that a reader who ends lines there sees, and then a forged second
    answer); the client gets a 502, and its next request a true answer, on another
    upstream connection."""

    def answer(connection: int, head: bytes) -> bytes:
        if connection == 1:
            return (
                b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n\r\n"
                b"okHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + head.split(b" ")[1][-4:]

    session = Session(answer)

    async def check(answers: list[bytes]) -> None:
        assert answers[0].startswith(b"HTTP/1.1 502 "), answers[0]
        assert answers[1].endswith(b"pi/1"), answers[1]
        assert answers[2].endswith(b"pi/2"), answers[2]
        assert [len(heads) for heads in session.connections] == [1, 2]

    asyncio.run(_through_front(tmp_path, session, 3, check))


def test_an_answer_with_more_than_its_body_is_not_kept(tmp_path: Path) -> None:
    """A session that sends a second, unasked answer after the first: the connection
    holding it is not used again, so no client ever reads the forged answer."""

    def answer(connection: int, head: bytes) -> bytes:
        true = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + head.split(b" ")[1][-4:]
        if connection == 1:
            return true + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
        return true

    session = Session(answer)

    async def check(answers: list[bytes]) -> None:
        assert [a[-4:] for a in answers] == [b"pi/0", b"pi/1", b"pi/2"], answers
        assert [len(heads) for heads in session.connections] == [1, 2]

    asyncio.run(_through_front(tmp_path, session, 3, check))
