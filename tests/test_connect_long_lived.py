"""A `hoop connect` that outlives its session (issue 4): when the session can no longer be
used it says so plainly and asks for `hoop login` in another terminal; after that login the
same tunnel carries on for new clients, without a restart.

The session lives in a real `hoop agent` (headless: no keyring) so the tunnel process and the
`hoop login`/`hoop logout` run beside it share it, as they would on a person's machine."""

from __future__ import annotations

import json
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from hoopcli.access import TOKEN_REUSE_SECONDS
from tests.support.cli import HOOP, run_subprocess, subprocess_env
from tests.support.oidc import approve_in_background

SOCK_LINE = re.compile(r"HOOP_AGENT_SOCK=(\S+);")


def _login(env, provider, login="alice"):
    approver = approve_in_background(provider, login=login)
    result = run_subprocess(["login", "--json"], env, timeout=60)
    approver.join()
    assert result.code == 0, result.err


def _query(port: int, password: str, marker: str):
    with psycopg.connect(host="127.0.0.1", port=port, user="app_user", password=password, dbname="app", sslmode="disable", connect_timeout=10) as conn:
        return conn.execute(f"select '{marker}'").fetchone()[0]


def _stderr_until(proc, needle: str, timeout: float = 15) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and needle not in seen:
        if sel.select(timeout=0.2):
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
    return seen


def test_connect_survives_logout_and_login(tmp_path, gateway, oidc_provider, pg_server):
    since = time.time()
    runtime = Path(tempfile.mkdtemp(prefix="hoop-rt-"))
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(
        home,
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        XDG_RUNTIME_DIR=str(runtime),
        HOOP_ISSUER=oidc_provider.issuer,
        HOOP_GATEWAY=gateway.url,
        HOOP_CA_FILE=gateway.ca_file,
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    started = subprocess.run(HOOP + ["agent", "--lifetime", "5m"], env=env, capture_output=True, text=True, timeout=30)
    env["HOOP_AGENT_SOCK"] = SOCK_LINE.search(started.stdout).group(1)
    tunnel = None
    try:
        _login(env, oidc_provider)
        tunnel = subprocess.Popen(HOOP + ["connect", "app-db", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        port = json.loads(tunnel.stdout.readline())["port"]
        assert _query(port, pg_server.app_password, "before-logout") == "before-logout"

        assert run_subprocess(["logout"], env).code == 0
        time.sleep(TOKEN_REUSE_SECONDS + 0.2)  # the tunnel reuses a loaded token that long
        with pytest.raises(psycopg.OperationalError):
            _query(port, pg_server.app_password, "while-logged-out")
        said = _stderr_until(tunnel, "hoop login")
        assert "not logged in" in said and "in another terminal" in said, said
        assert tunnel.poll() is None  # the tunnel is still up

        _login(env, oidc_provider)
        assert _query(port, pg_server.app_password, "after-login") == "after-login"
    finally:
        if tunnel is not None:
            tunnel.send_signal(signal.SIGINT)
            tunnel.communicate(timeout=15)
        subprocess.run(HOOP + ["agent", "--stop"], env=env, capture_output=True, timeout=15)
        shutil.rmtree(runtime, ignore_errors=True)
    markers = {r["statement"] for r in gateway.records(kind="statement", sub="alice", since=since, ended=True)}
    assert {"select 'before-logout'", "select 'after-login'"} <= markers
    assert "select 'while-logged-out'" not in markers
