"""``wsbridge proxy`` against an emulator serving wss:// with a test CA."""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .emulator import DEFAULT_WORKSPACE, Emulator, EmulatorFactory, TLSFiles
from .openssh import OpenSSH, proxy_argv, write_known_hosts
from .procs import run_command
from .proxy_process import error_line, run_proxy
from .sshd import Sshd, public_key_line

SSH_TIMEOUT = 60.0

# Long enough for any test run, short enough to look like a test certificate.
CERT_LIFETIME = datetime.timedelta(days=2)
CLOCK_SKEW = datetime.timedelta(minutes=5)

LOOPBACK_NAMES: list[x509.GeneralName] = [
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.DNSName("localhost"),
]


@dataclass(frozen=True)
class Authority:
    """A certificate authority that exists only for these tests."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - CLOCK_SKEW).not_valid_after(
        now + CERT_LIFETIME
    )


def make_authority(directory: Path) -> Authority:
    """Create a self-signed CA and write its certificate as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("wsbridge test CA")
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    pem = directory / "ca.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, pem)


def issue_server_cert(
    authority: Authority, directory: Path, names: Sequence[x509.GeneralName]
) -> TLSFiles:
    """Issue a server certificate for ``names``; write it and its key as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("wsbridge test server"))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority.key.public_key()
            ),
            critical=False,
        )
    )
    cert = _validity(builder).sign(authority.key, hashes.SHA256())

    files = TLSFiles(cert=directory / "server.pem", key=directory / "server.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    """Return a fresh test CA."""
    return make_authority(tmp_path)


@pytest.fixture
def tls_emulator(
    emulator_factory: EmulatorFactory,
    authority: Authority,
    sshd: Sshd,
    openssh: OpenSSH,
    tmp_path: Path,
) -> Emulator:
    """Return an emulator serving wss:// for 127.0.0.1, spliced to sshd."""
    emulator = emulator_factory(
        tls=issue_server_cert(authority, tmp_path, LOOPBACK_NAMES),
        ssh_upstream=sshd.address,
    )
    assert emulator.url.startswith("wss://127.0.0.1:")
    write_known_hosts(openssh.known_hosts, public_key_line(sshd.host_key))
    return emulator


def proxy_to(emulator: Emulator, *options: str) -> list[str]:
    """Return the proxy argv for the demo workspace with ``options``."""
    return proxy_argv(
        emulator.url,
        DEFAULT_WORKSPACE,
        access_key_file=emulator.access_key_file,
        options=options,
    )


def ssh_through(openssh: OpenSSH, proxy: list[str]) -> tuple[int, bytes, bytes]:
    """Run ``echo tls-ok`` in the demo workspace; return status and output."""
    result = run_command(
        openssh.ssh(DEFAULT_WORKSPACE, "echo tls-ok", proxy=proxy), SSH_TIMEOUT
    )
    return result.returncode, result.stdout, result.stderr


def test_certificate_from_an_unknown_ca_is_refused(tls_emulator: Emulator) -> None:
    """By default the system trust store decides, and it rejects a test CA."""
    result = run_proxy(proxy_to(tls_emulator))

    assert result.returncode == 255
    assert result.stdout == b""
    message = error_line(result.stderr)
    assert re.search(r"certificate.*verif", message), message
    assert "issuer" in message


def test_certificate_signed_by_the_ca_file_is_trusted(
    tls_emulator: Emulator, authority: Authority, openssh: OpenSSH
) -> None:
    """``--ca-file`` makes a certificate from that CA acceptable."""
    status, stdout, stderr = ssh_through(
        openssh, proxy_to(tls_emulator, "--ca-file", str(authority.pem))
    )

    assert status == 0, stderr
    assert stdout == b"tls-ok\n"


def test_certificate_for_another_host_is_refused_even_from_the_ca(
    emulator_factory: EmulatorFactory, authority: Authority, tmp_path: Path
) -> None:
    """A trusted CA does not excuse a certificate that names another host."""
    elsewhere = [x509.DNSName("workspace.example.invalid")]
    emulator = emulator_factory(tls=issue_server_cert(authority, tmp_path, elsewhere))

    result = run_proxy(proxy_to(emulator, "--ca-file", str(authority.pem)))

    assert result.returncode == 255
    message = error_line(result.stderr)
    assert re.search(r"certificate.*verif", message), message
    assert "mismatch" in message


def test_insecure_connects_and_warns(tls_emulator: Emulator, openssh: OpenSSH) -> None:
    """``--insecure`` skips verification and says so on stderr."""
    status, stdout, stderr = ssh_through(openssh, proxy_to(tls_emulator, "--insecure"))

    assert status == 0, stderr
    assert stdout == b"tls-ok\n"
    assert b"insecure" in stderr.lower()
    assert b"Traceback" not in stderr
