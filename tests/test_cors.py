"""Pages of the origins a site lists (`binder.cors_allowed_origins`) use the service from
a browser (thebe on a documentation site), and a `?token=` link opens in a browser that
never had the service's cookie (issue #11, items 3 and 4).

`binder-lite serve` runs for real on loopback (local runtime, logins off) with real
Jupyter sessions behind its front."""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MINIMAL_SITE
from launchkit import make_repo
from test_web import build_path, launch, session_id, write_site
from webkit import Client, Server

from binder_lite.errors import SiteError
from binder_lite.site import load_site

LISTED = "https://docs.example.org"
UNLISTED = "https://elsewhere.example.org"


# -- the setting ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "https://docs.example.org/",  # a path, even /, is not part of an origin
        "https://docs.example.org/page",
        "docs.example.org",
        "ftp://docs.example.org",
        "https://Docs.Example.org",  # browsers send the host in lower case
        "https://docs.example.org:443",  # and leave the default port out
        "*",
    ],
)
def test_a_listed_origin_must_be_one(written: str, write_site: Callable[..., Path]) -> None:
    text = MINIMAL_SITE + f'binder:\n  cors_allowed_origins: ["{LISTED}", "{written}"]\n'
    with pytest.raises(SiteError) as refused:
        load_site(write_site(text))
    message = str(refused.value)
    assert "binder.cors_allowed_origins[1]" in message and "is not an origin" in message
    assert re.search(r"site\.yaml:\d+:\d+:", message)


def test_origins_with_ports_and_addresses_are_read(write_site: Callable[..., Path]) -> None:
    listed = ["http://localhost:8000", "https://[2001:db8::1]:8443", LISTED]
    text = MINIMAL_SITE + f"binder:\n  cors_allowed_origins: {listed}\n"
    assert load_site(write_site(text)).binder.cors_allowed_origins == tuple(listed)


# -- the service ----------------------------------------------------------------------


@dataclass
class Sessions:
    server: Server
    first: str  # session ids
    second: str
    token: str  # the first session's


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sessions]:
    tmp = tmp_path_factory.mktemp("cors")
    site = write_site(tmp, extra=f"  cors_allowed_origins: [{LISTED}]\n")
    server = Server(site, tmp / "state", ("--allow-local-repos",)).start()
    try:
        repo = make_repo(tmp / "repo", {"requirements.txt": "numpy\n"})
        first = launch(Client(server.url), repo)
        second = launch(Client(server.url), repo)
        yield Sessions(server, session_id(first), session_id(second), str(first["token"]))
    finally:
        server.stop()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def cors(self) -> dict[str, list[str]]:
        """The answer's CORS headers, each with all its values."""
        names = {n.lower() for n in self.headers if n.lower().startswith("access-control-")}
        return {n: self.headers.get_all(n) or [] for n in names}


def send(
    port: int | str, method: str, target: str, headers: dict[str, str] | None = None
) -> Answer:
    """One request, exactly as given (no cookies kept, no redirect followed); `port` a
    TCP port on loopback or the path of a Unix socket."""
    if isinstance(port, int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    else:
        conn = _UnixConnection(port)
    try:
        conn.request(method, target, headers=headers or {})
        r = conn.getresponse()
        return Answer(r.status, r.headers, r.read())
    finally:
        conn.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.path)


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def test_a_preflight_from_a_listed_origin_is_answered_at_the_front(sessions: Sessions) -> None:
    port = sessions.server.port
    for target in (f"/s/{sessions.first}/api/kernels", build_path("https://example.org/r")):
        answer = send(port, "OPTIONS", target, preflight(LISTED))
        assert answer.status == 204, target
        cors = answer.cors()
        assert cors["access-control-allow-origin"] == [LISTED]
        assert "POST" in cors["access-control-allow-methods"][0]
        allowed = cors["access-control-allow-headers"][0]
        assert {"Authorization", "Content-Type", "X-XSRFToken"} <= set(allowed.split(", "))
        assert "access-control-allow-credentials" not in cors
        assert "Origin" in (answer.headers.get_all("Vary") or [])
        assert answer.body == b""


def test_a_preflight_from_another_origin_is_refused(sessions: Sessions) -> None:
    port = sessions.server.port
    for target in (f"/s/{sessions.first}/api/kernels", build_path("https://example.org/r")):
        answer = send(port, "OPTIONS", target, preflight(UNLISTED))
        assert answer.status == 403, target
        assert answer.cors() == {}


def test_a_listed_origin_may_read_a_session_s_answer(sessions: Sessions) -> None:
    api = f"/s/{sessions.first}/api/kernelspecs"
    auth = {"Authorization": f"token {sessions.token}"}
    answer = send(sessions.server.port, "GET", api, {**auth, "Origin": LISTED})
    assert answer.status == 200 and b"kernelspecs" in answer.body
    # Jupyter's own header (the origin the proxy wrote for it) is replaced by the front's.
    assert answer.cors() == {"access-control-allow-origin": [LISTED]}
    assert "Origin" in (answer.headers.get_all("Vary") or [])
    # Another origin's page gets nothing, token or not.
    refused = send(sessions.server.port, "GET", api, {**auth, "Origin": UNLISTED})
    assert refused.status == 403 and refused.cors() == {}


def test_jupyter_s_cors_header_never_reaches_the_client(sessions: Sessions) -> None:
    """Jupyter answers a token-authenticated request with Access-Control-Allow-Origin
    naming the Origin it got: asked directly, it does; through the front, on the
    service's own origin, there is none."""
    server = sessions.server
    socket_path = server.session_field(sessions.first, "socket")
    jupyter_port = server.session_field(sessions.first, "port")
    where = socket_path or int(jupyter_port)
    api = f"/s/{sessions.first}/api/kernelspecs"
    auth = {"Authorization": f"token {sessions.token}"}
    direct = send(where, "GET", api, {**auth, "Origin": "http://localhost"})
    assert direct.status == 200 and direct.cors()["access-control-allow-origin"]
    answer = send(server.port, "GET", api, {**auth, "Origin": server.url})
    assert answer.status == 200 and answer.cors() == {}


def test_the_build_stream_names_a_listed_origin_only(sessions: Sessions) -> None:
    unknown = "/build/nosuch/a/b"
    listed = send(sessions.server.port, "GET", unknown, {"Origin": LISTED})
    assert listed.status == 200 and b'"phase": "failed"' in listed.body
    assert listed.cors() == {"access-control-allow-origin": [LISTED]}
    other = send(sessions.server.port, "GET", unknown, {"Origin": UNLISTED})
    assert other.status == 200 and other.cors() == {}


# -- ?token= becomes a cookie for that session ------------------------------------------


def open_link(sessions: Sessions, path: str) -> Answer:
    """A browser opening `…/s/<id>/path?token=…` (a navigation)."""
    target = f"/s/{sessions.first}/{path}?token={sessions.token}"
    return send(sessions.server.port, "GET", target, {"Sec-Fetch-Dest": "document"})


def token_cookie(answer: Answer) -> str:
    (cookie,) = answer.headers.get_all("Set-Cookie") or []
    return cookie.split(";")[0]


def test_a_token_link_becomes_a_cookie_for_that_session(sessions: Sessions) -> None:
    answer = open_link(sessions, "lab/tree/index.ipynb")
    assert answer.status == 303
    assert answer.headers["Location"] == f"/s/{sessions.first}/lab/tree/index.ipynb"
    (cookie,) = answer.headers.get_all("Set-Cookie") or []
    name, *attributes = [part.strip() for part in cookie.split(";")]
    assert name.startswith("binder-lite-token=") and sessions.token not in cookie
    assert set(attributes) == {f"Path=/s/{sessions.first}/", "HttpOnly", "SameSite=Lax"}


def test_the_cookie_alone_opens_the_page_its_scripts_and_the_api(sessions: Sessions) -> None:
    only = {"Cookie": token_cookie(open_link(sessions, "lab")), "Sec-Fetch-Dest": "document"}
    port, base = sessions.server.port, f"/s/{sessions.first}"
    page = send(port, "GET", f"{base}/lab/tree/index.ipynb", only)
    assert page.status == 200 and b"<html" in page.body.lower()
    scripts = re.findall(rb'src="(/s/[0-9a-f]{16}/static/[^"?]+)', page.body)
    assert scripts, page.body[:2000]
    for script in scripts:
        assert send(port, "GET", script.decode(), only).status == 200, script
    assert send(port, "GET", f"{base}/api/kernelspecs", only).status == 200
    # Jupyter's redirect from tree/… drops any token; the cookie carries on.
    moved = send(port, "GET", f"{base}/tree/index.ipynb", only)
    assert moved.status in (301, 302, 303, 307), moved.status
    location = moved.headers["Location"]
    assert location.startswith(f"{base}/") and "token" not in location
    assert send(port, "GET", location, only).status == 200
    # Without it: nothing.
    assert send(port, "GET", f"{base}/api/kernelspecs").status == 404


def test_the_cookie_opens_no_other_session(sessions: Sessions) -> None:
    cookie = token_cookie(open_link(sessions, "lab"))
    port = sessions.server.port
    other = send(port, "GET", f"/s/{sessions.second}/api/kernelspecs", {"Cookie": cookie})
    assert other.status == 404
    # Nor from a listed origin's page: only its token counts there.
    foreign = {"Cookie": cookie, "Origin": LISTED}
    assert send(port, "GET", f"/s/{sessions.first}/api/kernelspecs", foreign).status == 404
    # An unsigned claim of the same thing is no cookie of ours.
    name, _, value = cookie.partition("=")
    forged = {"Cookie": f"{name}={value[: len(value) // 2]}"}
    assert send(port, "GET", f"/s/{sessions.first}/api/kernelspecs", forged).status == 404
