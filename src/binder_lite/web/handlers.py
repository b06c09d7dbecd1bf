"""Pages, BinderHub's launch API, event streams, health and metrics."""

from __future__ import annotations

import asyncio
import json
import time
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from tornado.iostream import StreamClosedError
from tornado.web import HTTPError

from binder_lite.errors import LaunchError
from binder_lite.launch import apps
from binder_lite.launch.session import Event, Phase
from binder_lite.site.model import CrossOriginLaunches
from binder_lite.web.base import OAUTH_COOKIE, BaseMixin
from binder_lite.web.buildtokens import LIFETIME, BuildTokenError, BuildTokens
from binder_lite.web.manager import CapacityError
from binder_lite.web.policy import RefusedError
from binder_lite.web.providers import RepoSpec, UnknownProviderError, parse
from binder_lite.web.proxy import Handoffs, with_handoff
from binder_lite.web.push import Credential, Pushed, PushError, PushSource, push_changes
from binder_lite.web.store import Record
from binder_lite.web.writeback import WriteBack

# BinderHub's phase names, which its clients (and badges' pages) understand.
BINDERHUB_PHASE = {
    Phase.FETCHING: "fetching",
    Phase.RESOLVING: "fetching",
    Phase.BUILDING: "building",
    Phase.STARTING: "launching",
    Phase.READY: "ready",
    Phase.FAILED: "failed",
}


class LandingHandler(BaseMixin):
    def get(self) -> None:
        self.page(
            "index.html", repo=self.get_query_argument("repo", ""), ref="", path="", error=None
        )


class LaunchFormHandler(BaseMixin):
    """POST from the landing page's form (with its XSRF token)."""

    def post(self) -> None:
        repo = self.get_body_argument("repo", "").strip()
        ref = self.get_body_argument("ref", "").strip() or "HEAD"
        path = self.get_body_argument("path", "").strip() or None
        if not self.may_launch():
            self.redirect("/login?next=/")
            return
        try:
            session_id = self._request(repo, ref, path)
        except (RefusedError, LaunchError) as e:
            self.page("index.html", status=400, repo=repo, ref=ref, path=path or "", error=str(e))
            return
        except CapacityError as e:
            self._full(e)
            return
        self.redirect(f"/sessions/{session_id}/progress", status=303)

    def _request(self, repo: str, ref: str, path: str | None) -> str:
        if not repo:
            raise RefusedError("enter the URL of a git repository")
        return request_launch(self, repo, ref, path)

    def _full(self, e: CapacityError) -> None:
        self.set_header("Retry-After", str(e.retry_after))
        self.page("full.html", status=503, message=str(e), retry_after=e.retry_after)


def request_launch(
    handler: BaseMixin, repo: str, ref: str, path: str | None, build_only: bool = False
) -> str:
    """Check `repo` and ask for a session.  Anonymous visitors are also counted by their
    address (the front's, set from the connection): a fresh cookie costs nothing."""
    admitted = handler.service.policy.admit(repo)
    identity = handler.identity()
    client = handler.request.remote_ip if identity.anonymous else None
    return handler.manager.request(
        identity.id, admitted.url, ref, path, client=client, pin=admitted.pin, build_only=build_only
    )


def _raw_spec(handler: BaseMixin, provider: str) -> str:
    """The spec as sent: tornado unescapes path arguments, which would turn an escaped
    repository URL's %2F into slashes that split it apart."""
    path = handler.request.path
    return path[path.index(f"/{provider}/") + len(provider) + 2 :]


def _repo_spec(handler: BaseMixin, provider: str) -> RepoSpec:
    return parse(provider, _raw_spec(handler, provider))


def _open_path(urlpath: str | None, filepath: str | None) -> str | None:
    """BinderHub's filepath (a file), or its urlpath: a file (lab/tree/x.ipynb, tree/x,
    notebooks/x) or a page (lab, shiny/…, pluto/…); one no session serves (rstudio,
    pluto in the local runtime) raises LaunchError, a failed event before anything is
    fetched (apps.from_urlpath)."""
    if filepath:
        return filepath
    return apps.from_urlpath(urlpath)


class V2Handler(BaseMixin):
    """/v2/<provider>/<spec>: BinderHub's launch link, a page that follows the build."""

    def get(self, provider: str, _spec: str) -> None:
        try:
            spec = _repo_spec(self, provider)
            self.service.policy.check(spec.url)
        except UnknownProviderError as e:
            self.page("error.html", status=404, message=str(e))  # BinderHub: no such page
            return
        except RefusedError as e:
            self.page("error.html", status=400, message=str(e))
            return
        # The page's stream says the rest (capacity, a bad ref) as it says it to any
        # BinderHub client.
        # The page's own build token, as BinderHub's page has one: it is this origin's.
        token = _build_tokens(self).issue(spec.url, self.service.origins.service)
        query = "&".join(q for q in (self.request.query, f"build_token={token}") if q)
        events = f"/build/{provider}/{spec.spec}?{query}"
        self.page("progress.html", session=None, events_url=events, repo=spec.url, ref=spec.ref)


class SSEMixin(BaseMixin):
    heartbeat = 15.0  # seconds between heartbeats while nothing else is sent

    def start_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")

    async def send(self, data: dict[str, Any] | None) -> None:
        """One event, or a heartbeat comment when `data` is None."""
        text = ": heartbeat\n\n" if data is None else f"data: {json.dumps(data)}\n\n"
        self.write(text)
        await self.flush()

    async def stream_session(self, record: Record, with_token: bool) -> None:
        self.start_stream()
        try:
            async for event in self.manager.events(record.id, self.heartbeat):
                data = None if event is None else self._event(record.id, event, with_token)
                if event is not None and event.phase is Phase.READY:
                    self.reached_ready()
                await self.send(data)
        except StreamClosedError:
            self.on_connection_close()
            return
        self.finish()

    def reached_ready(self) -> None:
        """Called as the ready event goes out."""

    def ready_fields(self, record: Record) -> dict[str, Any]:
        """What a ready event says besides the session's address."""
        return {}

    def _event(self, session_id: str, event: Event, with_token: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "phase": BINDERHUB_PHASE[event.phase],
            "stage": str(event.phase),
            "message": event.message + "\n",
        }
        if event.phase is Phase.READY:
            record = self.manager.store.get(session_id)
            assert record is not None
            live = self.manager.live.get(session_id)
            if live is not None and live.build_only:  # ready, and nothing started
                return self.ready_fields(record) | data | _built(record)
            # From the site's settings, not the request's Host header (origins.py).
            origins = self.service.origins
            base = origins.session_url(session_id)
            view = origins.session_url(session_id, record.view or "")
            if origins.session_domain is not None:
                # The owner is sent to the session's own origin at once (launch.js), so a
                # handoff made now is used within its minute; `url` stays bare for
                # BinderHub clients, which add ?token= to it.
                secret = self.application.settings["cookie_secret"]
                view = with_handoff(view, Handoffs(secret).issue(session_id, record.owner))
            data.update(self.ready_fields(record))
            data.update(url=base, view=view, message=f"server running at {base}\n")
            if with_token:
                data["token"] = record.token
        return data


def _built(record: Record) -> dict[str, Any]:
    """BinderHub's answer to build_only once the image is there: ready, with the image's
    name and no server; here the environment's name is the commit it was made from."""
    return {
        "imageName": record.commit_sha,
        "message": "Done! The environment is ready; build_only: no server was started\n",
    }


class BuildHandler(SSEMixin):
    """/build/<provider>/<spec>: start a launch and stream its events (BinderHub's API).

    Every refusal is a failed event on a 200 stream, as BinderHub sends it: its clients
    (an EventSource, @jupyterhub/binderhub-client) read no body that is not a 200, and
    retry some statuses, which would launch again.  A stream closed before ready stops
    its launch: whoever asked for it has gone and has no other way to reach it."""

    session_id: str | None = None
    repo_spec: RepoSpec | None = None
    ready: bool = False
    # The front notices a client that left only when it writes to it (the second write
    # after): beats this often bound how long an abandoned launch goes on.
    heartbeat = 5.0

    async def get(self, provider: str, _spec: str) -> None:
        try:
            self.session_id = self._request(provider)
        except (RefusedError, LaunchError, CapacityError) as e:
            # A capacity refusal has no Retry-After here: BinderHub's stream has none.
            self.start_stream()
            await self.send({"phase": "failed", "message": f"{e}\n"})
            self.finish()
            return
        record = self.manager.store.get(self.session_id)
        assert record is not None
        # The token goes to whoever started the launch, as BinderHub does.
        await self.stream_session(record, with_token=True)

    def _request(self, provider: str) -> str:
        if not self.may_launch():
            raise RefusedError("this site launches for people who are logged in; log in first")
        self.repo_spec = spec = _repo_spec(self, provider)
        self._check_build_token(spec)
        path = _open_path(
            self.get_query_argument("urlpath", None), self.get_query_argument("filepath", None)
        )
        build_only = self.get_query_argument("build_only", "").lower() == "true"
        return request_launch(self, spec.url, spec.ref, path, build_only=build_only)

    def _check_build_token(self, spec: RepoSpec) -> None:
        """A token sent is checked against the page's origin (its Origin header, this
        service's when there is none); without one, a page of another origin launches
        only where the site does not require them."""
        token = self.get_query_argument("build_token", None)
        origin = foreign_origin(self)
        if token is None:
            if (
                origin is not None
                and self.service.site.binder.cross_origin_launches is CrossOriginLaunches.SIGNED
            ):
                raise BuildTokenError(
                    f"pages of {origin} need a build token from this service to launch here"
                )
            return
        _build_tokens(self).check(token, spec.url, origin or self.service.origins.service)

    def reached_ready(self) -> None:
        self.ready = True

    def ready_fields(self, record: Record) -> dict[str, Any]:
        """BinderHub's optional fields of a ready event; the image is the commit the
        environment was made from (its provenance says the rest)."""
        spec, commit = self.repo_spec, record.commit_sha or ""
        assert spec is not None
        return {
            "image": commit,
            "repo_url": spec.url,
            "binder_ref_url": spec.ref_url(commit),
            "binder_launch_host": self.service.origins.service + "/",
            "binder_request": spec.request(),
            "binder_persistent_request": spec.persistent_request(commit),
        }

    def on_connection_close(self) -> None:
        """The client went away before ready: stop its launch (once)."""
        super().on_connection_close()
        session_id, self.session_id = self.session_id, None
        if session_id is None or self.ready:
            return
        reason = "its launch's event stream was closed before the server was ready"
        asyncio.get_running_loop().run_in_executor(None, self.manager.stop, session_id, reason)


def foreign_origin(handler: BaseMixin) -> str | None:
    """The Origin of a page elsewhere that sent this request; None for a request from
    the service's own pages (browsers send no Origin on a same-origin GET) or from a
    program."""
    origin = handler.request.headers.get("Origin")
    if origin is None:
        return None
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    same = handler.service.origins.origin_of(handler.request.headers.get("Host"), None)
    return None if netloc in same else origin


def _build_tokens(handler: BaseMixin) -> BuildTokens:
    return BuildTokens(handler.application.settings["cookie_secret"])


class BuildTokenHandler(BaseMixin):
    """/build-token/<provider>/<spec>?origin=O: a build token with which pages of O, one
    of the origins the site lists, may launch this repository for an hour.  A page
    may ask for itself (its Origin is O, and it may read the answer), and a site's
    server for its pages (no Origin)."""

    def get(self, provider: str, _spec: str) -> None:
        origin = self.get_query_argument("origin", "")
        sent = self.request.headers.get("Origin")
        listed = self.service.site.binder.cors_allowed_origins
        if sent in listed:
            self.set_header("Access-Control-Allow-Origin", str(sent))
        self.set_header("Vary", "Origin")
        if origin not in listed:
            self._refuse(403, f"this site gives no build tokens to pages of {origin or '?'}")
            return
        if sent is not None and sent != origin:
            self._refuse(403, f"a page of {sent} may ask for build tokens for itself only")
            return
        try:
            spec = _repo_spec(self, provider)
            self.service.policy.check(spec.url)
        except UnknownProviderError as e:
            self._refuse(404, str(e))
            return
        except RefusedError as e:
            self._refuse(403, str(e))
            return
        token = _build_tokens(self).issue(spec.url, origin)
        self.set_header("Cache-Control", "no-store")
        self.finish(
            {"token": token, "origin": origin, "repo_url": spec.url, "expires_in": LIFETIME}
        )

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.finish({"message": message})


class OwnedMixin(BaseMixin):
    def owned(self, session_id: str) -> Record:
        record = self.manager.store.get(session_id)
        if record is None or record.owner != self.identity().id:
            raise HTTPError(404)  # the same answer for "not there" and "not yours"
        return record

    def session_page(
        self,
        record: Record,
        pushed: Pushed | None = None,
        message: str | None = None,
        status: int = 200,
        write_back: WriteBack | None = None,
    ) -> None:
        """A session's page: its provenance, after a push what went or why not, and
        before one the update to the environment file it offers."""
        self.page(
            "session.html",
            status=status,
            session=record,
            provenance=record.provenance_dict(),
            pushed=pushed,
            message=message,
            write_back=write_back,
        )


class ProgressHandler(OwnedMixin):
    def get(self, session_id: str) -> None:
        record = self.owned(session_id)
        self.page(
            "progress.html",
            session=record,
            events_url=f"/sessions/{record.id}/events",
            repo=record.repository,
            ref=record.ref,
        )


class EventsHandler(SSEMixin, OwnedMixin):
    async def get(self, session_id: str) -> None:
        record = self.owned(session_id)
        await self.stream_session(record, with_token=False)


class SessionsHandler(OwnedMixin):
    def get(self) -> None:
        records = self.manager.store.owned_by(self.identity().id)
        self.page("sessions.html", sessions=records, now=time.time(), message=None)


class SessionHandler(OwnedMixin):
    def get(self, session_id: str) -> None:
        self.session_page(self.owned(session_id))


class StopHandler(OwnedMixin):
    async def post(self, session_id: str) -> None:
        record = self.owned(session_id)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.manager.stop, record.id)
        self.redirect("/sessions", status=303)


class PushHandler(OwnedMixin):
    async def post(self, session_id: str) -> None:
        record = self.owned(session_id)
        if record.status != "running" or not record.work_dir or not record.commit_sha:
            raise HTTPError(409)
        identity = self.identity()
        token = self.service.tokens.get(identity.id)
        oauth = self.service.oauth
        login = (
            Credential.for_provider(identity.provider, token, oauth.issuer)
            if token and oauth
            else None
        )
        # A login's token goes to its provider's host only, never a stranger's forge.
        credential = (
            login if login and login.fits(record.repository) else self.service.push_credential
        )
        # Only the record's word counts for where the push goes and what it starts from.
        source = PushSource(record.id, Path(record.work_dir), record.repository, record.commit_sha)
        service = self.service
        # No answer yet: offer the write-back; "none" declines it; else its digest.
        answer = self.get_body_argument("write_back", None)
        loop = asyncio.get_running_loop()
        try:
            pushed = await loop.run_in_executor(
                None,
                lambda: push_changes(
                    source,
                    (identity.name, identity.email),
                    credential,
                    service.state_dir,
                    max_size=service.site.binder.max_repo_size,
                    plain_http=service.policy.allow_local,
                    offer=answer is None,
                    write_back=answer if answer and answer != "none" else None,
                ),
            )
        except PushError as e:
            self.session_page(record, message=str(e), status=409)
            return
        if isinstance(pushed, WriteBack):
            self.session_page(record, write_back=pushed)
            return
        self.session_page(record, pushed=pushed)


class HealthHandler(BaseMixin):
    def get(self) -> None:
        active = self.manager.store.with_status("pending", "running")
        self.set_header("Content-Type", "application/json")
        self.finish(
            {"status": "ok", "sessions": len(active), "capacity": self.manager.limits.max_sessions}
        )


class MetricsHandler(BaseMixin):
    def get(self) -> None:
        store = self.manager.store
        counters = store.counters()
        running = len(store.with_status("running"))
        pending = len(store.with_status("pending"))
        lines = [
            "# HELP binder_lite_sessions Sessions by state.",
            "# TYPE binder_lite_sessions gauge",
            f'binder_lite_sessions{{state="running"}} {running}',
            f'binder_lite_sessions{{state="pending"}} {pending}',
            "# HELP binder_lite_session_capacity Sessions allowed at once.",
            "# TYPE binder_lite_session_capacity gauge",
            f"binder_lite_session_capacity {self.manager.limits.max_sessions}",
            "# HELP binder_lite_launches_total Launches, by result.",
            "# TYPE binder_lite_launches_total counter",
        ]
        for result in ("requested", "ready", "failed"):
            value = counters.get(f"launches_{result}", 0)
            lines.append(f'binder_lite_launches_total{{result="{result}"}} {value:g}')
        lines += [
            "# HELP binder_lite_launch_seconds Time from request to ready.",
            "# TYPE binder_lite_launch_seconds summary",
            f"binder_lite_launch_seconds_sum {counters.get('launch_seconds_sum', 0):g}",
            f"binder_lite_launch_seconds_count {counters.get('launches_ready', 0):g}",
            "# HELP binder_lite_sessions_culled_total Sessions stopped for idleness or age.",
            "# TYPE binder_lite_sessions_culled_total counter",
            f"binder_lite_sessions_culled_total {counters.get('sessions_culled', 0):g}",
        ]
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish("\n".join(lines) + "\n")


class BadgeHandler(BaseMixin):
    """/badge.svg: a "launch | binder" badge in the site's colour."""

    def get(self) -> None:
        site = self.service.site.site
        label = escape(self.get_query_argument("label", "launch")[:40])
        text = escape(site.name[:40])
        left, right = 7 * len(label) + 12, 7 * len(text) + 12
        color = site.primary_color
        svg = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + right}" height="20" '
            f'role="img" aria-label="{label}: {text}"><title>{label}: {text}</title>'
            f'<rect width="{left}" height="20" fill="#555"/>'
            f'<rect x="{left}" width="{right}" height="20" fill="{color}"/>'
            '<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
            f'<text x="6" y="14">{label}</text><text x="{left + 6}" y="14">{text}</text></g></svg>'
        )
        self.set_header("Content-Type", "image/svg+xml")
        self.set_header("Cache-Control", "max-age=3600")
        self.finish(svg)


class ThemeHandler(BaseMixin):
    """The site's colour, as CSS (the pages allow no inline styles)."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/css; charset=utf-8")
        self.finish(f":root {{ --primary: {self.service.site.site.primary_color}; }}\n")


class LogoHandler(BaseMixin):
    def get(self) -> None:
        logo = self.service.site.site.logo
        if logo is None:
            raise HTTPError(404)
        types = {
            ".svg": "image/svg+xml",
            ".png": "image/png",
            ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg",
            ".gif": "image/gif",
            ".webp": "image/webp",
        }
        self.set_header("Content-Type", types.get(logo.suffix.lower(), "application/octet-stream"))
        self.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.finish(logo.read_bytes())


class LoginHandler(BaseMixin):
    async def get(self) -> None:
        from binder_lite.web.auth import AuthError

        oauth = self.service.oauth
        if oauth is None:
            self.redirect("/")
            return
        redirect_uri = _redirect_uri(self)
        if redirect_uri is None:
            self.page("error.html", status=503, message=_NO_PUBLIC_URL)
            return
        try:
            url, remembered = await oauth.authorize_url(redirect_uri)
        except AuthError as e:  # discovery failed: the provider's fault, or its setting's
            self.page("error.html", status=502, message=f"Logins are not available: {e}.")
            return
        remembered["next"] = _local_path(self.get_query_argument("next", "/"))
        self.set_signed_cookie(
            OAUTH_COOKIE,
            json.dumps(remembered),
            expires_days=1 / 96,
            httponly=True,
            samesite="Lax",
            secure=self.service.secure_cookies,
        )
        self.redirect(url)


class CallbackHandler(BaseMixin):
    async def get(self) -> None:
        from binder_lite.web.auth import AuthError

        oauth = self.service.oauth
        raw = self.get_signed_cookie(OAUTH_COOKIE, max_age_days=1)
        self.clear_cookie(OAUTH_COOKIE)
        if oauth is None or raw is None:
            self.page("error.html", status=400, message="That login has expired; log in again.")
            return
        remembered = json.loads(raw)
        if error := self.get_query_argument("error", None):
            self.page("error.html", status=400, message=f"The login was refused ({error}).")
            return
        redirect_uri = _redirect_uri(self)
        if redirect_uri is None:
            self.page("error.html", status=503, message=_NO_PUBLIC_URL)
            return
        try:
            identity, token = await oauth.complete(
                self.get_query_argument("code", ""),
                self.get_query_argument("state", ""),
                remembered,
                redirect_uri,
            )
        except AuthError as e:
            self.page("error.html", status=400, message=f"The login was refused: {e}.")
            return
        self.service.tokens[identity.id] = token
        self.remember(identity)
        self.redirect(_local_path(remembered.get("next", "/")))


_NO_PUBLIC_URL = "Logins are not set up on this site: binder.public_url is missing."


def _redirect_uri(handler: BaseMixin) -> str | None:
    """Where the provider sends the browser back: from the site's public URL (which
    `serve` fills in for a loopback-only service), never from the request's Host header,
    which whoever sends the request chooses."""
    from binder_lite.web.auth import callback_url

    public_url = handler.service.site.binder.public_url
    return callback_url(public_url) if public_url else None


class LogoutHandler(BaseMixin):
    def post(self) -> None:
        self.service.tokens.pop(self.identity().id, None)
        self.clear_cookie("binder-lite-user")
        self.redirect("/", status=303)


def _local_path(target: str) -> str:
    """Only paths on this site: no open redirects after login."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return quote(target, safe="/?=&-_.~%")
