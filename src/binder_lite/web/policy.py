"""Which repository URLs the service launches, and which it refuses."""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import ParseResult, urlparse

from binder_lite.errors import BinderLiteError
from binder_lite.launch.sources import Pin

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv4 ranges `is_global` lets through that are still not somewhere to fetch from:
# "this network", shared address space (carrier NAT), IETF protocol assignments,
# the 6to4 relay anycast, benchmarking, multicast and the reserved 240/4.
_IPV4_REFUSED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
    )
)
# Global unicast IPv6 is 2000::/3.  Outside it: loopback, IPv4-mapped and -compatible
# forms (::ffff:a.b.c.d, ::a.b.c.d), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), site- and
# link-local, unique local.  Inside it, prefixes that embed an IPv4 address the
# address check never saw (6to4 2002::/16, Teredo 2001::/32) or that are not on the
# internet (documentation, benchmarking, ORCHID).
_IPV6_GLOBAL = ipaddress.IPv6Network("2000::/3")
_IPV6_REFUSED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/32",
        "2001:2::/48",
        "2001:10::/28",
        "2001:20::/28",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
    )
)
_DEFAULT_PORTS = {"https": 443, "http": 80, "git": 9418}


class RefusedError(BinderLiteError):
    """A request the service will not act on; the message is safe to show."""

    exit_code = 2


@dataclass(frozen=True)
class Admitted:
    """A repository URL the policy accepted, and the addresses git must connect to."""

    url: str
    pin: Pin | None  # None for file:// URLs and hosts written as an IP address


@dataclass(frozen=True)
class RepoPolicy:
    allowed: tuple[str, ...]  # fnmatch patterns over the whole URL
    allow_local: bool = False  # development: file:// and loopback/private hosts

    def check(self, url: str) -> str:
        """Return `url` if it may be launched; raise `RefusedError` saying why not."""
        return self.admit(url).url

    def admit(self, url: str) -> Admitted:
        """Check `url` and resolve its host once; the answer is what git gets pinned to,
        so that a second DNS answer cannot send it somewhere the check did not see."""
        parsed = self._parse(url)
        if parsed.scheme in ("file", ""):
            return Admitted(url, None)
        assert parsed.hostname is not None  # _parse refused URLs without one
        if not self.allow_local and not any(fnmatch.fnmatchcase(url, p) for p in self.allowed):
            raise RefusedError("this repository is not among the ones this site allows")
        return Admitted(url, self._pin(parsed, parsed.hostname))

    def _parse(self, url: str) -> ParseResult:
        if any(c in url for c in "\r\n\t\x00 ") or len(url) > 2048:
            raise RefusedError("the repository URL contains characters URLs cannot have")
        parsed = urlparse(url)
        segments = parsed.path.split("/")
        if "." in segments or ".." in segments or "%2e" in url.lower():
            # git and curl resolve dot segments: a pattern check must see the final path.
            raise RefusedError("repository URLs may not contain . or .. path segments")
        if parsed.query or parsed.fragment:
            raise RefusedError("repository URLs may not have a query or fragment")
        if parsed.scheme in ("file", ""):
            if not self.allow_local:
                raise RefusedError("local repositories (file://) are not allowed here")
            return parsed
        schemes = ("https", "git", "http") if self.allow_local else ("https", "git")
        if parsed.scheme not in schemes:
            raise RefusedError(f"only {' and '.join(s + '://' for s in schemes)} URLs are allowed")
        if not parsed.hostname:
            raise RefusedError("the repository URL has no host")
        if parsed.username or parsed.password:
            raise RefusedError("credentials in repository URLs are not accepted")
        return parsed

    def _pin(self, parsed: ParseResult, host: str) -> Pin | None:
        try:
            port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        except ValueError:
            raise RefusedError("the repository URL has an invalid port") from None
        try:
            addresses = resolve(host, port)
        except RefusedError:
            if self.allow_local:
                return None  # development: let git say what it makes of the name
            raise
        if not self.allow_local:
            for address in addresses:
                if not is_public(address):
                    raise RefusedError(
                        f"{host!r} resolves to a local or private address "
                        f"({address}); this site only fetches from the public "
                        "internet"
                    )
        if _is_literal(host):
            return None  # nothing to look up again
        return Pin(host=host, port=port, addresses=tuple(str(a) for a in addresses))


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` has now, as the C library reads it (which also turns
    2852039166, 0xa9fea9fe, 0251.0376.0251.0376 and 127.1 into addresses)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError):
        raise RefusedError(f"cannot resolve the host {host!r}") from None
    found: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise RefusedError(f"cannot resolve the host {host!r}")
    return found


def is_public(address: Address) -> bool:
    """Whether `address` is a globally routable unicast address on the internet."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not any(address in n for n in _IPV4_REFUSED)
    return (
        address in _IPV6_GLOBAL
        and address.is_global
        and not any(address in n for n in _IPV6_REFUSED)
    )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
