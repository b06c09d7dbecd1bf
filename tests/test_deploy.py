"""Fleets: the `deploy:` list, deploy.scm, `binder-lite deploy` and `reconfigure`.

The Guix tier goes as far as Guix goes without the machines: it loads deploy.scm,
checks every machine record and lowers each machine's system to a derivation, and
runs `guix deploy` up to the point where it connects (to a port nobody listens on).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import MINIMAL_SITE, ROOT, SSH_KEY, CliResult

from binder_lite import deploy
from binder_lite.errors import SiteError, UsageError
from binder_lite.render import render_system
from binder_lite.scheme import scm_str
from binder_lite.site import load_site
from binder_lite.site.model import DeployMachine, Site

Cli = Callable[..., CliResult]
WriteSite = Callable[..., Path]

# Host keys: real encodings (validation decodes them), private halves thrown away.
HOST_KEY = SSH_KEY.replace(" you@laptop", " root@binder1")
HOST_KEY_BARE = " ".join(HOST_KEY.split()[:2])
ECDSA_KEY = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBC/R/XBlyYBr+"
    "WIzSF1/eY7yrGuc0wX7rpGD1f/TDtRalMmxKQQftxi4bwR4x4c6oQUgWZUimoQ/tYm9vkhQ8J0="
)
OTHER_ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICLiTcdu8YEGXeCbkd8IZDdjBiPYWtfYAviAA+lY1S8p"
THIRD_ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIInCFTI47MAInGYW1zAT2EIDFGvoHxWD5z9HiyLpph75"

ADMIN_SITE = MINIMAL_SITE + "    admin: true\n"


def site_with(deploy_yaml: str, base: str = MINIMAL_SITE) -> str:
    return base + "deploy:\n" + textwrap.indent(textwrap.dedent(deploy_yaml), "  ")


def problems(path: Path, known_hosts: Path | None = None) -> list[str]:
    with pytest.raises(SiteError) as info:
        load_site(path, known_hosts=known_hosts)
    return [str(p) for p in info.value.problems]


@pytest.fixture
def no_known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "known_hosts"  # absent: nothing known


# -- the deploy: list -------------------------------------------------------------------


def test_defaults_and_the_key_as_guix_reads_it(write_site: WriteSite, no_known_hosts: Path) -> None:
    path = write_site(site_with(f"- host: binder1.example.org\n  host_key: {HOST_KEY}\n"))
    (machine,) = load_site(path, known_hosts=no_known_hosts).deploy
    # Guix 1.5 splits host-key on spaces and matches two or three words: the comment goes.
    assert machine == DeployMachine("binder1.example.org", HOST_KEY_BARE)
    assert (machine.port, machine.user, machine.system) == (22, "root", "x86_64-linux")
    assert machine.build_locally and machine.identity is None and machine.hostname is None


def test_no_deploy_list_is_no_machines(write_site: WriteSite) -> None:
    assert load_site(write_site(MINIMAL_SITE)).deploy == ()


def test_a_machine_without_any_host_key_is_refused_where_it_is(
    write_site: WriteSite, no_known_hosts: Path
) -> None:
    path = write_site(site_with("- host: binder1.example.org\n  port: 2222\n"))
    (problem,) = problems(path, no_known_hosts)
    assert problem.startswith(f"{path}:11:5: deploy[0].host_key: no host key for ")
    assert "[binder1.example.org]:2222" in problem and str(no_known_hosts) in problem
    assert "cat /etc/ssh/ssh_host_ed25519_key.pub" in problem  # where to read it instead
    # Not deploying (site check, render, the machine itself): nothing to look up yet.
    assert load_site(path).deploy[0].host_key is None


def test_host_keys_come_from_known_hosts_hashed_or_not(
    write_site: WriteSite, tmp_path: Path
) -> None:
    keygen = shutil.which("ssh-keygen")
    known = tmp_path / "known_hosts"
    known.write_text(
        f"binder1.example.org {ECDSA_KEY}\n"  # Guix cannot check this type: skipped
        f"binder1.example.org {OTHER_ED25519}\n"
        f"[binder2.example.org]:2222 {HOST_KEY_BARE}\n"
        f"binder3.example.org {ECDSA_KEY}\n"
    )
    if keygen:  # hashed names, as Debian's ssh writes them
        subprocess.run([keygen, "-H", "-f", known], capture_output=True, check=True, timeout=30)
        assert "binder1" not in known.read_text()
    path = write_site(
        site_with(
            """\
            - host: binder1.example.org
            - host: binder2.example.org
              port: 2222
            """
        )
    )
    keys = [m.host_key for m in load_site(path, known_hosts=known).deploy]
    assert keys == [OTHER_ED25519, HOST_KEY_BARE]
    only_ecdsa = write_site(site_with("- host: binder3.example.org\n"), "ecdsa.yaml")
    (problem,) = problems(only_ecdsa, known)
    assert "has no ssh-ed25519 or ssh-rsa key for it" in problem


def test_known_hosts_is_read_as_openssh_reads_it(write_site: WriteSite, tmp_path: Path) -> None:
    """Lines OpenSSH skips or treats specially cannot hand Guix a wrong key, nor stop
    the lookup: the real ~/.ssh/known_hosts has them."""
    known = tmp_path / "known_hosts"
    known.write_bytes(
        b"garbage line\n\xff\xfe not UTF-8\n# a comment\n"
        + f"@cert-authority *.example.org {OTHER_ED25519}\n"
        f"binder1.example.org ssh-ed25519 !!!not-base64\n"
        f"@revoked * {OTHER_ED25519}\n"
        f"binder1.example.org {OTHER_ED25519}\n"  # revoked above: never used
        f"*.example.org,!binder3.example.org {HOST_KEY_BARE}\n"
        f"[192.0.2.7]:2222 {THIRD_ED25519}\n".encode()
    )
    path = write_site(
        site_with(
            """\
            - host: binder1.example.org
            - host: binder2.example.org
            - host: 192.0.2.7
              port: 2222
            """
        )
    )
    keys = [m.host_key for m in load_site(path, known_hosts=known).deploy]
    # The pattern's key, not the revoked one; [host]:port read literally.
    assert keys == [HOST_KEY_BARE, HOST_KEY_BARE, THIRD_ED25519]
    negated = write_site(site_with("- host: binder3.example.org\n"), "negated.yaml")
    (problem,) = problems(negated, known)
    assert "no host key for binder3.example.org" in problem


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("host: binder1\n  port: 0", "deploy[0].port: 0 is out of range"),
        ("host: binder1\n  port: 70000", "deploy[0].port: 70000 is out of range"),
        ("host: binder1\n  port: ssh", "deploy[0].port: expected a whole number"),
        ("host: bad host", "deploy[0].host: 'bad host' is not a host name or IP address"),
        ('host: bin"der', "is not a host name or IP address"),
        ("host: -binder.example.org", "is not a host name or IP address"),
        ("port: 22", "deploy[0].host: is required"),
        ("host: binder1\n  system: x86_64-linx", "did you mean `x86_64-linux`?"),
        ("host: binder1\n  hostkey: x", "deploy[0].hostkey: unknown key"),
        ("host: binder1\n  hostkey: x", "did you mean `host_key`?"),
        (f"host: binder1\n  host_key: {ECDSA_KEY}", "cannot check ecdsa-sha2-nistp256 host keys"),
        ("host: binder1\n  host_key: ssh-ed25519 AAAA", "the key data is not a ssh-ed25519 key"),
        ("host: binder1\n  host_key: '-----BEGIN OPENSSH PRIVATE KEY-----'", "a private key"),
        ("host: binder1\n  identity: ~/.ssh/id_ed25519.pub", "is a public key"),
        ("host: binder1\n  identity: keys/absent", "'keys/absent' does not exist"),
        ("host: binder1\n  user: alice", "'alice' is not an admin of this site"),
        ("host: binder1\n  user: Alice", "'Alice' is not a valid user name"),
        ("host: binder1\n  build_locally: sometimes", "expected true or false"),
        ("host: binder1\n  hostname: bad_name", "'bad_name' is not a valid host name"),
    ],
)
def test_bad_machines_are_located_errors(
    write_site: WriteSite, no_known_hosts: Path, entry: str, expected: str
) -> None:
    key = "" if "host_key" in entry else f"  host_key: {HOST_KEY}\n"
    path = write_site(site_with(f"- {entry}\n{key}"))
    found = problems(path, no_known_hosts)
    assert any(expected in p for p in found), found
    assert all(p.startswith(f"{path}:") for p in found)


def test_admins_may_deploy_and_identity_is_found_beside_the_site(
    write_site: WriteSite, tmp_path: Path, no_known_hosts: Path
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "deploy").write_text("not read: only its path goes to Guix\n")
    entry = f"- host: 192.0.2.10\n  user: alice\n  identity: keys/deploy\n  host_key: {HOST_KEY}\n"
    site = load_site(write_site(site_with(entry, ADMIN_SITE)), known_hosts=no_known_hosts)
    (machine,) = site.deploy
    assert machine.user == "alice" and machine.identity == tmp_path / "keys" / "deploy"


def test_the_same_machine_twice_is_refused(write_site: WriteSite) -> None:
    twice = f"- host: Binder1\n  host_key: {HOST_KEY}\n- host: binder1\n  host_key: {HOST_KEY}\n"
    (problem,) = problems(write_site(site_with(twice)))
    assert "deploy[1].host: binder1 port 22 is listed twice (first as deploy[0])" in problem


def test_deploy_must_be_a_list_of_machines(write_site: WriteSite) -> None:
    (problem,) = problems(write_site(MINIMAL_SITE + "deploy: binder1\n"))
    assert "deploy: expected a list" in problem


# -- deploy.scm --------------------------------------------------------------------------

HOSTILE = [
    'binder") (system "evil',
    'back\\slash "quote" #~(gexp) $(x) ;comment',
    "line\nbreak\ttab\x01",
    "é€😀𝄞",
]


def hostile_site(site: Site, tmp_path: Path) -> Site:
    """Values validation would refuse, straight into the model: the renderer alone must
    keep them literal text."""
    machines = tuple(
        DeployMachine(
            host=text,
            host_key=f"ssh-ed25519 {text}",
            port=2000 + i,
            user=text,
            identity=tmp_path / text.replace("\n", "_"),
            hostname=None,
        )
        for i, text in enumerate(HOSTILE)
    )
    return dataclasses.replace(site, deploy=machines)


FIELDS_SCM = """
(use-modules (ice-9 match))
(define (fields form)
  ;; Every (NAME VALUE) of machine-ssh-configuration, in order, as NAME=HEX.
  (match form
    (('machine-ssh-configuration fields ...)
     (for-each (match-lambda
                 ((name (? string? value)) (format #t "~a=~a~%" name (hex value)))
                 ((name value) (format #t "~a=~s~%" name value)))
               fields))
    ((items ...) (for-each fields items))
    (_ #f)))
(call-with-input-file {file}
  (lambda (port)
    (let loop ((count 0))
      (let ((form (read port)))
        (if (eof-object? form)
            (format #t "forms=~a~%" count)
            (begin (fields form) (loop (+ count 1)))))))
  #:encoding "UTF-8")  ; as the file's coding: cookie says (plain `read` ignores it)
"""


def test_hostile_values_stay_text_for_guile_s_reader(write_site: WriteSite, tmp_path: Path) -> None:
    from test_scheme import GUILE, guile_lines

    if GUILE is None and not os.environ.get("CI"):
        pytest.skip("guile not installed (scripts/setup)")
    site = hostile_site(load_site(write_site(MINIMAL_SITE)), tmp_path)
    config = tmp_path / "deploy.scm"
    config.write_text(deploy.render_deploy(site), encoding="utf-8")
    lines = guile_lines(tmp_path, FIELDS_SCM.format(file=scm_str(str(config))))
    assert lines[-1] == "forms=3"  # use-modules, the system, the list: nothing injected
    got = [line.split("=", 1) for line in lines[:-1]]
    per_machine = [got[i : i + 7] for i in range(0, len(got), 7)]
    assert len(per_machine) == len(HOSTILE), lines
    for machine, fields in zip(site.deploy, per_machine, strict=True):
        values = dict(fields)
        assert values["host-name"] == machine.host.encode().hex()
        assert values["user"] == machine.user.encode().hex()
        assert values["host-key"] == str(machine.host_key).encode().hex()
        assert values["identity"] == str(machine.identity).encode().hex()
        assert values["port"] == str(machine.port)


def test_render_refuses_without_machines_or_keys(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE))
    with pytest.raises(UsageError, match="no machines to deploy to"):
        deploy.render_deploy(site)
    unresolved = dataclasses.replace(site, deploy=(DeployMachine("binder1"),))
    with pytest.raises(UsageError, match="no host key for binder1"):
        deploy.render_deploy(unresolved)


# -- the commands ---------------------------------------------------------------------------


def test_command_lines(write_site: WriteSite, tmp_path: Path) -> None:
    site = load_site(write_site(site_with(f"- host: binder1\n  host_key: {HOST_KEY}\n")))
    config = tmp_path / "deploy.scm"
    argv = deploy.DeployCommand(site, config).argv()
    assert argv[1:3] == ["deploy", f"--load-path={ROOT / 'services'}"]
    assert argv[-1] == str(config) and "--dry-run" not in argv and "--roll-back" not in argv
    both = deploy.DeployCommand(site, config, dry_run=True, roll_back=True).argv()
    assert both[3:] == ["--dry-run", "--roll-back", str(config)]
    system = tmp_path / "system.scm"
    assert deploy.ReconfigureCommand(site, system, dry_run=True).argv()[1:] == [
        "system",
        "reconfigure",
        f"--load-path={ROOT / 'services'}",
        "--dry-run",
        str(system),
    ]


def test_pinned_channels_go_through_time_machine(write_site: WriteSite, tmp_path: Path) -> None:
    (tmp_path / "channels.scm").write_text("(list (channel (name 'guix)))\n")
    text = site_with(f"- host: binder1\n  host_key: {HOST_KEY}\n")
    site = load_site(write_site(text + "guix:\n  channels: channels.scm\n"))
    for argv in (
        deploy.DeployCommand(site, tmp_path / "deploy.scm", roll_back=True).argv(),
        deploy.ReconfigureCommand(site, tmp_path / "system.scm").argv(),
    ):
        assert argv[1:5] == ["time-machine", "-C", str(tmp_path / "channels.scm"), "--"]
        assert argv[5] in ("deploy", "system")


@pytest.fixture
def absent_guix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Guix that is not there: the command line is printed, then exit 127."""
    missing = tmp_path / "no-guix"
    monkeypatch.setenv("BINDER_LITE_GUIX", str(missing))
    return missing


@pytest.mark.parametrize(
    ("options", "flags"),
    [([], []), (["--dry-run"], ["--dry-run"]), (["-r"], ["--roll-back"])],
)
def test_deploy_prints_what_it_runs(
    cli: Cli,
    write_site: WriteSite,
    tmp_path: Path,
    absent_guix: Path,
    options: list[str],
    flags: list[str],
) -> None:
    path = write_site(site_with(f"- host: binder1\n  host_key: {HOST_KEY}\n"))
    result = cli("deploy", path, *options, "-w", tmp_path / "work")
    config = tmp_path / "work" / "test" / "deploy.scm"
    expected = [str(absent_guix), "deploy", f"--load-path={ROOT / 'services'}", *flags]
    assert result.out.splitlines()[0] == "$ " + " ".join([*expected, str(config)])
    assert result.code == 127 and "no-guix not found" in result.err
    assert "Traceback" not in result.err
    assert (config.parent / "system.scm").is_file()  # what deploy.scm loads, beside it


def test_deploy_of_a_site_without_machines_or_with_bad_ones(
    cli: Cli, write_site: WriteSite, tmp_path: Path
) -> None:
    none = cli("deploy", write_site(MINIMAL_SITE), "-w", tmp_path)
    assert none.code == 2 and "no machines to deploy to: add a `deploy:` list" in none.err
    bad = write_site(site_with("- host: binder1\n  port: 0\n"), "bad.yaml")
    result = cli("deploy", bad, "--known-hosts", tmp_path / "none", "-w", tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    assert "deploy[0].port: 0 is out of range" in result.err
    assert "deploy[0].host_key: no host key for binder1" in result.err
    assert not (tmp_path / "test").exists()


def test_reconfigure_refuses_where_there_is_no_guix_system(
    cli: Cli, write_site: WriteSite, tmp_path: Path
) -> None:
    if deploy.CURRENT_SYSTEM.exists():
        pytest.skip("this machine runs Guix System")
    result = cli("reconfigure", write_site(MINIMAL_SITE), "-w", tmp_path)
    assert result.code == 2 and "Traceback" not in result.err
    assert "this machine is not running Guix System (there is no /run/current-system)" in (
        result.err
    )
    assert not (tmp_path / "test").exists()


# -- the real Guix ---------------------------------------------------------------------------

MACHINES_SCM = """
(use-modules (gnu) (gnu machine) (gnu machine ssh) (guix) (guix base16)
             (rnrs bytevectors))
(define (hex text) (bytevector->base16-string (string->utf8 text)))
(define machines (load {file}))
(with-store store
  (for-each
   (lambda (m)
     (let* ((c (machine-configuration m))
            (os (machine-operating-system m))
            (identity ((@@ (gnu machine ssh) machine-ssh-configuration-identity) c)))
       (display (string-join
                 (list (if (machine? m) "machine" "not a machine")
                       (if (eq? (machine-environment m) managed-host-environment-type)
                           "managed-host"
                           (symbol->string (environment-type-name (machine-environment m))))
                       (hex (machine-ssh-configuration-host-name c))
                       (number->string (machine-ssh-configuration-port c))
                       (hex (machine-ssh-configuration-user c))
                       (hex (machine-ssh-configuration-host-key c))
                       (hex ((@@ (gnu machine ssh) machine-ssh-configuration-system) c))
                       (if identity (hex identity) "-")
                       (if (machine-ssh-configuration-build-locally? c) "#t" "#f")
                       (hex (operating-system-host-name os))
                       (if {lower}
                           (derivation-file-name
                            (parameterize ((%graft? #f))
                              (run-with-store store (operating-system-derivation os))))
                           "-"))
                 "\\t"))
       (newline)))
   machines))
"""


def guix_machines(guix: str, tmp_path: Path, config: Path, *, lower: bool) -> list[list[str]]:
    """Load deploy.scm with the real Guix; one row of fields per machine."""
    script = tmp_path / "machines.scm"
    script.write_text(
        MACHINES_SCM.format(file=scm_str(str(config)), lower="#t" if lower else "#f"),
        encoding="utf-8",
    )
    proc = subprocess.run(
        [guix, "repl", f"--load-path={ROOT / 'services'}", "--", script],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines() if line.startswith("machine")]


def h(text: str) -> str:
    return text.encode("utf-8").hex()


FLEET = f"""\
- host: binder1.example.org
  host_key: {HOST_KEY}
- host: 192.0.2.20
  port: 2222
  user: alice
  identity: id_deploy
  host_key: {OTHER_ED25519}
  build_locally: false
  hostname: binder2
"""


@pytest.mark.guix
def test_guix_loads_the_machines_and_lowers_their_systems(
    guix: str, write_site: WriteSite, tmp_path: Path
) -> None:
    (tmp_path / "id_deploy").write_text("a private key\n")
    site = load_site(write_site(site_with(FLEET, ADMIN_SITE)), known_hosts=tmp_path / "none")
    config = deploy.write_deploy(site, tmp_path / "work")
    rows = guix_machines(guix, tmp_path, config, lower=True)
    assert [row[:10] for row in rows] == [
        [
            "machine",
            "managed-host",
            h("binder1.example.org"),
            "22",
            h("root"),
            h(HOST_KEY_BARE),
            h("x86_64-linux"),
            "-",
            "#t",
            h("test"),  # host.hostname
        ],
        [
            "machine",
            "managed-host",
            h("192.0.2.20"),
            "2222",
            h("alice"),
            h(OTHER_ED25519),
            h("x86_64-linux"),
            h(str(tmp_path / "id_deploy")),
            "#f",
            h("binder2"),
        ],
    ]
    drvs = [row[10] for row in rows]
    assert all(d.startswith("/gnu/store/") and d.endswith("-system.drv") for d in drvs), drvs
    assert drvs[0] != drvs[1]  # the host names differ, so do the systems


@pytest.mark.guix
def test_hostile_values_reach_guix_as_the_same_text(
    guix: str, write_site: WriteSite, tmp_path: Path
) -> None:
    site = hostile_site(load_site(write_site(MINIMAL_SITE)), tmp_path)
    config = tmp_path / "work" / deploy.DEPLOY_FILE
    config.parent.mkdir()
    config.write_text(deploy.render_deploy(site), encoding="utf-8")
    (config.parent / "system.scm").write_text(render_system(site), encoding="utf-8")
    rows = guix_machines(guix, tmp_path, config, lower=False)
    assert [(r[2], r[3], r[4], r[5], r[7]) for r in rows] == [
        (h(m.host), str(m.port), h(m.user), h(str(m.host_key)), h(str(m.identity)))
        for m in site.deploy
    ]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 held, never listened on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.mark.guix
def test_dry_run_is_guix_s_own(guix: str, cli: Cli, write_site: WriteSite, tmp_path: Path) -> None:
    (tmp_path / "id_deploy").write_text("a private key\n")
    path = write_site(site_with(FLEET, ADMIN_SITE))
    result = cli("deploy", path, "--dry-run", "--known-hosts", tmp_path / "none", "-w", tmp_path)
    assert result.code == 0, result.err
    assert " deploy --load-path=" in result.out and " --dry-run " in result.out
    assert "The following 2 machines would be deployed:\n  test, binder2" in result.err


@pytest.mark.guix
@pytest.mark.parametrize(
    ("options", "doing"), [([], "failed to deploy"), (["--roll-back"], "failed to roll back")]
)
def test_guix_deploy_gets_as_far_as_connecting(
    guix: str,
    cli: Cli,
    write_site: WriteSite,
    tmp_path: Path,
    closed_port: int,
    options: list[str],
    doing: str,
) -> None:
    entry = f"- host: 127.0.0.1\n  port: {closed_port}\n  host_key: {HOST_KEY}\n"
    path = write_site(site_with(entry))
    result = cli("deploy", path, *options, "-w", tmp_path)
    assert result.code == 1 and "Traceback" not in result.err
    refused = f"SSH connection to '127.0.0.1' port {closed_port} failed: Connection refused"
    # Guix's first and only error is the connection: everything before it was accepted.
    errors = [line for line in result.err.splitlines() if "error:" in line]
    assert errors[0] == f"guix deploy: error: {doing} test: {refused}", result.err
    assert errors[-1] == f"error: guix deploy failed (exit 1): {errors[0]}"
    assert "without a 'host-key' is deprecated" not in result.err  # the key was given


@pytest.mark.guix
def test_guix_errors_in_the_system_are_clear(
    guix: str, cli: Cli, write_site: WriteSite, tmp_path: Path
) -> None:
    entry = f"- host: binder1\n  host_key: {HOST_KEY}\n"
    path = write_site(site_with(entry, MINIMAL_SITE + "packages: [htopp-does-not-exist]\n"))
    result = cli("deploy", path, "--dry-run", "-w", tmp_path)
    assert result.code == 1 and "Traceback" not in result.err
    last = result.err.splitlines()[-1]
    assert last.startswith("error: guix deploy failed (exit 1): ")
    assert "htopp-does-not-exist" in result.err and "unknown package" in result.err
