"""Loading and validating site files: every problem located, all of them at once."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from bounded import in_child
from conftest import EXAMPLES, MINIMAL_SITE, SSH_KEY

from binder_lite.errors import SiteError
from binder_lite.site import load_site
from binder_lite.site.model import AuthProvider, ImageType

WriteSite = Callable[..., Path]


def problems(path: Path) -> list[str]:
    with pytest.raises(SiteError) as info:
        load_site(path)
    return [str(p) for p in info.value.problems]


def one_problem(path: Path) -> str:
    found = problems(path)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("name", ["genenetwork", "demo", "bare-metal"])
def test_examples_load(name: str) -> None:
    site = load_site(EXAMPLES / f"{name}.yaml")
    assert site.site.slug
    assert site.users and all(u.ssh_keys for u in site.users)


def test_full_example_values() -> None:
    site = load_site(EXAMPLES / "genenetwork.yaml")
    assert site.site.name == "GeneNetwork Binder"
    assert site.site.logo == (EXAMPLES / "branding/genenetwork.svg").resolve()
    assert site.host.timezone == "Europe/Amsterdam"
    assert [i.type for i in site.images] == [ImageType.ISO9660, ImageType.QCOW2]
    assert site.image(ImageType.QCOW2).size == "20GiB"
    assert site.services[0].command[0] == "/run/current-system/profile/bin/rsync"
    assert dict(site.services[0].environment) == {"LANG": "C.UTF-8"}
    bare = load_site(EXAMPLES / "bare-metal.yaml")
    assert bare.network.static is not None and not bare.network.dhcp
    assert bare.binder.auth.provider is AuthProvider.GITLAB
    assert bare.binder.auth.client_secret_file == "/etc/binder-lite/oauth-secret"


def test_defaults(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE))
    assert site.host.timezone == "Etc/UTC"
    assert site.host.locale == "en_US.utf8"
    assert site.network.dhcp and site.network.static is None
    assert site.ssh.port == 22 and not site.ssh.password_authentication
    assert site.binder.port == 8080
    assert [i.type for i in site.images] == [ImageType.ISO9660, ImageType.QCOW2]


def test_model_is_frozen(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE))
    with pytest.raises(AttributeError):
        site.host.hostname = "other"  # type: ignore[misc]


def test_unknown_key_is_located_with_a_hint(write_site: WriteSite) -> None:
    path = write_site(MINIMAL_SITE.replace("  hostname: test", "  hostnme: test"))
    found = problems(path)
    assert f"{path}:6:3: host.hostnme: unknown key\n  hint: did you mean `hostname`?" in found
    assert f"{path}:5:1: host.hostname: is required" in found


def test_all_problems_are_reported_in_file_order(write_site: WriteSite) -> None:
    path = write_site(
        """\
        version: 1
        site:
          name: X
          slug: Not_A_Slug
          primary_color: green
        host:
          hostname: -bad-
          timezone: Europe/Amsterdm
        users:
          - name: alice
            ssh_keys: ["ssh-ed25519 AAAA broken"]
        ssh:
          port: eighty
        """
    )
    found = problems(path)
    assert [f.split(": ")[1] for f in found] == [
        "site.slug",
        "site.primary_color",
        "host.hostname",
        "host.timezone",
        "users[0].ssh_keys[0]",
        "ssh.port",
    ]
    assert f"{path}:4:9: site.slug: 'Not_A_Slug' is not a valid slug" in found[0]
    assert "did you mean `Europe/Amsterdam`?" in found[3]
    assert f"{path}:13:9: ssh.port: expected a whole number, got the text 'eighty'" in found


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "1:1: the file is empty"),
        (b"# only a comment\n", "1:1: the file is empty"),
        (b"- a\n- b\n", "1:1: expected a mapping of keys, got a list"),
        (b"version: 1\nsite: [\n", "YAML syntax error"),
        (b"version: 1\nsite:\n\tname: x\n", "3:1: YAML syntax error"),
        (b"version: 1\nsite:\n  name: caf\xe9\n", "3:12: byte 0xe9 is not valid UTF-8"),
        (b"a: 1\n---\nb: 2\n", "expected exactly one YAML document"),
        (b"version: 1\nversion: 2\n", "2:1: version: duplicate key (first given at line 1)"),
    ],
)
def test_unreadable_files(write_site: WriteSite, content: bytes, expected: str) -> None:
    found = problems(write_site(content))
    assert any(expected in f for f in found), found


def alias_bomb() -> str:
    """Ten levels of nine aliases each: 9**10 values once expanded."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def problems_and_peak(path: Path) -> tuple[list[str], int]:
    """The problems loading `path` finds, and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        load_site(path)
    except SiteError as e:
        found = [str(p) for p in e.problems]
    else:
        found = []
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return found, peak


def test_alias_bomb_is_refused_without_expanding_it(write_site: WriteSite) -> None:
    """Were the aliases followed, this would not end (in_child stops it then);
    benchmarks/hostile.py compares its time with loading an ordinary site."""
    found, peak = in_child(problems_and_peak, write_site(alias_bomb()))
    assert len(found) == 1, found
    assert "expands to more than" in found[0] and "aliases" in found[0]
    assert peak < 20 * 2**20


def test_recursive_alias_is_refused(write_site: WriteSite) -> None:
    assert "refers to itself" in one_problem(write_site("a: &a [*a]\n"))


def test_wrong_types(write_site: WriteSite) -> None:
    path = write_site(
        MINIMAL_SITE
        + "ssh:\n  password_authentication: maybe\nbinder:\n  port: [8080]\n"
        + "packages: git\n"
    )
    found = problems(path)
    assert any(
        "ssh.password_authentication: expected true or false, got the text 'maybe'" in f
        for f in found
    )
    assert any("binder.port: expected a whole number, got a list" in f for f in found)
    assert any("packages: expected a list, got the text 'git'" in f for f in found)


def test_yaml_guessed_types_are_text_for_text_fields(write_site: WriteSite) -> None:
    # `keyboard: no` is a boolean to YAML 1.1 ("the Norway problem").
    path = write_site(MINIMAL_SITE.replace("  hostname: test", "  hostname: 1234\n  keyboard: no"))
    site = load_site(path)
    assert site.host.hostname == "1234"
    assert site.host.keyboard == "no"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("- name: alice", "- name: Alice", "users[0].name: 'Alice' is not a valid user name"),
        ("- name: alice", "- name: root", "users[0].name: 'root' is a system account"),
        ("  hostname: test", "  hostname: a.b", "host.hostname: 'a.b' is not a valid host name"),
        ("  slug: test", "  slug: " + "x" * 33, "site.slug:"),
        (f'["{SSH_KEY}"]', '["ssh-foo AAAA x"]', "unknown SSH key type 'ssh-foo'"),
        (f'["{SSH_KEY}"]', '["-----BEGIN OPENSSH PRIVATE KEY-----"]', "this is a private key"),
        (f'["{SSH_KEY}"]', '["ssh-rsa ' + SSH_KEY.split()[1] + '"]', "is not a ssh-rsa key"),
        ("version: 1", "version: 2", "version: this binder-lite reads version 1 site files"),
    ],
)
def test_bad_values(write_site: WriteSite, old: str, new: str, expected: str) -> None:
    found = problems(write_site(MINIMAL_SITE.replace(old, new)))
    assert any(expected in f for f in found), found


def test_duplicate_users_and_services(write_site: WriteSite) -> None:
    path = write_site(
        MINIMAL_SITE
        + "  - name: alice\n"
        + "services:\n"
        + "  - {name: sync, command: [/bin/true]}\n"
        + "  - {name: sync, command: [/bin/false]}\n"
    )
    found = problems(path)
    assert any(":10:11: users[1].name: user 'alice' is listed twice" in f for f in found), found
    assert any("services[1].name: service 'sync' is defined twice" in f for f in found), found


@pytest.mark.parametrize("name", ["ssh-daemon", "networking", "binder-lite", "guix-daemon"])
def test_service_name_provided_by_the_system(write_site: WriteSite, name: str) -> None:
    path = write_site(MINIMAL_SITE + f"services:\n  - {{name: {name}, command: [/bin/true]}}\n")
    assert f"the system already provides a service named '{name}'" in one_problem(path)


def test_service_checks(write_site: WriteSite) -> None:
    path = write_site(
        MINIMAL_SITE
        + "services:\n"
        + "  - name: a\n    command: [rsync, -a]\n    user: mallory\n"
        + "    environment: {API_TOKEN: hunter2}\n"
    )
    found = "\n".join(problems(path))
    assert "command[0]: 'rsync' is not an absolute path" in found
    assert "user: there is no account 'mallory'" in found
    assert "environment.API_TOKEN: secrets may not be written in the site file" in found


def test_unknown_image_type_lists_the_valid_ones(write_site: WriteSite) -> None:
    message = one_problem(write_site(MINIMAL_SITE + "images:\n  - type: qcow3\n"))
    assert "images[0].type: 'qcow3' is not one of: iso9660, uncompressed-iso9660, qcow2" in message
    assert "efi-raw" in message and "did you mean `qcow2`?" in message


def test_image_sizes(write_site: WriteSite) -> None:
    site = load_site(write_site(MINIMAL_SITE + "images:\n  - {type: efi-raw, size: 8 GiB}\n"))
    assert site.images[0].size == "8GiB"
    found = problems(
        write_site(
            MINIMAL_SITE
            + "images:\n  - {type: qcow2, size: 10MiB}\n  - {type: iso9660, size: 4G}\n"
            "  - {type: qcow2}\n"
        )
    )
    assert any("too small" in f for f in found)
    assert any("size does not apply" in f for f in found)
    assert any("image type qcow2 is listed twice" in f for f in found)


def test_missing_logo(write_site: WriteSite, tmp_path: Path) -> None:
    path = write_site(MINIMAL_SITE.replace("  slug: test", "  slug: test\n  logo: branding/x.svg"))
    message = one_problem(path)
    assert f"{path}:5:9: site.logo: 'branding/x.svg' does not exist" in message
    assert "relative to the site file" in message
    (tmp_path / "branding").mkdir()
    (tmp_path / "branding/x.svg").write_text("<svg/>")
    assert load_site(path).site.logo == tmp_path / "branding/x.svg"


def test_inline_secret_is_refused_and_the_file_form_explained(write_site: WriteSite) -> None:
    path = write_site(
        MINIMAL_SITE
        + "binder:\n  auth:\n    provider: github\n    client_id: abc\n"
        + "    client_secret: s3cr3t-value\n"
    )
    found = problems(path)
    secret = next(f for f in found if "client_secret:" in f)
    assert "binder.auth.client_secret: secrets may not be written in the site file" in secret
    assert "client_secret_file: /etc/binder-lite/client-secret" in secret
    assert "/gnu/store" in secret
    assert not any("s3cr3t-value" in f for f in found)


def test_auth_requirements(write_site: WriteSite) -> None:
    found = problems(write_site(MINIMAL_SITE + "binder:\n  auth:\n    provider: oidc\n"))
    joined = "\n".join(found)
    assert "binder.auth.client_id: is required with provider: oidc" in joined
    assert "binder.auth.client_secret_file: is required with provider: oidc" in joined
    assert "binder.auth.issuer: is required with provider: oidc" in joined
    path = write_site(
        MINIMAL_SITE + "binder:\n  auth:\n    provider: oidc\n    issuer: https://id.example\n"
        "    client_id: c\n    client_secret_file: etc/secret\n"
    )
    assert "is not an absolute path on the target" in one_problem(path)


def test_nobody_can_log_in(write_site: WriteSite) -> None:
    text = MINIMAL_SITE.replace(f'    ssh_keys: ["{SSH_KEY}"]\n', "")
    message = one_problem(write_site(text))
    assert "users: nobody can log into this machine" in message
    with_password = write_site(text + "ssh:\n  password_authentication: true\n", "b.yaml")
    assert load_site(with_password).ssh.password_authentication


def test_network(write_site: WriteSite) -> None:
    site = load_site(
        write_site(
            MINIMAL_SITE + "network:\n  static: {address: 192.0.2.10/24, gateway: 192.0.2.1}\n"
        )
    )
    assert site.network.static is not None and site.network.static.interface == "eth0"
    found = problems(
        write_site(
            MINIMAL_SITE + "network:\n  dhcp: true\n  static:\n    address: 192.0.2.10\n"
            "    gateway: 198.51.100.1\n    dns: [dns.example]\n"
        )
    )
    joined = "\n".join(found)
    assert "`dhcp: true` and a `static:` block exclude each other" in joined
    assert "'192.0.2.10' has no prefix length" in joined
    assert "'dns.example' is not an IP address" in joined
    ipv6 = write_site(
        MINIMAL_SITE + "network:\n  static: {address: 2001:db8::5/64, gateway: 2001:db9::1}\n",
        "v6.yaml",
    )
    assert "2001:db9::1 is not on 2001:db8::/64" in one_problem(ipv6)


def test_channels_path(write_site: WriteSite, tmp_path: Path) -> None:
    path = write_site(MINIMAL_SITE + "guix:\n  channels: channels.scm\n")
    assert "guix.channels: 'channels.scm' does not exist" in one_problem(path)
    (tmp_path / "channels.scm").write_text("(list)")
    assert load_site(path).guix.channels == tmp_path / "channels.scm"


def test_text_that_cannot_be_written_as_utf8_is_refused(write_site: WriteSite) -> None:
    site = MINIMAL_SITE.replace("  slug: test", '  slug: test\n  tagline: "a \\udfff"')
    site += (
        'packages: [git, "\\ud83d\\ude00"]\nservices:\n  - name: s\n'
        '    command: ["/bin/true"]\n    environment: {X: "\\ud800"}\n'
    )
    found = problems(write_site(site))
    assert len(found) == 3, found
    assert "site.tagline: contains U+DFFF, a lone surrogate" in found[0]
    assert "packages[1]: contains U+D83D, a lone surrogate" in found[1]
    assert "services[0].environment.X: contains U+D800, a lone surrogate" in found[2]
    assert "hint: write the character itself, or \\U and 8 hex digits" in found[0]


def test_required_text_of_the_wrong_type_is_one_problem(write_site: WriteSite) -> None:
    found = one_problem(write_site(MINIMAL_SITE.replace("name: Test", "name: [Test]")))
    assert found.endswith("site.name: expected text, got a list")
