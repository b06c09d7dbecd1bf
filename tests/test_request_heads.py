"""Request heads come from anyone: the front reads the commonest ones, requests
without a body, with one grammar (upstream.REQUEST_HEAD) and leaves every other head
to h11, which cost nearly a third of the front's own time per proxied request
(docs/scaling.md).

These tests hold that grammar to h11's reading of the same bytes (a differential
test over a corpus and a bounded hypothesis-generated set: what the grammar accepts,
h11 reads alike), check that a head it does not take still reaches h11 and is
refused or read as before, and that the forms a hostile client would try are
refused whichever path reads them.
"""

from __future__ import annotations

import asyncio

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binder_lite.web.upstream import (
    MAX_HEAD,
    MessageError,
    _simple_request,
    check_request_bytes,
    read_request,
)

Reading = tuple[tuple[str, str, str], list[tuple[str, str]]]  # start, headers


def ours(raw: bytes) -> Reading | None:
    """What the front reads from a request head: None where it refuses it."""

    async def read() -> Reading | None:
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        reader.feed_data(raw)
        reader.feed_eof()
        try:
            head = await read_request(reader)
        except (MessageError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        return (head.start, head.headers) if head is not None else None

    return asyncio.run(read())


def h11_reads(raw: bytes) -> Reading | None:
    """What h11, as a server, reads from the same head."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    start = (
        event.method.decode("ascii"),
        event.target.decode("ascii"),
        "HTTP/" + event.http_version.decode(),
    )
    headers = [(n.decode("ascii"), v.decode("latin-1")) for n, v in event.headers]
    return start, headers


def disagreement(raw: bytes) -> str | None:
    """How the grammar's reading differs from h11's, when the grammar accepts `raw`
    and the front's checks before it (control characters, folded lines) let it by."""
    mine = ours(raw)
    simple = _simple_request(raw)
    if simple is None or mine is None:
        return None
    if mine != (simple.start, simple.headers):
        return f"{raw!r}: the front did not read it with the grammar"
    theirs = h11_reads(raw)
    if theirs is None:
        return f"the front accepts what h11 refuses: {raw!r}"
    if mine != theirs:
        return f"{raw!r}: the front reads {mine}, h11 {theirs}"
    return None


# -- corpus ------------------------------------------------------------------------

SID = "0123456789abcdef"
BROWSER = (
    f"GET /s/{SID}/api/contents?type=directory&_=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    "Accept: application/json, text/plain, */*\r\nAccept-Language: en-US,en;q=0.5\r\n"
    'Cookie: _xsrf=2|ab|cd|1; binder-lite-user="2|1:0|10:17|4:user|8:eyJ9|ab"\r\n'
    "Sec-Fetch-Dest: empty\r\nX-XSRFToken: 2|ab|cd|1\r\n\r\n"
).encode()

SIMPLE = [
    BROWSER,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    b"HEAD /s/x HTTP/1.1\r\nhost:x\r\n\r\n",
    b"GET /?a=b%20c HTTP/1.1\r\nHost:   x  \r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    b"DELETE /a HTTP/1.1\r\nHost: x\r\nX-Obs: caf\xe9\r\nConnection: close\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    # Where a value starts and ends: colons inside it, spaces and tabs inside and
    # around it, obs-text (0xa0 is no space here), nothing but spaces and tabs.
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Colons: :a: b:\r\nX-Inner: a \t b\r\nX-Blank: \t \r\n"
    b"X-High:\t\x80\xff \xa0\xa0\r\nX-Empty:\r\n\r\n",
]

# Heads the grammar leaves to h11: read as before, or refused.
TO_H11 = {
    "content-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    "no-host-1.0": b"GET / HTTP/1.0\r\n\r\n",
    "no-host-1.1": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "http-2.0": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    "absolute-form": b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
}

REFUSED = {
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "two-spaces": b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "obs-text-in-target": b"GET /caf\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case-version": b"GET / http/1.1\r\nHost: x\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: x\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: x\x00\r\n\r\n",
    "folded": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "empty-name": b"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
    "no-host-1.1": TO_H11["no-host-1.1"],
    "two-hosts": TO_H11["two-hosts"],
    "http-2.0": TO_H11["http-2.0"],
    "absolute-form": TO_H11["absolute-form"],
    "asterisk": TO_H11["asterisk"],
    "leading-crlf": b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("raw", SIMPLE)
def test_the_grammar_reads_requests_without_a_body_as_h11_does(raw: bytes) -> None:
    assert _simple_request(raw) is not None
    assert disagreement(raw) is None
    assert ours(raw) == h11_reads(raw)


@pytest.mark.parametrize("raw", TO_H11.values(), ids=TO_H11.keys())
def test_other_heads_are_left_to_h11(raw: bytes) -> None:
    assert _simple_request(raw) is None
    mine = ours(raw)
    assert mine is None or mine == h11_reads(raw)


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_malformed_request_heads_are_refused(raw: bytes) -> None:
    assert ours(raw) is None


# -- generated heads ---------------------------------------------------------------

# Mostly what clients send, with now and then a piece a hostile one would try: a
# generated head is accepted often enough for the comparison to mean something.
_NAMES = st.sampled_from(
    ["Host", "HOST", "Cookie", "Connection", "Upgrade", "X-A", "Accept", "Origin"] * 6
    + ["Content-Length", "Transfer-Encoding", "X A", "X:A", "", "X\xe9", "X\x00", "X\x7f"]
)
_VALUE_BYTES = st.sampled_from(
    ["x", "5", "close", "websocket", ",", " ", "\t", "\xe9", "a=b; c=d", '"q"', "*/*", ":"] * 12
    + ["\r", "\n", "\r\n", "\x00", "\x01", "\x0b", "\x0c", "\x7f", "\r\n "]
)
_SEPARATORS = st.sampled_from([": ", ":", ":\t", ":  "] * 3 + [" : ", " :"])
_REQUEST_LINES = st.sampled_from(
    ["GET / HTTP/1.1", "GET /s/a?b=c HTTP/1.1", "HEAD /x HTTP/1.0", "PUT /p HTTP/1.1"] * 8
    + [
        "GET /a\xe9 HTTP/1.1",
        "GET * HTTP/1.1",
        "GET http://x/ HTTP/1.1",
        "GET / HTTP/1.2",
        "GET / HTTP/11",
        "G(T / HTTP/1.1",
        "GET /\x7f HTTP/1.1",
        "GET / HTTP/1.1 ",
        " GET / HTTP/1.1",
    ]
)
_LINE_ENDS = st.sampled_from(["\r\n"] * 40 + ["\n", "\r", " \r\n", "\r\n "])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    fields = []
    for _ in range(draw(st.integers(0, 5))):
        value = "".join(draw(st.lists(_VALUE_BYTES, max_size=4)))
        fields.append(draw(_NAMES) + draw(_SEPARATORS) + value + draw(_LINE_ENDS))
    # Mostly one good Host somewhere, as HTTP/1.1 wants (more often than _NAMES gives).
    if draw(st.integers(0, 9)):
        fields.insert(draw(st.integers(0, len(fields))), "Host: x\r\n")
    return (draw(_REQUEST_LINES) + draw(_LINE_ENDS) + "".join(fields) + "\r\n").encode("latin-1")


@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(request_heads())
def test_the_grammar_and_h11_read_generated_heads_alike(raw: bytes) -> None:
    assert disagreement(raw) is None
    # Whichever path reads it, the front reads no head h11 would refuse.
    mine = ours(raw)
    assert mine is None or mine == h11_reads(raw)


@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(request_heads())
def test_what_the_grammar_reads_passes_the_byte_checks(raw: bytes) -> None:
    """parse_request leaves out check_request_bytes for a head the grammar reads."""
    if _simple_request(raw) is not None:
        check_request_bytes(raw)


@pytest.mark.parametrize("raw", SIMPLE)
def test_the_corpus_the_grammar_reads_passes_the_byte_checks(raw: bytes) -> None:
    check_request_bytes(raw)
