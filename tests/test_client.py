"""binder_lite.client and `binder-lite remote`, against a real `binder-lite serve` on
loopback launching real Jupyter (local runtime), as test_api.py runs it.  Every request
the client sends, and every answer it reads, is checked against the OpenAPI document
(test_api's Api.check)."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
import test_api
from conftest import CliResult
from launchkit import make_repo
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest
from openapi_schema_validator import OAS31Validator
from test_api import WAIT, Api
from test_api import Answer as ApiAnswer
from webkit import Client as Browser
from webkit import Server

from binder_lite import client as client_module
from binder_lite.client import Client, Event, Session
from binder_lite.errors import RemoteError, UsageError
from binder_lite.kernel import run_cell
from binder_lite.net import free_port
from binder_lite.web import api as api_module
from binder_lite.web.api import openapi

Cli = Callable[..., CliResult]
# test_api's fixtures: the same service (logins off, an admin token file, local repos).
server, admin_token, spec = test_api.server, test_api.admin_token, test_api.spec
EVENT = OAS31Validator(openapi()["components"]["schemas"]["Event"])


class CheckedClient(Client):
    """The client, each request it sends and each answer it reads checked against
    the document."""

    def __init__(self, api: Api, token: str | None = None) -> None:
        super().__init__(api.server.url, token)
        self.api = api

    def _open(self, request: urllib.request.Request, timeout: float) -> Any:
        data = request.data if isinstance(request.data, bytes) else None
        headers = dict(request.header_items())
        self.api.spec.validate_request(
            MockRequest(
                self.url,
                request.get_method().lower(),
                urllib.parse.urlsplit(request.full_url).path,
                headers=headers,
                data=data,
                content_type=headers.get("Content-type", "application/json"),
            )
        )
        return super()._open(request, timeout)

    def _request(self, method: str, path: str, body: object = None) -> Any:
        answer = super()._request(method, path, body)
        data = None if body is None else json.dumps(body).encode()
        sent = self._headers(data)
        self.api.check(
            method, path, data, sent, ApiAnswer(answer.status, dict(answer.headers), answer.body)
        )
        return answer


def write_notebook_folder(folder: Path) -> Path:
    """A notebook made here that reads a data file, and a requirements.txt (the local
    runtime uses the service's own Jupyter; the file makes it an environment)."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("open('data/answer.txt').read().strip()")]
    )
    (folder / "data").mkdir(parents=True)
    (folder / "analysis.ipynb").write_text(nbformat.writes(notebook))
    (folder / "data" / "answer.txt").write_text("42\n")
    (folder / "requirements.txt").write_text("\n")
    return folder


def checked_events(seen: list[Event]) -> list[str]:
    for event in seen:
        EVENT.validate(dict(event.data))
    return [e.phase for e in seen]


def test_files_sent_by_the_client_become_a_session_whose_cell_runs(
    server: Server, spec: OpenAPI, admin_token: str, tmp_path: Path
) -> None:
    folder = write_notebook_folder(tmp_path / "work")
    client = CheckedClient(Api(server, spec), admin_token)
    session = client.launch_files([folder])
    assert session.status == "pending" and session.open_url is None

    seen: list[Event] = []
    ready = client.wait_ready(session.id, timeout=WAIT, on_event=seen.append)
    phases = checked_events(seen)
    assert phases[0] == "fetching" and phases[-1] == "ready", phases
    assert ready.status == "running" and ready.token
    assert ready.open_url == f"{ready.urls['server']}notebooks/analysis.ipynb?token={ready.token}"
    # The notebook's own cell, run in the session: it reads the file sent with it.
    notebook = nbformat.reads(
        (folder / "analysis.ipynb").read_text(), as_version=nbformat.NO_CONVERT
    )
    assert run_cell(ready.urls["server"], ready.token, notebook.cells[0].source) == "'42'"
    assert [s.id for s in client.sessions()] == [session.id]
    assert client.session(session.id) == ready
    # A running launch's stream is told again from its first event.
    assert [e.phase for e in client.events(session.id)][-1] == "ready"

    stopped = client.stop(session.id)
    assert stopped.status == "stopped" and stopped.open_url is None and stopped.token is None
    with pytest.raises(RemoteError, match=r"stopped"):
        client.wait_ready(session.id, timeout=WAIT)


def test_a_repository_launched_by_an_anonymous_client(
    server: Server, spec: OpenAPI, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "\n"})
    client = CheckedClient(Api(server, spec))  # logins are off: no token needed
    session = client.launch(f"file://{repo}", ref="main", open="index.ipynb")
    ready = client.wait_ready(session.id, timeout=WAIT)
    assert ready.repository == f"file://{repo}" and ready.ref == "main"
    assert ready.commit and ready.provenance and ready.provenance["commit"] == ready.commit
    assert ready.open_url and "/notebooks/index.ipynb?token=" in ready.open_url
    assert run_cell(ready.urls["server"], str(ready.token), "6*7") == "42"
    # Known afterwards by the cookie the first answer set.
    assert [s.id for s in client.sessions()] == [session.id]
    assert CheckedClient(Api(server, spec)).sessions() == []
    assert client.stop(session.id).status == "stopped"


def test_remote_launch_prints_a_url_that_opens(
    server: Server, admin_token: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_notebook_folder(tmp_path / "work")
    token_file = tmp_path / "admin-token"
    launched = cli(
        "remote",
        "launch",
        server.url,
        "analysis.ipynb",
        "data",
        "requirements.txt",
        "--open",
        "analysis.ipynb",
        "--token-file",
        token_file,
        "--wait",
        "--timeout",
        str(int(WAIT)),
        cwd=folder,
    )
    assert launched.code == 0, launched.err
    (url,) = launched.out.split()
    assert "[fetching]" in launched.err and "[ready]" in launched.err
    match = re.fullmatch(r".*/s/([0-9a-f]{16})/notebooks/analysis\.ipynb\?token=(\S+)", url)
    assert match, url
    session_id, token = match.groups()
    # The URL opens in a browser that never saw the service, and its cell runs.
    assert Browser(server.url).get(url).status == 200
    base = url.split("notebooks/")[0]
    source = "open('data/answer.txt').read().strip()"
    assert run_cell(base, token, source) == "'42'"

    monkeypatch.setenv("BINDER_LITE_TOKEN", admin_token)  # the other way to give it
    listed = cli("remote", "list", server.url)
    assert listed.code == 0 and listed.out.split()[:2] == [session_id, "running"], listed.err
    assert url in listed.out
    stopped = cli("remote", "stop", server.url, session_id)
    assert stopped.code == 0 and stopped.out == f"{session_id} stopped\n", stopped.err


def test_remote_launch_of_a_repository_without_waiting_prints_its_id(
    server: Server, admin_token: str, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "\n"})
    monkeypatch.setenv("BINDER_LITE_TOKEN", admin_token)
    launched = cli("remote", "launch", server.url, f"file://{repo}", "--ref", "main")
    assert launched.code == 0, launched.err
    session_id = launched.out.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", session_id), launched.out
    # The launch goes on without anyone following it.
    ready = Client(server.url, admin_token).wait_ready(session_id, timeout=WAIT)
    assert ready.repository == f"file://{repo}" and ready.open_url
    assert cli("remote", "stop", server.url, session_id).code == 0
    # A launch that fails ends --wait with the service's reason, on one line.
    failed = cli("remote", "launch", server.url, f"file://{repo}", "--ref", "nope", "--wait")
    assert failed.code == 1 and "Traceback" not in failed.err, failed.err
    assert failed.err.splitlines()[-1].startswith("error: ")
    assert failed.err.splitlines()[-1].endswith("(failed)"), failed.err


def test_a_wrong_token_or_no_service_is_one_line_without_traceback(
    server: Server, spec: OpenAPI, tmp_path: Path, cli: Cli
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("blt_" + "x" * 40 + "\n")
    refused = cli("remote", "list", server.url, "--token-file", wrong)
    assert refused.code == 2 and "Traceback" not in refused.err
    assert refused.err.splitlines() == [
        f"error: {server.url}/api/v1/sessions: this API token is unknown, revoked or expired "
        "(unauthorized)"
    ]
    with pytest.raises(RemoteError) as raised:
        CheckedClient(Api(server, spec), "nope").session("0" * 16)
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")

    nobody = f"http://127.0.0.1:{free_port()}"
    unreachable = cli("remote", "launch", nobody, "file:///nowhere", "--token-file", wrong)
    assert unreachable.code == 1 and "Traceback" not in unreachable.err
    assert unreachable.err.splitlines() == [
        f"error: {nobody}: cannot reach the service: Connection refused (unreachable)"
    ]
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "the file is empty" in cli("remote", "list", server.url, "--token-file", empty).err
    assert cli("remote", "stop", server.url, "not-an-id").code == 2


def _refused(tmp_path: Path, files: Any, **kwargs: Any) -> str:
    """UsageError, raised before sending: the client's service does not exist, so a
    request would have been a RemoteError (unreachable)."""
    client = Client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UsageError) as raised:
        client.launch_files(files, **kwargs)
    return str(raised.value)


def test_files_the_service_would_refuse_are_refused_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_notebook_folder(tmp_path / "work")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the service\n")
    with monkeypatch.context() as patch:
        patch.chdir(folder)  # FILES are named from the current directory, as on the CLI
        assert "outside the folder" in _refused(tmp_path, ["requirements.txt", "../secret.txt"])
        assert "outside the folder" in _refused(tmp_path, ["requirements.txt", secret])
        (folder / "data" / "link.txt").symlink_to(secret)
        assert "symbolic link" in _refused(tmp_path, ["requirements.txt", "data"])
        assert "symbolic link" in _refused(tmp_path, ["requirements.txt", "data/link.txt"])
        (folder / "data" / "link.txt").unlink()
        (folder / "linked").symlink_to(tmp_path)
        assert "symbolic link" in _refused(tmp_path, ["requirements.txt", "linked/secret.txt"])
        assert "manifest.scm or a requirements.txt" in _refused(tmp_path, ["analysis.ipynb"])
        # A folder sent from above: its requirements.txt is not at the top.
        top = _refused(tmp_path, [folder / "analysis.ipynb"], root=tmp_path)
        assert "requirements.txt" in top
    assert "not a relative path" in _refused(tmp_path, {"../x": "", "requirements.txt": ""})
    assert "not a relative path" in _refused(tmp_path, {".git/config": "", "requirements.txt": ""})
    many = {f"f{n}.txt": "" for n in range(101)} | {"requirements.txt": ""}
    assert "at most 100" in _refused(tmp_path, many)
    big = {"requirements.txt": "", "big": b"x" * (16 * 1024**2 + 1)}
    assert "16 MiB" in _refused(tmp_path, big)


def test_a_folder_is_sent_as_it_is_with_binary_files_as_base64(tmp_path: Path) -> None:
    folder = write_notebook_folder(tmp_path / "work")
    (folder / "data" / "blob.bin").write_bytes(b"\xff\x00")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]\n")
    found = client_module.read_files([folder])
    assert [p for p, _ in found] == [
        "analysis.ipynb",
        "data/answer.txt",
        "data/blob.bin",
        "requirements.txt",
    ]
    assert client_module._file_json("data/blob.bin", b"\xff\x00") == {
        "path": "data/blob.bin",
        "content_base64": "/wA=",
    }


def test_the_client_asks_for_the_environment_files_the_service_takes() -> None:
    # The bounds and the path rule are one module (sent.py); this list is each side's.
    assert client_module.ENVIRONMENT_FILES == api_module.ENVIRONMENT_FILES


def test_the_client_reads_every_field_of_a_session() -> None:
    schema = openapi()["components"]["schemas"]["Session"]
    assert set(schema["required"]) == set(Session.__dataclass_fields__)
