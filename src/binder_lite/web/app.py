"""`binder-lite serve`: build the tornado application and run it."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from ssl import SSLContext

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from binder_lite.errors import BinderLiteError
from binder_lite.launch.session import Isolation
from binder_lite.site.model import Runtime, Site
from binder_lite.web import handlers as h
from binder_lite.web.api import API_ROUTES
from binder_lite.web.auth import OAuthClient
from binder_lite.web.base import Service
from binder_lite.web.front import Front
from binder_lite.web.manager import Limits, SessionManager
from binder_lite.web.origins import Origins
from binder_lite.web.policy import RepoPolicy
from binder_lite.web.push import Credential
from binder_lite.web.store import Store
from binder_lite.web.tls import Redirector, TlsFiles, server_context
from binder_lite.web.tls import reload as reload_tls
from binder_lite.web.tokens import ApiTokens, RevokeTokenHandler, TokensHandler
from binder_lite.web.upstream import MAX_BODY

log = logging.getLogger("binder_lite.web")

SESSION_ID = r"([0-9a-f]{16})"


@dataclass(frozen=True)
class ServeOptions:
    port: int
    address: str
    runtime: Runtime
    state_dir: Path
    allow_local_repos: bool
    cull_interval: float
    secure_cookies: bool
    sandboxed: bool = True  # False: `serve --no-sandbox`, development only


def routes() -> list[tuple[str, type[tornado.web.RequestHandler]] | tuple[str, type, dict]]:  # type: ignore[type-arg]
    static = Path(__file__).parent / "static"
    return [
        (r"/", h.LandingHandler),
        (r"/launch", h.LaunchFormHandler),
        # Any prefix: an unknown one is refused in the answer BinderHub gives it.
        (r"/v2/([^/]+)/(.+)", h.V2Handler),
        (r"/build/([^/]+)/(.+)", h.BuildHandler),
        (r"/build-token/([^/]+)/(.+)", h.BuildTokenHandler),
        (r"/sessions", h.SessionsHandler),
        (rf"/sessions/{SESSION_ID}", h.SessionHandler),
        (rf"/sessions/{SESSION_ID}/progress", h.ProgressHandler),
        (rf"/sessions/{SESSION_ID}/events", h.EventsHandler),
        (rf"/sessions/{SESSION_ID}/stop", h.StopHandler),
        (rf"/sessions/{SESSION_ID}/push", h.PushHandler),
        (r"/health", h.HealthHandler),
        (r"/metrics", h.MetricsHandler),
        (r"/badge\.svg", h.BadgeHandler),
        (r"/logo", h.LogoHandler),
        (r"/theme\.css", h.ThemeHandler),
        (r"/login", h.LoginHandler),
        (r"/oauth/callback", h.CallbackHandler),
        (r"/logout", h.LogoutHandler),
        (r"/tokens", TokensHandler),
        (r"/tokens/([0-9a-f]{12})/revoke", RevokeTokenHandler),
        *API_ROUTES,
        (r"/static/(.*)", tornado.web.StaticFileHandler, {"path": str(static)}),
    ]


def cookie_secret(state_dir: Path) -> str:
    """A secret kept in the state directory (0600), made on first start."""
    path = state_dir / "cookie-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Query strings can hold Jupyter tokens: the access log shows paths only.  Proxied
    # requests never get here (front.py): a notebook makes too many to log.
    request = handler.request
    log.info(
        "%d %s %s %.1fms",
        handler.get_status(),
        request.method,
        request.path,
        1000 * request.request_time(),
    )


def make_app(site: Site, options: ServeOptions) -> tuple[tornado.web.Application, Service]:
    # Sessions' tokens, the cookie secret and credentials live here: the service only.
    options.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    options.state_dir.chmod(0o700)
    binder = site.binder
    store = Store(options.state_dir / "sessions.sqlite")
    limits = Limits(
        binder.max_sessions,
        binder.max_sessions_per_user,
        binder.idle_timeout,
        binder.max_age,
        options.cull_interval,
        max_repo_size=binder.max_repo_size,
    )
    isolation = Isolation(
        sandboxed=options.sandboxed,
        network=binder.session_network,
        limits=binder.session_limits,
        forward=False,
    )
    manager = SessionManager(
        store, options.state_dir, options.runtime, limits, isolation, binder.slurm
    )
    auth = binder.auth
    oauth = (
        OAuthClient(auth, Path(auth.client_secret_file))
        if auth.client_secret_file and str(auth.provider) != "none"
        else None
    )
    push = (
        Credential.from_file(Path(binder.push_credential_file))
        if binder.push_credential_file
        else None
    )
    service = Service(
        site=site,
        manager=manager,
        policy=RepoPolicy(binder.allowed_repos, options.allow_local_repos),
        oauth=oauth,
        state_dir=options.state_dir,
        push_credential=push,
        secure_cookies=_secure_cookies(site, options),
        tokens={},
        origins=Origins.for_service(binder, options.address, options.port),
    )
    admin = Path(binder.api_token_file) if binder.api_token_file else None
    app = tornado.web.Application(
        routes(),
        service=service,
        api_tokens=ApiTokens(store, ApiTokens.admin_from_file(admin) if admin else None),
        cookie_secret=cookie_secret(options.state_dir),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={
            "httponly": True,
            "samesite": "Strict",
            "secure": _secure_cookies(site, options),
        },
        log_function=_log_request,
    )
    return app, service


def _secure_cookies(site: Site, options: ServeOptions) -> bool:
    # Over HTTPS every cookie is Secure: the login's, the session token's, XSRF.
    return options.secure_cookies or TlsFiles.of(site.binder) is not None


async def _listen(
    what: str, address: str, port: int, start: Callable[[], Awaitable[asyncio.Server]]
) -> asyncio.Server:
    try:
        return await start()
    except OSError as e:
        hint = " (ports below 1024 need privileges)" if port < 1024 else ""
        raise BinderLiteError(
            f"cannot listen for {what} on {address or '*'}:{port}: {e.strerror}{hint}"
        ) from None


async def _listen_front(
    site: Site, options: ServeOptions, front: Front, tls: tuple[TlsFiles, SSLContext] | None
) -> list[asyncio.Server]:
    """The front's sockets: binder.port; with TLS, HTTPS on binder.tls.port and a
    redirect to binder.public_url on binder.port.  SIGHUP reads the TLS files again
    (tls.reload)."""
    address = options.address
    if tls is None:
        plain = partial(front.listen, address, options.port)
        return [await _listen("HTTP", address, options.port, plain)]
    files, context = tls
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reload_tls, context, files)
    port = site.binder.tls.port
    secure = partial(front.listen, address, port, context)
    servers = [await _listen("HTTPS", address, port, secure)]
    assert site.binder.public_url is not None  # the validator requires it with TLS
    redirect = Redirector(site.binder.public_url).handle
    plain = partial(asyncio.start_server, redirect, address or None, options.port)
    servers.append(await _listen("HTTP", address, options.port, plain))
    return servers


async def serve(site: Site, options: ServeOptions) -> None:
    """Run until SIGTERM or SIGINT; then stop every session."""
    files = TlsFiles.of(site.binder)
    # A certificate or key that cannot be used stops the service (TlsError) here,
    # before anything starts.
    tls = (files, server_context(files)) if files is not None else None
    app, service = make_app(site, options)
    await service.manager.start()
    # The application answers the front only (front.py), on a loopback port of its own.
    # xheaders: the front drops every X-Forwarded-*/X-Real-Ip/X-Scheme a client sends
    # and sets X-Forwarded-For and -Proto itself (proxy.py), so what tornado reads is
    # the front's word: the client's address, and its scheme at a trusted proxy.
    inner = HTTPServer(app, xheaders=True, max_body_size=MAX_BODY)
    sockets = bind_sockets(0, "127.0.0.1")
    inner.add_sockets(sockets)
    front = Front(
        service,
        app.settings["cookie_secret"],
        sockets[0].getsockname()[1],
        site.binder.trusted_proxies,
        site.binder.cors_allowed_origins,
    )
    servers = await _listen_front(site, options, front, tls)
    log.warning(
        "binder-lite serving %r on %s://%s:%d/ (runtime %s, state %s)",
        site.site.name,
        "https" if tls else "http",
        options.address,
        site.binder.tls.port if tls else options.port,
        options.runtime,
        options.state_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    front.close_clients()
    inner.stop()
    await service.manager.shutdown()
    service.manager.store.close()
