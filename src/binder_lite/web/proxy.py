"""The rules for /s/<id>/…, and for what the servers behind the front are told.

Jupyter only ever sees requests from the front (front.py): the proxy adds the
session's token (browsers never need it), rewrites Host and Origin to the address
Jupyter listens on, and keeps binder-lite's own cookies to itself.

Who the client is (its address, and whether it spoke https to a proxy in front) is
the front's to say: X-Forwarded-*, X-Real-Ip, X-Scheme and Forwarded from a client
are dropped, and the front sets X-Forwarded-For and X-Forwarded-Proto itself,
believing what a peer says only when the peer is one of the site's trusted proxies
(`binder.trusted_proxies`).

Who may use a session: its owner (the service's cookie names them), or, with logins
off, whoever holds its token (BinderHub's way).  With `binder.session_domain`, each
session is its own origin (origins.py) and the service's cookie, host-only, never
reaches it: the service hands the owner over with a signed, short-lived, single-use
`binder-lite-handoff` parameter, which the front here exchanges for a cookie of the
session's origin alone.

What serving sessions on the service's own origin (no session_domain) still allows:
a session's code can answer its own /s/<id>/ requests with any page (it owns the
server behind its socket), and a page there is same-origin with the service.  If
another visitor opens it, its scripts can read that visitor's service pages
(/sessions, provenance), use their other sessions through /s/<other>/ (the visitor's
cookie is sent with same-origin requests), and set cookies for the whole host from
JavaScript.  Stripping Set-Cookie headers (session_response_head), the Origin check,
COOP and frame-ancestors on the service's pages do not stop scripts running in the
service's origin.  Only a separate origin per session does: anyone who opens
sessions started by others needs `binder.session_domain`.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from tornado import httputil
from tornado.web import create_signed_value, decode_signed_value

from binder_lite.errors import UsageError
from binder_lite.web.auth import Identity
from binder_lite.web.base import COOKIE_DAYS, USER_COOKIE, Service
from binder_lite.web.manager import SessionManager
from binder_lite.web.origins import Origins
from binder_lite.web.store import Record
from binder_lite.web.upstream import Address, Head

# Hop-by-hop headers are the proxy's business, not the upstream's; framing headers
# are written again for the body as it is sent on, and an Expect is answered by the
# front (a 100 Continue from upstream would be one answer too many).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailers", "transfer-encoding", "upgrade", "content-length",
    "expect",
})  # fmt: skip
# Who the client is: only the front says (see the module's docstring).
FORWARDING = frozenset({
    "forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    "x-forwarded-port", "x-forwarded-prefix", "x-real-ip", "x-scheme",
})  # fmt: skip
# Set by the proxy itself.
REPLACED = frozenset({"host", "authorization"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SESSION_PATH = re.compile(r"/s/([0-9a-f]{16})/")
# At a session's own origin: the cookie naming (session, owner), and the parameter a
# handoff comes in.  Both start with binder-lite: the cookie is never passed on to
# Jupyter, and a session cannot set one (session_response_head).
SESSION_COOKIE = "binder-lite-session"
HANDOFF = "binder-lite-handoff"
HANDOFF_SECONDS = 60


@dataclass(frozen=True)
class Client:
    """The client behind a request, as the front tells the servers behind it."""

    address: str
    scheme: str  # "http" or "https"

    def headers(self) -> list[tuple[str, str]]:
        return [("X-Forwarded-For", self.address), ("X-Forwarded-Proto", self.scheme)]


class TrustedProxies:
    """The site's proxies (addresses or networks) whose X-Forwarded-For and
    X-Forwarded-Proto are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise UsageError(f"binder.trusted_proxies: {entry!r} is neither an IP address "
                                 "nor a network") from None  # fmt: skip

    def trusts(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def trusts_peer(self, peer: str) -> bool:
        address = _ip(peer) if self.networks else None
        return address is not None and self.trusts(address)

    def client(self, head: Head, peer: str) -> Client:
        """The client behind a trusted proxy `peer`: X-Forwarded-For's hops are
        followed from the right while they are trusted proxies too."""
        address = _ip(peer)
        assert address is not None
        hops = [hop.strip() for value in head.all("x-forwarded-for") for hop in value.split(",")]
        for hop in reversed(hops):
            named = _ip(hop)
            if named is None:
                break
            address = named
            if not self.trusts(named):
                break
        proto = [p.strip().lower() for v in head.all("x-forwarded-proto") for p in v.split(",")]
        scheme = proto[-1] if proto and proto[-1] in ("http", "https") else "http"
        return Client(str(address), scheme)


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def upstream_of(record: Record) -> Address | None:
    """Where a session's Jupyter listens: its Unix socket, else its port."""
    return record.socket or record.port


def authorise(
    manager: SessionManager, session_id: str, identity: str, auth_off: bool, token: str | None
) -> Record | None:
    """The running session `session_id` if the caller may use it, else None."""
    record = manager.running.get(session_id)
    if record is None or upstream_of(record) is None:
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


def forwarded(head: Head) -> list[tuple[str, str]]:
    """The request's end-to-end headers: hop-by-hop ones, those the Connection header
    names, and what only the front may say about the client, left out."""
    named = {part.strip().lower() for v in head.all("connection") for part in v.split(",")}
    return [(n, v) for n, v in head.headers
            if n not in HOP_BY_HOP and n not in FORWARDING and n not in named]  # fmt: skip


def session_headers(
    head: Head, record: Record, upgrade: bool, client: Client
) -> list[tuple[str, str]]:
    """The request's headers as Jupyter gets them (see the module's docstring)."""
    # Jupyter checks Host against the names of this machine, and a websocket's Origin
    # against Host: both name where it listens.
    host = "localhost" if record.socket else f"127.0.0.1:{record.port}"
    headers = [("Host", host), ("Authorization", f"token {record.token}"), *client.headers()]
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", head.get("Upgrade") or "websocket")]
    for name, value in forwarded(head):
        if name in REPLACED:
            continue
        if name == "cookie":
            value = _without_our_cookies(value)
            if not value:
                continue
        elif name == "origin":
            value = f"http://{host}"
        headers.append((name, value))
    return headers


def _without_our_cookies(header: str) -> str:
    kept = [c for c in header.split(";") if not c.strip().startswith("binder-lite")]
    return ";".join(kept).strip()
