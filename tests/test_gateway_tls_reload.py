"""Certificate rotation without dropping sessions: the real gateway re-reads its certificate
and key on SIGHUP. New handshakes get the new certificate (they verify against the new CA and
no longer against the old one), a TLS session opened before keeps working, and a bad pair
keeps the last good certificate."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path

from hoopcli.gateway.tls import make_dev_tls
from tests.support.gateway import gateway_config, start_gateway


def _tls(port: int, ca_file: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca_file)
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")


def _healthz(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    return sock.recv(200)


def _verifies(port: int, ca_file: str) -> bool:
    try:
        with _tls(port, ca_file) as sock:
            return _healthz(sock).startswith(b"HTTP/1.1 200")
    except ssl.SSLCertVerificationError:
        return False


def _until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_sighup_rotates_the_certificate_and_keeps_open_sessions(oidc_provider, pg_server):
    workdir = Path(tempfile.mkdtemp(prefix="hoop-tls-reload-"))
    with start_gateway(gateway_config(oidc_provider.issuer, pg_server.port, None, workdir), workdir) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        old_ca = gw.ca_file
        assert _verifies(port, old_ca)
        opened = _tls(port, old_ca)  # a session from before the rotation
        new = make_dev_tls(workdir / "rotated")
        live = workdir / "tls"
        shutil.copyfile(new["cert"], live / "server.pem")
        shutil.copyfile(new["key"], live / "server-key.pem")
        gw.proc.send_signal(signal.SIGHUP)
        assert _until(lambda: _verifies(port, new["ca"])), "new handshakes did not get the new certificate"
        assert not _verifies(port, old_ca)
        assert _healthz(opened).startswith(b"HTTP/1.1 200")  # the old session goes on
        opened.close()

        (live / "server.pem").write_text("not a certificate")
        gw.proc.send_signal(signal.SIGHUP)
        assert _until(lambda: b"not reloaded" in (workdir / "gateway.log").read_bytes())
        assert _verifies(port, new["ca"]) and gw.alive()  # the last good pair stays
