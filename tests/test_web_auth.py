"""Logging in through a real OAuth2/OIDC authorization-code flow, and pushing a
session's changes over HTTP to a git server that checks the credential."""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from launchkit import git, make_repo
from webkit import Client, Provider, Server, git_http_server

SITE = """\
version: 1
site:
  name: Auth test
  slug: auth
binder:
  max_sessions: 4
  auth:
    provider: oidc
    issuer: {issuer}
    client_id: binder-lite-test
    client_secret_file: {secret_file}
"""


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider("binder-lite-test", "s3cret-from-a-file")
    yield p
    p.close()


@pytest.fixture
def server(tmp_path: Path, provider: Provider) -> Iterator[Server]:
    secret = tmp_path / "oauth-secret"
    secret.write_text("s3cret-from-a-file\n")
    secret.chmod(0o600)
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(issuer=provider.url, secret_file=secret))
    srv = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    yield srv
    srv.stop()


def follow_login(client: Client, server: Server) -> str:
    """Run the browser's side of the flow; return the provider's authorize URL used."""
    start = client.get("/login?next=/sessions")
    assert start.status == 302
    authorize = start.headers["Location"]
    to_callback = client.get(authorize)  # the provider, which approves at once
    assert to_callback.status == 302, to_callback.text
    done = client.get(to_callback.headers["Location"])
    assert done.status == 302 and done.headers["Location"] == "/sessions"
    return authorize


def test_login_flow_with_pkce_and_state(server: Server, provider: Provider) -> None:
    client = Client(server.url)
    page = client.get("/")
    assert "Log in with your account" in page.text and 'action="/launch"' not in page.text
    assert client.post("/launch", {"repo": "https://example.org/x.git"}).status == 302
    authorize = follow_login(client, server)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(authorize).query))
    assert query["code_challenge_method"] == "S256" and len(query["state"]) >= 32
    assert query["redirect_uri"] == f"{server.url}/oauth/callback"
    assert provider.token_requests[-1]["client_secret"] == "s3cret-from-a-file"
    assert provider.token_requests[-1]["code_verifier"]
    home = client.get("/").text
    assert "Alice" in home and 'action="/launch"' in home
    cookie = next(c for c in client.jar if c.name == "binder-lite-user")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert "s3cret" not in home
    assert client.post("/logout").status == 303
    assert "Log in with" in client.get("/").text


def test_forged_state_and_replayed_codes_are_refused(server: Server) -> None:
    client = Client(server.url)
    start = client.get("/login")
    callback = client.get(start.headers["Location"]).headers["Location"]
    forged = re.sub(r"state=[^&]+", "state=forged", callback)
    refused = client.get(forged)
    assert refused.status == 400 and "state does not match" in refused.text
    # The login cookie is spent: the genuine callback cannot be used afterwards either.
    assert client.get(callback).status == 400


def test_users_reach_only_their_own_sessions(server: Server, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    alice = Client(server.url)
    follow_login(alice, server)
    sid = alice.post("/launch", {"repo": f"file://{repo}"}).headers["Location"].split("/")[2]
    events = alice.events(f"/sessions/{sid}/events")
    assert events[-1]["phase"] == "ready"
    anonymous = Client(server.url)
    assert anonymous.get(f"/sessions/{sid}").status == 404
    assert anonymous.get(f"/s/{sid}/api/status").status == 404
    token = server.session_field(sid, "token")
    # With logins on, even the token is not enough without the owner's cookie.
    assert anonymous.get(f"/s/{sid}/api/status?token={token}").status == 404
    assert alice.get(f"/s/{sid}/api/status").status == 200


def test_push_changes_to_a_new_branch(server: Server, provider: Provider, tmp_path: Path) -> None:
    source = make_repo(tmp_path / "source")
    root = tmp_path / "forge"
    root.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(source), str(root / "project.git"))
    git(root / "project.git", "config", "http.receivepack", "true")
    with git_http_server(root, "x-access-token", lambda p: p in provider.tokens) as forge:
        url = f"{forge}/project.git"
        alice = Client(server.url)
        follow_login(alice, server)
        sid = alice.post("/launch", {"repo": url}).headers["Location"].split("/")[2]
        assert alice.events(f"/sessions/{sid}/events")[-1]["phase"] == "ready"
        nothing = alice.post(f"/sessions/{sid}/push")
        assert nothing.status == 409 and "no changes in this session" in nothing.text
        # Edit the notebook through the proxied Jupyter API, as the browser would.
        body = b'{"type": "file", "format": "text", "content": "results\\n"}'
        request = urllib.request.Request(
            f"{server.url}/s/{sid}/api/contents/results.txt", data=body, method="PUT",
            headers={"Content-Type": "application/json",
                     "Cookie": "; ".join(f"{c.name}={c.value}" for c in alice.jar)},
        )  # fmt: skip
        with urllib.request.urlopen(request) as response:
            assert response.status in (200, 201)
        pushed = alice.post(f"/sessions/{sid}/push")
        assert pushed.status == 200, pushed.text
        assert f"binder-lite/{sid}" in pushed.text
        bare = root / "project.git"
        assert git(bare, "show", f"binder-lite/{sid}:results.txt") == "results"
        assert git(bare, "log", "-1", "--format=%an <%ae>", f"binder-lite/{sid}") == (
            "Alice <alice@example.org>"
        )
        assert git(bare, "rev-parse", "main") == git(source, "rev-parse", "main")
        # A second push of new work fast-forwards the same branch; someone else's
        # commit on that branch makes the next one a plain refusal, never a force.
        other = tmp_path / "other"
        git(tmp_path, "clone", "-q", "-b", f"binder-lite/{sid}", str(bare), str(other))
        (other / "theirs.txt").write_text("theirs")
        git(other, "add", "-A")
        git(other, "commit", "-q", "-m", "theirs")
        git(other, "push", "-q", str(bare), f"HEAD:binder-lite/{sid}")
        (server.state_dir / "sessions" / sid / "repo" / "more.txt").write_text("more")
        refused = alice.post(f"/sessions/{sid}/push")
        assert refused.status == 409
        assert "already exists with other changes; nothing was overwritten" in refused.text
        assert git(bare, "show", f"binder-lite/{sid}:theirs.txt") == "theirs"


def test_push_without_a_credential_is_refused_plainly(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("version: 1\nsite: {name: x, slug: x}\n")
    source = make_repo(tmp_path / "source")
    root = tmp_path / "forge"
    root.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(source), str(root / "p.git"))
    srv = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    try:
        with git_http_server(root, "someone", lambda p: p == "right") as forge:
            client = Client(srv.url)
            sid = client.post("/launch", {"repo": f"{forge}/p.git"}).headers["Location"]
            sid = sid.split("/")[2]
            assert client.events(f"/sessions/{sid}/events")[-1]["phase"] == "ready"
            (srv.state_dir / "sessions" / sid / "repo" / "x.txt").write_text("x")
            refused = client.post(f"/sessions/{sid}/push")
            assert refused.status == 409
            assert "refused the push: log in, or ask for a push credential" in refused.text
    finally:
        srv.stop()
