"""BinderHub's build tokens: what a page of another origin shows to launch.

A token is a JWT signed by the service (HS256, with a key derived from its cookie
secret), bound to one repository (`aud`, its URL as the provider gives it), to the
origin of the page that may use it (`origin`) and to an hour (`exp`), as BinderHub's
are.  Browsers name a page's origin in the Origin header and scripts cannot change
it, so a token copied to a page elsewhere is refused there; programs send no Origin
and need none (they could send any).

With `binder.cross_origin_launches: signed`, a /build/… request whose Origin is another
origin launches only with a valid token; the service gives tokens to the origins in
`binder.cors_allowed_origins` (GET /build-token/…) and to its own /v2/ page.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

import jwt

from binder_lite.web.policy import RefusedError

ALGORITHM = "HS256"
LIFETIME = 3600  # seconds a token may be used for


class BuildTokenError(RefusedError):
    """A launch's build token is missing, forged, expired, or not for this launch."""


@dataclass(frozen=True)
class BuildTokens:
    cookie_secret: str
    lifetime: int = LIFETIME

    @property
    def _key(self) -> bytes:
        # A key of its own: a token is never a valid signed cookie, nor the reverse.
        return hmac.new(self.cookie_secret.encode(), b"binder-lite build tokens", "sha256").digest()

    def issue(self, repo_url: str, origin: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {"aud": repo_url, "origin": origin, "iat": issued, "exp": issued + self.lifetime}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def check(self, token: str, repo_url: str, origin: str) -> None:
        """Refuse unless `token` is ours, unexpired, for `repo_url` and for `origin`."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=repo_url,
                options={"require": ["aud", "exp", "origin"]},
            )
        except jwt.ExpiredSignatureError:
            raise BuildTokenError("this page's build token has expired; reload the page") from None
        except jwt.InvalidAudienceError:
            raise BuildTokenError("this build token is for another repository") from None
        except jwt.PyJWTError:
            raise BuildTokenError("this build token is not one this service issued") from None
        if not hmac.compare_digest(str(claims["origin"]), origin):
            raise BuildTokenError(f"this build token is not for pages of {origin}")
