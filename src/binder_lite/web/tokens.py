"""API tokens: made and revoked by a person on /tokens, or one admin token from a file
(`binder.api_token_file`) for a trusted service.

A token is 32 random bytes; the store keeps only its SHA-256.  A slow, salted hash
would buy nothing here: the secret has 256 bits of entropy, so its digest cannot be
guessed back, and a lookup by digest costs one index probe.  A token acts as the person
who made it: their sessions, their limits (two tokens do not double them).  The admin
token is a user of its own, `api:admin`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tornado.web import HTTPError

from binder_lite.errors import BinderLiteError
from binder_lite.web.base import BaseMixin
from binder_lite.web.store import Store, TokenRecord

PREFIX = "blt_"  # says what a leaked string is, to people and to secret scanners
ADMIN = "api:admin"
MIN_ADMIN_LENGTH = 32  # characters in the admin token file: a secret, not a password
DAYS = (1, 7, 30, 90, 365)  # the lifetimes the page offers
DEFAULT_DAYS = 30
MAX_PER_PERSON = 20  # live tokens one person may hold
_DAY = 86400.0


class TokenFileError(BinderLiteError):
    """The admin token file cannot be used; the service does not start."""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who an API request acts for, and through which token (None: the admin token)."""

    owner: str
    token_id: str | None


class ApiTokens:
    def __init__(self, store: Store, admin_digest: str | None = None) -> None:
        self.store = store
        self.admin_digest = admin_digest

    @staticmethod
    def admin_from_file(path: Path) -> str:
        """The admin token's digest; the file is read once, at start."""
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise TokenFileError(f"cannot read the API token file {path}: {e.strerror}") from None
        if len(text) < MIN_ADMIN_LENGTH or any(c.isspace() for c in text):
            raise TokenFileError(
                f"{path} must hold one token of at least {MIN_ADMIN_LENGTH} characters "
                "(e.g. from `openssl rand -hex 32`)"
            )
        return digest(text)

    def make(self, owner: str, name: str, days: int) -> tuple[str, TokenRecord]:
        """A new token for `owner`: its secret (shown once) and its record."""
        secret = PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        record = TokenRecord(
            id=secrets.token_hex(6),
            owner=owner,
            name=name,
            digest=digest(secret),
            created=now,
            expires=now + days * _DAY,
        )
        self.store.add_token(record)
        return secret, record

    def live(self, owner: str) -> list[TokenRecord]:
        now = time.time()
        return [t for t in self.store.tokens_of(owner) if t.revoked is None and t.expires > now]

    def caller(self, secret: str) -> Caller | None:
        """Who `secret` is, if it is a token that is neither revoked nor expired."""
        wanted = digest(secret)
        if self.admin_digest is not None and hmac.compare_digest(wanted, self.admin_digest):
            return Caller(ADMIN, None)
        record = self.store.token_with_digest(wanted)
        if record is None or record.revoked is not None or record.expires <= time.time():
            return None
        self.store.token_used(record.id)
        return Caller(record.owner, record.id)


def api_tokens(handler: BaseMixin) -> ApiTokens:
    return handler.application.settings["api_tokens"]  # type: ignore[no-any-return]


class TokensHandler(BaseMixin):
    """/tokens: a person's API tokens; a new one is shown once, on the answer that made
    it.  With logins off, the visitor's anonymous identity (its cookie) makes them."""

    def get(self) -> None:
        self._page()

    def post(self) -> None:
        self._may()
        name = self.get_body_argument("name", "").strip()[:80] or "API token"
        try:
            days = int(self.get_body_argument("days", str(DEFAULT_DAYS)))
        except ValueError:
            days = 0
        tokens = api_tokens(self)
        owner = self.identity().id
        if days not in DAYS:
            self._page(400, message="Choose one of the lifetimes offered.")
        elif len(tokens.live(owner)) >= MAX_PER_PERSON:
            self._page(400, message=f"You have {MAX_PER_PERSON} tokens; revoke one first.")
        else:
            secret, record = tokens.make(owner, name, days)
            self._page(201, made=(secret, record))

    def _may(self) -> None:
        if not self.may_launch():
            raise HTTPError(403, reason="log in first")

    def _page(
        self, status: int = 200, message: str | None = None, made: object | None = None
    ) -> None:
        if not self.may_launch():
            self.redirect("/login?next=/tokens")
            return
        # The page holds a secret once: no cache keeps it.
        self.set_header("Cache-Control", "no-store")
        self.page(
            "tokens.html",
            status=status,
            tokens=api_tokens(self).live(self.identity().id),
            made=made,
            message=message,
            days=DAYS,
            default_days=DEFAULT_DAYS,
            now=time.time(),
        )


class RevokeTokenHandler(BaseMixin):
    def post(self, token_id: str) -> None:
        if not self.may_launch():
            raise HTTPError(403)
        if not api_tokens(self).store.revoke_token(self.identity().id, token_id):
            raise HTTPError(404)  # not there, or not theirs
        self.redirect("/tokens", status=303)
