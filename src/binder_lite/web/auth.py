"""Who is asking: anonymous visitors, or people logged in through GitHub, GitLab or any
OpenID Connect provider with the authorization-code flow, PKCE, `state` and `nonce`.

A person is their provider's stable subject (OIDC `sub`, GitHub's numeric user id),
never a user name they can change or someone else can take.  OIDC logins are proven by
the ID token, checked with PyJWT against the keys the provider publishes."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlencode

import jwt
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from binder_lite.errors import BinderLiteError
from binder_lite.site.model import Auth, AuthProvider, Binder

log = logging.getLogger(__name__)

# Seconds of clock difference tolerated between the provider and this machine.
ID_TOKEN_LEEWAY = 30
# The signature algorithms a published key of each type may verify.  Only these:
# `none` and HMAC (which would take the public key as a shared secret) never pass.
ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}
# A key id not in the cached key set fetches it again, at most this often (seconds):
# providers rotate keys, but forged tokens must not make us hammer them.
JWKS_REFRESH = 60.0


class AuthError(BinderLiteError):
    """The login could not be completed; the message is safe to show."""


@dataclass(frozen=True)
class Identity:
    id: str  # provider:<digest of issuer and subject>, or anon:<random>
    name: str
    email: str
    provider: str

    # Cookies of the first format named people by user name; they are not read.
    COOKIE_VERSION: ClassVar[int] = 2

    @property
    def anonymous(self) -> bool:
        return self.provider == "anonymous"

    def to_cookie(self) -> str:
        return json.dumps([self.COOKIE_VERSION, self.id, self.name, self.email, self.provider])

    @staticmethod
    def from_cookie(value: bytes | str) -> Identity | None:
        try:
            version, ident, name, email, provider = json.loads(value)
        except (ValueError, TypeError):
            return None
        if version != Identity.COOKIE_VERSION:
            return None
        return Identity(str(ident), str(name), str(email), str(provider))

    @staticmethod
    def new_anonymous() -> Identity:
        return Identity(f"anon:{secrets.token_hex(8)}", "anonymous", "", "anonymous")


def person_id(provider: str, issuer: str, subject: str) -> str:
    """The id sessions are owned by.  The issuer is part of it: subjects are unique
    per issuer only, so pointing the site at another provider makes new people."""
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:32]
    return f"{provider}:{digest}"


def logins_on(auth: Auth) -> bool:
    return auth.provider is not AuthProvider.NONE and bool(auth.client_secret_file)


def public_url_for(binder: Binder, address: str, port: int) -> str | None:
    """The URL OAuth redirects are built from: `binder.public_url`, never a request's
    Host header (which anyone sending a request chooses).  Without it, logins work only
    while the service listens on loopback alone, for development: then only this
    machine reaches it, at an address that comes from the command line."""
    if binder.public_url or not logins_on(binder.auth):
        return binder.public_url
    if not _loopback(address):
        raise BinderLiteError(
            "logins need binder.public_url, the address people reach this service at "
            "(e.g. https://binder.example.org/): the login provider sends them back there. "
            f"Without it, listen on 127.0.0.1 only (not {address}) for development"
        )
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{port}/"
    log.warning(
        "binder.public_url is not set: logins come back to %soauth/callback "
        "(development only; this service listens on loopback alone)",
        url,
    )
    return url


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def callback_url(public_url: str) -> str:
    return public_url.rstrip("/") + "/oauth/callback"


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str
    userinfo: str | None
    scope: str
    jwks: str | None  # None for GitHub, which has no OIDC for logins


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
        self._keys: Keys | None = None

    @property
    def oidc(self) -> bool:
        return self.auth.provider is not AuthProvider.GITHUB

    @property
    def issuer(self) -> str:
        if self.auth.provider is AuthProvider.GITHUB:
            return (self.auth.issuer or "https://github.com").rstrip("/")
        return self.auth.issuer or "https://gitlab.com"

    async def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = await self._discover()
            if self._endpoints.jwks:
                self._keys = Keys(self._endpoints.jwks)
        return self._endpoints

    async def _discover(self) -> Endpoints:
        if not self.oidc:
            base = self.issuer
            api = "https://api.github.com" if base == "https://github.com" else f"{base}/api/v3"
            return Endpoints(
                f"{base}/login/oauth/authorize",
                f"{base}/login/oauth/access_token",
                f"{api}/user",
                "read:user user:email public_repo",
                None,
            )
        issuer = self.issuer
        document = await _get_json(f"{issuer.rstrip('/')}/.well-known/openid-configuration")
        # OpenID Connect Discovery 4.3: the document is the issuer's only if it names
        # exactly the issuer it was fetched for.
        if document.get("issuer") != issuer:
            named = document.get("issuer")
            raise AuthError(
                f"the login provider's discovery document names the issuer "
                f"{named!r}, not {issuer!r} as configured"
            )
        scope = "openid profile email"
        if self.auth.provider is AuthProvider.GITLAB:  # to push sessions' changes over HTTPS
            scope += " write_repository"
        userinfo = document.get("userinfo_endpoint")
        try:
            return Endpoints(
                _https_or_local(document["authorization_endpoint"]),
                _https_or_local(document["token_endpoint"]),
                _https_or_local(userinfo) if userinfo else None,
                scope,
                _https_or_local(document["jwks_uri"]),
            )
        except KeyError as e:
            raise AuthError(f"the provider's discovery document lacks {e}") from None

    async def authorize_url(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """Where to send the browser, and what to remember until it comes back."""
        endpoints = await self.endpoints()
        remembered = {"state": secrets.token_urlsafe(24), "verifier": secrets.token_urlsafe(48)}
        digest = hashlib.sha256(remembered["verifier"].encode()).digest()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": endpoints.scope,
            "state": remembered["state"],
            "code_challenge": base64.urlsafe_b64encode(digest).decode().rstrip("="),
            "code_challenge_method": "S256",
        }
        if self.oidc:  # the ID token must carry it back: it ties the token to this login
            remembered["nonce"] = query["nonce"] = secrets.token_urlsafe(24)
        return f"{endpoints.authorize}?{urlencode(query)}", remembered

    async def complete(
        self, code: str, state: str, remembered: dict[str, str], redirect_uri: str
    ) -> tuple[Identity, str]:
        """Check `state`, trade the code for tokens, check the ID token: who is this."""
        if not state or not secrets.compare_digest(state, remembered.get("state", "")):
            raise AuthError("the login's state does not match; please log in again")
        endpoints = await self.endpoints()
        body = urlencode(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": self.client_id,
                "client_secret": self._secret,
                "code_verifier": remembered.get("verifier", ""),
            }
        )
        tokens = await _post_form(endpoints.token, body)
        access = tokens.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthError("the provider gave no access token")
        if not self.oidc:
            assert endpoints.userinfo is not None
            return self._github_identity(await _get_json(endpoints.userinfo, access)), access
        claims = await self._verified_claims(tokens.get("id_token"), remembered.get("nonce", ""))
        if endpoints.userinfo:
            claims = await self._with_userinfo(claims, endpoints.userinfo, access)
        return self._oidc_identity(claims), access

    async def _verified_claims(self, id_token: object, nonce: str) -> dict[str, Any]:
        if not isinstance(id_token, str) or not id_token:
            raise AuthError("the provider gave no ID token; logins need OpenID Connect")
        assert self._keys is not None
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise AuthError("the provider's ID token is not a JSON Web Token") from None
        key = await self._keys.find(header.get("kid"))
        return check_id_token(id_token, header, key, self.issuer, self.client_id, nonce)

    async def _with_userinfo(self, claims: dict[str, Any], url: str, access: str) -> dict[str, Any]:
        """Name and email may only be in the userinfo answer, which speaks for the
        ID token's subject only when it names the same one (OIDC Core 5.3.2)."""
        info = await _get_json(url, access)
        if info.get("sub") != claims["sub"]:
            raise AuthError("the provider's user information is about someone else")
        return {**info, **claims}

    def _oidc_identity(self, claims: dict[str, Any]) -> Identity:
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("the ID token names nobody (no `sub`)")
        login = claims.get("preferred_username") or claims.get("nickname") or subject
        return Identity(
            person_id(str(self.auth.provider), self.issuer, subject),
            str(claims.get("name") or login),
            str(claims.get("email") or ""),
            str(self.auth.provider),
        )

    def _github_identity(self, info: dict[str, Any]) -> Identity:
        subject = info.get("id")  # GitHub's numeric id stays when a login is renamed
        if not isinstance(subject, int) or isinstance(subject, bool):
            raise AuthError("the provider did not say who you are")
        login = info.get("login") or str(subject)
        return Identity(
            person_id("github", self.issuer, str(subject)),
            str(info.get("name") or login),
            str(info.get("email") or ""),
            "github",
        )


def check_id_token(
    token: str,
    header: dict[str, Any],
    key: dict[str, Any],
    issuer: str,
    client_id: str,
    nonce: str,
) -> dict[str, Any]:
    """The ID token's claims, once its signature (by `key`, a published JWK), issuer,
    audience, times and nonce are right (OIDC Core 3.1.3.7); else AuthError."""
    alg = header.get("alg")
    allowed = ALGORITHMS.get(str(key.get("kty")), ())
    if alg not in allowed or key.get("alg", alg) != alg:
        raise AuthError(f"the ID token's algorithm {alg!r} is not accepted for the provider's key")
    try:
        public = jwt.PyJWK(key, algorithm=alg).key
        claims: dict[str, Any] = jwt.decode(
            token,
            public,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=ID_TOKEN_LEEWAY,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "nonce"]},
        )
    except jwt.PyJWTError as e:
        raise AuthError(_id_token_problem(e)) from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise AuthError("the ID token was issued to another party (azp)")
    if not nonce or not secrets.compare_digest(str(claims["nonce"]), nonce):
        raise AuthError("the ID token belongs to another login (nonce); please log in again")
    return claims


def _id_token_problem(e: jwt.PyJWTError) -> str:
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"the ID token lacks the {e.claim!r} claim"
    messages: list[tuple[type[jwt.PyJWTError], str]] = [
        (jwt.InvalidSignatureError, "the ID token's signature does not verify"),
        (jwt.ExpiredSignatureError, "the ID token has expired; please log in again"),
        (jwt.InvalidAudienceError, "the ID token was issued to another site (audience)"),
        (jwt.InvalidIssuerError, "the ID token comes from another issuer"),
        (jwt.ImmatureSignatureError, "the ID token is not valid yet (is a clock wrong?)"),
    ]
    for kind, message in messages:
        if isinstance(e, kind):
            return message
    return "the ID token is not valid"


class Keys:
    """The provider's published signing keys (its JWKS), fetched on first use and again
    only for a key id not seen before, at most every JWKS_REFRESH seconds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: list[dict[str, Any]] = []
        self._fetched = -JWKS_REFRESH

    async def find(self, kid: object) -> dict[str, Any]:
        key = self._match(kid)
        if key is None and time.monotonic() - self._fetched >= JWKS_REFRESH:
            self._fetched = time.monotonic()
            document = await _get_json(self.url)
            keys = document.get("keys")
            self._keys = [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
            key = self._match(kid)
        if key is None:
            raise AuthError("the ID token is signed with a key the provider does not publish")
        return key

    def _match(self, kid: object) -> dict[str, Any] | None:
        signing = [k for k in self._keys if k.get("use", "sig") == "sig"]
        if kid is None:  # allowed only when there is no choice to make
            return signing[0] if len(signing) == 1 else None
        return next((k for k in signing if k.get("kid") == kid), None)


def _https_or_local(url: object) -> str:
    """Endpoints from discovery: https://, or http:// on this machine (a provider
    under test), like the configured issuer itself."""
    if not isinstance(url, str):
        raise AuthError("the provider's discovery document has an endpoint that is no URL")
    local = (
        "http://127.0.0.1:",
        "http://127.0.0.1/",
        "http://localhost:",
        "http://localhost/",
        "http://[::1]:",
        "http://[::1]/",
    )
    if url.startswith("https://") or url.startswith(local):
        return url
    raise AuthError(f"the provider's discovery document names {url!r}, which is not https://")


async def _get_json(url: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json", "User-Agent": "binder-lite"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return await _fetch_json(HTTPRequest(url, headers=headers, request_timeout=20))


async def _post_form(url: str, body: str) -> dict[str, Any]:
    headers = {
        "Accept": "application/json",
        "User-Agent": "binder-lite",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return await _fetch_json(
        HTTPRequest(url, method="POST", body=body, headers=headers, request_timeout=20)
    )


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
