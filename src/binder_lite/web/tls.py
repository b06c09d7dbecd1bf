"""HTTPS for the front: the certificate and key (`binder.tls`), read when the service
starts and again on SIGHUP, and the plain-HTTP port, which only redirects.

The files are paths on the machine (never in the store) and are read by the service's
own account.  A file that is missing, unreadable, not PEM, encrypted, or a key that
does not belong to the certificate stops the service at start with a `TlsError`
naming the file; on SIGHUP the same problems are logged and the certificate in use
is kept, so a bad renewal never takes the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from binder_lite.errors import BinderLiteError
from binder_lite.site.model import Binder
from binder_lite.web.proxy import Reply
from binder_lite.web.upstream import Head, MessageError, read_request

log = logging.getLogger(__name__)

# What browsers are told after an answer over HTTPS: only HTTPS for a year, this
# host alone (sessions' own origins are other hosts, which may not all have TLS).
HSTS = ("Strict-Transport-Security", "max-age=31536000")
HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to finish the TLS handshake
REDIRECT_IDLE = 10.0  # seconds the HTTP port waits for a request head


class TlsError(BinderLiteError):
    """The certificate or key of `binder.tls` cannot be used."""


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path

    @classmethod
    def of(cls, binder: Binder) -> TlsFiles | None:
        """The files the site gives, or None when the service speaks plain HTTP."""
        tls = binder.tls
        if tls.certificate_file is None or tls.key_file is None:
            return None
        return cls(Path(tls.certificate_file), Path(tls.key_file))


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context holding the certificate chain and key; TlsError if unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The front speaks HTTP/1.1 only: a client offering h2 must not be told yes.
    context.set_alpn_protocols(["http/1.1"])
    load(context, files)
    return context


def load(context: ssl.SSLContext, files: TlsFiles) -> None:
    """Load `files` into `context`, checked first on a context of their own so that a
    failure leaves `context` as it was."""
    _check_pem(files.certificate, "binder.tls.certificate_file", "CERTIFICATE-----")
    _check_pem(files.key, "binder.tls.key_file", "PRIVATE KEY-----")
    for target in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), context):
        try:
            target.load_cert_chain(files.certificate, files.key, password=_no_passphrase)
        except _Encrypted:
            raise TlsError(
                f"binder.tls.key_file: {files.key} is encrypted with a passphrase; "
                "give the key unencrypted (readable by the service's account alone)"
            ) from None
        except ssl.SSLError as e:
            raise TlsError(_words(e, files)) from None


def reload(context: ssl.SSLContext, files: TlsFiles) -> bool:
    """Read `files` again into the live context (SIGHUP); whether it worked.  New
    connections get the new certificate, open ones keep theirs."""
    try:
        load(context, files)
    except TlsError as e:
        log.error("TLS files not reloaded, the certificate in use is kept: %s", e)
        return False
    log.warning("TLS certificate reloaded from %s", files.certificate)
    return True


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal; a service has none.
    raise _Encrypted


def _check_pem(path: Path, key: str, marker: str) -> None:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{key}: {path} does not exist") from None
    except PermissionError:
        raise TlsError(
            f"{key}: {path} cannot be read by the service's account "
            "(give it read access, or copy the file where it can read it)"
        ) from None
    except OSError as e:
        raise TlsError(f"{key}: {path} cannot be read: {e.strerror}") from None
    if b"-----BEGIN " not in text or marker.encode() not in text:
        kind = "certificate" if "CERT" in marker else "private key"
        raise TlsError(f"{key}: {path} holds no PEM {kind}")


def _words(error: ssl.SSLError, files: TlsFiles) -> str:
    reason = str(error.reason or error)
    if "KEY_VALUES_MISMATCH" in reason or "key values mismatch" in str(error):
        return (
            f"binder.tls.key_file: {files.key} is not the key of the certificate "
            f"in {files.certificate}"
        )
    return f"binder.tls: {files.certificate} and {files.key} cannot be used: {error}"


def secure_set_cookies(head: Head) -> Head:
    """A response head whose every Set-Cookie is Secure: over HTTPS, a session's
    Jupyter (which sees plain HTTP behind the front) sets its cookies without it."""
    headers = [
        (name, value + "; Secure")
        if name == "set-cookie" and not _SECURE.search(value)
        else (name, value)
        for name, value in head.headers
    ]
    return Head(head.start, headers, head.raw)


_SECURE = re.compile(r";\s*secure\s*(?:;|$)", re.I)


# -- the plain-HTTP port: a redirect to the public HTTPS URL, and nothing else ---------


class Redirector:
    """Answers every request on the HTTP port with a redirect to the same path and
    query at `public_url`.  The Location comes from `public_url` alone; a request
    for another host gets 421, so this is no redirect to wherever a Host header says."""

    def __init__(self, public_url: str) -> None:
        parts = urllib.parse.urlsplit(public_url)
        self.origin = f"https://{parts.netloc}"
        self.hostname = (parts.hostname or "").lower()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REDIRECT_IDLE):
                head = await read_request(reader)
            if head is not None:
                writer.write(self.answer(head.start[0], head.start[1], head.get("host")))
        except MessageError as e:
            writer.write(Reply(e.status, f"{e}\n").encode(close=True))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # nothing to answer
        except asyncio.LimitOverrunError:
            writer.write(Reply(431, "request head too large\n").encode(close=True))
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()

    def answer(self, method: str, target: str, host: str | None) -> bytes:
        """The whole answer to one request on the HTTP port (the connection ends)."""
        if _hostname(host) != self.hostname:
            return Reply(421, f"this service is at {self.origin}/\n", (("Vary", "Host"),)).encode(
                close=True
            )
        if not target.startswith("/"):  # read_request admits paths alone: never a host
            target = "/"
        # GET and HEAD may become GET; anything else must be resent as it was.
        status = 301 if method in ("GET", "HEAD") else 308
        return Reply(status, "", (("Location", self.origin + target),)).encode(close=True)


def _hostname(host: str | None) -> str:
    """The name in a Host header, without its port; "" when absent or malformed."""
    if not host:
        return ""
    try:
        return (urllib.parse.urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:
        return ""
