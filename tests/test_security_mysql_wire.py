"""The MySQL wire engine's holes of issue 17 (items 2, 7, 8), end to end: real clients through
`hoop exec` and the real gateway (`app-mysql`, policy "default") to the throw-away MariaDB.

Each test runs one child (tests/support/mysql_clients.py) that drives several clients through
the tunnel and prints one JSON line per check; the test then asserts what the clients saw, what
the server still holds and what the audit trail recorded.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import run_subprocess

CLIENTS = str(Path(__file__).parent / "support" / "mysql_clients.py")


@pytest.fixture(scope="module")
def mysql_db(mariadb_server):
    return mariadb_server


@pytest.fixture
def alice_my(as_user, mysql_db):
    return as_user("alice", MYSQL_PWD=mysql_db.app_password)


def run_checks(env, *args: str, timeout: float = 120) -> dict[str, dict]:
    result = run_subprocess(["exec", "app-mysql", "--", sys.executable, CLIENTS, *args], env, timeout=timeout)
    checks = {}
    for line in result.out.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            checks[record.pop("check")] = record
    assert checks, f"the client script printed nothing (exit {result.code}): {result.err[-2000:]}"
    checks["exit"] = {"code": result.code, "stderr": result.err[-2000:]}
    return checks


def fresh_table(server, prefix: str) -> str:
    """A table in `app` with three rows, named for this test alone."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    server.sql(f"CREATE TABLE app.{name} (id int primary key); INSERT INTO app.{name} VALUES (1),(2),(3)")
    return name


def row_count(server, table: str) -> int:
    return int(server.sql(f"SELECT COUNT(*) FROM app.{table}").strip())


def statements(gateway, needle: str) -> list[dict]:
    return [r for r in gateway.records(kind="statement", sub="alice", connection="app-mysql") if needle in (r["statement"] or "")]


# ---- item 7: every client logs in ---------------------------------------------------------------


def test_libmysqlclient_pure_connector_pymysql_and_mariadb_log_in_and_are_recorded(gateway, alice_my):
    """libmysqlclient 8.x sets CLIENT_QUERY_ATTRIBUTES though the gateway's greeting clears it;
    the gateway clears it in the response instead of ending the session."""
    mark = f"login-{secrets.token_hex(3)}"
    checks = run_checks(alice_my, "clients", mark)
    assert checks["cext-available"]["ok"], "mysql-connector-python's C extension is not installed"
    assert checks["cext"]["cls"] == "CMySQLConnection", checks["cext"]  # really libmysqlclient
    for client in ("cext", "pure", "pymysql", "mariadb"):
        assert checks[client]["ok"], (client, checks[client])
        assert checks[client]["value"] == f"{mark}-{client}"
        [record] = statements(gateway, f"{mark}-{client}")
        assert record["outcome"] == "ok" and record["db_user"] == "app_user" and record["database"] == "app"


# ---- item 8: a refusal of a >16 MiB command reaches the client, the session goes on ----------------


@pytest.fixture
def held(as_user):
    """Records of held requests; denied by an approver afterwards, so their 17 MiB do not count
    against alice's pending-bytes cap in the tests that run after this one."""
    from tests.support.cli import run_subprocess

    records: list[dict] = []
    yield records
    carol = as_user("carol")
    for record in records:
        request_id = record.get("request_id") or (record.get("details") or {}).get("request_id")
        if request_id:
            run_subprocess(["approvals", "deny", request_id, "--reason", "test cleanup"], carol)


def test_a_held_statement_over_16_mib_is_answered_in_sequence_and_the_connection_goes_on(gateway, alice_my, mysql_db, held):
    table = fresh_table(mysql_db, "big")
    mark = f"big-{secrets.token_hex(3)}"
    checks = run_checks(alice_my, "big", f"app.{table}", mark, timeout=300)
    for client in ("cext", "pymysql"):
        check = checks[client]
        assert check["refused"], (client, check)
        assert "hoop" in check["error"] and "sequence" not in check["error"].lower(), check["error"]
        assert check["after"] == 1  # SELECT 1 on the same connection
        [record] = statements(gateway, f"{mark}-{client}")
        assert record["outcome"] == "held"
        held.append(record)
    assert row_count(mysql_db, table) == 3  # nothing was deleted


# ---- item 2: character sets refused at login ----------------------------------------------------


def test_logins_in_multibyte_character_sets_that_hide_quotes_are_refused(gateway, alice_my):
    since = time.time()
    checks = run_checks(alice_my, "charsets")
    for charset in ("sjis", "gbk", "big5", "cp932"):
        check = checks[charset]
        assert check["refused"] and "1115" in check["error"] and "use utf8mb4" in check["error"], (charset, check)
    raw = checks["raw-gbk"]
    assert raw["seq"] == 2 and raw["answer"].startswith("ff5b04")  # ERR 1115, in sequence
    assert "collation id 28" in raw["text"]
    ends = gateway.records(kind="session_end", sub="alice", connection="app-mysql", since=since, ended=True)
    ends = [r for r in ends if "collation id 28" in (r["message"] or "")]
    assert ends and ends[-1]["outcome"] == "error"


# ---- what else could make the server run text the gate did not see -------------------------------


def test_hand_made_packets_cannot_slip_a_statement_past_the_gate(gateway, alice_my, mysql_db):
    """COM_SET_OPTION turning multi-statements on, two commands in one write, COM_MULTI and a
    client insisting on compression: each DROP is held, the table is still there."""
    table = fresh_table(mysql_db, "raw")
    checks = run_checks(alice_my, "raw", f"app.{table}")
    assert checks["exit"]["code"] == 0, checks["exit"]
    assert checks["login"]["ok"]
    assert checks["set-option"]["answer"] == "OK"
    assert checks["multi-drop"]["answer"].startswith("ERR 1227"), checks["multi-drop"]
    assert checks["pipelined"]["answers"][0] == "ROWS one"
    assert checks["pipelined"]["answers"][1].startswith("ERR 1227")
    assert checks["pipelined"]["answers"][2] == "ROWS three"
    assert checks["com-multi"]["answer"].startswith("ERR 1235")
    assert checks["com-multi"]["after"] == "ROWS after-multi"
    assert checks["compress"] == {"login": True, "answer": "ROWS uncompressed"}
    assert row_count(mysql_db, table) == 3
    held = statements(gateway, f"DROP TABLE app.{table}")
    assert len(held) == 2 and {r["outcome"] for r in held} == {"held"}


def test_a_command_smuggled_into_the_auth_exchange_never_runs(gateway, alice_my, mysql_db):
    """A COM_QUERY with id 2 in the same write as the login: the engine, still in the auth
    phase, refuses it (MariaDB would also refuse it as out of order; the gateway does not rely
    on that) and the table is still there."""
    since = time.time()
    table = fresh_table(mysql_db, "auth")
    checks = run_checks(alice_my, "auth-smuggle", f"app.{table}")
    assert checks["auth-smuggle"]["answers"][-1] == "ConnectionError: closed"
    assert row_count(mysql_db, table) == 3
    ends = gateway.records(kind="session_end", sub="alice", connection="app-mysql", since=since, ended=True)
    assert any("during authentication" in (r["message"] or "") for r in ends)
