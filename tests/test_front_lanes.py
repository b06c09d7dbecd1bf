"""The front's two lanes (front.Lane): a request without a body to a kept upstream
connection is served in callbacks (the fast lane), anything else by the stream code
(the slow lane), and a connection moves between them as requests come.

Each test drives a real Front over real sockets against a session's stand-in that
misbehaves the way a hostile or broken server would, and checks both what the
client gets (every answer whole, in order, from its own request) and which lane
served it (Front.fast counts the fast lane's requests), so that a test of the fast
lane cannot pass on the slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from socket import SO_LINGER, SOL_SOCKET

from test_upstream import SID, TOKEN, a_front

from binder_lite.web import front
from binder_lite.web.upstream import CHUNK

Check = Callable[[front.Front, int], Awaitable[None]]


def request(name: str) -> bytes:
    return (
        f"GET /s/{SID}/api/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: token {TOKEN}\r\n\r\n"
    ).encode()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """An answer's head and its body (by Content-Length, or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        body = b""
        while size := int(await reader.readuntil(b"\r\n"), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return head, body
    length = int(lowered.split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


class Upstream:
    """A session's server: each request's name (/api/<name>) picks what it does; the
    heads it got are kept by connection."""

    def __init__(self) -> None:
        self.connections: list[list[str]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        names: list[str] = []
        self.connections.append(names)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                name = head.split(b" ")[1].rsplit(b"/", 1)[1].decode()
                names.append(name)
                if not await self.act(name, writer, len(self.connections[-1])):
                    break
                await writer.drain()
        writer.close()

    async def act(self, name: str, writer: asyncio.StreamWriter, nth: int) -> bool:
        """Answer `name`; whether the connection goes on."""
        if name.startswith("slow"):
            await asyncio.sleep(0.2)
        if name == "hints":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ok(b"hinted"))
        elif name == "large":
            writer.write(ok(bytes(range(256)) * (CHUNK // 256 + 100)))
        elif name == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif name == "split":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"Length: 5\r\n\r\nsp")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"lit")
        elif name == "vanish":
            return False  # read, never answered: the connection just closes
        elif name == "broken":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            return False
        elif name == "closing":
            writer.write(ok(b"bye", b"Connection: close\r\n"))
            return False
        else:
            writer.write(ok(name.encode()))
        return True


def run(tmp: Path, upstream: Upstream, check: Check) -> None:
    async def main() -> None:
        async with a_front(tmp, upstream.handle) as (the_front, port), asyncio.timeout(30):
            await check(the_front, port)

    asyncio.run(main())


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def warmed(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection after one request ("warm"), which opened the front's kept
    connection to the session (in the slow lane): the next can take the fast one."""
    reader, writer = await connect(port)
    writer.write(request("warm"))
    await answer(reader)
    return reader, writer


def test_requests_on_a_kept_connection_take_the_fast_lane(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await connect(port)
        for n in range(5):
            writer.write(request(f"r{n}"))
            assert await answer(reader) == (ok(b"")[:17] + b"Content-Length: 2\r\n\r\n", b"r%d" % n)
        # The first request opened the upstream connection (the slow lane's work);
        # the other four went on it in the fast lane.
        assert the_front.fast == 4
        assert upstream.connections == [["r0", "r1", "r2", "r3", "r4"]]
        writer.close()

    run(tmp_path, upstream, check)


def test_a_request_sent_while_one_waits_is_answered_after_it(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("slow"))
        await asyncio.sleep(0.05)  # the slow request is waiting for its answer
        writer.write(request("next"))
        assert (await answer(reader))[1] == b"slow"
        assert (await answer(reader))[1] == b"next"
        assert the_front.fast == 2  # the first opened the upstream connection
        writer.close()

    run(tmp_path, upstream, check)


def test_pipelined_requests_go_to_the_slow_lane_then_back(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("a") + request("b") + request("c"))
        assert [(await answer(reader))[1] for _ in "abc"] == [b"a", b"b", b"c"]
        assert the_front.fast == 0
        # With nothing more waiting, the connection is the fast lane's again.
        writer.write(request("d"))
        assert (await answer(reader))[1] == b"d"
        assert the_front.fast == 1
        writer.close()

    run(tmp_path, upstream, check)


def test_a_request_with_a_body_goes_slow_and_the_next_one_fast(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        post = (
            request("posted")
            .replace(b"GET", b"POST")
            .replace(b"\r\n\r\n", b"\r\nContent-Length: 3\r\n\r\nabc")
        )
        writer.write(post)
        assert (await answer(reader))[1] == b"posted"
        writer.write(request("after"))
        assert (await answer(reader))[1] == b"after"
        assert the_front.fast == 1
        writer.close()

    run(tmp_path, upstream, check)


def test_answers_the_fast_lane_does_not_carry_are_finished_by_the_slow_one(
    tmp_path: Path,
) -> None:
    """An informational answer first, a body larger than CHUNK, a chunked body, and a
    head in pieces: each arrives whole, and the connection goes on."""
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("hints"))
        head, body = await answer(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"hinted"  # no 103 passed on
        writer.write(request("large"))
        head, body = await answer(reader)
        assert body == bytes(range(256)) * (CHUNK // 256 + 100)
        writer.write(request("chunked"))
        assert (await answer(reader))[1] == b"hello world"
        writer.write(request("split"))
        assert (await answer(reader))[1] == b"split"
        writer.write(request("last"))
        assert (await answer(reader))[1] == b"last"
        # After a 1xx the connection is not kept (the slow lane's rule), so the large
        # answer went on a fresh one, opened in the slow lane; the rest went fast.
        assert the_front.fast == 4
        assert upstream.connections == [["warm", "hints"], ["large", "chunked", "split", "last"]]
        writer.close()

    run(tmp_path, upstream, check)


def test_a_kept_connection_closed_unanswered_is_tried_again_on_a_fresh_one(
    tmp_path: Path,
) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("vanish"))
        # Sent on the kept connection, which closed without a byte: sent once more on
        # a fresh one, which does the same; then the client hears of it.
        head, body = await answer(reader)
        assert head.startswith(b"HTTP/1.1 502 ") and b"not answering" in body
        assert [names[-1] for names in upstream.connections] == ["vanish", "vanish"]
        writer.write(request("after"))
        assert (await answer(reader))[1] == b"after"
        writer.close()

    run(tmp_path, upstream, check)


def test_an_answer_broken_off_in_its_body_ends_the_connection(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("broken"))
        # Nothing of the broken answer reaches the client, and no other answer either.
        assert await reader.read() == b""
        assert the_front.fast == 1
        writer.close()

    run(tmp_path, upstream, check)


def test_an_answer_that_closes_ends_the_client_connection_after_it(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("closing"))
        head, body = await answer(reader)
        assert body == b"bye" and b"connection: close" in head.lower()
        assert await reader.read() == b""
        assert the_front.fast == 1
        writer.close()

    run(tmp_path, upstream, check)


def test_a_client_leaving_while_it_waits_leaves_no_answer_for_the_next(tmp_path: Path) -> None:
    """The answer to a request whose client has gone (its connection reset) must not
    reach anyone else: the upstream connection it would come on is not kept."""
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("slow-secret"))
        await asyncio.sleep(0.05)
        # A reset, not an end: the front learns at once that no one will read.
        socket = writer.get_extra_info("socket")
        socket.setsockopt(SOL_SOCKET, SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await asyncio.sleep(0.3)  # the secret answer has come by now, to no one
        reader, writer = await connect(port)
        writer.write(request("mine"))
        assert (await answer(reader))[1] == b"mine"
        writer.write(request("mine-too"))
        assert (await answer(reader))[1] == b"mine-too"
        assert upstream.connections == [["warm", "slow-secret"], ["mine", "mine-too"]]
        writer.close()

    run(tmp_path, upstream, check)


def test_a_client_ending_its_side_still_gets_its_answer(tmp_path: Path) -> None:
    upstream = Upstream()

    async def check(the_front: front.Front, port: int) -> None:
        reader, writer = await warmed(port)
        writer.write(request("slow"))
        writer.write_eof()
        assert (await answer(reader))[1] == b"slow"
        assert await reader.read() == b""
        assert the_front.fast == 1
        writer.close()

    run(tmp_path, upstream, check)
