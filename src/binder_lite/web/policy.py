"""Which repository URLs the service launches, and which it refuses."""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from binder_lite.errors import BinderLiteError


class RefusedError(BinderLiteError):
    """A request the service will not act on; the message is safe to show."""

    exit_code = 2


@dataclass(frozen=True)
class RepoPolicy:
    allowed: tuple[str, ...]  # fnmatch patterns over the whole URL
    allow_local: bool = False  # development: file:// and loopback/private hosts

    def check(self, url: str) -> str:
        """Return `url` if it may be launched; raise `RefusedError` saying why not."""
        if any(c in url for c in "\r\n\t\x00 ") or len(url) > 2048:
            raise RefusedError("the repository URL contains characters URLs cannot have")
        parsed = urlparse(url)
        segments = parsed.path.split("/")
        if "." in segments or ".." in segments or "%2e" in url.lower():
            # git and curl resolve dot segments: a pattern check must see the final path.
            raise RefusedError("repository URLs may not contain . or .. path segments")
        if parsed.query or parsed.fragment:
            raise RefusedError("repository URLs may not have a query or fragment")
        if parsed.scheme == "file" or parsed.scheme == "":
            if not self.allow_local:
                raise RefusedError("local repositories (file://) are not allowed here")
            return url
        schemes = ("https", "git", "http") if self.allow_local else ("https", "git")
        if parsed.scheme not in schemes:
            raise RefusedError(f"only {' and '.join(s + '://' for s in schemes)} URLs are allowed")
        if not parsed.hostname:
            raise RefusedError("the repository URL has no host")
        if parsed.username or parsed.password:
            raise RefusedError("credentials in repository URLs are not accepted")
        if not self.allow_local:
            if not any(fnmatch.fnmatchcase(url, p) for p in self.allowed):
                raise RefusedError("this repository is not among the ones this site allows")
            self._check_address(parsed.hostname)
        return url

    @staticmethod
    def _check_address(host: str) -> None:
        """Refuse hosts that resolve to this machine or its private networks (SSRF)."""
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError):
            raise RefusedError(f"cannot resolve the host {host!r}") from None
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global or address.is_multicast:
                raise RefusedError(f"{host!r} resolves to a local or private address")
