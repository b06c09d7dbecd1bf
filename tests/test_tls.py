"""HTTPS (binder.tls): a real `binder-lite serve` with a certificate these tests make,
its plain-HTTP port that only redirects, Secure cookies, the TLS files' errors and
reload, and hostile clients; Guix lowers sites with TLS and with certbot (acme)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import MINIMAL_SITE
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from launchkit import make_repo
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect
from webkit import Client, Server, headless_chromium, wait_for

from binder_lite.errors import SiteError
from binder_lite.kernel import execute_request
from binder_lite.net import free_port
from binder_lite.site import load_site
from binder_lite.web.tls import TlsError, TlsFiles, server_context

HOST = "127.0.0.1"


# -- certificates made here: a CA and the service's certificate, signed by it ----------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: bytes | None = None) -> None:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA's certificate, for clients
    certificate: Path  # the service's chain
    key: Path
    der: bytes  # the service's certificate as a client sees it

    @property
    def files(self) -> TlsFiles:
        return TlsFiles(self.certificate, self.key)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_pki(directory: Path, common: str = "binder-lite test") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{common} CA"))
        .issuer_name(_name(f"{common} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    _write_key(key, directory / "privkey.pem")
    return Pki(
        directory / "ca.pem",
        directory / "fullchain.pem",
        directory / "privkey.pem",
        cert.public_bytes(serialization.Encoding.DER),
    )


def spki_hash(pki: Pki) -> str:
    """Chromium's --ignore-certificate-errors-spki-list form of the service's key."""
    cert = x509.load_der_x509_certificate(pki.der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# -- a service over HTTPS -----------------------------------------------------------


def tls_site(directory: Path, pki: Pki, tls_port: int) -> Path:
    path = directory / "site.yaml"
    path.write_text(
        "version: 1\n"
        "site: {name: Secure, slug: secure}\n"
        "binder:\n"
        "  max_sessions: 2\n"
        f"  public_url: https://{HOST}:{tls_port}/\n"
        "  tls:\n"
        f"    port: {tls_port}\n"
        f"    certificate_file: {pki.certificate}\n"
        f"    key_file: {pki.key}\n"
    )
    return path


@dataclass
class TlsService:
    server: Server  # its `port` is the plain-HTTP one
    tls_port: int
    pki: Pki

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.tls_port}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def service(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsService]:
    # urllib makes a client context per connection from the default paths: the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    tls_port = free_port()
    site = tls_site(tmp_path, pki, tls_port)
    server = Server(site, tmp_path / "state", ("--allow-local-repos",)).start()
    yield TlsService(server, tls_port, pki)
    server.stop()


def peer_certificate(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection((HOST, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a plain TCP connection; everything the server answers."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


async def _run_on_kernel(url: str, headers: dict[str, str], ca: Path, code: str) -> str:
    request = HTTPRequest(url, headers=headers, ca_certs=str(ca), request_timeout=60)
    conn = await asyncio.wait_for(websocket_connect(request), 60)
    msg_id, message = execute_request(code)
    conn.write_message(json.dumps(message))
    try:
        while True:
            raw = await asyncio.wait_for(conn.read_message(), 120)
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "execute_result":
                return str(msg["content"]["data"]["text/plain"])
            assert msg["msg_type"] != "error", msg["content"]
    finally:
        conn.close()


def test_https_page_launch_and_session_websocket(service: TlsService, tmp_path: Path) -> None:
    # The certificate presented is the one the site names.
    assert peer_certificate(service.tls_port, service.pki.client_context()) == service.pki.der
    client = Client(service.url)
    page = client.get("/")
    assert page.status == 200 and "Secure" in page.text
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    repo = make_repo(tmp_path / "repo")
    url = f"file://{repo}".replace("/", "%2F")
    events = client.events(f"/build/git/{url}/HEAD")
    ready = events[-1]
    assert ready["phase"] == "ready", ready
    assert str(ready["url"]).startswith(f"{service.url}/s/")
    sid = re.search(r"/s/([0-9a-f]{16})/", str(ready["url"]))
    assert sid
    assert client.get(f"/s/{sid.group(1)}/api/kernelspecs").status == 200
    # A BinderHub link opened in another browser: the token becomes a cookie.
    stranger = Client(service.url)
    link = f"/s/{sid.group(1)}/tree?token={ready['token']}"
    assert stranger.get(link, headers={"Sec-Fetch-Dest": "document"}).status == 303
    # Every cookie set over HTTPS is Secure: the visitor's, the session token's, XSRF.
    cookies = {c.name: c for c in [*client.jar, *stranger.jar]}
    assert {"_xsrf", "binder-lite-user", "binder-lite-token"} <= set(cookies), cookies
    assert all(c.secure for c in cookies.values()), {n: c.secure for n, c in cookies.items()}
    # The session's kernel over wss, through the front.
    kernel = _start_kernel(service, sid.group(1), str(ready["token"]))
    wss = f"wss://{HOST}:{service.tls_port}/s/{sid.group(1)}/api/kernels/{kernel}/channels"
    headers = {"Origin": service.url, "Authorization": f"token {ready['token']}"}
    assert asyncio.run(_run_on_kernel(wss, headers, service.pki.ca, "6 * 7")) == "42"


def _start_kernel(service: TlsService, sid: str, token: str) -> str:
    client = Client(service.url)
    response = client.request(
        "POST",
        f"/s/{sid}/api/kernels",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    assert response.status == 201, response
    return str(json.loads(response.text)["id"])


def test_the_http_port_redirects_to_https_keeping_path_and_query(service: TlsService) -> None:
    http_port = service.server.port
    host = f"Host: {HOST}:{http_port}\r\n".encode()
    answer = raw_exchange(http_port, b"GET /sessions?x=1&y=%2F HTTP/1.1\r\n" + host + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 301 ")
    assert f"Location: {service.url}/sessions?x=1&y=%2F\r\n".encode() in answer
    posted = raw_exchange(
        http_port, b"POST /tokens HTTP/1.1\r\n" + host + b"Content-Length: 0\r\n\r\n"
    )
    assert posted.startswith(b"HTTP/1.1 308 ")
    # Nothing else is served on it: not the page, not a session.
    assert b"Secure" not in answer and b"Set-Cookie" not in answer


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:80", f"{HOST}.evil.example", "", "[::1", "a@evil.example"],
)
def test_a_hostile_host_header_gets_no_redirect(service: TlsService, host: str) -> None:
    http_port = service.server.port
    line = f"Host: {host}\r\n".encode() if host else b""
    answer = raw_exchange(http_port, b"GET /x HTTP/1.1\r\n" + line + b"\r\n")
    assert answer.startswith((b"HTTP/1.1 421 ", b"HTTP/1.1 400 ")), answer
    assert b"Location" not in answer


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("//evil.example/x", "//evil.example/x"),  # a path, after our origin
        ("/%0d%0aSet-Cookie:%20a=b", "/%0d%0aSet-Cookie:%20a=b"),
    ],
)
def test_the_redirect_never_leaves_the_public_origin(
    service: TlsService, target: str, location: str
) -> None:
    http_port = service.server.port
    request = f"GET {target} HTTP/1.1\r\nHost: {HOST}:{http_port}\r\n\r\n".encode()
    answer = raw_exchange(http_port, request)
    assert answer.startswith(b"HTTP/1.1 301 "), answer
    head = answer.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    assert f"Location: {service.url}{location}" in lines
    assert not any(line.lower().startswith("set-cookie") for line in lines)


def test_a_request_for_another_origin_is_refused(service: TlsService) -> None:
    http_port = service.server.port
    request = f"GET http://evil.example/x HTTP/1.1\r\nHost: {HOST}:{http_port}\r\n\r\n"
    answer = raw_exchange(http_port, request.encode())
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Location" not in answer


def test_junk_and_stalled_handshakes_do_not_take_the_service_down(service: TlsService) -> None:
    stalled = socket.create_connection((HOST, service.tls_port), timeout=10)
    try:
        for junk in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP on the HTTPS port
            b"\x16\x03\x01\x00\x05hello",  # a TLS record header with garbage
            os.urandom(4096),
            b"\x16\x03\x01\xff\xff" + b"\x01" * 70000,  # an oversized ClientHello
        ):
            _send_junk(service.tls_port, junk)
        assert Client(service.url).get("/health").status == 200
        assert service.server.proc is not None and service.server.proc.poll() is None
    finally:
        stalled.close()


def _send_junk(port: int, junk: bytes) -> None:
    """Send `junk` and read until the server closes; a reset is an answer too."""
    with socket.create_connection((HOST, port), timeout=15) as sock:
        try:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass


def test_sighup_reloads_the_certificate_and_keeps_it_when_the_new_files_are_bad(
    service: TlsService, tmp_path: Path
) -> None:
    fresh = make_pki(tmp_path / "fresh", "renewed")
    old = service.pki
    assert service.server.proc is not None
    # A bad renewal (the key of another certificate): logged, the old one kept.
    old.key.write_bytes(fresh.key.read_bytes())
    service.server.proc.send_signal(signal.SIGHUP)
    log = service.server.log
    assert log is not None
    wait_for(lambda: "not reloaded" in log.read_text(), 20, "the refused reload")
    assert peer_certificate(service.tls_port, old.client_context()) == old.der
    # A good one: new connections get it.
    old.certificate.write_bytes(fresh.certificate.read_bytes())
    service.server.proc.send_signal(signal.SIGHUP)
    fresh_context = fresh.client_context()
    wait_for(
        lambda: peer_certificate(service.tls_port, fresh_context) == fresh.der,
        20,
        "the renewed certificate",
    )


# -- the files' errors: typed, naming the file, before anything listens ---------------


@pytest.mark.parametrize(
    ("breakage", "words"),
    [
        ("missing-certificate", "certificate_file: {dir}/fullchain.pem does not exist"),
        ("missing-key", "key_file: {dir}/privkey.pem does not exist"),
        ("not-pem", "certificate_file: {dir}/fullchain.pem holds no PEM certificate"),
        ("key-is-a-certificate", "key_file: {dir}/privkey.pem holds no PEM private key"),
        ("other-key", "key_file: {dir}/privkey.pem is not the key of the certificate"),
        ("encrypted", "is encrypted with a passphrase"),
        ("corrupt", "cannot be used"),
    ],
)
def test_unusable_tls_files_raise_a_tls_error(tmp_path: Path, breakage: str, words: str) -> None:
    pki = make_pki(tmp_path)
    other = make_pki(tmp_path / "other")
    breakages: dict[str, Callable[[], object]] = {
        "missing-certificate": pki.certificate.unlink,
        "missing-key": pki.key.unlink,
        "not-pem": lambda: pki.certificate.write_text("hello\n"),
        "key-is-a-certificate": lambda: pki.key.write_bytes(pki.certificate.read_bytes()),
        "other-key": lambda: pki.key.write_bytes(other.key.read_bytes()),
        "encrypted": lambda: _write_key(
            serialization.load_pem_private_key(pki.key.read_bytes(), None),  # type: ignore[arg-type]
            pki.key,
            b"secret",
        ),
        "corrupt": lambda: pki.certificate.write_text(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        ),
    }
    breakages[breakage]()
    with pytest.raises(TlsError) as error:
        server_context(pki.files)
    assert words.format(dir=tmp_path) in str(error.value)


def test_an_unreadable_key_is_named(tmp_path: Path) -> None:
    """The key exists but the service's account may not read it (root reads anything,
    so the check runs as nobody, in a directory nobody may enter)."""
    shared = Path(tempfile.mkdtemp(prefix="binder-lite-tls-"))
    try:
        shared.chmod(0o755)
        pki = make_pki(shared / "pki")
        (shared / "pki").chmod(0o755)
        pki.certificate.chmod(0o644)
        pki.key.chmod(0)
        # Imports first: the interpreter's own files may not be nobody's to read.
        code = (
            "import os\n"
            "from pathlib import Path\n"
            "from binder_lite.web.tls import TlsFiles, server_context\n"
            "if os.geteuid() == 0:\n"
            "    os.setgid(65534)\n"
            "    os.setuid(65534)\n"
            f"server_context(TlsFiles(Path({str(pki.certificate)!r}), Path({str(pki.key)!r})))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode != 0
        assert f"key_file: {pki.key} cannot be read by the service's account" in proc.stderr
    finally:
        shutil.rmtree(shared)


def test_serve_with_a_mismatched_key_stops_with_a_clear_error(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    pki.key.write_bytes(make_pki(tmp_path / "other").key.read_bytes())
    site = tls_site(tmp_path, pki, free_port())
    binder_lite = Path(sys.executable).parent / "binder-lite"
    command = [binder_lite, "serve", site, "--port", str(free_port()), "--address", HOST]
    command += ["--runtime", "local", "--state-dir", tmp_path / "state"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "is not the key of the certificate" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# -- the site file's shape ----------------------------------------------------------

TLS_OK = "binder:\n  public_url: https://binder.example.org/\n  tls:\n"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (TLS_OK + "    certificate_file: /etc/tls/cert.pem\n", "key_file: is required with"),
        (TLS_OK + "    key_file: /etc/tls/key.pem\n", "certificate_file: is required with"),
        (
            TLS_OK + "    certificate_file: cert.pem\n    key_file: /etc/k.pem\n",
            "is not an absolute path",
        ),
        (
            "binder:\n  tls:\n    certificate_file: /c.pem\n    key_file: /k.pem\n",
            "binder.public_url: an https:// URL is required with tls",
        ),
        (
            TLS_OK + "    port: 8080\n    certificate_file: /c.pem\n    key_file: /k.pem\n",
            "binder.tls.port: 8080 is binder.port too",
        ),
        (
            TLS_OK + "    certificate_file: /c.pem\n    key_file: /k.pem\n"
            "    acme: {domains: [binder.example.org]}\n",
            "give files or acme, not both",
        ),
        (TLS_OK + "    acme: {email: a@example.org}\n", "domains: is required with email"),
        (
            TLS_OK + "    acme: {domains: [other.example.org]}\n",
            "the first name must be binder.example.org",
        ),
        (
            TLS_OK.replace("binder:\n", "binder:\n  port: 80\n")
            + "    acme: {domains: [binder.example.org]}\n",
            "port 80 answers certbot's challenges",
        ),
        (TLS_OK + "    acme: {domains: ['binder.example.org;']}\n", "is not a domain name"),
        (
            TLS_OK + "    acme: {email: 'x --y', domains: [binder.example.org]}\n",
            "is not an email address",
        ),
    ],
)
def test_site_check_refuses_a_tls_section_of_the_wrong_shape(
    write_site: Callable[..., Path], text: str, words: str
) -> None:
    with pytest.raises(SiteError) as error:
        load_site(write_site(MINIMAL_SITE + text))
    assert words in str(error.value)


def test_a_tls_section_of_the_right_shape_loads(write_site: Callable[..., Path]) -> None:
    site = load_site(
        write_site(
            MINIMAL_SITE
            + TLS_OK
            + "    acme: {email: a@example.org, domains: [binder.example.org]}\n"
        )
    )
    assert site.binder.tls.enabled and site.binder.tls.acme.domains == ("binder.example.org",)
    assert TlsFiles.of(site.binder) is None  # Guix gives the service certbot's copies


# -- Guix lowers a site with TLS files, and one with certbot --------------------------


@pytest.mark.guix
@pytest.mark.parametrize("acme", [False, True], ids=["files", "acme"])
def test_guix_lowers_a_site_with_tls(
    guix: str, store_root: Path, cli: Callable[..., Any], tmp_path: Path, acme: bool
) -> None:
    from test_guix import OS_CONFIG, service_json

    from binder_lite.scheme import scm_str

    tls = (
        "    acme: {email: admin@example.org, domains: [binder.example.org]}\n"
        if acme
        else "    certificate_file: /etc/binder-lite/fullchain.pem\n"
        "    key_file: /etc/binder-lite/privkey.pem\n"
    )
    site = tmp_path / "site.yaml"
    site.write_text(MINIMAL_SITE + TLS_OK + tls)
    build = ["image", "build", site, "--type", "qcow2", "--dry-run", "--no-grafts"]
    result = cli(*build, "--work-dir", tmp_path / "work")
    assert result.code == 0, result.err
    drv = re.search(r"derivation: (/gnu/store/\S+\.drv)", result.out)
    assert drv, result.out
    requisites = subprocess.run(
        [guix, "gc", "--requisites", drv.group(1)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()

    def builder(name: str) -> str:
        found = [r for r in requisites if r.endswith(f"-{name}-builder")]
        assert len(found) == 1, (name, found)
        return (store_root / found[0].lstrip("/")).read_text()

    # With acme: Guix's certbot service, its nginx for port 80, and our deploy hook.
    for name in ("certbot-command", "nginx.conf", "binder-lite-deploy-hook"):
        assert any(r.endswith(f"-{name}.drv") for r in requisites) is acme, name
    # Port 443 is opened to the service's account before it starts.
    assert '"net.ipv4.ip_unprivileged_port_start" "=" "443"' in builder("sysctl.conf")
    shepherd = builder("shepherd-binder-lite.scm")
    assert " sysctl" in shepherd and "(reload " in shepherd
    assert ("binder-lite-certificate" in shepherd) is acme
    # The service reads certbot's certificate through its own copies.
    assert cli("render", site, "-o", tmp_path).code == 0
    system = scm_str(str(tmp_path / "system.scm"))
    served = load_site(
        service_json(guix, tmp_path, OS_CONFIG.format(system=system)), for_service=True
    )
    files = TlsFiles.of(served.binder)
    assert files is not None and served.binder.tls.port == 443
    expected = "/var/lib/binder-lite/tls/" if acme else "/etc/binder-lite/"
    assert files == TlsFiles(Path(expected + "fullchain.pem"), Path(expected + "privkey.pem"))


# -- a real browser --------------------------------------------------------------------


def test_chromium_loads_the_page_over_https(service: TlsService, tmp_path: Path) -> None:
    # Trusting another key is not enough: the browser checks the one it is shown.
    other = make_pki(tmp_path / "other")
    with headless_chromium(f"--ignore-certificate-errors-spki-list={spki_hash(other)}") as driver:
        driver.get(f"{service.url}/")
        assert "Secure" not in driver.title
    flags = (f"--ignore-certificate-errors-spki-list={spki_hash(service.pki)}",)
    with headless_chromium(*flags) as driver:
        driver.get(f"{service.url}/")
        wait_for(lambda: "Secure" in driver.title, 30, "the page over HTTPS")
        # The plain-HTTP port sends the browser to HTTPS.
        driver.get(f"http://{HOST}:{service.server.port}/sessions")
        wait_for(lambda: driver.current_url.startswith(f"{service.url}/sessions"), 30)
