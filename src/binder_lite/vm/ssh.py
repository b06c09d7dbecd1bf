"""SSH to targets with their host keys checked, never blindly accepted.

Keys come from ~/.ssh/known_hosts, from a key given on the command line, or, for
binder-lite's own VMs, from the keys the guest prints on its serial console when it
boots (between the markers below, as cloud images do).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import paramiko

from binder_lite.errors import BootError, SmokeError, UsageError

BEGIN_KEYS = "-----BEGIN SSH HOST KEY KEYS-----"
END_KEYS = "-----END SSH HOST KEY KEYS-----"
CHECKABLE_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    }
)


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str

    @property
    def key_name(self) -> str:
        """The name known_hosts files use for this host."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}"


def parse_target(text: str, default_user: str | None = None) -> Target:
    parsed = urlparse(text if "://" in text else f"ssh://{text}")
    if parsed.scheme != "ssh" or not parsed.hostname:
        raise UsageError(f"{text!r}: give the target as ssh://user@host[:port]")
    user = parsed.username or default_user
    if not user:
        raise UsageError(f"{text!r}: which user? give ssh://user@host[:port]")
    return Target(parsed.hostname, parsed.port or 22, user)


def serial_host_keys(serial_text: str) -> list[str]:
    """The public host keys a guest printed between the markers (last boot wins)."""
    start = serial_text.rfind(BEGIN_KEYS)
    if start < 0:
        return []
    end = serial_text.find(END_KEYS, start)
    block = serial_text[start + len(BEGIN_KEYS) : end if end > 0 else None]
    keys = []
    for line in block.replace("\r", "").splitlines():
        parts = line.strip().split()
        # Only the types paramiko can check (newer ones, e.g. post-quantum, are skipped).
        if len(parts) >= 2 and parts[0] in CHECKABLE_KEY_TYPES:
            keys.append(f"{parts[0]} {parts[1]}")
    return keys


def host_keys_for(target: Target, known_hosts: list[Path], given: list[str]) -> paramiko.HostKeys:
    """The keys `target` may present: those given, else those in known_hosts files."""
    keys = paramiko.HostKeys()
    for line in given:
        parts = line.split()
        if len(parts) < 2:
            raise UsageError(f"not a public key: {line!r}")
        try:
            key = paramiko.PKey.from_type_string(parts[0], _b64(parts[1]))
        except (ValueError, paramiko.SSHException) as e:
            raise UsageError(f"not a usable public key ({e}): {line[:40]}…") from None
        keys.add(target.key_name, parts[0], key)
    if not given:
        for path in known_hosts:
            if path.is_file():
                keys.load(str(path))
    return keys


def known_host_keys(
    target: Target, known_hosts: Path | None, given: list[str], error: type[Exception]
) -> paramiko.HostKeys:
    """host_keys_for with ~/.ssh/known_hosts as the default file; raises `error` when
    none is known for `target`: a key is never accepted on first use."""
    files = [known_hosts] if known_hosts else [Path.home() / ".ssh" / "known_hosts"]
    keys = host_keys_for(target, files, given)
    if keys.lookup(target.key_name) is None:
        raise error(
            f"{target}: no known host key; give --host-key or --known-hosts "
            "(binder-lite never accepts an unknown key)"
        )
    return keys


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def connect(
    target: Target,
    host_keys: paramiko.HostKeys,
    identity: Path | None = None,
    timeout: float = 20.0,
) -> paramiko.SSHClient:
    """An SSH connection to `target`, refused unless it shows one of `host_keys`."""
    client = paramiko.SSHClient()
    for name, entry in host_keys.items():
        for key_type, key in entry.items():
            client.get_host_keys().add(name, key_type, key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            key_filename=str(identity) if identity else None,
            look_for_keys=identity is None,
            allow_agent=identity is None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
        )
    except paramiko.BadHostKeyException as e:
        client.close()
        raise SmokeError(
            f"{target}: the host key does not match the one expected "
            f"({e.key.get_name()} {e.key.fingerprint} offered); refusing to connect"
        ) from None
    except paramiko.SSHException as e:
        client.close()
        if "not found in known_hosts" in str(e):
            raise SmokeError(
                f"{target}: unknown host key; refusing to connect. Add it to known_hosts, "
                "or give it with --host-key"
            ) from None
        raise SmokeError(f"{target}: SSH failed: {e}") from None
    except OSError as e:
        client.close()
        raise SmokeError(f"{target}: cannot connect: {e}") from None
    return client


def allowed_auth_methods(target: Target, host_keys: paramiko.HostKeys) -> list[str]:
    """What the server offers a client that has not authenticated yet."""
    sock = socket.create_connection((target.host, target.port), timeout=10)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
        known = host_keys.lookup(target.key_name)
        if known is None or known.get(key.get_name()) != key:
            raise SmokeError(f"{target}: the host key is not the expected one")
        try:
            transport.auth_none(target.user)
        except paramiko.BadAuthenticationType as e:
            return list(e.allowed_types)
        return ["none"]
    finally:
        transport.close()


def wait_for_banner(host: str, port: int, deadline: float) -> bool:
    """Wait until an SSH server (not just QEMU's port forward) answers on `port`."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(3)
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def require_banner(host: str, port: int, timeout: float, evidence: Callable[[], str]) -> None:
    """Wait for SSH; on timeout raise `BootError` with `evidence()` (a serial tail)."""
    if not wait_for_banner(host, port, time.monotonic() + timeout):
        raise BootError(
            f"no SSH server answered on {host}:{port} within {timeout:.0f} s; "
            f"the end of the serial console:\n{evidence()}"
        )
