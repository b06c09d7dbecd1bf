"""Each setting of the service is declared once (site/settings.py); every other form of it,
the model, the validator, README.md, the `site init` starter and the Guix record, agrees."""

from __future__ import annotations

import ast
import dataclasses
import enum
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MINIMAL_SITE, ROOT, SSH_KEY

from binder_lite.errors import SiteError
from binder_lite.render import render_system
from binder_lite.site import load_site, model
from binder_lite.site.model import Binder, Branding
from binder_lite.site.settings import SETTINGS, Kind, Layer, Setting, readme_table

SERVICES_SCM = ROOT / "services" / "binder-lite" / "services.scm"
FILE_SETTINGS = [s for s in SETTINGS if Layer.FILE in s.layers]
MODELS = {
    "site": "Branding",
    "binder": "Binder",
    "binder.auth": "Auth",
    "binder.session_limits": "SessionLimits",
    "binder.slurm": "Slurm",
    "binder.tls": "Tls",
    "binder.tls.acme": "Acme",
}


def model_default(setting: Setting) -> Any:
    fields = {f.name: f for f in dataclasses.fields(getattr(model, MODELS[setting.section]))}
    assert setting.name in fields, f"the model has no field for {setting.key}"
    return fields[setting.name].default


@pytest.mark.parametrize("setting", FILE_SETTINGS, ids=lambda s: s.key)
def test_model_defaults_are_the_table_s(setting: Setting) -> None:
    if setting.required:
        assert model_default(setting) is dataclasses.MISSING
    else:
        assert model_default(setting) == setting.default


def test_a_site_without_binder_settings_gets_the_table_s_defaults(
    write_site: Callable[..., Path],
) -> None:
    site = load_site(write_site(MINIMAL_SITE))
    for setting in FILE_SETTINGS:
        owner: Any = site
        for part in setting.section.split("."):
            owner = getattr(owner, part)
        if not setting.required:
            assert getattr(owner, setting.name) == setting.default, setting.key


SAMPLES: dict[Kind, tuple[str, Any]] = {
    Kind.TEXTS: ("[https://example.org/*]", ("https://example.org/*",)),
    Kind.PACKAGES: ("[python-numpy]", ("python-numpy",)),
    Kind.SIZE: ("3GiB", 3 * 1024**3),
}
TEXT_SAMPLES = {
    "binder.user": "notebooks",
    "binder.state_dir": "/srv/binder",
    "binder.push_credential_file": "/etc/binder-lite/push",
    "binder.api_token_file": "/etc/binder-lite/api-token",
    "binder.auth.issuer": "https://id.example.org",
    "binder.auth.client_id": "binder",
    "binder.auth.client_secret_file": "/etc/binder-lite/oauth",
    "binder.public_url": "https://binder.example.org/",
    "binder.session_domain": "s.example.org",
    "binder.slurm.partition": "interactive",
    "binder.slurm.account": "genenetwork",
    "binder.slurm.qos": "short",
    "binder.slurm.gres": "gpu:1",
    "binder.tls.certificate_file": "/etc/binder-lite/tls/fullchain.pem",
    "binder.tls.key_file": "/etc/binder-lite/tls/privkey.pem",
    "binder.tls.acme.email": "admin@example.org",
}
# What a setting needs beside it to be valid, as YAML lines following _nest's.
COMPANIONS = {
    "binder.auth.provider": "    client_id: binder\n"
    "    client_secret_file: /etc/binder-lite/oauth\n",
    "binder.tls.certificate_file": "    key_file: /etc/binder-lite/tls/privkey.pem\n"
    "  public_url: https://binder.example.org/\n",
    "binder.tls.key_file": "    certificate_file: /etc/binder-lite/tls/fullchain.pem\n"
    "  public_url: https://binder.example.org/\n",
    "binder.tls.acme.email": "      domains: [binder.example.org]\n"
    "  public_url: https://binder.example.org/\n",
    "binder.tls.acme.domains": "  public_url: https://binder.example.org/\n",
}


def _sample(setting: Setting) -> tuple[str, Any]:
    if setting.kind is Kind.INTEGER:
        value = setting.low + 1 if setting.default != setting.low + 1 else setting.low
        return str(value), value
    if setting.kind is Kind.CHOICE:
        assert setting.choices is not None
        choice = next(c for c in setting.choices if c != setting.default)
        return str(choice), choice
    if setting.key == "binder.trusted_proxies":
        return "[10.0.0.0/24]", ("10.0.0.0/24",)
    if setting.key == "binder.cors_allowed_origins":
        return "[https://docs.example.org]", ("https://docs.example.org",)
    if setting.key == "binder.tls.acme.domains":
        return "[binder.example.org]", ("binder.example.org",)
    if setting.key == "binder.slurm.extra_args":
        return "[--constraint=bigmem]", ("--constraint=bigmem",)
    if setting.kind is Kind.TEXT:
        return TEXT_SAMPLES[setting.key], TEXT_SAMPLES[setting.key]
    return SAMPLES[setting.kind]


def _nest(setting: Setting, written: str) -> str:
    """The YAML lines giving `setting` the value `written`, inside `binder:`."""
    parts = setting.key.split(".")[1:]
    lines = [f"{'  ' * (i + 1)}{part}:" for i, part in enumerate(parts[:-1])]
    lines.append(f"{'  ' * len(parts)}{parts[-1]}: {written}")
    return "binder:\n" + "\n".join(lines) + "\n"


BINDER_FILE_SETTINGS = [s for s in FILE_SETTINGS if s.section.startswith("binder")]


@pytest.mark.parametrize("setting", BINDER_FILE_SETTINGS, ids=lambda s: s.key)
def test_the_validator_reads_each_setting_as_its_kind(
    setting: Setting, write_site: Callable[..., Path]
) -> None:
    written, expected = _sample(setting)
    text = _nest(setting, written) + COMPANIONS.get(setting.key, "")
    site = load_site(write_site(MINIMAL_SITE + text))
    owner: Any = site.binder
    for part in setting.section.split(".")[1:]:
        owner = getattr(owner, part)
    assert getattr(owner, setting.name) == expected
    with pytest.raises(SiteError) as refused:
        load_site(write_site(MINIMAL_SITE + _nest(setting, "{a: 1}")))
    assert f"{setting.key}: expected" in str(refused.value)


def test_validate_py_writes_no_default_of_its_own() -> None:
    """Defaults come from the model (and the table), never a second literal in the
    validator: `s.text("timezone", "Etc/UTC")` once disagreed with model.py's."""
    source = ROOT / "src" / "binder_lite" / "site" / "validate.py"
    literals = []
    for node in ast.walk(ast.parse(source.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("text", "texts", "integer", "boolean")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant | ast.Tuple)
            and not (isinstance(node.args[1], ast.Constant) and node.args[1].value is None)
        ):
            literals.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not literals


def test_readme_binder_table_is_generated_from_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- binder settings: begin -->\n(.*?)\n<!-- binder settings: end -->", readme, re.S
    )
    assert match, "README.md has no generated binder table"
    assert match.group(1) == readme_table()


def test_the_starter_writes_every_default(write_site: Callable[..., Path]) -> None:
    from binder_lite.starter import render_starter

    text = render_starter(Path("site.yaml"), "Starter", SSH_KEY)
    site = load_site(write_site(text))
    assert site.binder == Binder()
    assert site.site.primary_color == Branding("n", "s").primary_color
    for setting in BINDER_FILE_SETTINGS:
        assert f" {setting.name}:" in text, setting.key


# -- the Guix record, read from services.scm ----------------------------------------

TOKEN = re.compile(
    r"""\s+|;[^\n]*|"(?:[^"\\]|\\.)*"|\#\\(?:[a-z]+|.)|\#\$@|\#[~$(]|[()']|[^\s()'";]+""",
    re.S,
)


def read_scheme(text: str) -> list[Any]:
    """The forms of a Scheme file: lists, strings (as str), symbols (as Symbol), numbers."""
    tokens = [t for t in TOKEN.findall(text) if t.strip() and not t.startswith(";")]
    forms: list[Any] = []
    stack: list[list[Any]] = [forms]
    prefixes: list[list[str | None]] = [[]]
    for token in tokens:
        if token in ("(", "#("):
            stack.append([])
            prefixes.append([])
            continue
        if token in ("'", "#~", "#$", "#$@"):
            prefixes[-1].append(token)
            continue
        if token == ")":
            value: Any = stack.pop()
            prefixes.pop()
        elif token.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", token[1:-1])
        elif re.fullmatch(r"-?\d+", token):
            value = int(token)
        else:
            value = Symbol(token)
        while prefixes[-1]:
            value = [Symbol(prefixes[-1].pop()), value]
        stack[-1].append(value)
    return forms


class Symbol(str):
    pass


def scheme_value(expr: Any) -> Any:
    """A field's default: literals, quoted data, products; a variable by its name."""
    if isinstance(expr, list) and expr and expr[0] == "'":
        return _datum(expr[1])
    if isinstance(expr, list) and expr and expr[0] == "*":
        product = 1
        for factor in expr[1:]:
            product *= scheme_value(factor)
        return product
    if isinstance(expr, Symbol):
        return {"#t": True, "#f": False}.get(expr, ("variable", str(expr)))
    return expr


def _datum(datum: Any) -> Any:
    if isinstance(datum, list):
        return [_datum(d) for d in datum]
    return str(datum) if isinstance(datum, Symbol) else datum


def _record_form() -> list[Any]:
    forms = read_scheme(SERVICES_SCM.read_text())
    heads = ("define-configuration/no-serialization", "define-record-type*")
    return next(f for f in forms if isinstance(f, list) and f[0] in heads and "binder" in f[1])


def guix_record_fields() -> list[tuple[str, str | None, Any, str | None]]:
    """(name, type, default, documentation) of binder-lite-configuration's fields;
    an older (guix records) record has no types or documentation."""
    record = _record_form()
    if record[0] == "define-record-type*":
        return [
            (
                str(name),
                None,
                next((scheme_value(o[1]) for o in opts if o[0] == "default"), None),
                None,
            )
            for name, _getter, *opts in record[4:]
        ]
    fields: list[tuple[str, str | None, Any, str | None]] = []
    for name, spec, doc, *_ in record[2:]:
        if isinstance(spec, list):
            fields.append((str(name), str(spec[0]), scheme_value(spec[1]), doc))
        else:
            fields.append((str(name), str(spec), None, doc))
    return fields


def test_guix_record_is_a_define_configuration() -> None:
    assert _record_form()[:2] == [
        "define-configuration/no-serialization",
        "binder-lite-configuration",
    ]


GUIX_SETTINGS = [s for s in SETTINGS if Layer.GUIX in s.layers]


def test_guix_record_has_the_table_s_fields_in_order() -> None:
    assert [f[0] for f in guix_record_fields()] == [s.guix for s in GUIX_SETTINGS]


@pytest.mark.parametrize("setting", GUIX_SETTINGS, ids=lambda s: s.guix)
def test_guix_record_field_agrees_with_the_table(setting: Setting) -> None:
    fields = {f[0]: f for f in guix_record_fields()}
    assert setting.guix in fields, f"binder-lite-configuration has no field {setting.guix}"
    _, type_, default, doc = fields[setting.guix]
    if setting.kind is Kind.PACKAGE:
        assert default == ("variable", "binder-lite")
    else:
        assert default == setting.guix_default
    assert type_ == setting.guix_type
    assert doc == setting.doc


def test_the_service_json_puts_each_field_where_the_validator_reads_it() -> None:
    forms = read_scheme(SERVICES_SCM.read_text())
    keys = next(
        f for f in forms if isinstance(f, list) and f[:2] == ["define", "%service-json-keys"]
    )
    placed = {str(name): ".".join(path) for name, *path in _datum(keys[2][1])}
    expected = {
        s.guix: s.key.replace("site.logo", "site.logo_path")
        for s in SETTINGS
        if Layer.SERVICE in s.layers
    }
    assert placed == expected


def test_secrets_are_named_by_file() -> None:
    """Everything rendered goes into the world-readable store: a setting about a secret
    names a file on the machine, read when the service starts."""
    secretive = ("secret", "credential", "token", "password", "key")
    for setting in SETTINGS:
        if any(word in setting.name for word in secretive):
            assert setting.name.endswith("_file") and setting.kind is Kind.TEXT, setting.key
            assert setting.check is not None and setting.check.__name__ == "absolute_target_path"


def _configuration_fields(system_scm: str) -> dict[str, Any]:
    """The fields of the `(binder-lite-configuration …)` form of a rendered system."""

    def find(form: Any) -> list[Any] | None:
        if isinstance(form, list):
            if form and form[0] == "binder-lite-configuration":
                return form
            for item in form:
                found = find(item)
                if found is not None:
                    return found
        return None

    configuration = next(f for f in map(find, read_scheme(system_scm)) if f is not None)
    return {str(field[0]): field[1] for field in configuration[1:]}


RENDERED_SETTINGS = [
    s
    for s in BINDER_FILE_SETTINGS
    if Layer.GUIX in s.layers and s.key != "binder.auth.provider"  # needs its client
]


@pytest.mark.parametrize("setting", RENDERED_SETTINGS, ids=lambda s: s.key)
def test_the_rendered_system_carries_each_setting_to_guix(
    setting: Setting, write_site: Callable[..., Path]
) -> None:
    """A value written in the site file reaches the operating system's
    binder-lite-configuration: no setting is left at Guix's default by the template."""
    written, expected = _sample(setting)
    text = _nest(setting, written) + COMPANIONS.get(setting.key, "")
    site = load_site(write_site(MINIMAL_SITE + text))
    fields = _configuration_fields(render_system(site))
    assert setting.guix in fields, f"{setting.key} is not rendered"
    rendered = fields[setting.guix]
    if setting.kind is Kind.PACKAGES:  # (specifications->packages '(...))
        assert rendered[0] == "specifications->packages"
        rendered = rendered[1]
    value = scheme_value(rendered)
    if isinstance(expected, tuple):
        expected = list(expected)
    elif isinstance(expected, enum.Enum):
        expected = expected.value
    assert value == expected
