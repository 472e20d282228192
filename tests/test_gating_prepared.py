"""An approval lets the approved statement run once, also as a prepared statement (review
finding): through the real gateway, an approved TRUNCATE prepared by psycopg (PostgreSQL) or
by a binary-protocol client (MariaDB) runs at its first execute; a second execute in the same
session is refused with the grant-used message and recorded, and the session goes on."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from contextlib import contextmanager

import psycopg
import pytest

from tests.support.cli import HOOP, run_subprocess
from tests.test_mariadb_engine_live import MiniClient

pytestmark = pytest.mark.slow

GRANT_USED = "an approval lets a statement run once"


@contextmanager
def tunnel(env: dict, connection: str):
    """`hoop connect CONNECTION`: yields the local port."""
    proc = subprocess.Popen(HOOP + ["connect", connection, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready", ready
        yield ready["port"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


def _request_id(message: str) -> str:
    match = re.search(r"request ([0-9a-f]{8})", message)
    assert match, message
    return match.group(1)


def _approve(as_user, request_id: str) -> None:
    approved = run_subprocess(["approvals", "approve", request_id, "--reason", "prepared once", "--json"], as_user("carol"))
    assert approved.code == 0, approved.err
    assert json.loads(approved.out)["status"] == "approved"


def _grant_used_records(gateway, statement: str) -> list[dict]:
    return [
        r
        for r in gateway.records(kind="statement", sub="alice")
        if r["statement"] == statement and r["outcome"] == "denied" and (r.get("details") or {}).get("rule") == "grant-used"
    ]


# ---- PostgreSQL, psycopg with prepare=True --------------------------------------------------------


@pytest.fixture
def pg_scratch(pg_server):
    def make(name: str) -> str:
        pg_server.sql(f"CREATE TABLE IF NOT EXISTS {name} (id int)", dbname="app")
        pg_server.sql(f"ALTER TABLE {name} OWNER TO app_user", dbname="app")
        pg_server.sql(f"INSERT INTO {name} VALUES (1)", dbname="app")
        return name

    return make


def _rows(pg_server, table: str) -> int:
    return pg_server.sql(f"select count(*) from {table}", dbname="app")[0][0]


def _connect(port: int, pg_server) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=port, user="app_user", password=pg_server.app_password, dbname="app",
        sslmode="disable", connect_timeout=10, autocommit=True,
    )


def test_psycopg_prepared_statement_runs_once_per_approval(gateway, as_user, pg_server, pg_scratch):
    table = pg_scratch("gate_prepared_pg")
    sql = f"TRUNCATE {table}"
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    with tunnel(alice, "gated-db") as port, _connect(port, pg_server) as conn:
        with pytest.raises(psycopg.Error) as held:
            conn.execute(sql, prepare=True)
        assert held.value.sqlstate == "57W01"
        _approve(as_user, _request_id(str(held.value)))

        conn.execute(sql, prepare=True)  # Parse (the approval is spent here) and its one run
        assert _rows(pg_server, table) == 0

        pg_server.sql(f"INSERT INTO {table} VALUES (2)", dbname="app")
        for _ in range(2):  # psycopg binds its prepared statement again: refused, every time
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as used:
                conn.execute(sql, prepare=True)
            assert GRANT_USED in str(used.value)
        assert _rows(pg_server, table) == 1

        assert conn.execute("select 'still-usable'").fetchone()[0] == "still-usable"
    assert len(_grant_used_records(gateway, sql)) == 2


def test_refused_bind_inside_a_pipeline_is_failed_by_the_server(gateway, as_user, pg_server, pg_scratch):
    """In pipeline mode the second Bind shares its segment with other work: the engine sends a
    stand-in Bind the real server must fail, and the client sees the grant-used refusal."""
    table = pg_scratch("gate_prepared_pipe")
    sql = f"TRUNCATE {table}"
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    with tunnel(alice, "gated-db") as port, _connect(port, pg_server) as conn:
        with pytest.raises(psycopg.Error) as held:
            conn.execute(sql, prepare=True)
        _approve(as_user, _request_id(str(held.value)))
        conn.execute(sql, prepare=True)
        pg_server.sql(f"INSERT INTO {table} VALUES (2)", dbname="app")

        with pytest.raises(psycopg.errors.InsufficientPrivilege) as used:
            with conn.pipeline():
                conn.execute("select 1")
                conn.execute(sql, prepare=True)
        assert GRANT_USED in str(used.value)
        assert _rows(pg_server, table) == 1
        assert conn.execute("select 'after-pipeline'").fetchone()[0] == "after-pipeline"
    assert len(_grant_used_records(gateway, sql)) == 1


# ---- MariaDB, COM_STMT_PREPARE / COM_STMT_EXECUTE ------------------------------------------------


def test_mariadb_prepared_statement_runs_once_per_approval(gateway, as_user, mariadb_server):
    s = mariadb_server
    s.sql("CREATE TABLE IF NOT EXISTS app.gate_prepared_my (id int); INSERT INTO app.gate_prepared_my VALUES (1)")
    sql = "TRUNCATE gate_prepared_my"
    results: list = []

    async def session(port: int) -> None:
        c = MiniClient()
        await c.connect(port, s.app_user, s.app_password, "app")
        c.send(0, b"\x16" + sql.encode())
        results.append(await c.prepare_response())  # held: an approver approves meanwhile
        await asyncio.to_thread(_approve, as_user, _request_id(results[-1]))
        c.send(0, b"\x16" + sql.encode())  # the approval is spent here
        stmt_id, _ = await c.prepare_response()
        c.send_execute(stmt_id, [])
        results.append(await c.execute_response())
        await asyncio.to_thread(s.sql, "INSERT INTO app.gate_prepared_my VALUES (2)")
        c.send_execute(stmt_id, [])
        results.append(await c.execute_response())
        c.send_execute(0xFFFFFFFF, [])  # "the last prepared statement": the same one
        results.append(await c.execute_response())
        c.send(0, b"\x16select 'still-usable'")
        plain, _ = await c.prepare_response()
        for _ in range(2):  # never gated: as often as the client likes
            c.send_execute(plain, [])
            results.append(await c.execute_response())
        await c.quit()

    with tunnel(as_user("alice"), "app-mysql") as port:
        asyncio.run(session(port))

    held, first, second, last, *plain = results
    assert held.startswith("ERR 1227 HY000") and "held for approval" in held
    assert first == "OK 0"
    for refused in (second, last):
        assert refused.startswith("ERR 1227 42000") and GRANT_USED in refused
    assert plain == ["1 rows", "1 rows"]
    assert s.sql("SELECT count(*) FROM app.gate_prepared_my").strip() == "1"
    assert len(_grant_used_records(gateway, sql)) == 2
