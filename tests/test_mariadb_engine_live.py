"""MySQLEngine against a real MariaDB and the real `mariadb` client, without the gateway.

A tiny asyncio relay on 127.0.0.1 pipes bytes between the client and the fixture's server
through one engine per connection, forwarding exactly what the engine returns.
"""

from __future__ import annotations

import asyncio
import hashlib
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


# ---- the binary protocol, with a minimal client of our own ---------------------------------------
# The `mariadb` client never uses prepared statements, so this speaks just enough of the
# protocol itself: login with mysql_native_password, COM_STMT_PREPARE / EXECUTE / CLOSE.


async def _read(r: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await r.readexactly(4)
    return header[3], await r.readexactly(int.from_bytes(header[:3], "little"))


def _native_token(password: bytes, scramble: bytes) -> bytes:
    h1 = hashlib.sha1(password).digest()
    h3 = hashlib.sha1(scramble + hashlib.sha1(h1).digest()).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


class MiniClient:
    CAPS = 1 | 8 | 0x200 | 0x2000 | 0x8000 | 0x20000 | 0x40000 | 0x80000

    async def connect(self, port: int, user: str, password: str, db: str) -> None:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", port)
        _, greeting = await _read(self.r)
        pos = greeting.index(b"\0", 1) + 1 + 4
        scramble = greeting[pos : pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        scramble += greeting[pos : pos + 12]
        token = _native_token(password.encode(), scramble)
        body = self.CAPS.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\0" * 23
        body += user.encode() + b"\0" + bytes((len(token),)) + token + db.encode() + b"\0"
        body += b"mysql_native_password\0"
        self.send(1, body)
        seq, answer = await _read(self.r)
        if answer[0] == 0xFE:  # auth switch
            plugin, _, data = answer[1:].partition(b"\0")
            assert plugin == b"mysql_native_password"
            self.send(seq + 1, _native_token(password.encode(), data.rstrip(b"\0")))
            seq, answer = await _read(self.r)
        assert answer[0] == 0, answer

    def send(self, seq: int, payload: bytes) -> None:
        self.w.write(len(payload).to_bytes(3, "little") + bytes((seq,)) + payload)

    async def _skip(self, count: int) -> None:
        for _ in range(count):
            await _read(self.r)

    async def prepare_response(self) -> tuple[int, int] | str:
        _, first = await _read(self.r)
        if first[0] == 0xFF:
            return _error(first)
        stmt_id = int.from_bytes(first[1:5], "little")
        columns, params = int.from_bytes(first[5:7], "little"), int.from_bytes(first[7:9], "little")
        await self._skip(params + (1 if params else 0) + columns + (1 if columns else 0))
        return stmt_id, params

    def send_execute(self, stmt_id: int, params: list[tuple[int, bytes]]) -> None:
        body = b"\x17" + stmt_id.to_bytes(4, "little") + b"\0" + (1).to_bytes(4, "little")
        if params:
            body += bytes((len(params) + 7) // 8) + b"\x01"
            body += b"".join(bytes((t, 0)) for t, _ in params) + b"".join(v for _, v in params)
        self.send(0, body)

    async def execute_response(self) -> str:
        _, first = await _read(self.r)
        if first[0] == 0xFF:
            return _error(first)
        if first[0] == 0x00:
            return f"OK {first[1]}"
        await self._skip(first[0] + 1)  # definitions and EOF
        rows = 0
        while True:
            _, packet = await _read(self.r)
            if packet[0] == 0xFE and len(packet) < 9:
                return f"{rows} rows"
            rows += 1

    async def quit(self) -> None:
        self.send(0, b"\x01")
        await self.w.drain()
        self.w.close()


def _error(packet: bytes) -> str:
    return f"ERR {int.from_bytes(packet[1:3], 'little')} {packet[4:9].decode()} {packet[9:].decode()}"


def _lstr(value: bytes) -> bytes:
    return bytes((len(value),)) + value


async def _with_relay(server, make_engine, body) -> list[list[Event]]:
    sessions: list[list[Event]] = []

    async def handle(client_r, client_w):
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
    try:
        await asyncio.wait_for(body(relay.sockets[0].getsockname()[1]), _CLIENT_TIMEOUT)
        await asyncio.sleep(0.05)
    finally:
        relay.close()
        await relay.wait_closed()
    return sessions


def _hold_drops(text: str) -> Verdict:
    if "drop" in text.lower():
        return Verdict("hold", "drops need an approval", request_id="r-7")
    return ALLOW


def test_prepared_statements_through_the_engine(mariadb_server):
    s = mariadb_server
    db = s.create_database("binary")
    s.sql(f"create table `{db}`.t(a bigint, b varchar(20))")
    results: list = []
    ids: dict[str, int] = {}

    async def body(port: int) -> None:
        c = MiniClient()
        await c.connect(port, s.app_user, s.app_password, db)
        c.send(0, b"\x16insert into t values (?, ?)")
        insert, _ = await c.prepare_response()
        c.send_execute(insert, [(0x08, (7).to_bytes(8, "little")), (0xFD, _lstr(b"seven"))])
        results.append(await c.execute_response())
        # pipelined: prepare and execute "the last prepared statement" (-1) before reading
        c.send(0, b"\x16select b from t where a = ?")
        c.send_execute(0xFFFFFFFF, [(0x08, (7).to_bytes(8, "little"))])
        select, _ = await c.prepare_response()
        ids["select"] = select
        results.append(await c.execute_response())
        c.send_execute(select, [(0x08, (8).to_bytes(8, "little"))])
        results.append(await c.execute_response())
        # a held prepare, and the pipelined execute that would run the previous statement
        c.send(0, b"\x16drop table t")
        c.send_execute(0xFFFFFFFF, [(0x08, (7).to_bytes(8, "little"))])
        results.append(await c.prepare_response())
        results.append(await c.execute_response())
        c.send(0, b"\x19" + select.to_bytes(4, "little"))  # close: no answer
        c.send_execute(select, [(0x08, (7).to_bytes(8, "little"))])
        results.append(await c.execute_response())
        await c.quit()

    sessions = asyncio.run(
        _with_relay(s, lambda: MySQLEngine(gate=_hold_drops, record_params=True), body)
    )
    select = ids["select"]
    assert results == [
        "OK 1",
        "1 rows",
        "0 rows",
        "ERR 1227 HY000 drops need an approval",
        "ERR 1227 42000 the last prepared statement was not allowed; prepare it again",
        f"ERR 1243 HY000 Unknown prepared statement handler ({select}) given to mysqld_stmt_execute",
    ]
    [events] = sessions
    insert_sql, select_sql = "insert into t values (?, ?)", "select b from t where a = ?"
    assert events == [
        SessionStarted(s.app_user, db),
        StatementStarted(insert_sql, "prepare"),
        StatementFinished("PREPARE"),
        StatementStarted(insert_sql, "execute", ("7", "seven")),
        StatementFinished("OK 1 row affected"),
        StatementStarted(select_sql, "prepare"),
        StatementStarted(select_sql, "execute", None),  # pipelined: parameter count not known yet
        StatementFinished("PREPARE"),
        StatementFinished("SELECT 1"),
        StatementStarted(select_sql, "execute", ("8",)),
        StatementFinished("SELECT 0"),
        StatementBlocked("drop table t", _hold_drops("drop table t")),
        events[12],
        StatementStarted(f"/* unknown prepared statement {select} */", "execute"),
        StatementFailed("1243/HY000", f"Unknown prepared statement handler ({select}) given to mysqld_stmt_execute"),
    ]
    assert isinstance(events[12], StatementBlocked) and events[12].verdict.rule == "mysql-refused-prepare"
    assert s.sql(f"select count(*) from `{db}`.t").strip() == "1"


# ---- character sets and the pinned database (issue 17, items 2 and 9) -----------------------------


def test_every_collation_the_server_has_is_allowed_exactly_when_its_character_set_is_safe(mariadb_server):
    """The allow-list against this server's own table, UCA 14.0 collations included: a new
    collation of an unsafe set can never slip in as an allowed id."""
    from hoopcli.gateway.protocols.mysql.charsets import SAFE_CHARSETS, SAFE_COLLATION_IDS

    rows = mariadb_server.sql(
        "SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY WHERE ID IS NOT NULL"
    )
    table = {int(i): name for i, name in (line.split("\t") for line in rows.splitlines())}
    assert len(table) > 300
    wrong = {i: name for i, name in table.items() if (i in SAFE_COLLATION_IDS) != (name in SAFE_CHARSETS)}
    assert wrong == {}


PINNED = "hoop: this connection is pinned to database `app`"


def test_a_pinned_engine_refuses_another_database_at_login_with_a_clear_error(mariadb_server):
    s = mariadb_server
    pinned = lambda: MySQLEngine(database="app")  # noqa: E731
    other = run_client(s, "select 1", database="mysql", make_engine=pinned)
    assert other.returncode == 1 and f"ERROR 1044 (42000): {PINNED}" in other.stderr, other.stderr
    assert [type(e) for e in other.sessions[0]] == [ProtocolError]  # nothing reached the server
    same = run_client(s, "select database()", database="app", make_engine=pinned)
    none = run_client(s, "select database()", make_engine=pinned)
    assert (same.returncode, same.stdout.strip()) == (0, "app")
    assert (none.returncode, none.stdout.strip()) == (0, "NULL")


_CHANGE_USER = """
import os, sys
import mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port=int(sys.argv[1]), user=sys.argv[2],
                            password=os.environ["MYSQL_PWD"], database="app", use_pure=False)
try:
    c.cmd_change_user(username=sys.argv[2], password=os.environ["MYSQL_PWD"], database="mysql")
    print("changed")
except mysql.connector.Error as exc:
    print("refused", exc.errno, exc.sqlstate, exc.msg)
cur = c.cursor()
cur.execute("select database()")
print("after", cur.fetchone()[0])
"""


def test_a_pinned_engine_refuses_change_user_to_another_database_and_the_session_goes_on(mariadb_server):
    import sys

    s = mariadb_server
    run = run_argv(
        s,
        lambda port: [sys.executable, "-c", _CHANGE_USER, str(port), s.app_user],
        make_engine=lambda: MySQLEngine(database="app"),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"refused 1044 42000 {PINNED}", "after app"]
