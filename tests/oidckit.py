"""A small OpenID Connect provider for tests: discovery, the authorization-code flow with
PKCE, a token endpoint that issues ID tokens signed with an RSA key made at test time,
its key set (JWKS) and userinfo.  Tests choose who logs in (`user`) and may replace the
ID token it sends (`forge`) to play a provider an attacker controls.

Tokens are put together here with `cryptography` alone, not with the library the
service checks them with, so that both sides do not share a mistake."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


@dataclass(frozen=True)
class User:
    sub: str  # the stable subject
    username: str  # preferred_username, which people may change
    name: str
    email: str


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jws(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS: base64url(header).base64url(claims).base64url(signature)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def rs256(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Provider:
    """Authorization code flow with PKCE, checking what a real provider checks."""

    def __init__(self, client_id: str, client_secret: str, user: str = "alice") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.user = User("42", user, user.title(), f"{user}@example.org")
        self.key = new_key()
        self.kid = secrets.token_hex(4)
        self.codes: dict[str, tuple[dict[str, str], User]] = {}
        self.tokens: dict[str, User] = {}  # access token → whom it speaks for
        self.token_requests: list[dict[str, str]] = []
        self.id_tokens: list[str] = []  # every ID token sent, in order
        # Given the claims the provider would sign, the ID token to send instead.
        self.forge: Callable[[dict[str, Any]], str] | None = None
        handler = type("H", (_ProviderHandler,), {"provider": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.issuer = self.url  # what discovery and ID tokens name; tests may change it
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def claims(self, user: User, nonce: str | None) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user.sub,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "preferred_username": user.username,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        return claims

    def sign(self, claims: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> str:
        """RS256 with the published key id, by the provider's key unless `key` is given."""
        return jws({"alg": "RS256", "typ": "JWT", "kid": self.kid}, claims, rs256(key or self.key))

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()

        def encode(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": encode(numbers.n),
                    "e": encode(numbers.e),
                }
            ]
        }

    def id_token(self, user: User, nonce: str | None) -> str:
        claims = self.claims(user, nonce)
        token = self.forge(claims) if self.forge else self.sign(claims)
        self.id_tokens.append(token)
        return token


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
            self._json(
                200,
                {
                    "issuer": p.issuer,
                    "authorization_endpoint": f"{p.url}/authorize",
                    "token_endpoint": f"{p.url}/token",
                    "jwks_uri": f"{p.url}/jwks",
                    "userinfo_endpoint": f"{p.url}/userinfo",
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
            )
        elif url.path == "/jwks":
            self._json(200, p.jwks())
        elif url.path == "/authorize":
            self._authorize(query)
        elif url.path == "/userinfo":
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            user = p.tokens.get(token)
            if user is None:
                self._json(401, {"error": "invalid_token"})
                return
            self._json(
                200,
                {
                    "sub": user.sub,
                    "preferred_username": user.username,
                    "name": user.name,
                    "email": user.email,
                },
            )
        else:
            self._json(404, {"error": "not_found"})

    def _authorize(self, query: dict[str, str]) -> None:
        """Approve at once, as the provider's current user."""
        p = self.provider
        ok = (
            query.get("client_id") == p.client_id
            and query.get("response_type") == "code"
            and query.get("code_challenge_method") == "S256"
            and query.get("code_challenge")
            and query.get("state")
        )
        if not ok:
            self._json(400, {"error": "invalid_request"})
            return
        code = secrets.token_urlsafe(16)
        p.codes[code] = (query, p.user)
        target = f"{query['redirect_uri']}?" + urllib.parse.urlencode(
            {"code": code, "state": query["state"]}
        )
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        p = self.provider
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        p.token_requests.append(form)
        asked, user = p.codes.pop(form.get("code", ""), ({}, None))
        verifier = form.get("code_verifier", "").encode()
        challenge = b64url(hashlib.sha256(verifier).digest())
        if (
            user is None
            or form.get("client_secret") != p.client_secret
            or form.get("redirect_uri") != asked["redirect_uri"]
            or challenge != asked["code_challenge"]
        ):
            self._json(400, {"error": "invalid_grant"})
            return
        token = secrets.token_hex(16)
        p.tokens[token] = user
        self._json(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "id_token": p.id_token(user, asked.get("nonce")),
            },
        )
