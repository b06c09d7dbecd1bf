"""Helpers for web service tests: a running `binder-lite serve`, a cookie-keeping
client, a small OpenID Connect provider and a git server that checks credentials."""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import http.server
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launchkit import serving

from binder_lite.net import free_port


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
            [binder_lite, "serve", self.site_file, "--port", str(self.port), "--address",
             "127.0.0.1", "--runtime", "local", "--state-dir", self.state_dir, *self.args],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, text=True,  # noqa: SIM115
        )  # fmt: skip
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
            (value,) = db.execute(f"SELECT {column} FROM sessions WHERE id = ?",
                                  (session_id,)).fetchone()  # fmt: skip
        finally:
            db.close()
        return value

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)


class Client:
    """A browser-like HTTP client: keeps cookies, does not follow redirects."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect)  # fmt: skip

    def request(self, method: str, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Response:  # fmt: skip
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


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# -- an OpenID Connect provider --------------------------------------------------------


class Provider:
    """Authorization code flow with PKCE, checking what a real provider checks."""

    def __init__(self, client_id: str, client_secret: str, user: str = "alice") -> None:
        self.client_id, self.client_secret, self.user = client_id, client_secret, user
        self.codes: dict[str, dict[str, str]] = {}
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, str]] = []
        handler = type("H", (_ProviderHandler,), {"provider": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ProviderHandler(http.server.BaseHTTPRequestHandler):
    provider: Provider

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        p = self.provider
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/.well-known/openid-configuration":
            self._json(200, {"issuer": p.url, "authorization_endpoint": f"{p.url}/authorize",
                             "token_endpoint": f"{p.url}/token",
                             "userinfo_endpoint": f"{p.url}/userinfo"})  # fmt: skip
        elif url.path == "/authorize":
            ok = (query.get("client_id") == p.client_id and query.get("response_type") == "code"
                  and query.get("code_challenge_method") == "S256"
                  and query.get("code_challenge") and query.get("state"))  # fmt: skip
            if not ok:
                self._json(400, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(16)
            p.codes[code] = query
            target = f"{query['redirect_uri']}?" + urllib.parse.urlencode(
                {"code": code, "state": query["state"]}
            )
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
        elif url.path == "/userinfo":
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in p.tokens:
                self._json(401, {"error": "invalid_token"})
                return
            self._json(200, {"sub": "42", "preferred_username": p.user, "name": p.user.title(),
                             "email": f"{p.user}@example.org"})  # fmt: skip
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        p = self.provider
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        p.token_requests.append(form)
        asked = p.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "").encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).decode().rstrip("=")
        if (asked is None or form.get("client_secret") != p.client_secret
                or form.get("redirect_uri") != asked["redirect_uri"]
                or challenge != asked["code_challenge"]):  # fmt: skip
            self._json(400, {"error": "invalid_grant"})
            return
        token = secrets.token_hex(16)
        p.tokens.add(token)
        self._json(200, {"access_token": token, "token_type": "Bearer"})


# -- a git server: anyone fetches, pushing needs the right credential ------------------


@contextmanager
def git_http_server(root: Path, user: str, password_ok: object) -> Iterator[str]:
    """Serve bare repositories under `root` through `git http-backend` (smart HTTP).
    Pushes need Basic credentials `user` and a password for which `password_ok(p)` holds."""
    handler = type("G", (_GitHandler,), {"root": root, "user": user,
                                         "check": staticmethod(password_ok)})  # fmt: skip
    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as port:
        yield f"http://127.0.0.1:{port}"


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
        if pushing:
            auth = self.headers.get("Authorization", "")
            user, _, password = (base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ")
                                 else "").partition(":")  # fmt: skip
            if user != self.user or not self.check(password):  # type: ignore[operator]
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            remote_user = user
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        env = {**os.environ, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_USER": remote_user,
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
               "GIT_HTTP_MAX_REQUEST_BUFFER": "100M"}  # fmt: skip
        if not remote_user:
            env.pop("REMOTE_USER")
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                             check=False).stdout  # fmt: skip
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
