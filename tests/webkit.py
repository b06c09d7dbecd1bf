"""Helpers for web service tests: a running `binder-lite serve`, a cookie-keeping
client, a git server that checks credentials and headless Chromium for the tests that
need a real browser (the OpenID Connect provider is in oidckit.py)."""

from __future__ import annotations

import base64
import http.cookiejar
import http.server
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from launchkit import serving

from binder_lite.net import free_port

T = TypeVar("T")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@dataclass
class Server:
    """A `binder-lite serve` subprocess on 127.0.0.1."""

    site_file: Path
    state_dir: Path
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Server:
        binder_lite = Path(sys.executable).parent / "binder-lite"
        self.log = self.state_dir.parent / f"serve-{self.port}-{time.time_ns()}.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binder_lite,
                "serve",
                self.site_file,
                "--port",
                str(self.port),
                "--address",
                "127.0.0.1",
                "--runtime",
                "local",
                "--state-dir",
                self.state_dir,
                *self.args,
            ],
            stdout=open(self.log, "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"serve did not answer: {self.log.read_text()}")

    def session_field(self, session_id: str, column: str) -> Any:
        """One column of a session's row in the service's store (its pid, port, token)."""
        db = sqlite3.connect(self.state_dir / "sessions.sqlite")
        try:
            (value,) = db.execute(
                f"SELECT {column} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        finally:
            db.close()
        return value

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)


@contextmanager
def local_server(folder: Path, site: str) -> Iterator[Server]:
    """`binder-lite serve` of the site file `site` (its text), with its state in
    `folder`, local repositories allowed."""
    (folder / "site.yaml").write_text(site)
    server = Server(folder / "site.yaml", folder / "state", ("--allow-local-repos",)).start()
    try:
        yield server
    finally:
        server.stop()


class Client:
    """A browser-like HTTP client: keeps cookies, does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect
        )

    def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        url = path if path.startswith("http") else self.base + path
        req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=120) as r:
                return Response(r.status, dict(r.headers), r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            return Response(e.code, dict(e.headers), e.read().decode("utf-8", "replace"))

    def get(self, path: str, **kw: object) -> Response:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, data: dict[str, str] | None = None, xsrf: bool = True) -> Response:
        data = dict(data or {})
        if xsrf:
            data["_xsrf"] = self.xsrf()
        return self.request("POST", path, data)

    def xsrf(self) -> str:
        page = self.get("/").text
        m = re.search(r'<meta name="xsrf-token" content="([^"]+)"', page)
        assert m, page
        return m.group(1)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def events(self, path: str) -> list[dict[str, object]]:
        """Read a server-sent event stream to its end."""
        text = self.get(path).text
        return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]

    def follow(self, path: str, into: list[dict[str, object]]) -> list[dict[str, object]]:
        """Read a server-sent event stream to its end, appending each event to `into` as
        it arrives, so that another thread can wait for one before it acts."""
        with self.opener.open(self.base + path, timeout=300) as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace")
                if line.startswith("data: "):
                    into.append(json.loads(line[6:]))
        return into


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# -- a git server: anyone fetches, pushing needs the right credential ------------------


@contextmanager
def git_http_server(root: Path, user: str, password_ok: Callable[[str], bool]) -> Iterator[str]:
    """Serve bare repositories under `root` through `git http-backend` (smart HTTP).
    Pushes need Basic credentials `user` and a password for which `password_ok(p)` holds."""
    handler = type(
        "G", (_GitHandler,), {"root": root, "user": user, "check": staticmethod(password_ok)}
    )
    with serving(_Forge(("127.0.0.1", 0), handler)) as port:
        yield f"http://127.0.0.1:{port}"


class _Forge(http.server.ThreadingHTTPServer):
    # Room for every connection a burst of git commands opens under load (the default
    # backlog is 5).
    request_queue_size = 64


class _GitHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    user: str
    check: object

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        pushing = "git-receive-pack" in path or "service=git-receive-pack" in query
        remote_user = ""
        # Read the body before any answer: a socket closed with bytes unread is reset,
        # and the client may then see the reset instead of the 401.
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        if pushing:
            auth = self.headers.get("Authorization", "")
            user, _, password = (
                base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            ).partition(":")
            if user != self.user or not self.check(password):  # type: ignore[operator]
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            remote_user = user
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": remote_user,
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_HTTP_MAX_REQUEST_BUFFER": "100M",
        }
        if not remote_user:
            env.pop("REMOTE_USER")
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def headless_chromium(*flags: str) -> Iterator[Any]:
    """A selenium driver for headless Chromium, with `flags` added to its command line.
    Skips the test where Chromium or chromedriver is missing, fails it on CI (where
    scripts/setup installed them)."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = "chromium and chromedriver are not installed (scripts/setup installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        *flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "the page") -> T:
    """The first true value of `condition()` within `timeout` seconds.  An exception
    counts as not yet: a page still loading or re-rendering, a server still starting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception:
            result = None
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
