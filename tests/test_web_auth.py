"""Logging in through a real OAuth2/OIDC authorization-code flow with signed ID tokens,
and pushing a session's changes over HTTP to a git server that checks the credential.
Attacks on logins are in test_attacks_auth.py."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from launchkit import git, make_repo
from oidckit import Provider, b64url, jws
from webkit import Client, Server, git_http_server

from binder_lite.errors import BinderLiteError
from binder_lite.net import free_port
from binder_lite.site.model import Auth, AuthProvider, Binder
from binder_lite.web.auth import AuthError, Identity, OAuthClient, check_id_token, public_url_for

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
    assert len(query["nonce"]) >= 32
    # No binder.public_url, listening on 127.0.0.1: the service's own loopback URL.
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
            f"{server.url}/s/{sid}/api/contents/results.txt",
            data=body,
            method="PUT",
            headers={
                "Content-Type": "application/json",
                "Cookie": "; ".join(f"{c.name}={c.value}" for c in alice.jar),
            },
        )
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


def test_serve_refuses_logins_without_a_public_url_beyond_loopback(
    tmp_path: Path, provider: Provider
) -> None:
    """Listening on every address, a redirect_uri could come from nowhere but the
    Host header; serve stops before it listens and says what to set."""
    secret = tmp_path / "oauth-secret"
    secret.write_text("s3cret-from-a-file\n")
    site = tmp_path / "site.yaml"
    site.write_text(SITE.format(issuer=provider.url, secret_file=secret))
    binder_lite = Path(sys.executable).parent / "binder-lite"
    done = subprocess.run(
        [
            binder_lite,
            "serve",
            site,
            "--address",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--runtime",
            "local",
            "--state-dir",
            tmp_path / "state",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "logins need binder.public_url" in done.stderr
    assert "Traceback" not in done.stderr


def test_public_url_for_logins() -> None:
    on = Binder(auth=Auth(AuthProvider.OIDC, "https://id.example.org", "c", "/etc/secret"))
    assert public_url_for(on, "127.0.0.1", 8080) == "http://127.0.0.1:8080/"
    assert public_url_for(on, "::1", 8080) == "http://[::1]:8080/"
    for address in ("0.0.0.0", "::", "192.0.2.7", "binder.example.org"):
        with pytest.raises(BinderLiteError, match="logins need binder.public_url"):
            public_url_for(on, address, 8080)
    given = dataclasses.replace(on, public_url="https://binder.example.org/")
    assert public_url_for(given, "0.0.0.0", 8080) == "https://binder.example.org/"
    assert public_url_for(Binder(), "0.0.0.0", 8080) is None  # no logins, nothing to build


def test_cookies_of_the_first_format_are_not_read() -> None:
    """They named people by a user name anyone could take after them."""
    person = Identity("oidc:0123abcd", "Alice", "alice@example.org", "oidc")
    assert Identity.from_cookie(person.to_cookie()) == person
    assert Identity.from_cookie('["oidc:alice", "Alice", "", "oidc"]') is None
    assert Identity.from_cookie("not json") is None


def test_github_people_are_their_numeric_id(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    client = OAuthClient(Auth(AuthProvider.GITHUB, None, "c", str(secret)), secret)
    carol = client._github_identity({"id": 1001, "login": "carol"})
    renamed = client._github_identity({"id": 1001, "login": "carol2", "name": "Carol"})
    newcomer = client._github_identity({"id": 2002, "login": "carol"})
    assert carol.id == renamed.id != newcomer.id
    assert carol.id.startswith("github:") and "carol" not in carol.id
    assert renamed.name == "Carol"
    for info in ({"login": "carol"}, {"id": "1001", "login": "carol"}, {"id": True}):
        with pytest.raises(AuthError, match="did not say who you are"):
            client._github_identity(info)


def test_an_es256_id_token_verifies_and_nothing_else_does() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    x, y = (b64url(n.to_bytes(32, "big")) for n in (numbers.x, numbers.y))
    jwk = {"kty": "EC", "crv": "P-256", "kid": "k", "use": "sig", "x": x, "y": y}

    def sign(data: bytes) -> bytes:  # JWS wants r and s side by side, not DER
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    issuer, now = "https://id.example.org", int(time.time())
    claims = {"iss": issuer, "sub": "7", "aud": "c", "iat": now, "exp": now + 60, "nonce": "n"}
    header = {"alg": "ES256", "kid": "k"}
    token = jws(header, claims, sign)
    assert check_id_token(token, header, jwk, issuer, "c", "n")["sub"] == "7"
    with pytest.raises(AuthError, match="another login"):
        check_id_token(token, header, jwk, issuer, "c", "other")
    with pytest.raises(AuthError, match="algorithm 'RS256' is not accepted"):
        check_id_token(token, {"alg": "RS256"}, jwk, issuer, "c", "n")
    several = jws(header, {**claims, "aud": ["c", "d"], "azp": "d"}, sign)
    with pytest.raises(AuthError, match="another party"):
        check_id_token(several, header, jwk, issuer, "c", "n")
