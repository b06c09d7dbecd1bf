"""The REST API (/api/v1/), on a real `binder-lite serve` on loopback launching real
Jupyter (local runtime).  Every request sent and every answer read is validated against
the OpenAPI document the service serves (openapi-core), and the document itself with
openapi-spec-validator."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from launchkit import execute, make_repo, processes_mentioning
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec
from webkit import Client, Server

from binder_lite.web.api import openapi
from binder_lite.web.tokens import PREFIX

SITE = """\
version: 1
site:
  name: API test
  slug: api
binder:
  max_sessions: 6
  max_sessions_per_user: 1
  idle_timeout: 3600
  api_token_file: {admin_file}
"""
WAIT = 120.0  # seconds: bounds a launch, measures nothing


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    document = openapi()
    validate_spec(document)  # raises on an invalid OpenAPI 3.1 document
    return OpenAPI.from_dict(document)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Api:
    """Requests to the API, each and its answer checked against the document."""

    server: Server
    spec: OpenAPI
    token: str | None = None
    cookie: str | None = None  # an anonymous visitor's (logins off)

    def call(self, method: str, path: str, body: object = None, **headers: str) -> Answer:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data is not None else {}
        if self.token is not None:
            sent["Authorization"] = f"Bearer {self.token}"
        if self.cookie is not None:
            sent["Cookie"] = self.cookie
        sent.update(headers)
        answer = self.raw(method, path, data, sent)
        self.check(method, path, data, sent, answer)
        return answer

    def raw(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Answer:
        request = urllib.request.Request(
            self.server.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as r:
                return Answer(r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as e:
            return Answer(e.code, dict(e.headers), e.read())

    def check(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], answer: Answer
    ) -> None:
        url = urllib.parse.urlsplit(path)
        request = MockRequest(
            self.server.url,
            method.lower(),
            url.path,
            args=dict(urllib.parse.parse_qsl(url.query)),
            headers=headers,
            data=data,
            content_type=headers.get("Content-Type", "application/json"),
        )
        self.spec.validate_request(request)
        content_type = answer.headers.get("Content-Type", "").split(";")[0]
        # openapi-core reads JSON itself; an event stream is a string to it.
        body: Any = answer.body.decode() if content_type == "text/event-stream" else answer.body
        self.spec.validate_response(
            request, MockResponse(body, answer.status, answer.headers, content_type)
        )
        if content_type == "text/event-stream":
            for event in events_of(answer):
                OAS31Validator(openapi()["components"]["schemas"]["Event"]).validate(event)

    def events(self, session_id: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/api/v1/sessions/{session_id}/events")
        assert answer.status == 200, answer
        return events_of(answer)

    def outside(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> Answer:
        """A request the document does not allow (a bad file list, an unknown path): it
        is sent as it is; `error` checks the answer against the document's Error."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.raw(method, path, data, headers)

    def error(self, answer: Answer, status: int, code: str) -> str:
        assert answer.status == status, answer
        assert answer.headers["Content-Type"] == "application/json"
        OAS31Validator(openapi()["components"]["schemas"]["Error"]).validate(answer.json())
        error = answer.json()["error"]
        assert error["code"] == code, error
        return str(error["message"])


def events_of(answer: Answer) -> list[dict[str, Any]]:
    lines = answer.body.decode().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


@pytest.fixture
def admin_token(tmp_path: Path) -> str:
    token = secrets.token_hex(32)
    (tmp_path / "admin-token").write_text(token + "\n")
    return token


@pytest.fixture
def server(tmp_path: Path, admin_token: str) -> Iterator[Server]:
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(admin_file=tmp_path / "admin-token"))
    srv = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    yield srv
    srv.stop()
    assert processes_mentioning(str(tmp_path / "state" / "sessions")) == []


def notebook_files() -> list[dict[str, str]]:
    """A notebook made here, a data file sent as base64 and a requirements.txt (the
    local runtime uses the service's own Jupyter; the file makes it an environment)."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("open('data/answer.txt').read().strip()")]
    )
    return [
        {"path": "analysis.ipynb", "content": nbformat.writes(notebook)},
        {"path": "data/answer.txt", "content_base64": base64.b64encode(b"42\n").decode()},
        {"path": "requirements.txt", "content": "\n"},
    ]


def make_token(server: Server) -> tuple[Client, str]:
    """A visitor (logins are off: an anonymous one) makes a token on /tokens."""
    browser = Client(server.url)
    page = browser.post("/tokens", {"name": "course site", "days": "7"})
    assert page.status == 201, page.text
    found = re.search(rf"<code class=\"secret\">({PREFIX}[A-Za-z0-9_-]+)</code>", page.text)
    assert found, page.text
    return browser, found.group(1)


def test_the_document_is_valid_and_served(server: Server, spec: OpenAPI) -> None:
    api = Api(server, spec)
    answer = api.call("GET", "/api/v1/openapi.json")
    assert answer.status == 200 and answer.json() == openapi()
    api.error(api.outside("GET", "/api/v1/nothing-here"), 404, "not_found")
    api.error(api.outside("PUT", "/api/v1/sessions", {}), 405, "method_not_allowed")


def test_a_notebook_sent_to_the_api_becomes_a_session_whose_cell_runs(
    server: Server, spec: OpenAPI, admin_token: str
) -> None:
    api = Api(server, spec, token=admin_token)
    created = api.call("POST", "/api/v1/sessions", {"files": notebook_files()})
    assert created.status == 201, created
    session = created.json()
    sid = session["id"]
    assert created.headers["Location"] == f"/api/v1/sessions/{sid}"
    assert session["status"] == "pending" and session["token"] is None

    events = api.events(sid)
    assert events[0]["phase"] == "fetching" and events[-1]["phase"] == "ready", events
    shown = api.call("GET", f"/api/v1/sessions/{sid}").json()
    assert shown["status"] == "running" and shown["open"] is None
    # The files became a repository of the service's, committed: its commit is the
    # session's, and provenance says so.
    uploads = server.state_dir / "uploads"
    (folder,) = uploads.iterdir()
    assert shown["repository"] == f"file://{folder}"
    assert re.fullmatch(r"[0-9a-f]{40}", shown["commit"])
    assert shown["provenance"]["commit"] == shown["commit"]
    assert shown["urls"]["open"].endswith(
        f"/s/{sid}/notebooks/analysis.ipynb?token={shown['token']}"
    )
    assert [s["id"] for s in api.call("GET", "/api/v1/sessions").json()["sessions"]] == [sid]

    # The notebook's cell runs in the session, reading the file sent with it.
    notebook = json.loads(
        urllib.request.urlopen(
            f"{shown['urls']['server']}api/contents/analysis.ipynb?token={shown['token']}",
            timeout=WAIT,
        ).read()
    )
    (cell,) = notebook["content"]["cells"]
    assert execute(shown["urls"]["server"], shown["token"], cell["source"]) == "'42'"
    # The URL handed out opens in a browser that never saw the service.
    assert Client(server.url).get(shown["urls"]["open"]).status == 200

    # Someone else's token sees nothing of it.
    _, token = make_token(server)
    other = Api(server, spec, token=token)
    other.error(other.call("GET", f"/api/v1/sessions/{sid}"), 404, "not_found")
    other.error(other.call("DELETE", f"/api/v1/sessions/{sid}"), 404, "not_found")

    stopped = api.call("DELETE", f"/api/v1/sessions/{sid}")
    assert stopped.status == 200 and stopped.json()["status"] == "stopped"
    assert stopped.json()["token"] is None and "server" not in stopped.json()["urls"]
    assert [e["phase"] for e in api.events(sid)] == ["stopped"]
    assert not folder.exists()  # the repository made from the files went with it


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ([{"path": "../x", "content": ""}], 400, "bad_request"),
        ([{"path": "/etc/passwd", "content": ""}], 400, "bad_request"),
        ([{"path": "a/../../x", "content": ""}], 400, "bad_request"),
        ([{"path": ".git/config", "content": ""}], 400, "bad_request"),
        ([{"path": "a//b", "content": ""}], 400, "bad_request"),
        ([{"path": "x.ipynb", "content": "{}"}], 400, "bad_request"),  # no environment
        ([{"path": "requirements.txt", "content": ""}] * 2, 400, "bad_request"),
        (
            [{"path": "requirements.txt", "content": ""}, {"path": "requirements.txt/x"}],
            400,
            "bad_request",
        ),
        ([{"path": "requirements.txt", "content_base64": "%%%"}], 400, "bad_request"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "inner-dotdot",
        "git",
        "empty-part",
        "no-environment",
        "twice",
        "file-and-folder",
        "bad-base64",
    ],
)
def test_files_that_could_escape_or_make_no_environment_are_refused(
    server: Server,
    spec: OpenAPI,
    admin_token: str,
    files: list[dict[str, str]],
    status: int,
    code: str,
) -> None:
    api = Api(server, spec, token=admin_token)
    api.error(api.outside("POST", "/api/v1/sessions", {"files": files}), status, code)
    assert not (server.state_dir / "uploads").exists() or not any(
        (server.state_dir / "uploads").iterdir()
    )


def test_requests_the_api_cannot_take(server: Server, spec: OpenAPI, admin_token: str) -> None:
    api = Api(server, spec, token=admin_token)
    too_many = [{"path": f"f{n}.txt", "content": ""} for n in range(101)]
    api.error(api.outside("POST", "/api/v1/sessions", {"files": too_many}), 413, "too_large")
    big = base64.b64encode(b"x" * (16 * 1024**2 + 1)).decode()
    files = [{"path": "requirements.txt", "content": ""}, {"path": "big", "content_base64": big}]
    api.error(api.call("POST", "/api/v1/sessions", {"files": files}), 413, "too_large")
    plain = api.outside("POST", "/api/v1/sessions", {"repo": "x"}, content_type="text/plain")
    api.error(plain, 415, "unsupported_media_type")
    api.error(api.call("POST", "/api/v1/sessions", {"repo": "ftp://example.org/r"}), 400, "refused")


def test_tokens_are_made_shown_once_stored_hashed_revoked_and_expire(
    server: Server, spec: OpenAPI
) -> None:
    browser, token = make_token(server)
    page = browser.get("/tokens")
    assert "course site" in page.text and token not in page.text
    # The page's forms carry the XSRF token, as the others do.
    assert browser.post("/tokens", {"name": "x", "days": "7"}, xsrf=False).status == 403
    api = Api(server, spec, token=token)
    assert api.call("GET", "/api/v1/sessions").json() == {"sessions": []}

    database = server.state_dir / "sessions.sqlite"
    with sqlite3.connect(database) as db:
        ((token_id, digest),) = db.execute("SELECT id, digest FROM tokens").fetchall()
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    stored = b"".join(p.read_bytes() for p in server.state_dir.glob("sessions.sqlite*"))
    assert token.encode() not in stored

    wrong = Api(server, spec, token=token[:-2] + "xx")
    message = wrong.error(wrong.call("GET", "/api/v1/sessions"), 401, "unauthorized")
    assert "unknown, revoked or expired" in message
    answer = wrong.call("GET", "/api/v1/sessions")
    challenge = {k.lower(): v for k, v in answer.headers.items()}["www-authenticate"]
    assert challenge.startswith("Bearer")

    with sqlite3.connect(database) as db:
        db.execute("UPDATE tokens SET expires = 1 WHERE id = ?", (token_id,))
    api.error(api.call("GET", "/api/v1/sessions"), 401, "unauthorized")

    browser2, second = make_token(server)
    again = Api(server, spec, token=second)
    assert again.call("GET", "/api/v1/sessions").status == 200
    (second_id,) = re.findall(r"/tokens/([0-9a-f]{12})/revoke", browser2.get("/tokens").text)
    assert browser.post(f"/tokens/{second_id}/revoke").status == 404  # not theirs
    assert browser2.post(f"/tokens/{second_id}/revoke").status == 303
    again.error(again.call("GET", "/api/v1/sessions"), 401, "unauthorized")


def test_limits_count_per_token_owner(
    server: Server, spec: OpenAPI, admin_token: str, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "\n"})
    browser, first = make_token(server)
    page = browser.post("/tokens", {"name": "second", "days": "1"})
    second = re.search(r'<code class="secret">([^<]+)</code>', page.text)
    assert page.status == 201 and second
    mine, also_mine = Api(server, spec, token=first), Api(server, spec, token=second.group(1))
    body = {"repo": f"file://{repo}", "ref": "main", "open": "index.ipynb"}
    created = mine.call("POST", "/api/v1/sessions", body)
    assert created.status == 201, created
    # One session per person: the person's other token is refused too.
    for api in (mine, also_mine):
        refused = api.call("POST", "/api/v1/sessions", body)
        assert "1 sessions" in api.error(refused, 503, "capacity")
        assert int(refused.headers["Retry-After"]) > 0
    # The admin token is a user of its own.
    admin = Api(server, spec, token=admin_token)
    other = admin.call("POST", "/api/v1/sessions", body)
    assert other.status == 201, other
    # The person's session is theirs on the web too.
    assert created.json()["id"] in browser.get("/sessions").text
    for api, answer in ((mine, created), (admin, other)):
        assert api.events(answer.json()["id"])[-1]["phase"] == "ready"
        assert api.call("DELETE", f"/api/v1/sessions/{answer.json()['id']}").status == 200


def test_without_logins_a_caller_without_token_is_an_anonymous_visitor(
    server: Server, spec: OpenAPI, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "\n"})
    api = Api(server, spec)
    created = api.call("POST", "/api/v1/sessions", {"repo": f"file://{repo}"})
    assert created.status == 201, created
    cookie = created.headers["Set-Cookie"].split(";")[0]
    sid = created.json()["id"]
    # Known by its cookie afterwards; a caller without it is someone else.
    api.cookie = cookie
    assert [s["id"] for s in api.call("GET", "/api/v1/sessions").json()["sessions"]] == [sid]
    stranger = Api(server, spec)
    stranger.error(stranger.call("GET", f"/api/v1/sessions/{sid}"), 404, "not_found")
    # A new cookie is no new quota: the address is counted as on the web form.
    refused = stranger.call("POST", "/api/v1/sessions", {"repo": f"file://{repo}"})
    assert "from your address" in stranger.error(refused, 503, "capacity")
    assert api.events(sid)[-1]["phase"] == "ready"
    assert api.call("DELETE", f"/api/v1/sessions/{sid}").json()["status"] == "stopped"
