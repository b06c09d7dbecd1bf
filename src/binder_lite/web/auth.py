"""Who is asking: anonymous visitors, or people logged in through GitHub, GitLab or any
OpenID Connect provider with the authorization-code flow, PKCE and `state`."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from binder_lite.errors import BinderLiteError
from binder_lite.site.model import Auth, AuthProvider


class AuthError(BinderLiteError):
    """The login could not be completed; the message is safe to show."""


@dataclass(frozen=True)
class Identity:
    id: str  # provider:login, or anon:<random>
    name: str
    email: str
    provider: str

    @property
    def anonymous(self) -> bool:
        return self.provider == "anonymous"

    def to_cookie(self) -> str:
        return json.dumps([self.id, self.name, self.email, self.provider])

    @staticmethod
    def from_cookie(value: bytes | str) -> Identity | None:
        try:
            ident, name, email, provider = json.loads(value)
        except (ValueError, TypeError):
            return None
        return Identity(str(ident), str(name), str(email), str(provider))

    @staticmethod
    def new_anonymous() -> Identity:
        return Identity(f"anon:{secrets.token_hex(8)}", "anonymous", "", "anonymous")


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str
    userinfo: str
    scope: str


class OAuthClient:
    """One configured provider.  The client secret is read from its file when the
    service starts; it never leaves this object."""

    def __init__(self, auth: Auth, secret_file: Path) -> None:
        self.auth = auth
        self.client_id = auth.client_id or ""
        try:
            self._secret = secret_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise BinderLiteError(
                f"cannot read the OAuth client secret from {secret_file}: {e.strerror}"
            ) from None
        if not self._secret:
            raise BinderLiteError(f"the OAuth client secret file {secret_file} is empty")
        self._endpoints: Endpoints | None = None

    async def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = await self._discover()
        return self._endpoints

    async def _discover(self) -> Endpoints:
        provider = self.auth.provider
        if provider is AuthProvider.GITHUB:
            base = (self.auth.issuer or "https://github.com").rstrip("/")
            public = base == "https://github.com"
            api = "https://api.github.com" if public else f"{base}/api/v3"
            return Endpoints(f"{base}/login/oauth/authorize", f"{base}/login/oauth/access_token",
                             f"{api}/user", "read:user user:email public_repo")  # fmt: skip
        issuer = (self.auth.issuer or "https://gitlab.com").rstrip("/")
        document = await _get_json(f"{issuer}/.well-known/openid-configuration")
        try:
            endpoints = Endpoints(
                document["authorization_endpoint"],
                document["token_endpoint"],
                document["userinfo_endpoint"],
                "openid profile email",
            )
        except KeyError as e:
            raise AuthError(f"the provider's discovery document lacks {e}") from None
        if provider is AuthProvider.GITLAB:  # to push sessions' changes over HTTPS
            endpoints = Endpoints(endpoints.authorize, endpoints.token, endpoints.userinfo,
                                  "openid profile email write_repository")  # fmt: skip
        return endpoints

    async def authorize_url(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """Where to send the browser, and what to remember until it comes back."""
        endpoints = await self.endpoints()
        state = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({
            "response_type": "code", "client_id": self.client_id,
            "redirect_uri": redirect_uri, "scope": endpoints.scope, "state": state,
            "code_challenge": challenge.decode().rstrip("="), "code_challenge_method": "S256",
        })  # fmt: skip
        return f"{endpoints.authorize}?{query}", {"state": state, "verifier": verifier}

    async def complete(
        self, code: str, state: str, remembered: dict[str, str], redirect_uri: str
    ) -> tuple[Identity, str]:
        """Check `state`, trade the code for a token, ask who it belongs to."""
        if not state or not secrets.compare_digest(state, remembered.get("state", "")):
            raise AuthError("the login's state does not match; please log in again")
        endpoints = await self.endpoints()
        body = urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": self.client_id, "client_secret": self._secret,
            "code_verifier": remembered.get("verifier", ""),
        })  # fmt: skip
        tokens = await _post_form(endpoints.token, body)
        access = tokens.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthError("the provider gave no access token")
        info = await _get_json(endpoints.userinfo, access)
        return self._identity(info), access

    def _identity(self, info: dict[str, Any]) -> Identity:
        login = info.get("login") or info.get("preferred_username") or info.get("nickname")
        login = login or info.get("sub")
        if not login:
            raise AuthError("the provider did not say who you are")
        name = info.get("name") or login
        email = info.get("email") or ""
        return Identity(f"{self.auth.provider}:{login}", str(name), str(email),
                        str(self.auth.provider))  # fmt: skip


async def _get_json(url: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json", "User-Agent": "binder-lite"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await _fetch_json(HTTPRequest(url, headers=headers, request_timeout=20))


async def _post_form(url: str, body: str) -> dict[str, Any]:
    headers = {"Accept": "application/json", "User-Agent": "binder-lite",
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    return await _fetch_json(HTTPRequest(url, method="POST", body=body, headers=headers,
                                         request_timeout=20))  # fmt: skip


async def _fetch_json(request: HTTPRequest) -> dict[str, Any]:
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        raise AuthError(f"the login provider answered {e.code} at {request.url}") from None
    except OSError as e:
        raise AuthError(f"cannot reach the login provider: {e}") from None
    try:
        data = json.loads(response.body)
    except ValueError:
        raise AuthError(f"the login provider sent no JSON at {request.url}") from None
    if not isinstance(data, dict):
        raise AuthError(f"unexpected answer from the login provider at {request.url}")
    if "error" in data:
        raise AuthError(f"the login provider refused: {data.get('error')}")
    return data
