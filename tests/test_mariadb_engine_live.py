"""MySQLEngine against a real MariaDB and the real `mariadb` client, without the gateway.

A tiny asyncio relay on 127.0.0.1 pipes bytes between the client and the fixture's server
through one engine per connection, forwarding exactly what the engine returns.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from hoopcli.gateway.protocols.base import (
    ALLOW,
    Event,
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    Verdict,
)
from hoopcli.gateway.protocols.mysql import MySQLEngine

pytestmark = pytest.mark.slow

_CLIENT_TIMEOUT = 60


@dataclass
class RelayRun:
    returncode: int
    stdout: str
    stderr: str
    sessions: list[list[Event]] = field(default_factory=list)


async def _pump(reader: asyncio.StreamReader, feed, client_w, server_w, events: list[Event]) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            return
        out = feed(data)
        events.extend(out.events)
        if out.to_server:
            server_w.write(out.to_server)
        if out.to_client:
            client_w.write(out.to_client)
        await server_w.drain()
        await client_w.drain()
        if out.close:
            return


async def _relay_and_run(server, make_engine, argv_for_port, env, stdin: bytes | None) -> RelayRun:
    sessions: list[list[Event]] = []

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        events: list[Event] = []
        sessions.append(events)
        engine = make_engine()
        server_r, server_w = await asyncio.open_connection(server.host, server.port)
        pumps = [
            asyncio.create_task(_pump(client_r, engine.from_client, client_w, server_w, events)),
            asyncio.create_task(_pump(server_r, engine.from_server, client_w, server_w, events)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (client_w, server_w):
                w.close()
            await asyncio.gather(*pumps, return_exceptions=True)

    relay = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = relay.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv_for_port(port),
            env=env,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), _CLIENT_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        await asyncio.sleep(0.05)  # let the relay record the session's last bytes
    finally:
        relay.close()
        await relay.wait_closed()
    return RelayRun(proc.returncode, out.decode(), err.decode(), sessions)


def run_client(
    server, sql: str, *, make_engine=MySQLEngine, database=None, extra=(), script=False
) -> RelayRun:
    """Run the `mariadb` client through the relay: `sql` with -e, or as a script on stdin."""
    args = ["--batch", "--skip-column-names", *extra] + ([] if script else ["-e", sql])

    def argv(port: int) -> list[str]:
        return server.client_argv(*args, port=port, user=server.app_user, database=database)

    env = server.client_env(server.app_password)
    stdin = sql.encode() if script else None
    return asyncio.run(_relay_and_run(server, make_engine, argv, env, stdin))


# ---- the fixture itself -------------------------------------------------------------------------


def test_fixture_checks_passwords(mariadb_server):
    s = mariadb_server
    assert s.sql("SELECT CURRENT_USER()").strip() == "root@127.0.0.1"
    assert s.sql("SELECT 1", user=s.app_user, password=s.app_password).strip() == "1"
    wrong = s.sql("SELECT 1", user=s.app_user, password=s.app_password + "x", check=False)
    assert "Access denied" in wrong
    none = s.sql("SELECT 1", user=s.app_user, password=None, check=False)
    assert "Access denied" in none


def test_direct_client_uses_tls(mariadb_server):
    """The fixture serves TLS, so the relay test below proves the engine turns it off."""
    s = mariadb_server
    cipher = s.sql("SHOW SESSION STATUS LIKE 'Ssl_cipher'", user=s.app_user, password=s.app_password)
    assert cipher.split("\t")[1].strip() != ""


# ---- the engine ---------------------------------------------------------------------------------


def test_statements_through_the_engine(mariadb_server):
    s = mariadb_server
    db = s.create_database("engine")
    run = run_client(
        s,
        "select 1; create table t(a int); insert into t values (1),(2); select * from t; "
        "select nosuchcol from t",
        database=db,
    )
    assert run.returncode == 1
    assert "ERROR 1054 (42S22)" in run.stderr
    assert run.stdout.split() == ["1", "1", "2"]
    [events] = run.sessions
    assert events == [
        SessionStarted(s.app_user, db),
        StatementStarted("select 1", "query"),
        StatementFinished("SELECT 1"),
        StatementStarted("create table t(a int)", "query"),
        StatementFinished("OK 0 rows affected"),
        StatementStarted("insert into t values (1),(2)", "query"),
        StatementFinished("OK 2 rows affected"),
        StatementStarted("select * from t", "query"),
        StatementFinished("SELECT 2"),
        StatementStarted("select nosuchcol from t", "query"),
        StatementFailed("1054/42S22", "Unknown column 'nosuchcol' in 'SELECT'"),
    ]


def _hold_drop_table(text: str) -> Verdict:
    if text.lstrip().lower().startswith("drop table"):
        return Verdict("hold", "held for approval: request 42", request_id="42", rule="ddl")
    return ALLOW


def test_gate_holds_drop_table_and_session_goes_on(mariadb_server):
    s = mariadb_server
    db = s.create_database("gated")
    s.sql(f"create table `{db}`.t(a int); insert into `{db}`.t values (1),(2)")
    run = run_client(
        s,
        "drop table t;\nselect count(*) from t;\n",
        database=db,
        make_engine=lambda: MySQLEngine(gate=_hold_drop_table),
        extra=("--force",),  # go on after an error, as an interactive session would
        script=True,
    )
    assert "ERROR 1227 (HY000) at line 1: held for approval: request 42" in run.stderr
    assert run.stdout.split() == ["2"]  # the same session still works
    [events] = run.sessions
    assert events == [
        SessionStarted(s.app_user, db),
        StatementBlocked("drop table t", _hold_drop_table("drop table t")),
        StatementStarted("select count(*) from t", "query"),
        StatementFinished("SELECT 1"),
    ]
    assert s.sql(f"select count(*) from `{db}`.t").strip() == "2"  # the table is still there


def test_gate_deny_uses_42000(mariadb_server):
    s = mariadb_server
    run = run_client(
        s,
        "select 1",
        make_engine=lambda: MySQLEngine(gate=lambda text: Verdict("deny", "no reads today")),
    )
    assert run.returncode == 1
    assert "ERROR 1227 (42000) at line 1: no reads today" in run.stderr


def test_engine_turns_tls_off(mariadb_server):
    """The client would use TLS with this server; through the engine it logs in in plain."""
    s = mariadb_server
    run = run_client(s, "show session status like 'Ssl_cipher'")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\t")[1].strip() == ""
    assert not any(isinstance(e, ProtocolError) for e in run.sessions[0])
