"""Attacks on logins, against a real `binder-lite serve` and a real OpenID Connect
provider on loopback (oidckit.py) whose ID tokens an attacker has replaced: every
forged token is refused with a plain message, the redirect_uri never comes from the
Host header, and people are their provider's subject, not their user name."""

from __future__ import annotations

import hashlib
import hmac
import html
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from launchkit import make_repo
from oidckit import Provider, User, jws, new_key
from webkit import Client, Response, Server

from binder_lite.net import free_port

SITE = """\
version: 1
site:
  name: Auth attacks
  slug: attacks
binder:
  max_sessions: 4
  public_url: {public_url}
  auth:
    provider: oidc
    issuer: {issuer}
    client_id: binder-lite-test
    client_secret_file: {secret_file}
"""


def start(tmp: Path, provider: Provider) -> Server:
    secret = tmp / "oauth-secret"
    secret.write_text("s3cret-from-a-file\n")
    secret.chmod(0o600)
    port = free_port()
    site = tmp / "site.yaml"
    site.write_text(
        SITE.format(public_url=f"http://127.0.0.1:{port}/", issuer=provider.url, secret_file=secret)
    )
    return Server(site, tmp / "state", ("--allow-local-repos",), port=port).start()


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    p = Provider("binder-lite-test", "s3cret-from-a-file")
    yield p
    p.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, provider: Provider) -> Iterator[Server]:
    srv = start(tmp_path_factory.mktemp("attacks-auth"), provider)
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def honest(provider: Provider) -> Iterator[None]:
    """Each test starts and ends with the provider honest, as alice."""
    provider.forge, provider.user = None, User("42", "alice", "Alice", "alice@example.org")
    yield
    provider.forge = None


def log_in(client: Client) -> Response:
    """The browser's side of the flow; the service's answer to the callback."""
    start = client.get("/login?next=/sessions")
    assert start.status == 302, start.text
    to_callback = client.get(start.headers["Location"])  # the provider approves at once
    assert to_callback.status == 302, to_callback.text
    return client.get(to_callback.headers["Location"])


def logged_in(client: Client) -> bool:
    return "Log in with" not in client.get("/").text


def assert_refused(server: Server, provider: Provider, message: str) -> None:
    client = Client(server.url)
    asked = len(provider.token_requests)
    answer = log_in(client)
    # The service did trade the code: the refusal is its verdict on the ID token.
    assert len(provider.token_requests) == asked + 1
    assert answer.status == 400, (answer.status, answer.text)
    assert message in html.unescape(answer.text) and "Traceback" not in answer.text
    assert client.cookie("binder-lite-user") is None and not logged_in(client)


def test_an_honest_login_passes(server: Server) -> None:
    """The control: what the attacks change is all that is wrong with them."""
    client = Client(server.url)
    answer = log_in(client)
    assert answer.status == 302 and answer.headers["Location"] == "/sessions"
    assert logged_in(client) and "Alice" in client.get("/").text


def _public_key_pem(provider: Provider) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return provider.key.public_key().public_bytes(serialization.Encoding.PEM, spki)


def _header(provider: Provider, alg: str) -> dict[str, Any]:
    return {"alg": alg, "typ": "JWT", "kid": provider.kid}


FORGERIES: dict[str, tuple[Callable[[Provider, dict[str, Any]], str], str]] = {
    # Signed by another key under the provider's key id.
    "another-key": (lambda p, c: p.sign(c, key=new_key()), "signature does not verify"),
    "alg-none": (
        lambda p, c: jws(_header(p, "none"), c, lambda _: b""),
        "algorithm 'none' is not accepted",
    ),
    # HMAC keyed with the public key, which everyone can fetch from the JWKS.
    "hs256-public-key": (
        lambda p, c: jws(
            _header(p, "HS256"),
            c,
            lambda data: hmac.new(_public_key_pem(p), data, hashlib.sha256).digest(),
        ),
        "algorithm 'HS256' is not accepted",
    ),
    "wrong-audience": (
        lambda p, c: p.sign({**c, "aud": "another-client"}),
        "issued to another site (audience)",
    ),
    "expired": (
        lambda p, c: p.sign({**c, "iat": c["iat"] - 7200, "exp": c["iat"] - 3600}),
        "the ID token has expired",
    ),
    "wrong-issuer": (
        lambda p, c: p.sign({**c, "iss": "http://127.0.0.1:9/evil"}),
        "comes from another issuer",
    ),
    "no-nonce": (
        lambda p, c: p.sign({k: v for k, v in c.items() if k != "nonce"}),
        "lacks the 'nonce' claim",
    ),
    "wrong-nonce": (
        lambda p, c: p.sign({**c, "nonce": "chosen-by-the-attacker"}),
        "belongs to another login (nonce)",
    ),
    "no-id-token": (lambda p, c: "", "gave no ID token"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_id_tokens_are_refused(server: Server, provider: Provider, forgery: str) -> None:
    forge, message = FORGERIES[forgery]
    provider.forge = lambda claims: forge(provider, claims)
    assert_refused(server, provider, message)


def test_a_replayed_id_token_is_refused(server: Server, provider: Provider) -> None:
    """A genuine, unexpired ID token from an earlier login (as one leaked from a log
    or another site would be) does not open a new login: its nonce was that login's."""
    assert log_in(Client(server.url)).status == 302
    earlier = provider.id_tokens[-1]
    provider.forge = lambda claims: earlier
    assert_refused(server, provider, "belongs to another login (nonce)")


def test_the_redirect_uri_ignores_the_host_header(server: Server) -> None:
    client = Client(server.url)
    for headers in (
        {"Host": "evil.example"},
        {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
    ):
        start = client.get("/login", headers=headers)
        assert start.status == 302, start.text
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(start.headers["Location"]).query))
        assert query["redirect_uri"] == f"{server.url}/oauth/callback"


def test_a_discovery_document_for_another_issuer_is_refused(tmp_path: Path) -> None:
    provider = Provider("binder-lite-test", "s3cret-from-a-file")
    provider.issuer = "http://127.0.0.1:9/evil"  # as a man in the middle's document would
    server = start(tmp_path, provider)
    try:
        client = Client(server.url)
        answer = client.get("/login")
        assert answer.status == 502, (answer.status, answer.headers)
        assert "names the issuer 'http://127.0.0.1:9/evil'" in html.unescape(answer.text)
        assert "Traceback" not in answer.text and not logged_in(client)
    finally:
        server.stop()
        provider.close()


def launch_as(server: Server, provider: Provider, user: User, repo: Path) -> tuple[Client, str]:
    """Log in as `user` and launch `repo`; the session's row stays however it ends."""
    client = Client(server.url)
    provider.user = user
    assert log_in(client).status == 302
    launched = client.post("/launch", {"repo": f"file://{make_repo(repo)}"})
    assert launched.status == 303, launched.text
    sid = launched.headers["Location"].split("/")[2]
    client.events(f"/sessions/{sid}/events")  # to the launch's end, ready or failed
    assert client.get(f"/sessions/{sid}").status == 200
    return client, sid


def test_a_namesake_is_someone_else(server: Server, provider: Provider, tmp_path: Path) -> None:
    """Another account that took the name "carol" (after she gave it up, or in another
    realm of the provider) has another subject: it is someone else."""
    carol, sid = launch_as(
        server, provider, User("1001", "carol", "Carol", "c@example.org"), tmp_path / "repo"
    )
    namesake = Client(server.url)
    provider.user = User("2002", "carol", "Carol", "c@example.org")
    assert log_in(namesake).status == 302 and logged_in(namesake)
    assert namesake.get(f"/sessions/{sid}").status == 404
    assert sid not in namesake.get("/sessions").text
    assert namesake.post(f"/sessions/{sid}/stop").status == 404
    assert carol.post(f"/sessions/{sid}/stop").status == 303


def test_a_renamed_person_keeps_their_sessions(
    server: Server, provider: Provider, tmp_path: Path
) -> None:
    _, sid = launch_as(
        server, provider, User("3003", "dana", "Dana", "d@example.org"), tmp_path / "repo"
    )
    renamed = Client(server.url)
    provider.user = User("3003", "dana-k", "Dana K.", "d@example.org")
    assert log_in(renamed).status == 302
    assert renamed.get(f"/sessions/{sid}").status == 200
    assert sid in renamed.get("/sessions").text
    assert renamed.post(f"/sessions/{sid}/stop").status == 303
