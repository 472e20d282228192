"""`hoop exec` / `hoop connect` end to end: the real psql through the local tunnel and the
gateway to a throw-away PostgreSQL with password auth, as a person signed in at the real
OpenID provider. Each statement must land in the audit trail under that person."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest

from tests.support.cli import HOOP, run_subprocess


@pytest.fixture
def alice(as_user, pg_server):
    # The "none" broker: the person supplies the database password (here the test's own).
    return as_user("alice", PGPASSWORD=pg_server.app_password)


def _statements(gateway, sub, text):
    return [r for r in gateway.records(kind="statement", sub=sub) if r["statement"] == text]


def test_exec_psql_runs_as_the_database_user_and_is_recorded(gateway, alice):
    result = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-A", "-t", "-c", "select current_user, 'exec-1'"], alice)
    assert result.code == 0, result.err
    assert result.out.strip() == "app_user|exec-1"
    [rec] = _statements(gateway, "alice", "select current_user, 'exec-1'")
    assert rec["outcome"] == "ok" and rec["tag"] == "SELECT 1"
    assert rec["email"] == "alice@example.com" and rec["connection"] == "app-db"
    assert rec["db_user"] == "app_user" and rec["database"] == "app"
    assert rec["duration_ms"] is not None


def test_failing_statement_returns_psql_exit_code_and_records_sqlstate(gateway, alice):
    result = run_subprocess(["exec", "app-db", "--", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select 1/0 as exec_2"], alice)
    assert result.code == 1  # psql's own code for a failed statement
    assert "division by zero" in result.err
    [rec] = _statements(gateway, "alice", "select 1/0 as exec_2")
    assert rec["outcome"] == "error" and rec["code"] == "22012"


def test_exec_c_json_prints_output(gateway, alice):
    result = run_subprocess(["exec", "app-db", "-c", "select count(*) as exec_3 from customers", "--json"], alice)
    assert result.code == 0, result.err
    data = json.loads(result.out.splitlines()[-1])
    assert data["exit_code"] == 0 and data["output"].splitlines()[-1] == "3"


def test_default_client_is_psql(gateway, alice):
    proc = subprocess.run(HOOP + ["exec", "app-db"], env=alice, input="select 'exec-4';\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "exec-4" in proc.stdout


def test_signals_are_forwarded_and_exit_code_passed_through(gateway, alice):
    script = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(HOOP + ["exec", "app-db", "--", "sh", "-c", script], env=alice, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert "got-term" in out
    assert proc.returncode == 42


def test_child_killed_by_signal_gives_128_plus_n(gateway, alice):
    result = run_subprocess(["exec", "app-db", "--", "sh", "-c", "kill -KILL $$"], alice)
    assert result.code == 137


def test_child_gets_credentials_in_env_not_argv(gateway, alice, pg_server):
    result = run_subprocess(["exec", "app-db", "--", "sh", "-c", 'echo "$PGHOST:$PGPORT:$PGUSER:$PGDATABASE"; cat /proc/$$/cmdline | tr "\\0" " "'], alice)
    assert result.code == 0, result.err
    first, argv = result.out.splitlines()[:2]
    host, port, user, db = first.split(":")
    assert host == "127.0.0.1" and int(port) > 0 and user == "app_user" and db == "app"
    assert pg_server.app_password not in argv


def test_unknown_and_forbidden_connections_have_distinct_codes(gateway, as_user):
    unknown = run_subprocess(["exec", "no-such-db", "--", "true"], as_user("alice"))
    assert unknown.code == 7 and "no-such-db" in unknown.err
    forbidden = run_subprocess(["exec", "admin-db", "--", "true"], as_user("bob"))
    assert forbidden.code == 4 and "may not use admin-db" in forbidden.err
    assert "Traceback" not in unknown.err + forbidden.err


def test_expired_session_says_to_log_in(gateway, as_user, oidc_provider_factory, tmp_path):
    from tests.support.cli import subprocess_env

    short = oidc_provider_factory(id_token_ttl=1)
    token = short.device_login("alice")["id_token"]
    time.sleep(2)
    env = subprocess_env(tmp_path, HOOP_TOKEN=token, HOOP_GATEWAY=gateway.url, HOOP_CA_FILE=gateway.ca_file)
    result = run_subprocess(["exec", "app-db", "--", "true"], env)
    assert result.code == 3 and "expired" in result.err and "hoop: hint:" in result.err


def test_connect_serves_twenty_clients_at_once(gateway, alice, pg_server):
    import psycopg

    proc = subprocess.Popen(HOOP + ["connect", "app-db", "--json"], env=alice, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["host"] == "127.0.0.1"
        assert ready["command"].startswith('psql "host=127.0.0.1 port=')
        assert "password" not in ready["credentials"]
        errors: list = []

        def client(n: int) -> None:
            try:
                with psycopg.connect(host="127.0.0.1", port=ready["port"], user="app_user", password=pg_server.app_password, dbname="app", sslmode="disable", connect_timeout=10) as conn:
                    assert conn.execute(f"select {n} as connect_client").fetchone()[0] == n
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    recorded = {r["statement"] for r in gateway.records(kind="statement", sub="alice")}
    assert all(f"select {n} as connect_client" in recorded for n in range(20))
    assert proc.returncode == 130


def test_tcp_connection_gets_session_records_with_byte_counts(gateway, alice):
    # A tcp connection gets only HOOP_HOST/HOOP_PORT: the client is told where by hand.
    script = 'psql -X -A -t -h "$HOOP_HOST" -p "$HOOP_PORT" -U app_user -d app -c "select \'raw-tcp\'"'
    result = run_subprocess(["exec", "pg-raw", "--", "sh", "-c", script], alice)
    assert result.code == 0, result.err
    assert result.out.strip() == "raw-tcp"
    records = gateway.records(connection="pg-raw", sub="alice", ended=True)
    assert {r["kind"] for r in records} == {"connect", "session_end"}  # bytes only, no statements
    end = [r for r in records if r["kind"] == "session_end"][-1]
    assert end["details"]["bytes_up"] > 0 and end["details"]["bytes_down"] > 0
    assert end["duration_ms"] > 0


def test_client_encoding_that_could_fool_the_policy_is_refused(gateway, as_user, pg_server):
    env = as_user("alice", PGPASSWORD=pg_server.app_password, PGCLIENTENCODING="SJIS")
    result = run_subprocess(["exec", "gated-db", "--", "psql", "-X", "-c", "select 1"], env)
    assert result.code != 0
    assert "client_encoding SJIS is not supported" in result.err
    # Refused in the StartupMessage, before the server switched: the attempt is on record.
    refused = [r for r in gateway.records(kind="statement", sub="alice", connection="gated-db") if "SJIS" in (r["message"] or "")]
    assert refused and refused[-1]["outcome"] == "denied"
    assert refused[-1]["details"]["rule"] == "client-encoding"


def test_record_false_keeps_only_session_records(gateway, alice):
    result = run_subprocess(["exec", "pg-norec", "--", "psql", "-X", "-A", "-t", "-c", "select 'not-recorded'"], alice)
    assert result.code == 0 and result.out.strip() == "not-recorded"
    records = gateway.records(connection="pg-norec", sub="alice", ended=True)
    assert {r["kind"] for r in records} == {"connect", "session_end"}
    assert all("not-recorded" not in (r["statement"] or "") for r in gateway.records(sub="alice"))
