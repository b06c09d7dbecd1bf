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
off, whoever holds its token (BinderHub's way).  A page opened with `?token=` gets the
token's proof as a cookie for /s/<id>/ alone (`binder-lite-token`: the session and a
digest of its token, signed), so the page's own scripts and Jupyter's redirects work in
a browser that never had the service's cookie; the cookie grants what the token does,
for that session only, and nothing once the session is gone.

Pages of the origins a site lists (`binder.cors_allowed_origins`) may use /build/… and
sessions (CORS, class Cors); they are never credited with the visitor's cookies.

With `binder.session_domain`, each session is its own origin (origins.py) and the
service's cookie, host-only, never reaches it: the service hands the owner over with a
signed, short-lived, single-use `binder-lite-handoff` parameter, which the front here
exchanges for a cookie of the session's origin alone.

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

import hashlib
import hmac
import http
import ipaddress
import json
import posixpath
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from tornado import httputil
from tornado.web import create_signed_value, decode_signed_value

from binder_lite.errors import UsageError
from binder_lite.launch import pluto
from binder_lite.launch.apps import NOTEBOOK_NAME, SHINY_SOCKET
from binder_lite.launch.sandbox import WORK_DIR
from binder_lite.web.auth import Identity
from binder_lite.web.base import COOKIE_DAYS, USER_COOKIE, Service
from binder_lite.web.manager import SessionManager
from binder_lite.web.origins import Origins
from binder_lite.web.store import Record
from binder_lite.web.upstream import Address, Head

# Hop-by-hop headers are the proxy's business, not the upstream's; framing headers
# are written again for the body as it is sent on, and an Expect is answered by the
# front (a 100 Continue from upstream would be one answer too many).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
# Who the client is: only the front says (see the module's docstring).
FORWARDING = frozenset(
    {
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "x-scheme",
    }
)
# Set by the proxy itself.
REPLACED = frozenset({"host", "authorization"})
# What no upstream gets as the client sent it, and what no session gets (one set
# each: a request's every header is looked up in it).
_NOT_FORWARDED = HOP_BY_HOP | FORWARDING
_NOT_TO_SESSIONS = _NOT_FORWARDED | REPLACED

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SESSION_PATH = re.compile(r"/s/([0-9a-f]{16})/")
# At a session's own origin: the cookie naming (session, owner), and the parameter a
# handoff comes in.  Both start with binder-lite: the cookie is never passed on to
# Jupyter, and a session cannot set one (session_response_head).
SESSION_COOKIE = "binder-lite-session"
# On the service's origin: the proof of a session's token, for /s/<id>/ only.
TOKEN_COOKIE = "binder-lite-token"
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
                raise UsageError(
                    f"binder.trusted_proxies: {entry!r} is neither an IP address nor a network"
                ) from None

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
    return record.socket or record.node_address() or record.port


def authorise(
    manager: SessionManager,
    session_id: str,
    identity: str,
    auth_off: bool,
    token: str | None,
    token_proofs: Iterable[str] = (),
) -> Record | None:
    """The running session `session_id` if the caller may use it, else None.
    `token_proofs` are digests of the token (token_digest) a cookie claims."""
    record = manager.running.get(session_id)
    if record is None or upstream_of(record) is None:
        return None
    if identity and record.owner == identity:
        return record
    # Without logins, BinderHub clients hold the token instead of a cookie.
    if not (auth_off and record.token):
        return None
    if token and hmac.compare_digest(token, record.token):
        return record
    digest = token_digest(record.token)
    if any(hmac.compare_digest(proof, digest) for proof in token_proofs):
        return record
    return None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_proofs(head: Head, cookie_secret: str, session_id: str) -> list[str]:
    """The token digests that good `binder-lite-token` cookies claim for `session_id`.
    Every cookie of that name is read: another session's page, on the same origin, can
    add one from JavaScript (it cannot sign one)."""
    proofs = []
    for value in _cookies_named(head, TOKEN_COOKIE):
        decoded = decode_signed_value(cookie_secret, TOKEN_COOKIE, value, max_age_days=COOKIE_DAYS)
        try:
            claimed_session, digest = json.loads(decoded) if decoded else ("", "")
        except ValueError:
            continue
        if claimed_session == session_id and isinstance(digest, str):
            proofs.append(digest)
    return proofs


def _cookies_named(head: Head, name: str) -> list[str]:
    found = []
    for raw in head.all("cookie"):
        for part in raw.split(";"):
            key, _, value = part.strip().partition("=")
            if key == name and value:
                found.append(value)
    return found


def identity_in(head: Head, cookie_secret: str) -> str:
    """The signed-in (or anonymous) identity the request's cookie names, or ""."""
    raw = head.get("cookie")
    if not raw:
        return ""
    value = httputil.parse_cookie(raw).get(USER_COOKIE)
    if not value:
        return ""
    decoded = decode_signed_value(cookie_secret, USER_COOKIE, value, max_age_days=COOKIE_DAYS)
    identity = Identity.from_cookie(decoded) if decoded else None
    return identity.id if identity else ""


def token_in(head: Head) -> str | None:
    header = head.get("authorization") or ""
    if header.lower().startswith("token "):
        return header[6:].strip()
    target = head.start[1]
    # Most targets have no query.  (One that starts with // still goes through
    # urlsplit, which reads a host there, and refuses some.)
    if "?" not in target and not target.startswith("//"):
        return None
    query = urllib.parse.urlsplit(target).query
    values = urllib.parse.parse_qs(query).get("token") if query else None
    return values[0] if values else None


def forwarded(head: Head) -> list[tuple[str, str]]:
    """The request's end-to-end headers: hop-by-hop ones, those the Connection header
    names, and what only the front may say about the client, left out."""
    named = _connection_named(head)
    return [(n, v) for n, v in head.headers if n not in _NOT_FORWARDED and n not in named]


def _connection_named(head: Head) -> frozenset[str]:
    """The headers the request's Connection header names (hop-by-hop, then)."""
    values = head.all("connection")
    if not values:
        return frozenset()
    return frozenset(part.strip().lower() for v in values for part in v.split(","))


def session_headers(
    head: Head, record: Record, upgrade: bool, client: Client
) -> list[tuple[str, str]]:
    """The request's headers as Jupyter gets them (see the module's docstring)."""
    # Jupyter checks Host against the names of this machine, and a websocket's Origin
    # against Host: both name where it listens.
    host = "localhost" if record.socket or record.node else f"127.0.0.1:{record.port}"
    headers = [("Host", host), ("Authorization", f"token {record.token}"), *client.headers()]
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", head.get("upgrade") or "websocket")]
    # forwarded(head), less REPLACED, in one pass.
    named = _connection_named(head)
    for name, value in head.headers:
        if name in _NOT_TO_SESSIONS or name in named:
            continue
        if name == "cookie":
            value = _without_our_cookies(value)
            if not value:
                continue
        elif name == "origin":
            value = f"http://{host}"
        headers.append((name, value))
    return headers


# A session's Shiny app (launch/apps.py) or Pluto (launch/pluto.py): /s/<id>/shiny/…
# and /s/<id>/pluto/…, served from their sockets in the session's run directory, next
# to Jupyter's.
_APP_PATH = re.compile(r"(/s/[0-9a-f]{16}/(shiny|pluto))(/[^?]*)?(?:\?(.*))?", re.DOTALL)
_APP_SOCKETS = {"shiny": SHINY_SOCKET, "pluto": pluto.SOCKET}


def app_route(record: Record, target: str) -> tuple[Address, str] | Reply | None:
    """Where a request for the session's Shiny app or Pluto goes: its socket, and the
    target as it sees it (`/s/<id>/shiny/x?q` is `/x?q` there, the session's token
    taken out); a redirect for `/s/<id>/shiny`; None for what goes to Jupyter.  The
    socket is found next to Jupyter's, never from the request: a path in the target
    (`shiny/../..`) reaches only this session's app, which serves what it likes.
    `/s/<id>/pluto/<notebook>.jl` (a launch's urlpath) is Pluto's page opening the
    notebook of that name at the checkout's root, `/open?path=…`."""
    # Most requests are Jupyter's: the apps' names at their place ("/s/<id>/" is 20
    # characters) are looked for before the whole target is matched.
    if not target.startswith(("shiny", "pluto"), 20) or not record.socket:
        return None
    m = _APP_PATH.fullmatch(target)
    if m is None:
        return None
    prefix, app, path, query = m.groups()
    if not path:
        return Reply(301, "", (("Location", prefix + "/" + (f"?{query}" if query else "")),))
    kept = _without(urllib.parse.parse_qs(query or "", keep_blank_values=True), "token")
    socket = posixpath.join(posixpath.dirname(record.socket), _APP_SOCKETS[app])
    if app == "pluto" and NOTEBOOK_NAME.fullmatch(path[1:]):
        # Pluto answers with a redirect to `edit?id=…`, relative: /s/<id>/pluto/edit.
        return socket, "/open?" + urllib.parse.urlencode({"path": f"{WORK_DIR}{path}"})
    return socket, path + (f"?{kept}" if kept else "")


def app_headers(head: Head, record: Record, upgrade: bool, client: Client) -> list[tuple[str, str]]:
    """The request's headers as the app gets them: Jupyter's, without Jupyter's token."""
    return [
        (n, v) for n, v in session_headers(head, record, upgrade, client) if n != "Authorization"
    ]


def _without_our_cookies(header: str) -> str:
    kept = [c for c in header.split(";") if not c.strip().startswith("binder-lite")]
    return ";".join(kept).strip()


# -- where a request goes, and who may use a session ----------------------------------


@dataclass(frozen=True)
class Reply:
    """An answer the front gives itself (a refusal, or a redirect)."""

    status: int
    text: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, close: bool) -> bytes:
        body = self.text.encode()
        lines = [f"HTTP/1.1 {self.status} {http.HTTPStatus(self.status).phrase}"]
        if self.status != 204:  # which has neither body nor length
            lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
        lines += [
            "Cache-Control: no-store",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# The same answer for "not yours" as for "no such session".
NOT_FOUND = Reply(404, "not found\n")
CROSS_ORIGIN = Reply(403, "a request from another origin was refused\n")


class Gate:
    """Decides, for the front, where a request goes: the application (None), a
    session (its Record), or an answer of the front's own (a Reply)."""

    def __init__(self, service: Service, cookie_secret: str, cors: Cors | None = None) -> None:
        self.service = service
        self.secret = cookie_secret
        self.handoffs = Handoffs(cookie_secret)
        self.cors = cors or Cors(())

    @property
    def origins(self) -> Origins:
        return self.service.origins

    def target(self, head: Head, upgrade: bool) -> Record | Reply | None:
        if is_preflight(head) and self.cors_applies(head):
            # It carries no token: answered here, never passed on.
            return self.cors.preflight(head)
        origins = self.origins
        if origins.session_domain is not None:  # else no Host names a session
            at = origins.session_in_host(head.get("host"))
            if at is not None:
                return self._at_session_origin(head, at, upgrade)
        m = SESSION_PATH.match(head.start[1])
        if m is None:
            return None
        if origins.session_domain is not None:
            return self._to_session_origin(head, m.group(1), upgrade)
        foreign = not self._same_origin(head, None)
        if foreign and self.cors.allowed(head) is None:
            return CROSS_ORIGIN
        return self._in_path(head, m.group(1), foreign, upgrade)

    def cors_applies(self, head: Head) -> bool:
        """Whether `head` goes to a path pages of listed origins may use."""
        path = head.start[1]
        return (
            path.startswith("/build/")
            or SESSION_PATH.match(path) is not None
            or self.origins.session_in_host(head.get("host")) is not None
        )

    def cors_headers(self, head: Head) -> tuple[tuple[str, str], ...]:
        """The CORS headers the answer to `head` gets (none on other paths)."""
        if not self.cors.origins:
            return ()  # as Cors.headers gives, without asking where `head` goes
        return self.cors.headers(head) if self.cors_applies(head) else ()

    def _in_path(self, head: Head, session_id: str, foreign: bool, upgrade: bool) -> Record | Reply:
        """/s/<id>/… on the service's origin.  A listed origin's request (`foreign`) is
        judged by its token alone: the visitor's cookies are not its page's to use."""
        method, target, _ = head.start
        identity = "" if foreign else identity_in(head, self.secret)
        proofs = () if foreign else token_proofs(head, self.secret, session_id)
        record = authorise(
            self.service.manager, session_id, identity, self._auth_off, token_in(head), proofs
        )
        if record is None:
            return NOT_FOUND
        if not foreign and record.owner != identity and _navigation(head, method, upgrade):
            path, query = _split(target)  # only now: most requests are no page's loading
            if "token" in query:
                return self._keep_token(record, path, _without(query, "token"))
        return record

    def _keep_token(self, record: Record, path: str, query: str) -> Reply:
        """A BinderHub link (?token=) opened in a browser: redirect to the same page with
        the token's proof as a cookie for this session's path alone, HttpOnly,
        SameSite=Lax; the token leaves the address bar."""
        value = create_signed_value(
            self.secret, TOKEN_COOKIE, json.dumps([record.id, token_digest(record.token or "")])
        ).decode()
        cookie = f"{TOKEN_COOKIE}={value}; Path=/s/{record.id}/; HttpOnly; SameSite=Lax"
        if self.service.secure_cookies:
            cookie += "; Secure"
        location = path + (f"?{query}" if query else "")
        return Reply(303, "", (("Location", location), ("Set-Cookie", cookie)))

    @property
    def _auth_off(self) -> bool:
        return self.service.oauth is None

    def _same_origin(self, head: Head, session_id: str | None) -> bool:
        """Whether an Origin header, when there is one, names where the request went.
        Jupyter checks this itself, but the proxy must rewrite Origin for it (it
        compares Origin with the Host the proxy rewrote), so the check is made here."""
        origin = head.get("origin")
        if origin is None:
            return True
        netloc = urllib.parse.urlsplit(origin).netloc.lower() if origin != "null" else ""
        return netloc in self.origins.origin_of(head.get("host"), session_id)

    def _at_session_origin(self, head: Head, session_id: str, upgrade: bool) -> Record | Reply:
        method, target, _ = head.start
        path, query = _split(target)
        identity = session_identity(head, self.secret, session_id)
        if HANDOFF in query and method in ("GET", "HEAD") and not upgrade:
            return self._redeem(session_id, path, query, identity)
        if not self._same_origin(head, session_id):
            if self.cors.allowed(head) is None:
                return CROSS_ORIGIN
            # A listed origin's page: its token alone, never the visitor's cookie.
            record = authorise(self.service.manager, session_id, "", self._auth_off, token_in(head))
            return record or NOT_FOUND
        token = token_in(head)
        record = authorise(self.service.manager, session_id, identity, self._auth_off, token)
        if record is None:
            return NOT_FOUND
        if not identity and "token" in query and _navigation(head, method, upgrade):
            # A BinderHub link (?token=) opened in a browser: the token becomes this
            # origin's cookie, and leaves the address bar.
            return self._enter(record, path, _without(query, "token"))
        return record

    def _redeem(
        self, session_id: str, path: str, query: dict[str, list[str]], identity: str
    ) -> Reply:
        claimed = self.handoffs.redeem(query[HANDOFF][0], session_id)
        record = self.service.manager.running.get(session_id)
        if record is not None and identity and claimed is None and record.owner == identity:
            # A used handoff (reloaded, say) from someone who is already in.
            location = path + (f"?{q}" if (q := _without(query, HANDOFF)) else "")
            return Reply(303, "", (("Location", location),))
        if claimed is None or record is None or record.owner != claimed:
            return Reply(
                403,
                "This link to a session has expired or was used already: "
                f"open it again from {self.origins.service}/sessions\n",
            )
        return self._enter(record, path, _without(query, HANDOFF))

    def _enter(self, record: Record, path: str, query: str) -> Reply:
        """Redirect to `path` with a cookie naming (session, owner) for this origin:
        host-only (no Domain), HttpOnly, SameSite=Lax."""
        value = create_signed_value(
            self.secret, SESSION_COOKIE, json.dumps([record.id, record.owner])
        ).decode()
        cookie = f"{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax"
        if self.service.secure_cookies:
            cookie += "; Secure"
        location = path + (f"?{query}" if query else "")
        return Reply(303, "", (("Location", location), ("Set-Cookie", cookie)))

    def _to_session_origin(self, head: Head, session_id: str, upgrade: bool) -> Reply:
        """/s/<id>/… on the service's host, when sessions have origins of their own:
        a browser is sent on (its owner with a fresh handoff: links on the service's
        pages lead here, and a handoff made when a page was drawn would have expired)."""
        method, target, _ = head.start
        if method not in ("GET", "HEAD") or upgrade:
            return NOT_FOUND
        location = self.origins.session_origin(session_id) + target
        record = self.service.manager.running.get(session_id)
        identity = identity_in(head, self.secret)
        if record is not None and identity and record.owner == identity:
            location = with_handoff(location, self.handoffs.issue(session_id, identity))
        return Reply(302, "", (("Location", location),))


class Handoffs:
    """Signed tickets that let a session's owner into the session's origin: bound to
    the session and the identity, valid HANDOFF_SECONDS, and redeemed once."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.redeemed: dict[str, float] = {}  # nonce → when it expires anyway

    def issue(self, session_id: str, identity: str) -> str:
        claim = json.dumps([session_id, identity, secrets.token_urlsafe(12)])
        return create_signed_value(self.secret, HANDOFF, claim).decode()

    def redeem(self, value: str, session_id: str) -> str | None:
        """The identity a handoff names, if it is good for `session_id` and unused."""
        decoded = decode_signed_value(
            self.secret, HANDOFF, value, max_age_days=HANDOFF_SECONDS / 86400
        )
        if decoded is None:
            return None
        try:
            claimed_session, identity, nonce = json.loads(decoded)
        except ValueError:
            return None
        now = time.monotonic()
        self.redeemed = {n: t for n, t in self.redeemed.items() if t > now}
        if claimed_session != session_id or nonce in self.redeemed:
            return None
        self.redeemed[nonce] = now + HANDOFF_SECONDS + 1
        return str(identity)


def with_handoff(url: str, handoff: str) -> str:
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}{HANDOFF}={urllib.parse.quote(handoff, safe='')}"


def session_identity(head: Head, cookie_secret: str, session_id: str) -> str:
    """The identity a session origin's cookie names for `session_id`, or "".  Every
    cookie of that name is tried: a sibling session can add one for the whole domain
    from JavaScript, which must not hide the owner's."""
    for value in _cookies_named(head, SESSION_COOKIE):
        decoded = decode_signed_value(
            cookie_secret, SESSION_COOKIE, value, max_age_days=COOKIE_DAYS
        )
        try:
            claimed_session, identity = json.loads(decoded) if decoded else ("", "")
        except ValueError:
            continue
        if claimed_session == session_id and identity:
            return str(identity)
    return ""


def _split(target: str) -> tuple[str, dict[str, list[str]]]:
    path, _, query = target.partition("?")
    # parse_qs("") is {}, but not for free.
    return path, urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}


def _without(query: dict[str, list[str]], name: str) -> str:
    return urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != name for v in vs])


def _navigation(head: Head, method: str, upgrade: bool) -> bool:
    """A browser loading a page (not a script's API call, which keeps its token)."""
    if method != "GET" or upgrade:
        return False
    dest = head.get("sec-fetch-dest")
    if dest is not None:
        return dest == "document"
    return "text/html" in (head.get("accept") or "")


# -- what a session may answer --------------------------------------------------------


_SESSION_COOKIE_PATH = re.compile(r"/s/[0-9a-f]{16}(?:/.*)?")


def session_response_head(head: Head, cors: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A session's response head as the client gets it: Set-Cookie headers that could
    reach beyond the session are left out.  Jupyter's own cookies (`_xsrf` and its
    `username-…` login cookie) are scoped to its base_url, /s/<id>/, and kept.
    Jupyter's CORS headers go (it echoes the Origin the proxy rewrote, its own
    address): the front's `cors` headers say who may read the answer."""
    if not cors and not _rewritten(head):
        return head.raw
    kept = [
        (n, v)
        for n, v in head.headers
        if not (n == "set-cookie" and not _cookie_stays(v)) and not n.startswith("access-control-")
    ]
    if len(kept) == len(head.headers) and not cors:
        return head.raw
    return _head_bytes(head, [*kept, *cors])


def _rewritten(head: Head) -> bool:
    """Whether session_response_head may leave out any of `head`'s headers: never
    false when it would, and true now and then when it would not."""
    names = head.names()
    # Any name that starts with access-control-, in one search of them all.
    return "set-cookie" in names or "\naccess-control-" in "\n" + "\n".join(names)


def app_response_head(head: Head, cors: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The application's response head, with the front's CORS headers (the only ones)."""
    if not cors:
        return head.raw
    kept = [(n, v) for n, v in head.headers if not n.startswith("access-control-")]
    return _head_bytes(head, [*kept, *cors])


def _head_bytes(head: Head, headers: list[tuple[str, str]]) -> bytes:
    version, status, reason = head.start
    lines = [f"{version} {status} {reason}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- cross-origin use (binder.cors_allowed_origins) ------------------------------------

CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, X-XSRFToken, X-Requested-With"
CORS_MAX_AGE = "600"  # seconds a browser may keep a preflight's answer


def is_preflight(head: Head) -> bool:
    return (
        head.start[0] == "OPTIONS"
        and head.get("origin") is not None
        and head.get("access-control-request-method") is not None
    )


class Cors:
    """The origins whose pages may use /build/… and sessions: a request from one gets
    Access-Control-Allow-Origin naming it, any other origin no CORS header at all.
    Credentials are never allowed (no Access-Control-Allow-Credentials): such a page
    holds the session's token (Authorization or ?token=), and the visitor's cookies
    are not looked at for it (Gate)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def allowed(self, head: Head) -> str | None:
        """The request's Origin if it is listed (compared exactly, as browsers send it)."""
        origin = head.get("origin")
        return origin if origin is not None and origin in self.origins else None

    def headers(self, head: Head) -> tuple[tuple[str, str], ...]:
        if not self.origins:
            return ()
        origin = self.allowed(head)
        vary = ("Vary", "Origin")  # caches must not give one origin's answer to another
        return (vary,) if origin is None else (("Access-Control-Allow-Origin", origin), vary)

    def preflight(self, head: Head) -> Reply:
        if self.allowed(head) is None:
            return Reply(403, "pages of this origin may not use the service\n")
        return Reply(
            204,
            "",
            (
                *self.headers(head),
                ("Access-Control-Allow-Methods", CORS_METHODS),
                ("Access-Control-Allow-Headers", CORS_HEADERS),
                ("Access-Control-Max-Age", CORS_MAX_AGE),
            ),
        )


def _cookie_stays(value: str) -> bool:
    """A cookie named like the service's, set for another Domain, or for a path
    outside /s/<id>/ (Path=/ above all) is dropped."""
    name, *attributes = value.split(";")
    if name.strip().lower().startswith("binder-lite"):
        return False
    for attribute in attributes:
        key, _, val = attribute.strip().partition("=")
        key = key.strip().lower()
        if key == "domain":
            return False
        if key == "path" and not _SESSION_COOKIE_PATH.fullmatch(val.strip()):
            return False
    return True
