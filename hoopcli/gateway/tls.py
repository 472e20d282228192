"""TLS for the gateway: contexts from a cert/key pair, and a development CA (`--dev-tls`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; a missing, unreadable or mismatched file is a ConfigError that
    names the setting and the path, like every other configuration error."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_pair(ctx, cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def load_pair(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    from hoopcli.errors import ConfigError

    for setting, path in (("gateway.tls_cert", cert_file), ("gateway.tls_key", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{setting} = {path!r}: {exc.strerror or exc}",
                "Point it at a PEM file the gateway can read (relative paths are from gateway.toml's folder), "
                "or pass --dev-tls DIR for a development CA.",
            ) from None
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"gateway.tls_cert {cert_file!r} and gateway.tls_key {key_file!r} are not a usable pair: {exc.reason or exc}",
            "Give the PEM certificate chain (leaf first) and its unencrypted private key.",
        ) from None


def make_dev_tls(folder: str | Path, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> dict:
    """A throw-away CA and a server certificate signed by it, for one machine.

    Reuses an existing set in the folder so a profile that pinned the CA keeps working.
    Keys are written 0600 in a 0700 folder.
    """
    folder = Path(folder)
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server-key.pem"}
    if all(p.exists() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key, ca_cert = _ca()
    key, cert = _leaf(ca_key, ca_cert, hostnames)
    _write(paths["ca"], _pem_cert(ca_cert), 0o644)
    _write(paths["cert"], _pem_cert(cert) + _pem_cert(ca_cert), 0o644)
    _write(paths["key"], _pem_key(key), 0o600)
    return {k: str(v) for k, v in paths.items()}


def _ca():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hoop development CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key, ca_cert, hostnames):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
