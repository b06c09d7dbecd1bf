"""The binder-lite service's settings, declared once.

Each setting has its key in the site file, its kind, its default, one line of
documentation and the layers it reaches.  From this table come the model's defaults
(model.py), the validator's types and checks (validate.py), the `binder` table of
README.md and the `binder:` section of the `site init` starter; the fields of
`binder-lite-configuration` (services/binder-lite/services.scm) are checked equal to it
by tests/test_settings.py and, with the real Guix, tests/test_guix.py.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from binder_lite import scheme
from binder_lite.site import checks


class KebabEnum(enum.StrEnum):
    """A closed set spelled as in the site file: `QCOW2_GPT` is `qcow2-gpt`."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name.lower().replace("_", "-")


class AuthProvider(KebabEnum):
    NONE = enum.auto()
    GITHUB = enum.auto()
    GITLAB = enum.auto()
    OIDC = enum.auto()


class Runtime(KebabEnum):
    GUIX = enum.auto()
    LOCAL = enum.auto()
    SLURM = enum.auto()  # sessions are Slurm jobs (launch/slurm.py); binder.slurm


class NodeRuntime(KebabEnum):
    """How a Slurm job runs its session on the compute node."""

    GUIX = enum.auto()
    LOCAL = enum.auto()


class SessionNetwork(KebabEnum):
    """What a session's code may reach: nothing, or the internet through a user-mode
    network stack that cannot reach this machine's loopback or private ranges."""

    NONE = enum.auto()
    OUTBOUND = enum.auto()


class CrossOriginLaunches(KebabEnum):
    """Whether pages of other origins launch freely, or only with a build token
    (web/buildtokens.py); a token sent is checked either way."""

    OPEN = enum.auto()
    SIGNED = enum.auto()


class Kind(enum.StrEnum):
    TEXT = "text"  # a string; optional when its default is None
    TEXTS = "texts"  # a list of strings
    PACKAGES = "packages"  # Guix package specifications; Guix gets the packages
    INTEGER = "integer"  # a whole number from `low` to `high`
    SIZE = "size"  # bytes, written as a number or with a unit (512MiB); at least `low`
    CHOICE = "choice"  # one of `choices`
    FILE = "file"  # a file next to the site file; the service gets its store file name
    PACKAGE = "package"  # Guix only: the binder-lite package


class Layer(enum.Flag):
    FILE = enum.auto()  # the site file: validator, model, README, `site init`
    GUIX = enum.auto()  # a field of binder-lite-configuration
    SERVICE = enum.auto()  # the JSON file `binder-lite serve` reads, written by the service
    ALL = FILE | GUIX | SERVICE


@dataclass(frozen=True)
class Setting:
    key: str  # dotted path in the site file: binder.auth.provider
    kind: Kind
    default: Any  # as the model holds it (a tuple for a list, the enum for a choice)
    doc: str
    guix: str  # the binder-lite-configuration field
    layers: Layer = Layer.ALL
    required: bool = False  # in the site file; Guix has the default
    low: int = 0
    high: int = 0
    check: Callable[[str], Any] | None = None
    choices: type[KebabEnum] | None = None
    unit: str = ""  # for the README: seconds, bytes

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        """The model's field, and the key within its section."""
        return self.key.rpartition(".")[2]

    @property
    def guix_type(self) -> str:
        """The field's type in binder-lite-configuration (its predicate, without `?`)."""
        if self.kind is Kind.TEXT:
            return "string" if self.default is not None else "maybe-string"
        return {
            Kind.TEXTS: "list-of-strings",
            Kind.PACKAGES: "list-of-package-outputs",
            Kind.INTEGER: "integer",
            Kind.SIZE: "integer",
            Kind.CHOICE: "symbol",
            Kind.FILE: "maybe-file-like",
            Kind.PACKAGE: "file-like",
        }[self.kind]

    @property
    def guix_default(self) -> object:
        """The default as Guix holds it: lists, symbols, None for an unset value."""
        if isinstance(self.default, tuple):
            return list(self.default)
        if isinstance(self.default, enum.Enum):
            return self.default.value
        return self.default


_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_MIB, _GIB = 1024**2, 1024**3

_SLURM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_GRES = re.compile(r"[A-Za-z0-9_:.,/-]{1,200}")
# What binder-lite sets itself, or what would change where or as whom a session runs.
SBATCH_OWN = (
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--time",
    "-t",
    "--mem",
    "--cpus-per-task",
    "-c",
    "--gres",
    "--partition",
    "-p",
    "--account",
    "-A",
    "--qos",
    "-q",
    "--chdir",
    "-D",
    "--wrap",
    "--uid",
    "--gid",
    "--export",
    "--parsable",
    "--array",
    "-a",
    "--ntasks",
    "-n",
    "--nodes",
    "-N",
    "--mem-per-cpu",
    "--signal",
    "--open-mode",
    "--input",
    "-i",
    "--get-user-env",
    "--container",
    "--propagate",
    "--dependency",
    "-d",
    "--wait",
    "-W",
    "--hold",
    "-H",
    "--test-only",
)


def checks_slurm_name(value: str) -> None:
    """A partition, account or QOS name: it goes into sbatch's command line."""
    if not _SLURM_NAME.fullmatch(value):
        raise checks.Invalid(f"{value!r} is not a Slurm name", "letters, digits, _ . and -")


def checks_gres(value: str) -> None:
    if not _GRES.fullmatch(value):
        raise checks.Invalid(f"{value!r} is not a --gres value", "e.g. gpu:1 or gpu:a100:2")


def checks_sbatch_option(value: str) -> None:
    """One sbatch option, `--name` or `--name=value`, that binder-lite does not set."""
    name = value.partition("=")[0]
    if not re.fullmatch(r"--[a-z][a-z0-9-]*", name):
        raise checks.Invalid(f"{value!r} is not a long sbatch option", "e.g. --constraint=bigmem")
    if name in SBATCH_OWN:
        raise checks.Invalid(
            f"{name} is set by binder-lite, or changes where or how sessions run",
            "the slurm section has keys for partition, account, qos, time, memory, cpus, gres",
        )


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "site.name",
        Kind.TEXT,
        "binder-lite",
        "The site's name: the web page's title, GRUB's menu entry and /etc/issue.",
        "site-name",
        required=True,
    ),
    Setting(
        "site.slug",
        Kind.TEXT,
        "binder-lite",
        "Short name, [a-z0-9-]{1,32}: image file names and the ISO label.",
        "slug",
        required=True,
        check=checks.slug,
    ),
    Setting("site.tagline", Kind.TEXT, "", "Shown under the name on the web page.", "tagline"),
    Setting(
        "site.logo",
        Kind.FILE,
        None,
        "Image shown on the landing page; a file next to the site file.",
        "logo",
    ),
    Setting(
        "site.primary_color",
        Kind.TEXT,
        "#0b6e4f",
        "CSS hex colour of the page.",
        "primary-color",
        check=checks.color,
    ),
    Setting(
        "binder.package",
        Kind.PACKAGE,
        None,
        "The binder-lite package that runs the service.",
        "package",
        layers=Layer.GUIX,
    ),
    Setting(
        "binder.port",
        Kind.INTEGER,
        8080,
        "TCP port the web service listens on.",
        "port",
        low=1,
        high=65535,
    ),
    Setting(
        "binder.max_sessions",
        Kind.INTEGER,
        8,
        "Sessions running at once, for everybody.",
        "max-sessions",
        low=1,
        high=10_000,
    ),
    Setting(
        "binder.max_sessions_per_user",
        Kind.INTEGER,
        2,
        "Sessions one person may run at once.",
        "max-sessions-per-user",
        low=1,
        high=10_000,
    ),
    Setting(
        "binder.idle_timeout",
        Kind.INTEGER,
        1 * _HOUR,
        "Seconds without activity before a session is stopped.",
        "idle-timeout",
        low=_MINUTE,
        high=30 * _DAY,
        unit="seconds",
    ),
    Setting(
        "binder.max_age",
        Kind.INTEGER,
        6 * _HOUR,
        "Seconds a session may live at all.",
        "max-age",
        low=_MINUTE,
        high=365 * _DAY,
        unit="seconds",
    ),
    Setting(
        "binder.allowed_repos",
        Kind.TEXTS,
        ("https://*", "git://*"),
        "URL patterns of the repositories people may launch; * is a wildcard.",
        "allowed-repos",
        check=checks.repo_pattern,
    ),
    Setting(
        "binder.preload",
        Kind.PACKAGES,
        (),
        "Guix packages kept in the store so that sessions needing them start at once.",
        "preload",
        layers=Layer.FILE | Layer.GUIX,
        check=checks.package,
    ),
    Setting(
        "binder.runtime",
        Kind.CHOICE,
        Runtime.GUIX,
        "How sessions run: in Guix containers, with the service's own Jupyter, or as Slurm jobs.",
        "runtime",
        choices=Runtime,
    ),
    Setting(
        "binder.user",
        Kind.TEXT,
        "binder",
        "System account the service runs as.",
        "user",
        check=checks.user_name,
    ),
    Setting(
        "binder.state_dir",
        Kind.TEXT,
        "/var/lib/binder-lite",
        "Directory of the service's database, secrets and sessions.",
        "state-directory",
        check=checks.absolute_target_path,
    ),
    Setting(
        "binder.log_file",
        Kind.TEXT,
        "/var/log/binder-lite.log",
        "The service's log file (the Shepherd rotates it).",
        "log-file",
        layers=Layer.GUIX,
    ),
    Setting(
        "binder.push_credential_file",
        Kind.TEXT,
        None,
        'File on the machine holding "user:token", to push when a login gives no token.',
        "push-credential-file",
        check=checks.absolute_target_path,
    ),
    Setting(
        "binder.api_token_file",
        Kind.TEXT,
        None,
        "File on the machine holding the API's admin token, for a trusted service.",
        "api-token-file",
        check=checks.absolute_target_path,
    ),
    Setting(
        "binder.auth.provider",
        Kind.CHOICE,
        AuthProvider.NONE,
        "Who logs people in: nobody (anonymous visitors), GitHub, GitLab or OIDC.",
        "auth-provider",
        choices=AuthProvider,
    ),
    Setting(
        "binder.auth.issuer",
        Kind.TEXT,
        None,
        "The login provider's URL (required for OIDC).",
        "auth-issuer",
        check=checks.issuer_url,
    ),
    Setting(
        "binder.auth.client_id",
        Kind.TEXT,
        None,
        "OAuth client ID registered with the provider.",
        "auth-client-id",
    ),
    Setting(
        "binder.auth.client_secret_file",
        Kind.TEXT,
        None,
        "File on the machine holding the OAuth client secret, read when the service starts.",
        "auth-client-secret-file",
        check=checks.absolute_target_path,
    ),
    Setting(
        "binder.public_url",
        Kind.TEXT,
        None,
        "Where people reach the service; OAuth redirects are built from it.",
        "public-url",
        check=checks.public_url,
    ),
    Setting(
        "binder.trusted_proxies",
        Kind.TEXTS,
        (),
        "Proxies in front (IPs or CIDRs) whose X-Forwarded-* headers are believed.",
        "trusted-proxies",
        check=checks.ip_network,
    ),
    Setting(
        "binder.session_network",
        Kind.CHOICE,
        SessionNetwork.OUTBOUND,
        "What sessions may reach: the internet (never this machine's networks) or nothing.",
        "session-network",
        choices=SessionNetwork,
    ),
    Setting(
        "binder.session_limits.memory",
        Kind.SIZE,
        2 * _GIB,
        "Memory one session may use, all its processes together.",
        "session-memory",
        low=64 * _MIB,
        unit="bytes",
    ),
    Setting(
        "binder.session_limits.processes",
        Kind.INTEGER,
        256,
        "Tasks (processes and threads) one session may run at once.",
        "session-processes",
        low=8,
        high=100_000,
    ),
    Setting(
        "binder.session_limits.disk",
        Kind.SIZE,
        2 * _GIB,
        "Disk one session's files may take (its checkout and /tmp).",
        "session-disk",
        low=16 * _MIB,
        unit="bytes",
    ),
    Setting(
        "binder.max_repo_size",
        Kind.SIZE,
        512 * _MIB,
        "Disk a repository may take in the cache.",
        "max-repo-size",
        low=_MIB,
        unit="bytes",
    ),
    Setting(
        "binder.session_domain",
        Kind.TEXT,
        None,
        "Serve each session from ID.DOMAIN, an origin of its own, instead of /s/ID/.",
        "session-domain",
        check=checks.domain,
    ),
    Setting(
        "binder.cors_allowed_origins",
        Kind.TEXTS,
        (),
        "Origins (https://docs.example.org) whose pages may launch and use sessions.",
        "cors-allowed-origins",
        check=checks.origin,
    ),
    Setting(
        "binder.cross_origin_launches",
        Kind.CHOICE,
        CrossOriginLaunches.OPEN,
        "Pages of other origins launch freely, or only with a signed build token.",
        "cross-origin-launches",
        choices=CrossOriginLaunches,
    ),
    Setting(
        "binder.slurm.partition",
        Kind.TEXT,
        None,
        "Slurm partition sessions are submitted to (none: the cluster's default).",
        "slurm-partition",
        check=checks_slurm_name,
    ),
    Setting(
        "binder.slurm.account",
        Kind.TEXT,
        None,
        "Slurm account sessions are charged to.",
        "slurm-account",
        check=checks_slurm_name,
    ),
    Setting(
        "binder.slurm.qos",
        Kind.TEXT,
        None,
        "Slurm quality of service of the sessions' jobs.",
        "slurm-qos",
        check=checks_slurm_name,
    ),
    Setting(
        "binder.slurm.time_limit",
        Kind.INTEGER,
        0,
        "Minutes a session's job may run (0: binder.max_age, in minutes rounded up).",
        "slurm-time-limit",
        low=0,
        high=365 * 24 * 60,
    ),
    Setting(
        "binder.slurm.memory",
        Kind.SIZE,
        0,
        "Memory asked of Slurm per session (0: binder.session_limits.memory).",
        "slurm-memory",
        unit="bytes",
    ),
    Setting(
        "binder.slurm.cpus",
        Kind.INTEGER,
        1,
        "CPUs asked of Slurm per session.",
        "slurm-cpus",
        low=1,
        high=4096,
    ),
    Setting(
        "binder.slurm.gres",
        Kind.TEXT,
        None,
        "Generic resources per session, as sbatch's --gres takes them (gpu:1).",
        "slurm-gres",
        check=checks_gres,
    ),
    Setting(
        "binder.slurm.extra_args",
        Kind.TEXTS,
        (),
        "More sbatch options (--constraint=bigmem); never those binder-lite sets itself.",
        "slurm-extra-args",
        check=checks_sbatch_option,
    ),
    Setting(
        "binder.slurm.node_runtime",
        Kind.CHOICE,
        NodeRuntime.GUIX,
        "How a job runs its session: in Guix containers (the shared store) or local Jupyter.",
        "slurm-node-runtime",
        choices=NodeRuntime,
    ),
    Setting(
        "binder.tls.port",
        Kind.INTEGER,
        443,
        "TCP port of HTTPS, with TLS; binder.port then only redirects to binder.public_url.",
        "tls-port",
        low=1,
        high=65535,
    ),
    Setting(
        "binder.tls.certificate_file",
        Kind.TEXT,
        None,
        "File on the machine holding the certificate chain (PEM), read when the service starts.",
        "tls-certificate-file",
        check=checks.absolute_target_path,
    ),
    Setting(
        "binder.tls.key_file",
        Kind.TEXT,
        None,
        "File on the machine holding the certificate's private key (PEM, unencrypted).",
        "tls-key-file",
        check=checks.absolute_target_path,
    ),
    Setting(
        "binder.tls.acme.email",
        Kind.TEXT,
        None,
        "Guix System: the address Let's Encrypt writes to about the certificate.",
        "acme-email",
        layers=Layer.FILE | Layer.GUIX,
        check=checks.email,
    ),
    Setting(
        "binder.tls.acme.domains",
        Kind.TEXTS,
        (),
        "Guix System: get and renew a certificate for these names with certbot (port 80).",
        "acme-domains",
        layers=Layer.FILE | Layer.GUIX,
        check=checks.domain,
    ),
)

BY_KEY = {s.key: s for s in SETTINGS}


def default(key: str) -> Any:
    """The default of the setting at `key` (for the model's fields)."""
    return BY_KEY[key].default


def in_section(section: str, layer: Layer = Layer.FILE) -> tuple[Setting, ...]:
    """The settings written directly in `section` (e.g. `binder.auth`) that reach `layer`."""
    return tuple(s for s in SETTINGS if s.section == section and layer in s.layers)


def file_value(setting: Setting) -> str:
    """The default as it reads in a site file (YAML flow style)."""
    value = setting.default
    if value is None:
        return ""
    if setting.kind is Kind.SIZE:
        if value == 0:
            return "0"
        unit = "GiB" if value % _GIB == 0 else "MiB"
        return f"{value // (_GIB if unit == 'GiB' else _MIB)}{unit}"
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str) and not isinstance(value, enum.Enum):
        return f'"{value}"' if not value or value[0] in "#*&!|>'\"%@`" else value
    return str(value)


def starter_section(prefix: str = "binder", indent: int = 0) -> str:
    """The `prefix` section of the `site init` starter: each setting with its default
    and documentation; those without a default commented out."""
    lines: list[str] = []
    pad = "  " * indent
    nested: list[str] = []
    for s in _file_settings(prefix):
        if s.section != prefix:
            # The section directly inside `prefix` (binder.tls for binder.tls.acme.email).
            child = f"{prefix}.{s.key.removeprefix(prefix + '.').split('.')[0]}"
            if child not in nested:
                nested.append(child)
                lines.append(f"{pad}  {child.rpartition('.')[2]}:")
                lines.append(starter_section(child, indent + 1))
            continue
        entry = f"{pad}  {s.name}: {file_value(s)}".rstrip()
        if s.default is None:
            entry = f"{pad}  # {s.name}:"
        doc = s.doc
        if s.choices is not None:
            doc += " (" + " | ".join(c.value for c in s.choices) + ")"
        lines.append(f"{entry:<34} # {doc}")
    return "\n".join(lines)


def readme_table() -> str:
    """The README's table of the `binder` section."""
    rows = ["| key | default | what |", "|---|---|---|"]
    for s in _file_settings("binder"):
        key = s.key.removeprefix("binder.")
        shown = f"`{file_value(s)}`" if s.default is not None else "none"
        if s.choices is not None:
            shown += " (" + ", ".join(f"`{c.value}`" for c in s.choices) + ")"
        elif s.unit == "seconds":
            shown += f" {s.unit}"
        rows.append(f"| `{key}` | {shown} | {s.doc} |")
    return "\n".join(rows)


def _file_settings(prefix: str) -> Iterable[Setting]:
    return (s for s in SETTINGS if s.key.startswith(prefix + ".") and Layer.FILE in s.layers)


def site_value(setting: Setting, site: object) -> Any:
    """The value of `setting` in a loaded site (the model), found by its key:
    `binder.auth.provider` is `site.binder.auth.provider`."""
    value = site
    for part in setting.key.split("."):
        value = getattr(value, part)
    return value


def guix_fields(site: object) -> list[tuple[str, str]]:
    """The `binder-lite-configuration` fields a site sets, as (field, Scheme expression)
    for the operating-system template: every setting of the site file that reaches the
    Guix record, so a new setting cannot be left out of the rendered system.  Unset
    optional values are left to the record's default; files (the logo) are the
    template's, since they need a store name."""
    fields = []
    for s in SETTINGS:
        if Layer.FILE not in s.layers or Layer.GUIX not in s.layers or s.kind is Kind.FILE:
            continue
        value = site_value(s, site)
        if value is not None:
            fields.append((s.guix, _scheme(s, value)))
    return fields


def _scheme(setting: Setting, value: Any) -> str:
    kind = setting.kind
    if kind is Kind.TEXT:
        return scheme.scm_str(value)
    if kind is Kind.TEXTS:
        return scheme.scm_strs(value)
    if kind is Kind.PACKAGES:
        return f"(specifications->packages {scheme.scm_strs(value)})"
    if kind in (Kind.INTEGER, Kind.SIZE):
        return scheme.scm_int(value)
    if kind is Kind.CHOICE:
        return "'" + scheme.scm_sym(value.value)
    raise ValueError(f"{setting.key}: no Scheme form for {kind}")
