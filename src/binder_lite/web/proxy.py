"""The rules for /s/<id>/…: who may reach a session, and what its Jupyter is sent.

Jupyter only ever sees requests from the front (front.py): the proxy adds the
session's token (browsers never need it), rewrites Host and Origin to the loopback
address Jupyter listens on, and keeps binder-lite's own cookies to itself.
"""

from __future__ import annotations

import hmac
import urllib.parse

from tornado import httputil
from tornado.web import decode_signed_value

from binder_lite.web.auth import Identity
from binder_lite.web.base import COOKIE_DAYS, USER_COOKIE
from binder_lite.web.manager import SessionManager
from binder_lite.web.store import Record
from binder_lite.web.upstream import Head

# Hop-by-hop headers are the proxy's business, not the upstream's; framing headers
# are written again for the body as it is sent on.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailers", "transfer-encoding", "upgrade", "content-length",
    "expect",
})  # fmt: skip
# Set by the proxy itself.
REPLACED = frozenset({"host", "authorization", "x-forwarded-proto"})


def authorise(
    manager: SessionManager, session_id: str, identity: str, auth_off: bool, token: str | None
) -> Record | None:
    """The running session `session_id` if the caller may use it, else None."""
    record = manager.running.get(session_id)
    if record is None or record.port is None:
        return None
    if identity and record.owner == identity:
        return record
    # Without logins, BinderHub clients hold the token instead of a cookie.
    if auth_off and record.token and token and hmac.compare_digest(token, record.token):
        return record
    return None


def identity_in(head: Head, cookie_secret: str) -> str:
    """The signed-in (or anonymous) identity the request's cookie names, or ""."""
    raw = head.get("Cookie")
    if not raw:
        return ""
    value = httputil.parse_cookie(raw).get(USER_COOKIE)
    if not value:
        return ""
    decoded = decode_signed_value(cookie_secret, USER_COOKIE, value, max_age_days=COOKIE_DAYS)
    identity = Identity.from_cookie(decoded) if decoded else None
    return identity.id if identity else ""


def token_in(head: Head) -> str | None:
    header = head.get("Authorization") or ""
    if header.lower().startswith("token "):
        return header[6:].strip()
    query = urllib.parse.urlsplit(head.start[1]).query
    values = urllib.parse.parse_qs(query).get("token") if query else None
    return values[0] if values else None


def scheme_of(head: Head) -> str:
    """The scheme the browser used, as a TLS-terminating proxy in front reports it."""
    proto = (head.get("X-Forwarded-Proto") or head.get("X-Scheme") or "").split(",")[0]
    proto = proto.strip().lower()
    return proto if proto in ("http", "https") else "http"


def session_headers(head: Head, record: Record, upgrade: bool) -> list[tuple[str, str]]:
    """The request's headers as Jupyter gets them (see the module's docstring)."""
    local = f"127.0.0.1:{record.port}"
    headers = [("Host", local), ("Authorization", f"token {record.token}"),
               ("X-Forwarded-Proto", scheme_of(head))]  # fmt: skip
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", head.get("Upgrade") or "websocket")]
    for name, value in head.headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in REPLACED:
            continue
        if lowered == "cookie":
            value = _without_our_cookies(value)
            if not value:
                continue
        elif lowered == "origin":
            value = f"http://{local}"
        headers.append((name, value))
    return headers


def _without_our_cookies(header: str) -> str:
    kept = [c for c in header.split(";") if not c.strip().startswith("binder-lite")]
    return ";".join(kept).strip()
