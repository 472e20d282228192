"""The tunnel through a real third-party forward proxy (tinyproxy from Debian) set in
HTTPS_PROXY: the proxy is asked to CONNECT to the gateway and then sees only TLS."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.support.cli import run_subprocess

pytestmark = pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is installed by .ci/run")


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinyproxy")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = folder / "tinyproxy.log"
    conf = folder / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{log}\"\nLogLevel Connect\n"
        f"PidFile \"{folder}/tinyproxy.pid\"\nAllow 127.0.0.1\nMaxClients 50\n"
    )
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port, log
    proc.terminate()
    proc.wait(timeout=10)


def test_exec_through_https_proxy(gateway, as_user, pg_server, tinyproxy):
    port, log = tinyproxy
    env = as_user("alice", PGPASSWORD=pg_server.app_password, HTTPS_PROXY=f"http://127.0.0.1:{port}", NO_PROXY="")
    # The API call (requests) and the tunnel both go through the proxy.
    result = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-A", "-t", "-c", "select 'via-proxy'"], env)
    assert result.code == 0, result.err
    assert result.out.strip() == "via-proxy"
    text = log.read_text(errors="replace")
    assert f"CONNECT 127.0.0.1:{gateway.port}" in text or f"127.0.0.1:{gateway.port}" in text, text[-2000:]
    assert "via-proxy" not in text and "select" not in text.lower()
    recorded = [r for r in gateway.records(kind="statement", sub="alice") if r["statement"] == "select 'via-proxy'"]
    assert len(recorded) == 1


def test_no_proxy_bypasses_the_proxy(gateway, as_user, pg_server):
    env = as_user("alice", PGPASSWORD=pg_server.app_password, HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")
    result = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-A", "-t", "-c", "select 'no-proxy'"], env)
    assert result.code == 0, result.err


# ---- a proxy that refuses the CONNECT (issue 17 item 10) ------------------------------------

import threading


def _start_tinyproxy(folder, extra: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = folder / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{folder}/log\"\nLogLevel Connect\n"
                    f"PidFile \"{folder}/tinyproxy.pid\"\nAllow 127.0.0.1\nMaxClients 50\n{extra}")
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port


@pytest.fixture(scope="module")
def refusing_tinyproxy(tmp_path_factory):
    """tinyproxy that CONNECTs to port 443 only: the gateway's port is refused with 403."""
    proc, port = _start_tinyproxy(tmp_path_factory.mktemp("tinyproxy-deny"), "ConnectPort 443\n")
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def _proxy_env(as_user, pg_server, url):
    return as_user("alice", PGPASSWORD=pg_server.app_password, HTTPS_PROXY=url, NO_PROXY="")


@pytest.mark.parametrize("command", [["connections"], ["exec", "app-db", "--", "psql", "-X", "-c", "select 'never-runs'"]])
def test_a_proxy_that_refuses_the_connect_is_named_with_its_status(gateway, as_user, pg_server, refusing_tinyproxy, command):
    # Credentials in HTTPS_PROXY are never shown.
    env = _proxy_env(as_user, pg_server, f"http://proxyuser:proxy-pw-51@127.0.0.1:{refusing_tinyproxy}")
    result = run_subprocess(command, env)
    assert result.code == 6, (result.code, result.err)  # ExitCode.UNREACHABLE, as for every network failure
    assert f"the proxy 127.0.0.1:{refusing_tinyproxy} refused the CONNECT to 127.0.0.1:{gateway.port}: 403" in result.err, result.err
    assert "HTTPS_PROXY" in result.err and "cannot reach the gateway" not in result.err
    assert "proxy-pw-51" not in result.err + result.out and "proxyuser" not in result.err
    assert "never-runs" not in result.out


def test_a_proxy_that_is_down_is_named(gateway, as_user, pg_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = run_subprocess(["connections"], _proxy_env(as_user, pg_server, f"http://127.0.0.1:{closed}"))
    assert result.code == 6
    assert f"through the proxy 127.0.0.1:{closed}" in result.err, result.err


class _OnceProxy:
    """A forward proxy that relays the first CONNECT (hoop's API call) and answers every later
    one (the tunnel's) 403: what a proxy whose allow list or quota changes under a session does."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.relayed = self.refused = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client):
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = client.recv(4096)
            if not chunk:
                return client.close()
            head += chunk
        target = head.split(b" ")[1].decode()
        if self.relayed:
            self.refused += 1
            client.sendall(b"HTTP/1.1 403 Forbidden by policy\r\nContent-Length: 0\r\n\r\n")
            return client.close()
        self.relayed += 1
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


def test_the_tunnel_names_the_proxy_that_refuses_its_connect(gateway, as_user, pg_server):
    proxy = _OnceProxy()
    try:
        env = _proxy_env(as_user, pg_server, f"http://127.0.0.1:{proxy.port}")
        result = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-c", "select 'never-runs'"], env)
    finally:
        proxy.close()
    assert proxy.relayed == 1 and proxy.refused >= 1  # the API call passed; the tunnel's CONNECT did not
    assert result.code == 6, (result.code, result.err)
    assert f"the proxy 127.0.0.1:{proxy.port} refused the CONNECT to 127.0.0.1:{gateway.port}: 403 Forbidden by policy" in result.err, result.err
    assert "gateway refused" not in result.err
