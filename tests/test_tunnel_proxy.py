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
