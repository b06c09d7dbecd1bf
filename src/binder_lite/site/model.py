"""The validated site: frozen dataclasses, closed sets as StrEnums spelled as in the file."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class _KebabEnum(enum.StrEnum):
    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name.lower().replace("_", "-")


class ImageType(_KebabEnum):
    """`guix system image -t` names binder-lite builds (x86_64 PC and VM types)."""

    ISO9660 = enum.auto()
    UNCOMPRESSED_ISO9660 = enum.auto()
    QCOW2 = enum.auto()
    QCOW2_GPT = enum.auto()
    MBR_RAW = enum.auto()
    MBR_HYBRID_RAW = enum.auto()
    EFI_RAW = enum.auto()

    @property
    def firmware(self) -> Firmware:
        """What the image boots with; decides the bootloader the OS must declare."""
        if self in (ImageType.ISO9660, ImageType.UNCOMPRESSED_ISO9660):
            return Firmware.HYBRID
        if self in (ImageType.EFI_RAW, ImageType.QCOW2_GPT):
            return Firmware.EFI
        return Firmware.BIOS

    @property
    def extension(self) -> str:
        if self.firmware is Firmware.HYBRID:
            return "iso"
        return "qcow2" if self.value.startswith("qcow2") else "img"


class Firmware(_KebabEnum):
    BIOS = enum.auto()  # GRUB in the MBR gap (qcow2, mbr-raw, mbr-hybrid-raw)
    EFI = enum.auto()  # GRUB-EFI on a GPT ESP (efi-raw, qcow2-gpt)
    HYBRID = enum.auto()  # ISO: Guix swaps in grub-mkrescue, which boots both


class AuthProvider(_KebabEnum):
    NONE = enum.auto()
    GITHUB = enum.auto()
    GITLAB = enum.auto()
    OIDC = enum.auto()


class Runtime(_KebabEnum):
    GUIX = enum.auto()
    LOCAL = enum.auto()


class SessionNetwork(_KebabEnum):
    """What a session's code may reach: nothing, or the internet through a user-mode
    network stack that cannot reach this machine's loopback or private ranges."""

    NONE = enum.auto()
    OUTBOUND = enum.auto()


@dataclass(frozen=True)
class Branding:
    name: str
    slug: str
    tagline: str = ""
    logo: Path | None = None  # absolute, on the machine that renders
    primary_color: str = "#0b6e4f"
    issue: str | None = None
    motd: str | None = None


@dataclass(frozen=True)
class Host:
    hostname: str
    timezone: str = "Etc/UTC"
    locale: str = "en_US.utf8"
    keyboard: str | None = None
    disk: str = "/dev/vda"  # where BIOS GRUB goes on reconfigure; images install their own


@dataclass(frozen=True)
class User:
    name: str
    comment: str = ""
    admin: bool = False
    ssh_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticNetwork:
    interface: str
    address: str  # CIDR, e.g. 192.0.2.10/24
    gateway: str | None = None
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Network:
    dhcp: bool = True
    static: StaticNetwork | None = None


@dataclass(frozen=True)
class Ssh:
    enabled: bool = True
    port: int = 22
    password_authentication: bool = False


@dataclass(frozen=True)
class Auth:
    provider: AuthProvider = AuthProvider.NONE
    issuer: str | None = None
    client_id: str | None = None
    client_secret_file: str | None = None  # a path on the target, never the secret


@dataclass(frozen=True)
class SessionLimits:
    """What one session may use; enforced by the sandbox (sandbox.py)."""

    memory: int = 2 * 1024**3  # bytes, for all its processes together
    processes: int = 256  # tasks (processes and threads) at once
    disk: int = 2 * 1024**3  # bytes in its files (the checkout and /tmp)


@dataclass(frozen=True)
class Binder:
    port: int = 8080
    max_sessions: int = 8
    max_sessions_per_user: int = 2
    idle_timeout: int = 3600
    max_age: int = 6 * 3600
    allowed_repos: tuple[str, ...] = ("https://*", "git://*")
    preload: tuple[str, ...] = ()
    runtime: Runtime = Runtime.GUIX
    user: str = "binder"
    state_dir: str = "/var/lib/binder-lite"
    # "user:token" for pushing sessions' changes when the login gives no token.
    push_credential_file: str | None = None
    auth: Auth = field(default_factory=Auth)
    # Where people reach the service (OAuth redirects are built from it, never from
    # a request's Host header), e.g. https://binder.example.org/.
    public_url: str | None = None
    # Proxies in front (IPs or CIDRs) whose X-Forwarded-* headers are believed.
    trusted_proxies: tuple[str, ...] = ()
    session_network: SessionNetwork = SessionNetwork.OUTBOUND
    session_limits: SessionLimits = field(default_factory=SessionLimits)
    max_repo_size: int = 512 * 1024**2  # bytes a repository may take in the cache
    # Serve each session from <id>.<domain> (its own origin) instead of /s/<id>/.
    session_domain: str | None = None


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: tuple[str, ...]
    user: str = "root"
    requirement: tuple[str, ...] = ("user-processes",)
    respawn: bool = True
    environment: tuple[tuple[str, str], ...] = ()
    documentation: str = ""


@dataclass(frozen=True)
class ImageSpec:
    type: ImageType
    size: str | None = None  # as Guix's --image-size takes it, e.g. 20GiB


@dataclass(frozen=True)
class GuixSpec:
    channels: Path | None = None  # absolute, on the machine that renders


@dataclass(frozen=True)
class Site:
    path: Path  # the site file, absolute
    version: int
    site: Branding
    host: Host
    users: tuple[User, ...] = ()
    network: Network = field(default_factory=Network)
    ssh: Ssh = field(default_factory=Ssh)
    binder: Binder = field(default_factory=Binder)
    packages: tuple[str, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    images: tuple[ImageSpec, ...] = ()  # validation fills in the default (iso9660, qcow2)
    guix: GuixSpec = field(default_factory=GuixSpec)
    # Only in the files the binder-lite service type writes: its store profile.
    jupyter_profile: str | None = None

    def image(self, type_: ImageType) -> ImageSpec:
        """The site's spec for `type_`, or a default one when the site does not list it."""
        return next((i for i in self.images if i.type is type_), ImageSpec(type_))
