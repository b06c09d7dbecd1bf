"""Where the service and its sessions are, as browsers are sent there.

Every URL given to a browser or a BinderHub client is built from the site's settings:
`binder.public_url` when set, else the address and port `serve` listens on, never
from a request's Host header (which whoever sends the request chooses).

With `binder.session_domain`, each session is its own origin: `<id>.<domain>`, with
the service's scheme and port.  The path stays `/s/<id>/…` there, so Jupyter's
base_url, its cookies' paths and every link it makes are the same in both layouts,
and one rule (proxy.py) authorises a request wherever it arrives.
"""

from __future__ import annotations

import logging
import re
import socket
import urllib.parse
from dataclasses import dataclass

from binder_lite.site.model import Binder

log = logging.getLogger(__name__)

WILDCARD = frozenset({"", "0.0.0.0", "::"})
_SESSION_LABEL = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Origins:
    scheme: str  # "http" or "https"
    host: str  # the service's host name, or an address ([…] for IPv6)
    port: int | None  # None: the scheme's default
    session_domain: str | None = None

    @classmethod
    def for_service(cls, binder: Binder, address: str, port: int) -> Origins:
        """From `binder.public_url`, else from the address `serve` listens on.  A
        wildcard address names no host: the machine's own name stands for it."""
        if binder.public_url:
            parts = urllib.parse.urlsplit(binder.public_url)
            host = parts.hostname or "localhost"
            host = f"[{host}]" if ":" in host else host
            return cls(parts.scheme, host, parts.port, binder.session_domain)
        if address in WILDCARD:
            host = socket.getfqdn()
            log.warning(
                "binder.public_url is not set: links to sessions name "
                "http://%s:%d/ (set binder.public_url to the address people use)",
                host,
                port,
            )
        else:
            host = f"[{address}]" if ":" in address else address
        return cls("http", host, port, binder.session_domain)

    @property
    def _port(self) -> str:
        return f":{self.port}" if self.port is not None else ""

    @property
    def service(self) -> str:
        """The service's origin: scheme://host[:port]."""
        return f"{self.scheme}://{self.host}{self._port}"

    def session_host(self, session_id: str) -> str:
        """The host a session is served at (with the port, as in a Host header)."""
        if self.session_domain is None:
            return f"{self.host}{self._port}"
        return f"{session_id}.{self.session_domain}{self._port}"

    def session_origin(self, session_id: str) -> str:
        return f"{self.scheme}://{self.session_host(session_id)}"

    def session_url(self, session_id: str, path: str = "") -> str:
        """The absolute URL of `path` (relative to Jupyter's base_url) in a session."""
        return f"{self.session_origin(session_id)}/s/{session_id}/{path}"

    def session_in_host(self, host: str | None) -> str | None:
        """The session a Host header names (`<id>.<session_domain>[:port]`), if any."""
        if self.session_domain is None or not host:
            return None
        name = host.lower()
        if not name.startswith("["):
            name = name.rsplit(":", 1)[0] if ":" in name else name
        label, dot, rest = name.partition(".")
        if dot and rest.rstrip(".") == self.session_domain and _SESSION_LABEL.fullmatch(label):
            return label
        return None

    def origin_of(self, host: str | None, session_id: str | None) -> set[str]:
        """The `host[:port]` an Origin header may name for a request to `host`: the
        host the request was sent to, and the one the settings give it."""
        expected = self.session_host(session_id) if session_id else f"{self.host}{self._port}"
        return {expected.lower(), (host or "").lower()} - {""}
