"""Faults, each made real: a gateway SIGKILLed mid-session, the identity provider down at login
and at refresh, the database down, and the token expiring while `hoop connect` runs.

What must hold every time: a clear one-line error (no traceback), a documented exit code,
nothing falls back to a static credential, and the audit trail written before a crash
still verifies after a gateway restarts on the same store.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import HOOP, run_subprocess, subprocess_env
from tests.support.gateway import BARRIER_PREFIX, single_db_config, start_gateway


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fault_config(issuer: str, pg_port: int, dead_port: int) -> str:
    return single_db_config(issuer, pg_port) + f"""
[connections.dead-db]
protocol = "postgres"
target = "127.0.0.1:{dead_port}"
groups = ["dba"]
database = "app"
credentials = {{ broker = "none", user = "app_user" }}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults-gateway")


@pytest.fixture(scope="module")
def config_text(oidc_provider, pg_server):
    return fault_config(oidc_provider.issuer, pg_server.port, _closed_port())


@pytest.fixture(scope="module")
def fault_gateway(config_text, workdir):
    """A gateway for the tests that do not kill it (the kill test starts its own on a copy)."""
    with start_gateway(config_text, workdir) as gw:
        yield gw


@pytest.fixture(scope="module")
def alice_token(oidc_provider):
    return oidc_provider.device_login("alice")["id_token"]


def env_for(gw, token: str, home: Path, **extra) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess_env(home, HOOP_TOKEN=token, HOOP_GATEWAY=gw.url, HOOP_CA_FILE=gw.ca_file, **extra)


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def store_records(path: str, **filters) -> list[dict]:
    from hoopcli.gateway.audit import open_store

    with open_store(path) as store:
        return store.query(**filters)


# ---- the gateway dies mid-session ---------------------------------------------------------


def test_gateway_sigkilled_mid_session(config_text, alice_token, pg_server, tmp_path):
    workdir = tmp_path / "gw"
    workdir.mkdir()
    marker = f"pre-kill-{os.getpid()}-{time.time_ns()}"
    with start_gateway(config_text, workdir) as gw:
        env = env_for(gw, alice_token, tmp_path / "home", PGPASSWORD=pg_server.app_password)
        psql = subprocess.Popen(
            HOOP + ["exec", "app-db", "--", "psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            psql.stdin.write(f"select '{marker}';\n")
            psql.stdin.flush()
            assert psql.stdout.readline().strip() == marker
            # The record is in the store (not just queued) before the gateway dies.
            assert wait_for(lambda: [r for r in store_records(gw.audit_store, kind="statement") if marker in (r["statement"] or "")])
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(timeout=10)
            psql.stdin.write("select 'after-kill';\n")
            out, err = psql.communicate(timeout=30)  # flushes and closes stdin
        finally:
            if psql.poll() is None:
                psql.kill()
    assert psql.returncode != 0
    assert "server closed the connection unexpectedly" in err or "connection to server" in err, err
    assert "Traceback" not in err and "after-kill" not in out
    store = str(workdir / "audit.db")

    # The records written before the kill verify after a restart on the same store.
    verify = run_subprocess(["audit", "verify", "--store", store, "--json"], env)
    assert verify.code == 0 and json.loads(verify.out)["ok"] is True, verify.out + verify.err
    [rec] = [r for r in store_records(store, kind="statement") if marker in (r["statement"] or "")]
    assert rec["outcome"] == "ok" and rec["sub"] == "alice"

    with start_gateway(config_text, workdir) as again:
        env2 = env_for(again, alice_token, tmp_path / "home", PGPASSWORD=pg_server.app_password)
        result = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-A", "-t", "-c", "select 'after-restart'"], env2)
        assert result.code == 0 and result.out.strip() == "after-restart", result.err
        assert wait_for(lambda: [r for r in store_records(store, kind="statement") if r["statement"] == "select 'after-restart'"])
    verify = run_subprocess(["audit", "verify", "--store", store, "--json"], env)
    report = json.loads(verify.out)
    assert verify.code == 0 and report["ok"] is True, report
    statements = [r["statement"] for r in store_records(store, kind="statement")]
    assert statements == [f"select '{marker}';", "select 'after-restart'"]  # nothing lost, nothing invented


# ---- the identity provider is down ---------------------------------------------------------


def test_idp_down_at_login(hoop, mem_keyring, monkeypatch):
    monkeypatch.setenv("HOOP_ISSUER", f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    result = hoop("login")
    assert result.code == 6, result.err
    assert "cannot reach the identity provider" in result.err
    assert "hoop: hint:" in result.err and "Traceback" not in result.err
    assert time.monotonic() - started < 15
    assert mem_keyring.items == {}


def test_idp_down_at_refresh(hoop, mem_keyring, fault_gateway, pg_server):
    from tests.support.oidc import approve_in_background, start_oidc_provider

    with start_oidc_provider(id_token_ttl=30) as provider:  # always inside the 60 s refresh margin
        assert hoop("config", "set", "issuer", provider.issuer).code == 0
        approver = approve_in_background(provider, login="alice")
        assert hoop("login").code == 0
        approver.join()
    stored = mem_keyring.items[("hoop", "default")]
    # The provider process is gone now: the next command must refresh, and cannot.
    who = hoop("whoami")
    assert who.code == 3, who.err
    assert "could not be refreshed" in who.err and "cannot reach the identity provider" in who.err
    assert "hoop login" in who.err and "Traceback" not in who.err
    assert mem_keyring.items[("hoop", "default")] == stored  # the session is kept for when the IdP is back
    hoop("config", "set", "gateway", fault_gateway.url)
    hoop("config", "set", "ca_file", fault_gateway.ca_file)
    since = time.time()
    result = hoop("exec", "app-db", "--", "true")
    assert result.code == 3 and "hoop login" in result.err, result.err
    connects = fault_gateway.records(kind="connect", since=since)  # all the gateway had, not what came in 0.3 s
    assert [r for r in connects if not (r["connection"] or "").startswith(BARRIER_PREFIX)] == []  # nothing tried it


# ---- the database is down -----------------------------------------------------------------


def _port_of(gw, name: str) -> int:
    import tomllib

    return int(tomllib.loads(gw.config.read_text())["connections"][name]["target"].rsplit(":", 1)[1])


def test_database_down_is_502_and_recorded(fault_gateway, alice_token):
    status, body = fault_gateway.connect_status(f"dead-db:{_port_of(fault_gateway, 'dead-db')}", alice_token)
    assert status == 502 and "unreachable" in body["error"]
    recs = wait_for(lambda: [r for r in store_records(fault_gateway.audit_store, kind="connect", connection="dead-db") if r["code"] == "502"])
    assert recs and recs[-1]["outcome"] == "refused" and recs[-1]["sub"] == "alice"


def test_database_down_through_hoop_exec_fails_without_a_traceback(fault_gateway, alice_token, pg_server, tmp_path):
    env = env_for(fault_gateway, alice_token, tmp_path / "home", PGPASSWORD=pg_server.app_password)
    started = time.monotonic()
    result = run_subprocess(["exec", "dead-db", "--", "psql", "-X", "-c", "select 1"], env)
    assert result.code != 0
    assert "Traceback" not in result.err
    assert time.monotonic() - started < 20


def test_database_down_through_hoop_exec_names_the_unreachable_target(fault_gateway, alice_token, pg_server, tmp_path):
    """README: exit code 6 is "unreachable: ... the target (502)". Today `hoop exec` prints
    nothing of the gateway's 502: the user sees only psql's "server closed the connection
    unexpectedly" and psql's exit code 2."""
    env = env_for(fault_gateway, alice_token, tmp_path / "home", PGPASSWORD=pg_server.app_password)
    result = run_subprocess(["exec", "dead-db", "--", "psql", "-X", "-c", "select 1"], env)
    assert "unreachable" in result.err and "dead-db" in result.err, result.err
    assert result.code == 6, (result.code, result.err)


def test_database_down_through_hoop_connect_says_so_and_keeps_running(fault_gateway, alice_token, pg_server, tmp_path):
    import psycopg

    env = env_for(fault_gateway, alice_token, tmp_path / "home")
    port = _closed_port()
    proc = subprocess.Popen(HOOP + ["connect", "dead-db", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _listening(port), timeout=20)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host="127.0.0.1", port=port, user="app_user", password=pg_server.app_password, dbname="app", sslmode="disable", connect_timeout=10)
        time.sleep(0.3)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert "502" in err and "unreachable" in err, err
    assert "Traceback" not in err


# ---- the token expires while hoop connect runs ---------------------------------------------


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_token_expiring_during_connect(oidc_provider_factory, fault_gateway, pg_server, tmp_path):
    import psycopg

    provider = oidc_provider_factory(id_token_ttl=6)
    config = fault_gateway.config.read_text()
    workdir = tmp_path / "gw"
    workdir.mkdir()
    # A gateway that trusts the short-lived provider (same targets).
    with start_gateway(config.replace(f'issuer = "{_issuer_of(config)}"', f'issuer = "{provider.issuer}"'), workdir) as gw:
        token = provider.device_login("alice")["id_token"]
        exp = json.loads(_b64(token.split(".")[1]))["exp"]
        env = env_for(gw, token, tmp_path / "home")
        port = _closed_port()
        proc = subprocess.Popen(HOOP + ["connect", "app-db", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err_lines: list[str] = []
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        reader.start()
        try:
            assert wait_for(lambda: _listening(port), timeout=20), "".join(err_lines)

            def client():
                return psycopg.connect(host="127.0.0.1", port=port, user="app_user", password=pg_server.app_password,
                                       dbname="app", sslmode="disable", connect_timeout=10)

            with client() as conn:
                assert conn.execute("select 'before-expiry'").fetchone()[0] == "before-expiry"
            time.sleep(max(0.0, exp - time.time()) + 1.0)
            for attempt in range(2):
                with pytest.raises(psycopg.OperationalError):
                    client()
                time.sleep(0.3)
                assert proc.poll() is None, "hoop connect stopped"
            assert wait_for(lambda: any("hoop login" in line for line in err_lines), timeout=5), "".join(err_lines)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=15)
            reader.join(timeout=5)
        err = "".join(err_lines)
        assert "expired" in err and "hoop login" in err and "Traceback" not in err, err
        assert proc.returncode == 130
        # No session after expiry reached the gateway, let alone the database.
        ok = [r for r in store_records(gw.audit_store, kind="connect") if r["outcome"] == "ok"]
        # (the readiness probe and the first client: both before expiry)
        assert ok and all(r["ts"] < _iso(exp) for r in ok), ok


def _issuer_of(config: str) -> str:
    import tomllib

    return tomllib.loads(config)["issuers"][0]["issuer"]


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _iso(ts: float) -> str:
    from hoopcli.gateway.audit import format_ts

    return format_ts(ts)
