"""The validated site: frozen dataclasses, closed sets as StrEnums spelled as in the file."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

# The closed sets of the service's settings are declared with them, and re-exported.
from binder_lite.site.settings import AuthProvider as AuthProvider
from binder_lite.site.settings import CrossOriginLaunches as CrossOriginLaunches
from binder_lite.site.settings import KebabEnum, default
from binder_lite.site.settings import NodeRuntime as NodeRuntime
from binder_lite.site.settings import Runtime as Runtime
from binder_lite.site.settings import SessionNetwork as SessionNetwork


class ImageType(KebabEnum):
    """`guix system image -t` names binder-lite builds (x86_64 PC and VM types)."""

    ISO9660 = enum.auto()
    UNCOMPRESSED_ISO9660 = enum.auto()
    QCOW2 = enum.auto()
    QCOW2_GPT = enum.auto()
    MBR_RAW = enum.auto()
    MBR_HYBRID_RAW = enum.auto()
    EFI_RAW = enum.auto()
    # binder-lite's own: an iso9660 image that installs the site on a blank machine's
    # disk (installer_image.py).
    INSTALLER = enum.auto()

    @property
    def guix_type(self) -> str:
        """The `-t` Guix builds this type with."""
        return "iso9660" if self is ImageType.INSTALLER else self.value

    @property
    def firmware(self) -> Firmware:
        """What the image boots with; decides the bootloader the OS must declare."""
        if self in (ImageType.ISO9660, ImageType.UNCOMPRESSED_ISO9660, ImageType.INSTALLER):
            return Firmware.HYBRID
        if self in (ImageType.EFI_RAW, ImageType.QCOW2_GPT):
            return Firmware.EFI
        return Firmware.BIOS

    @property
    def extension(self) -> str:
        if self.firmware is Firmware.HYBRID:
            return "iso"
        return "qcow2" if self.value.startswith("qcow2") else "img"


class Firmware(KebabEnum):
    BIOS = enum.auto()  # GRUB in the MBR gap (qcow2, mbr-raw, mbr-hybrid-raw)
    EFI = enum.auto()  # GRUB-EFI on a GPT ESP (efi-raw, qcow2-gpt)
    HYBRID = enum.auto()  # ISO: Guix swaps in grub-mkrescue, which boots both


@dataclass(frozen=True)
class Branding:
    name: str
    slug: str
    tagline: str = default("site.tagline")
    logo: Path | None = None  # absolute, on the machine that renders
    primary_color: str = default("site.primary_color")
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


# The service's settings: defaults and documentation are in settings.SETTINGS.


@dataclass(frozen=True)
class Auth:
    provider: AuthProvider = default("binder.auth.provider")
    issuer: str | None = default("binder.auth.issuer")
    client_id: str | None = default("binder.auth.client_id")
    client_secret_file: str | None = default("binder.auth.client_secret_file")


@dataclass(frozen=True)
class SessionLimits:
    """What one session may use; enforced by the sandbox (sandbox.py)."""

    memory: int = default("binder.session_limits.memory")
    processes: int = default("binder.session_limits.processes")
    disk: int = default("binder.session_limits.disk")


@dataclass(frozen=True)
class Slurm:
    """Where and with what a session's Slurm job runs (binder.runtime: slurm)."""

    partition: str | None = default("binder.slurm.partition")
    account: str | None = default("binder.slurm.account")
    qos: str | None = default("binder.slurm.qos")
    time_limit: int = default("binder.slurm.time_limit")
    memory: int = default("binder.slurm.memory")
    cpus: int = default("binder.slurm.cpus")
    gres: str | None = default("binder.slurm.gres")
    extra_args: tuple[str, ...] = default("binder.slurm.extra_args")
    node_runtime: NodeRuntime = default("binder.slurm.node_runtime")


@dataclass(frozen=True)
class Acme:
    """Guix System: certbot gets and renews the certificate for `domains`."""

    email: str | None = default("binder.tls.acme.email")
    domains: tuple[str, ...] = default("binder.tls.acme.domains")


@dataclass(frozen=True)
class Tls:
    """HTTPS on `port` from these files (or from certbot's, with `acme`)."""

    port: int = default("binder.tls.port")
    certificate_file: str | None = default("binder.tls.certificate_file")
    key_file: str | None = default("binder.tls.key_file")
    acme: Acme = field(default_factory=Acme)

    @property
    def enabled(self) -> bool:
        return self.certificate_file is not None or bool(self.acme.domains)


@dataclass(frozen=True)
class Binder:
    port: int = default("binder.port")
    max_sessions: int = default("binder.max_sessions")
    max_sessions_per_user: int = default("binder.max_sessions_per_user")
    idle_timeout: int = default("binder.idle_timeout")
    max_age: int = default("binder.max_age")
    allowed_repos: tuple[str, ...] = default("binder.allowed_repos")
    preload: tuple[str, ...] = default("binder.preload")
    runtime: Runtime = default("binder.runtime")
    user: str = default("binder.user")
    state_dir: str = default("binder.state_dir")
    push_credential_file: str | None = default("binder.push_credential_file")
    api_token_file: str | None = default("binder.api_token_file")
    auth: Auth = field(default_factory=Auth)
    public_url: str | None = default("binder.public_url")
    trusted_proxies: tuple[str, ...] = default("binder.trusted_proxies")
    session_network: SessionNetwork = default("binder.session_network")
    session_limits: SessionLimits = field(default_factory=SessionLimits)
    max_repo_size: int = default("binder.max_repo_size")
    session_domain: str | None = default("binder.session_domain")
    cors_allowed_origins: tuple[str, ...] = default("binder.cors_allowed_origins")
    cross_origin_launches: CrossOriginLaunches = default("binder.cross_origin_launches")
    slurm: Slurm = field(default_factory=Slurm)
    tls: Tls = field(default_factory=Tls)


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


class InstallFirmware(KebabEnum):
    """How the machine the installer ISO installs on boots."""

    UEFI = enum.auto()  # GPT with an ESP, GRUB-EFI
    BIOS = enum.auto()  # GPT with a BIOS boot partition, GRUB in it


@dataclass(frozen=True)
class Install:
    """The `install:` section: the disk the installer ISO installs the system on.  It
    erases that disk only with `wipe`; otherwise it shows the command that would."""

    disk: str  # a device file on the machine, e.g. /dev/sda or /dev/nvme0n1
    firmware: InstallFirmware
    wipe: bool = False


@dataclass(frozen=True)
class GuixSpec:
    channels: Path | None = None  # absolute, on the machine that renders


# `guix deploy`'s default system type and Guix's default SSH login (gnu/machine/ssh.scm).
DEPLOY_SYSTEM = "x86_64-linux"


@dataclass(frozen=True)
class DeployMachine:
    """One machine of the `deploy:` list: where `guix deploy` logs in, and the host key
    it must see there.  `host_key` is "TYPE BASE64" (no comment: Guix 1.5 splits it on
    spaces); None until it is looked up in known_hosts, which loading for a deployment
    does (validate.load_site(known_hosts=...))."""

    host: str  # a DNS name or an IP address
    host_key: str | None = None
    port: int = 22
    user: str = "root"
    identity: Path | None = None  # private key on the workstation, absolute
    system: str = DEPLOY_SYSTEM
    build_locally: bool = True
    hostname: str | None = None  # the system's host name there, if not host.hostname


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
    deploy: tuple[DeployMachine, ...] = ()
    install: Install | None = None

    def image(self, type_: ImageType) -> ImageSpec:
        """The site's spec for `type_`, or a default one when the site does not list it."""
        return next((i for i in self.images if i.type is type_), ImageSpec(type_))
