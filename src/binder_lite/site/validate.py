"""Raw YAML tree → `Site`, reporting every problem with its file, line and column."""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from pathlib import Path
from typing import Any, TypeVar

from binder_lite.errors import SiteError
from binder_lite.site import checks, fleet, settings
from binder_lite.site.load import Mark, RawMap, load_json, load_yaml
from binder_lite.site.model import (
    Acme,
    Auth,
    AuthProvider,
    Binder,
    Branding,
    GuixSpec,
    Host,
    ImageSpec,
    ImageType,
    Install,
    InstallFirmware,
    Network,
    ServiceSpec,
    SessionLimits,
    Site,
    Slurm,
    Ssh,
    StaticNetwork,
    Tls,
    User,
)
from binder_lite.site.reader import REQUIRED, Problems, Section
from binder_lite.site.settings import KebabEnum, Kind, Setting

SITE_VERSION = 1
DEFAULT_IMAGES = (ImageSpec(ImageType.ISO9660), ImageSpec(ImageType.QCOW2))

E = TypeVar("E", bound=KebabEnum)

# The host name of the file the service type writes, which has no `host` section.
SERVICE_HOSTNAME = "localhost"
# The interface of a `static:` network that names none.
STATIC_INTERFACE = "eth0"

# Shepherd services a binder-lite system already provides (Guix's %base-services,
# openssh, dhcpcd/static networking and ours).  A site service with one of these
# names would make Guix fail with "provided more than once"; say so earlier.
RESERVED_SERVICES = frozenset(
    {
        "binder-lite",
        "ssh-daemon",
        "ssh",
        "sshd",
        "networking",
        "loopback",
        "dhcpcd",
        "user-processes",
        "user-file-systems",
        "file-systems",
        "root-file-system",
        "root",
        "shepherd",
        "syslogd",
        "system-log",
        "guix-daemon",
        "nscd",
        "udev",
        "urandom-seed",
        "host-name",
        "sysctl",
        "log-rotation",
        "log-cleanup",
        "timer",
        "transient",
        "virtual-terminal",
        "console-font",
        "term-console",
        "term-ttyS0",
        "pam",
        "user-homes",
        "special-files",
        "mcron",
        "ntpd",
        "ntp",
        "openntpd",
        "host-keys-on-console",
    }
)

# Accounts the system itself creates; a site user of the same name would clash.
SYSTEM_ACCOUNTS = frozenset(
    {
        "root",
        "nobody",
        "sshd",
        "dhcpcd",
        "nscd",
        "guixbuilder",
        "nixbld",
        "messagebus",
    }
)


def load_site(path: Path, *, for_service: bool = False, known_hosts: Path | None = None) -> Site:
    """Load and validate the site file at `path`; raise `SiteError` listing every problem.

    `for_service`: the file configures `binder-lite serve` only, so only `version` and
    `site` are required; the one the service type writes is JSON (`*.json`).
    `known_hosts`: the site is loaded to deploy from this workstation (`deploy:`): host
    keys it does not give are looked up there, and identity files must exist.
    """
    path = path.absolute()
    raw, problems = load_json(path) if for_service and path.suffix == ".json" else load_yaml(path)
    if raw is None:
        raise SiteError(problems)
    collector = Problems(str(path))
    root = Section(collector, raw, "", Mark(1, 1))
    site = _site(root, path, for_service, known_hosts)
    if collector.items:
        raise SiteError(collector.items)
    assert site is not None
    return site


def _site(
    root: Section, path: Path, for_service: bool = False, known_hosts: Path | None = None
) -> Site | None:
    version = root.integer("version", REQUIRED, 1, 1000)
    if root.present("version") and version != SITE_VERSION:
        root.fail(
            root.mark_of("version"),
            "version",
            f"this binder-lite reads version {SITE_VERSION} site files, not version {version}",
        )
    base = path.parent
    branding = _branding(root.section("site", REQUIRED), base, for_service)
    host = _host(root.section("host", None if for_service else REQUIRED), for_service)
    binder = _binder(root.section("binder"))
    users = _users(root, binder.user)
    network = _network(root.section("network"))
    ssh = _ssh(root.section("ssh"))
    packages = root.texts("packages", check=checks.package)
    services = _services(root, {"root", binder.user, *(u.name for u in users)})
    images = _images(root)
    guix = _guix(root.section("guix"), base)
    deploy = fleet.machines(root, base, users, known_hosts)
    install = _install(root, host) if root.present("install") else None
    if for_service:
        # Store items the service type keeps alive (Jupyter's profile, the preloaded
        # packages) by naming them in the file; nothing reads them.
        root.texts("keep_in_store")
    root.finish()
    if not for_service:
        _check_login(root, ssh, users)
    if branding is None or host is None:
        return None
    return Site(
        path=path,
        version=version,
        site=branding,
        host=host,
        users=users,
        network=network,
        ssh=ssh,
        binder=binder,
        packages=packages,
        services=services,
        images=images,
        guix=guix,
        deploy=deploy,
        install=install,
    )


def _branding(s: Section, base: Path, for_service: bool = False) -> Branding | None:
    name = _read(s, settings.BY_KEY["site.name"])
    if name is not None and not name.strip():
        s.fail(s.mark_of("name"), "name", "must not be empty")
    slug = _read(s, settings.BY_KEY["site.slug"])
    tagline = _read(s, settings.BY_KEY["site.tagline"])
    logo = s.text("logo")
    logo_path = _existing_file(s, "logo", logo, base) if logo is not None else None
    if for_service and logo is None:
        # The service type gives the logo's store file name, already absolute.
        stored = s.text("logo_path", None, checks.absolute_target_path)
        logo_path = _existing_file(s, "logo_path", stored, base) if stored else None
    color = _read(s, settings.BY_KEY["site.primary_color"])
    issue = s.text("issue")
    motd = s.text("motd")
    s.finish()
    if name is None or slug is None:
        return None
    return Branding(name, slug, tagline, logo_path, color, issue, motd)


def _existing_file(s: Section, key: str, value: str, base: Path) -> Path | None:
    path = (base / value).resolve()
    if not path.is_file():
        s.fail(
            s.mark_of(key),
            key,
            f"{value!r} does not exist (looked for {path})",
            "paths are relative to the site file",
        )
        return None
    return path


def _host(s: Section, for_service: bool = False) -> Host | None:
    hostname = s.text("hostname", SERVICE_HOSTNAME if for_service else REQUIRED, checks.hostname)
    timezone = s.text("timezone", _default(Host, "timezone"), checks.timezone)
    locale = s.text("locale", _default(Host, "locale"), checks.locale)
    keyboard = s.text("keyboard", _default(Host, "keyboard"), checks.keyboard)
    disk = s.text("disk", _default(Host, "disk"), checks.device)
    s.finish()
    return Host(hostname, timezone, locale, keyboard, disk) if hostname is not None else None


def _users(root: Section, binder_user: str) -> tuple[User, ...]:
    users: list[User] = []
    seen: dict[str, int] = {}
    for s in root.sections("users"):
        name = s.text("name", REQUIRED, checks.user_name)
        comment = s.text("comment", _default(User, "comment"))
        admin = s.boolean("admin", _default(User, "admin"))
        keys = s.texts("ssh_keys", check=checks.ssh_public_key)
        s.finish()
        if name is None:
            continue
        if name in SYSTEM_ACCOUNTS or name == binder_user:
            s.fail(
                s.mark_of("name"),
                "name",
                f"{name!r} is a system account",
                "choose another name for this person",
            )
        elif name in seen:
            s.fail(
                s.mark_of("name"),
                "name",
                f"user {name!r} is listed twice (first as users[{seen[name]}])",
            )
        seen.setdefault(name, len(users))
        users.append(User(name, comment, admin, keys))
    return tuple(users)


def _network(s: Section) -> Network:
    has_static = s.present("static")
    dhcp = s.boolean("dhcp", not has_static)
    static = _static(s.section("static")) if has_static else None
    if has_static and dhcp:
        s.fail(
            s.mark_of("dhcp"),
            "dhcp",
            "`dhcp: true` and a `static:` block exclude each other",
            "remove `dhcp: true` to use the static address",
        )
    s.finish()
    return Network(dhcp and not has_static, static)


def _static(s: Section) -> StaticNetwork | None:
    interface = s.text("interface", STATIC_INTERFACE, checks.interface)
    address = s.text("address", REQUIRED, checks.ip_interface)
    gateway = s.text("gateway", None, checks.ip_address)
    dns = s.texts("dns", check=checks.ip_address)
    s.finish()
    if address is None:
        return None
    _check_gateway(s, address, gateway)
    return StaticNetwork(interface, address, gateway, dns)


def _check_gateway(s: Section, address: str, gateway: str | None) -> None:
    try:
        network = ipaddress.ip_interface(address).network
        if gateway is not None and ipaddress.ip_address(gateway) not in network:
            s.fail(
                s.mark_of("gateway"),
                "gateway",
                f"{gateway} is not on {network}",
                "the gateway must be reachable on the interface's network",
            )
    except ValueError:
        pass  # already reported by the field checks


def _ssh(s: Section) -> Ssh:
    ssh = Ssh(
        enabled=s.boolean("enabled", _default(Ssh, "enabled")),
        port=s.integer("port", _default(Ssh, "port"), 1, 65535),
        password_authentication=s.boolean(
            "password_authentication", _default(Ssh, "password_authentication")
        ),
    )
    s.finish()
    return ssh


def _check_login(root: Section, ssh: Ssh, users: tuple[User, ...]) -> None:
    if ssh.enabled and not ssh.password_authentication and not any(u.ssh_keys for u in users):
        root.fail(
            root.mark_of("users"),
            "users",
            "nobody can log into this machine: SSH is on, password login is off "
            "and no user has ssh_keys",
            "add your public key to a user's ssh_keys (see `binder-lite site init`)",
        )


def _binder(s: Section) -> Binder:
    values = _settings(s, "binder")
    auth = _auth(s.section("auth"))
    limits = s.section("session_limits")
    session_limits = SessionLimits(**_settings(limits, "binder.session_limits"))
    limits.finish()
    slurm = _slurm(s.section("slurm"))
    tls = _tls(s.section("tls"))
    _check_tls(s, tls, values["port"], values["public_url"])
    s.finish()
    return Binder(**values, auth=auth, session_limits=session_limits, slurm=slurm, tls=tls)


def _tls(s: Section) -> Tls:
    values = _settings(s, "binder.tls")
    acme_section = s.section("acme")
    acme = Acme(**_settings(acme_section, "binder.tls.acme"))
    if acme.email is not None and not acme.domains:
        acme_section.fail(acme_section.mark_of("email"), "domains", "is required with email")
    acme_section.finish()
    given = [key for key in ("certificate_file", "key_file") if values[key] is not None]
    if len(given) == 1:
        missing = "key_file" if given == ["certificate_file"] else "certificate_file"
        s.fail(s.mark_of(given[0]), missing, f"is required with {given[0]}")
    if given and acme.domains:
        s.fail(
            s.mark_of(given[0]),
            given[0],
            "certbot makes the certificate with acme: give files or acme, not both",
        )
    s.finish()
    return Tls(**values, acme=acme)


def _check_tls(s: Section, tls: Tls, port: int, public_url: str | None) -> None:
    """HTTPS needs the public URL (the plain-HTTP port redirects there, and nowhere a
    request's Host names) and ports of its own; with acme, port 80 is certbot's."""
    if not tls.enabled:
        return
    where = s.mark_of("tls")
    if public_url is None or not public_url.startswith("https://"):
        s.fail(
            where,
            "public_url",
            "an https:// URL is required with tls",
            "the plain-HTTP port redirects there, e.g. https://binder.example.org/",
        )
    elif tls.acme.domains and tls.acme.domains[0] != _url_host(public_url):
        s.fail(
            where,
            "tls.acme.domains",
            f"the first name must be {_url_host(public_url)}, public_url's host",
            "certbot names the certificate after it, and port 80 redirects there",
        )
    if port == tls.port:
        s.fail(where, "tls.port", f"{port} is binder.port too", "HTTPS needs a port of its own")
    if tls.acme.domains and 80 in (port, tls.port):
        s.fail(
            where,
            "port" if port == 80 else "tls.port",
            "port 80 answers certbot's challenges (through nginx, which Guix's certbot "
            "service runs) with acme",
            "keep binder.port at 8080 (or another free port): nginx redirects port 80 to HTTPS",
        )


def _url_host(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _slurm(s: Section) -> Slurm:
    slurm = Slurm(**_settings(s, "binder.slurm"))
    s.finish()
    return slurm


def _settings(s: Section, section: str) -> dict[str, Any]:
    """The settings (settings.py) a site file gives in `section`, by model field."""
    return {setting.name: _read(s, setting) for setting in settings.in_section(section)}


def _read(s: Section, setting: Setting) -> Any:
    """One setting, read and checked as its kind says."""
    key, default = setting.name, setting.default
    if setting.kind is Kind.INTEGER:
        return s.integer(key, default, setting.low, setting.high)
    if setting.kind is Kind.SIZE:
        return _size(s, key, default, setting.low)
    if setting.kind in (Kind.TEXTS, Kind.PACKAGES):
        return s.texts(key, default, setting.check)
    if setting.kind is Kind.CHOICE:
        assert setting.choices is not None
        return _choice(s, key, setting.choices, default)
    assert setting.kind is Kind.TEXT, setting  # files are read where their base is known
    return s.text(key, REQUIRED if setting.required else default, setting.check)


def _size(s: Section, key: str, default: int, low: int) -> int:
    """A size in bytes, written as a number or with a unit (512MiB, 2GiB)."""
    value = s.text(key, None, checks.byte_size)
    if not isinstance(value, int):
        return default
    if value < low:
        s.fail(s.mark_of(key), key, f"{value} bytes is too small", f"give at least {low} bytes")
        return default
    return value


def _auth(s: Section) -> Auth:
    auth = Auth(**_settings(s, "binder.auth"))
    provider, secret_file = auth.provider, auth.client_secret_file
    if provider is not AuthProvider.NONE:
        for key, value in (("client_id", auth.client_id), ("client_secret_file", secret_file)):
            if value is None:
                s.fail(s.mark_of("provider"), key, f"is required with provider: {provider}")
    if provider is AuthProvider.OIDC and auth.issuer is None:
        s.fail(
            s.mark_of("provider"),
            "issuer",
            "is required with provider: oidc",
            "give the issuer URL, e.g. https://keycloak.example.org/realms/main",
        )
    s.finish()
    return auth


def _default(model: type[Any], name: str) -> Any:
    """The model's default for `name`: each default is written once, in model.py."""
    return next(f.default for f in dataclasses.fields(model) if f.name == name)


def _choice(s: Section, key: str, enum: type[E], default: E | None) -> E:
    value = s.text(key, REQUIRED if default is None else None)
    if value is None:
        return default if default is not None else next(iter(enum))
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(e.value for e in enum)
        s.fail(
            s.mark_of(key),
            key,
            f"{value!r} is not one of: {valid}",
            checks.did_you_mean(value, [e.value for e in enum]),
        )
        return default if default is not None else next(iter(enum))


def _services(root: Section, accounts: set[str]) -> tuple[ServiceSpec, ...]:
    services: list[ServiceSpec] = []
    for s in root.sections("services"):
        name = s.text("name", REQUIRED, checks.service_name)
        command = s.texts("command", REQUIRED)
        user = s.text("user", _default(ServiceSpec, "user"), checks.user_name)
        requirement = s.texts("requirement", _default(ServiceSpec, "requirement"), checks.symbol)
        respawn = s.boolean("respawn", _default(ServiceSpec, "respawn"))
        environment = s.text_map("environment")
        documentation = s.text("documentation", _default(ServiceSpec, "documentation"))
        s.finish()
        _check_service(s, name, command, user, environment, accounts, services)
        if name is not None and command:
            services.append(
                ServiceSpec(name, command, user, requirement, respawn, environment, documentation)
            )
    return tuple(services)


def _check_service(
    s: Section,
    name: str | None,
    command: tuple[str, ...],
    user: str,
    environment: tuple[tuple[str, str], ...],
    accounts: set[str],
    earlier: list[ServiceSpec],
) -> None:
    if name in RESERVED_SERVICES:
        s.fail(
            s.mark_of("name"),
            "name",
            f"the system already provides a service named {name!r}",
            "choose another name",
        )
    elif name is not None and any(e.name == name for e in earlier):
        s.fail(s.mark_of("name"), "name", f"service {name!r} is defined twice")
    if s.present("command") and not command:
        s.fail(s.mark_of("command"), "command", "must name a program to run")
    elif command and not command[0].startswith("/"):
        s.fail(
            s.mark_of("command"),
            "command[0]",
            f"{command[0]!r} is not an absolute path",
            f"e.g. /run/current-system/profile/bin/{command[0]}",
        )
    if user not in accounts:
        s.fail(
            s.mark_of("user"),
            "user",
            f"there is no account {user!r}",
            f"use one of: {', '.join(sorted(accounts))}",
        )
    for var, _ in environment:
        if not var.replace("_", "a").isalnum() or var[0].isdigit():
            s.fail(s.mark_of("environment"), f"environment.{var}", "not a variable name")
        elif any(w in var.upper() for w in ("SECRET", "PASSWORD", "TOKEN", "PRIVATE")):
            s.fail(
                s.mark_of("environment"),
                f"environment.{var}",
                "secrets may not be written in the site file",
                "the rendered system goes into the world-readable /gnu/store; have the "
                "program read the secret from a file on the target",
            )


def _install(root: Section, host: Host | None) -> Install | None:
    """`install:`: what the installer ISO does to the machine it boots on."""
    s = root.section("install")
    disk = s.text("disk", REQUIRED, checks.device)
    firmware = _choice(s, "firmware", InstallFirmware, None)
    wipe = s.boolean("wipe", _default(Install, "wipe"))
    s.finish()
    if disk is not None and (".." in disk.split("/") or disk.endswith("/")):
        s.fail(s.mark_of("disk"), "disk", f"{disk!r} is not a disk's device file")
        return None
    host_node = root.node.items.get("host") if root.node else None
    given = isinstance(host_node, RawMap) and "disk" in host_node.items
    if disk is not None and host is not None and given and host.disk != disk:
        # system.scm puts BIOS GRUB on host.disk when the machine reconfigures.
        s.fail(
            s.mark_of("disk"),
            "disk",
            f"the system is installed on {disk} but host.disk says {host.disk}",
            "give the same disk in both, or leave host.disk out",
        )
    return Install(disk, firmware, wipe) if disk is not None else None


def _images(root: Section) -> tuple[ImageSpec, ...]:
    if not root.present("images"):
        root.texts("images")  # mark the key as known
        return DEFAULT_IMAGES
    images: list[ImageSpec] = []
    for s in root.sections("images"):
        type_ = _choice(s, "type", ImageType, None)
        size = s.text("size")
        s.finish()
        if size is not None:
            if type_.firmware.value == "hybrid":
                s.fail(
                    s.mark_of("size"),
                    "size",
                    f"a {type_} image is as large as its contents; size does not apply",
                )
            else:
                size = _normalised_size(s, size)
        if any(i.type is type_ for i in images):
            s.fail(s.mark_of("type"), "type", f"image type {type_} is listed twice")
        images.append(ImageSpec(type_, size))
    return tuple(images)


def _normalised_size(s: Section, size: str) -> str | None:
    try:
        return checks.image_size(size)
    except checks.Invalid as e:
        s.fail(s.mark_of("size"), "size", e.message, e.hint)
        return None


def _guix(s: Section, base: Path) -> GuixSpec:
    channels = s.text("channels")
    path = _existing_file(s, "channels", channels, base) if channels is not None else None
    s.finish()
    return GuixSpec(path)
