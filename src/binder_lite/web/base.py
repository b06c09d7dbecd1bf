"""What every handler shares: the service's parts, who is asking, pages, errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from tornado.web import RequestHandler

from binder_lite.site.model import Site
from binder_lite.web.auth import Identity, OAuthClient
from binder_lite.web.manager import SessionManager
from binder_lite.web.origins import Origins
from binder_lite.web.policy import RepoPolicy
from binder_lite.web.push import Credential

log = logging.getLogger(__name__)

USER_COOKIE = "binder-lite-user"
COOKIE_DAYS = 30
OAUTH_COOKIE = "binder-lite-oauth"


@dataclass
class Service:
    """The parts handlers use; one per running service."""

    site: Site
    manager: SessionManager
    policy: RepoPolicy
    oauth: OAuthClient | None
    state_dir: Path
    push_credential: Credential | None
    secure_cookies: bool
    tokens: dict[str, str]  # identity id → the provider's access token, in memory only
    origins: Origins  # where the service and its sessions are, for links (origins.py)


@cache
def pages() -> jinja2.Environment:
    # HTML pages get their own environment: it must escape (autoescape), which the
    # Scheme environment must not.  Both are strict about undefined names.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("binder_lite.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class BaseMixin(RequestHandler):
    @property
    def service(self) -> Service:
        return self.application.settings["service"]  # type: ignore[no-any-return]

    @property
    def manager(self) -> SessionManager:
        return self.service.manager

    @property
    def auth_off(self) -> bool:
        return self.service.oauth is None

    def identity(self, create: bool = True) -> Identity:
        """The caller; visitors get an anonymous identity when logins are off (only
        remembered in a cookie when `create`: the proxy just looks)."""
        cached = getattr(self, "_identity", None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        raw = self.get_signed_cookie(USER_COOKIE, max_age_days=COOKIE_DAYS)
        found = Identity.from_cookie(raw) if raw else None
        if found is None:
            found = Identity.new_anonymous()
            if self.auth_off and create:
                self.remember(found)
        self._identity = found
        return found

    def logged_in(self) -> bool:
        return not self.identity().anonymous

    def may_launch(self) -> bool:
        return self.auth_off or self.logged_in()

    def remember(self, identity: Identity) -> None:
        self.set_signed_cookie(
            USER_COOKIE,
            identity.to_cookie(),
            expires_days=COOKIE_DAYS,
            httponly=True,
            samesite="Lax",
            secure=self.service.secure_cookies,
        )
        self._identity = identity

    def page(self, template: str, status: int = 200, **context: Any) -> None:
        site = self.service.site
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; frame-ancestors 'none'",
        )
        self.set_header("X-Content-Type-Options", "nosniff")
        # A window that opens one of the service's pages (a session's page, say) gets
        # no handle on it, and the page none on its opener.
        self.set_header("Cross-Origin-Opener-Policy", "same-origin")
        self.finish(
            pages()
            .get_template(template)
            .render(
                site=site.site,
                binder=site.binder,
                identity=self.identity(),
                auth_off=self.auth_off,
                xsrf=self.xsrf_form_html(),
                xsrf_token=self.xsrf_token.decode(),
                provider=self._provider(),
                **context,
            )
        )

    def _provider(self) -> str:
        oauth = self.service.oauth
        return {"github": "GitHub", "gitlab": "GitLab"}.get(
            str(oauth.auth.provider) if oauth else "", "your account"
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        messages = {
            404: "There is nothing here, or it is not yours.",
            403: "This request was refused.",
            400: "The request was not understood.",
        }
        message = kwargs.get("message") or messages.get(status_code, "Something went wrong.")
        if "exc_info" in kwargs and status_code >= 500:
            message = "Something went wrong on our side; it has been logged."
        self.page("error.html", status=status_code, message=message)
