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


def run_argv(server, argv_for_port, *, make_engine=MySQLEngine, password=None, stdin=None) -> RelayRun:
    env = server.client_env(server.app_password if password is None else password)
    return asyncio.run(_relay_and_run(server, make_engine, argv_for_port, env, stdin))


def _no_protocol_errors(run: RelayRun) -> None:
    for events in run.sessions:
        assert not [e for e in events if isinstance(e, ProtocolError)], events


def test_admin_commands_and_a_refused_shutdown(mariadb_server):
    s = mariadb_server
    admin = s.client.replace("mariadb", "mariadb-admin") if s.client.endswith("mariadb") else "mysqladmin"

    def gate(text: str) -> Verdict:
        return Verdict("deny", "not through the gateway") if text.upper().startswith("SHUTDOWN") else ALLOW

    def argv(port: int) -> list[str]:
        return [admin, "--no-defaults", "--protocol=TCP", "-h", s.host, "-P", str(port), "-u", s.app_user,
                "ping", "status", "processlist", "shutdown"]

    run = run_argv(s, argv, make_engine=lambda: MySQLEngine(gate=gate))
    assert "mysqld is alive" in run.stdout and "Uptime:" in run.stdout
    assert "not through the gateway" in run.stderr
    _no_protocol_errors(run)
    [events] = run.sessions  # ping and status pass without events
    assert events[:2] == [SessionStarted(s.app_user, ""), StatementStarted("show processlist", "query")]
    assert isinstance(events[2], StatementFinished) and events[2].tag.startswith("SELECT ")
    assert events[3:] == [StatementBlocked("SHUTDOWN", gate("SHUTDOWN"))]
    assert s.sql("select 1").strip() == "1"  # still up


def test_multi_results_and_multi_statements(mariadb_server):
    s = mariadb_server
    db = s.create_database("multi")
    s.sql("delimiter //\ncreate procedure p() begin select 1; select 2 union select 3; end//", database=db)
    script = "call p();\ndelimiter //\nselect 4; select 5, 6//\ndelimiter ;\nselect 7;\n"
    run = run_client(s, script, database=db, script=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "2", "3", "4", "5", "6", "7"]
    [events] = run.sessions
    assert events[1:] == [
        StatementStarted("call p()", "query"),
        StatementFinished("SELECT 1; SELECT 2; OK 0 rows affected"),
        StatementStarted("select 4; select 5, 6", "query"),
        StatementFinished("SELECT 1; SELECT 1"),
        StatementStarted("select 7", "query"),
        StatementFinished("SELECT 1"),
    ]


def test_load_data_local_infile(mariadb_server, tmp_path):
    s = mariadb_server
    db = s.create_database("infile")
    s.sql(f"create table `{db}`.t(a int, b varchar(20))")
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{k},secret-{k}\n" for k in range(5000)))
    sql = f"load data local infile '{data}' into table t fields terminated by ','; select count(*) from t"
    run = run_client(s, sql, database=db, extra=("--local-infile=1",))
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["5000"]
    [events] = run.sessions
    assert events[1:] == [
        StatementStarted(f"load data local infile '{data}' into table t fields terminated by ','", "query"),
        StatementFinished("OK 5000 rows affected"),
        StatementStarted("select count(*) from t", "query"),
        StatementFinished("SELECT 1"),
    ]
    assert "secret-" not in repr(events)


def test_packets_over_16_mib_both_ways(mariadb_server):
    s = mariadb_server
    big = 17 * 1024 * 1024
    sql = f"select length('{'x' * big}');\nselect length(repeat('y', {big})), repeat('y', {big});\n"
    run = run_client(s, sql, extra=("--max-allowed-packet=64M",), script=True)
    assert run.returncode == 0, run.stderr[:500]
    lines = run.stdout.splitlines()
    assert lines[0] == str(big)
    assert lines[1] == f"{big}\t{'y' * big}"
    [events] = run.sessions
    _no_protocol_errors(run)
    assert [type(e) for e in events] == [SessionStarted] + [StatementStarted, StatementFinished] * 2
    assert events[1].text == f"select length('{'x' * big}')"
    assert events[2] == events[4] == StatementFinished("SELECT 1")
