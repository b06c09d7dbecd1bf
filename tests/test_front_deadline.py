"""The front's time limits (front.Deadline): a client silent between requests and
an upstream silent after a request are given up on, as asyncio.timeout did, with one
timer per connection instead of one per wait.

The waits that end in time must leave nothing behind: a later wait on the same
connection, or the time after it, is not cut short by an earlier wait's timer, and a
cancellation from outside (the service stopping) stays a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from test_upstream import SID, TOKEN, front_before

from binder_lite.web import front

SHORT = 0.3  # seconds: the limits these tests set


def request(path: str) -> bytes:
    return (
        f"GET /s/{SID}/api/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: token {TOKEN}\r\n\r\n"
    ).encode()


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A session's server: /api/silent is never answered, anything else at once."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/api/silent " in head:
                await reader.read()  # until the front gives up on this connection
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    writer.close()


async def with_front(tmp: Path, check: Callable[[int], Awaitable[None]]) -> None:
    async with front_before(tmp, upstream) as port, asyncio.timeout(30):
        await check(port)


@pytest.fixture
def short_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_IDLE", SHORT)
    monkeypatch.setattr(front, "UPSTREAM_TIMEOUT", SHORT)


def test_a_silent_upstream_is_a_502_and_the_connection_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_IDLE", SHORT * 10)
    monkeypatch.setattr(front, "UPSTREAM_TIMEOUT", SHORT)

    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("first"))
        assert (await answer(reader)).endswith(b"ok")
        writer.write(request("silent"))
        refused = await answer(reader)
        assert refused.startswith(b"HTTP/1.1 502 ")
        assert b"not answering" in refused
        # The same connection, its task not left cancelled: answered as before,
        # after more than a limit has gone by since the first wait's timer was set.
        await asyncio.sleep(SHORT * 1.5)
        writer.write(request("after"))
        assert (await answer(reader)).endswith(b"ok")
        writer.close()

    asyncio.run(with_front(tmp_path, check))


@pytest.mark.usefixtures("short_limits")
def test_a_client_silent_between_requests_is_let_go(tmp_path: Path) -> None:
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("first"))
        assert (await answer(reader)).endswith(b"ok")
        assert await reader.read() == b""  # the front closed the connection
        writer.close()

    asyncio.run(with_front(tmp_path, check))


@pytest.mark.usefixtures("short_limits")
def test_a_client_sending_its_head_too_slowly_is_let_go(tmp_path: Path) -> None:
    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("first")[:20])  # and never the rest
        assert await reader.read() == b""
        writer.close()

    asyncio.run(with_front(tmp_path, check))


def test_waits_that_end_in_time_leave_nothing_behind() -> None:
    async def run() -> None:
        deadline = front.Deadline()
        with deadline.within(SHORT):
            await asyncio.sleep(0)
        # The timer set for the first wait goes off during the second: not its end.
        with deadline.within(SHORT * 10):
            await asyncio.sleep(SHORT * 1.5)
        # Past the second wait's timer, outside any wait: nothing is cancelled.
        with deadline.within(SHORT):
            await asyncio.sleep(0)
        await asyncio.sleep(SHORT * 1.5)
        with pytest.raises(TimeoutError), deadline.within(SHORT):
            await asyncio.Event().wait()
        current = asyncio.current_task()
        assert current is not None and current.cancelling() == 0
        deadline.close()

    asyncio.run(run())


def test_a_shorter_wait_after_a_longer_one_ends_at_its_own_limit() -> None:
    async def run() -> None:
        deadline = front.Deadline()
        with deadline.within(3600):
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError), deadline.within(SHORT):
            await asyncio.Event().wait()  # bounded by the test's own timeout below
        deadline.close()

    async def bounded() -> None:
        async with asyncio.timeout(30):
            await run()

    asyncio.run(bounded())


def test_a_cancellation_from_outside_stays_one() -> None:
    async def waiting(started: asyncio.Event) -> None:
        deadline = front.Deadline()
        try:
            with deadline.within(3600):
                started.set()
                await asyncio.Event().wait()
        finally:
            deadline.close()

    async def run() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(waiting(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
