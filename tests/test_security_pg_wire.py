"""PostgreSQL wire tricks that would let the server run what the gate did not see, against the
real PostgreSQL 15 with real clients (psql, psycopg, a raw pipelining client) through a
PostgresEngine relay (tests/pg_engine_relay.py), plus the engine-only cases.

Classes covered: another database through the startup (pinning, psql's \\c), replication
connections, startup options and settings (client_encoding, -c, non -c switches, _pq_),
a client_encoding switch by an opaque routine with a statement pipelined behind it (Shift_JIS
bytes that hide an INSERT from the classifier: never sent; ASCII: sent at once, recorded so), a
non-ASCII Parse after an Execute in the same segment, a Bind of a statement made by SQL
PREPARE, and the client_encoding spellings the server accepts.
"""

from __future__ import annotations

import os
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopcli.gateway.policy.classifier import classify
from hoopcli.gateway.protocols.base import (
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    Verdict,
)
from hoopcli.gateway.protocols.pgwire.encodings import (
    SAFE_CLIENT_ENCODINGS,
    _SAFE_ALIASES,
    reads_the_same_in_every_encoding,
)
from hoopcli.gateway.protocols.pgwire.startup import read_startup, setting_statement
from hoopcli.gateway.protocols.pgwire.wire import ENDED_MESSAGE, ENDED_SQLSTATE, _text
from hoopcli.gateway.protocols.postgres import DENY_SQLSTATE, PostgresEngine
from tests.pg_engine_relay import Q, EngineRelay, RawClient, error_fields, msg

ALLOW = Verdict("allow")


def allow_all(text: str) -> Verdict:
    return ALLOW


def no_search_path(text: str) -> Verdict:
    if text.lower().startswith("set search_path"):
        return Verdict("deny", "search_path is fixed on this connection", rule="t")
    return ALLOW


@pytest.fixture(scope="module")
def fence_db(pg_server):
    """Setup straight against PostgreSQL (not through the engine): a routine that switches the
    session to SJIS out of the classifier's sight, one that switches to LATIN1 (safe), and a
    table whose rows say which statements ran."""
    with pg_server.connect("app") as conn:
        conn.execute("DROP TABLE IF EXISTS fence_marks")
        conn.execute("CREATE TABLE fence_marks (x int)")
        conn.execute("GRANT SELECT, INSERT ON fence_marks TO app_user")
        for name, enc in (("hoop_to_sjis", "SJIS"), ("hoop_to_latin1", "LATIN1")):
            conn.execute(
                f"CREATE OR REPLACE FUNCTION public.{name}() RETURNS text LANGUAGE sql "
                f"AS $$ SELECT set_config('client_encoding', '{enc}', false) $$"
            )
            conn.execute(f"GRANT EXECUTE ON FUNCTION public.{name}() TO app_user")
    return pg_server


def marks(pg_server, x: int) -> int:
    return pg_server.sql("SELECT count(*) FROM fence_marks WHERE x = %s", dbname="app", params=(x,))[0][0]


@pytest.fixture(scope="module")
def pinned(pg_server):
    relay = EngineRelay(pg_server.port, lambda: PostgresEngine(allow_all, database="app"))
    yield relay
    relay.close()


def _dsn(pg_server, port: int, dbname: str = "app", **extra) -> str:
    parts = [f"host=127.0.0.1 port={port} user=app_user password={pg_server.app_password} dbname={dbname}"]
    parts += [f"{k}='{v}'" for k, v in extra.items()]
    return " ".join(parts) + " connect_timeout=10"


# ---- database pinning (issue 17 item 9) -------------------------------------------------------


def test_psql_backslash_c_to_another_database_is_refused_before_the_server(pg_server, pinned):
    before = len(pinned.bytes_up)
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pinned.port), "PGUSER": "app_user",
           "PGPASSWORD": pg_server.app_password, "PGDATABASE": "app", "PGCONNECT_TIMEOUT": "10"}
    script = "select 'on:' || current_database();\n\\c postgres\nselect 'after:' || current_database();\n"
    done = subprocess.run(["psql", "-X", "-A", "-t"], input=script, env=env, capture_output=True, text=True, timeout=60)
    assert "on:app" in done.stdout
    assert 'hoop: this connection is pinned to database "app"' in done.stderr
    assert "after:postgres" not in done.stdout  # never reached the other database
    # \c opened a second session: its StartupMessage never reached the server.
    assert pinned.bytes_up[before] > 0 and pinned.bytes_up[before + 1] == 0
    blocked = [e for e in pinned.events if isinstance(e, StatementBlocked) and e.verdict.rule == "pinned-database"]
    assert blocked and "postgres" in blocked[-1].text


def test_psycopg_reaches_the_pinned_database_and_no_other(pg_server, pinned):
    import psycopg

    with psycopg.connect(_dsn(pg_server, pinned.port)) as conn:
        assert conn.execute("select current_database()").fetchone()[0] == "app"
    with pytest.raises(psycopg.OperationalError, match='pinned to database "app"'):
        psycopg.connect(_dsn(pg_server, pinned.port, "postgres"))
    # no database named: PostgreSQL takes the user name, and so does the check
    with pytest.raises(psycopg.OperationalError, match="pinned"):
        psycopg.connect(_dsn(pg_server, pinned.port).replace(" dbname=app", ""))


def test_a_replication_connection_is_refused(pg_server, pinned):
    import psycopg

    before = len(pinned.bytes_up)
    with pytest.raises(psycopg.OperationalError, match="replication connections are not supported"):
        psycopg.connect(_dsn(pg_server, pinned.port, replication="database"))
    assert pinned.bytes_up[before] == 0


# ---- startup options and settings -------------------------------------------------------------


def test_startup_client_encoding_outside_the_allow_list_is_refused(pg_server, pinned):
    import psycopg

    for how in ({"options": "-c client_encoding=SJIS"}, {"client_encoding": "BIG5"}, {"options": "--client-encoding=gbk"}):
        with pytest.raises(psycopg.OperationalError, match="is not supported through the gateway"):
            psycopg.connect(_dsn(pg_server, pinned.port, **how))
    with psycopg.connect(_dsn(pg_server, pinned.port, client_encoding="LATIN1")) as conn:
        assert conn.execute("show client_encoding").fetchone()[0] == "LATIN1"


def test_startup_settings_are_judged_by_the_gate_and_recorded(pg_server):
    import psycopg

    relay = EngineRelay(pg_server.port, lambda: PostgresEngine(no_search_path, database="app"))
    try:
        with pytest.raises(psycopg.OperationalError, match="search_path is fixed"):
            psycopg.connect(_dsn(pg_server, relay.port, options="-c search_path=pg_temp,public"))
        with pytest.raises(psycopg.OperationalError, match="startup option '-P' is not supported"):
            psycopg.connect(_dsn(pg_server, relay.port, options="-P"))
        with psycopg.connect(_dsn(pg_server, relay.port, options="-c statement_timeout=5s")) as conn:
            assert conn.execute("show statement_timeout").fetchone()[0] == "5s"
    finally:
        relay.close()
    started = [e for e in relay.events if isinstance(e, StatementStarted) and e.kind == "startup"]
    assert StatementStarted("SET statement_timeout TO '5s'", "startup") in started
    blocked = [e.text for e in relay.events if isinstance(e, StatementBlocked)]
    assert "SET search_path TO 'pg_temp,public'" in blocked


def test_startup_pairs_and_options_as_the_server_reads_them():
    s = read_startup([("user", "u"), ("options", r"-c a=1 -cb=2 --c-d=3  -c e=x\ y"), ("DateStyle", "ISO")], None)
    assert s.refusal is None and s.database == "u"
    assert s.settings == [("datestyle", "ISO"), ("a", "1"), ("b", "2"), ("c_d", "3"), ("e", "x y")]
    for bad in ([("options", "-c")], [("options", "plain")], [("_pq_.x", "1")], [("replication", "on")]):
        assert read_startup([("user", "u"), *bad], None).refusal is not None, bad
    assert read_startup([("user", "u"), ("replication", "off")], None).refusal is None
    assert read_startup([("user", "u"), ("database", "b"), ("database", "a")], "a").refusal is None  # the last wins
    assert setting_statement("search_path", "a'b\\") == "SET search_path TO E'a''b\\\\'"


# ---- client_encoding: the fence and the backstop (issue 17 item 2) ----------------------------


# Read as UTF-8 (the gateway) this is one SELECT of a string; read as Shift_JIS, 0x95 0x5C is one
# character (表), the backslash is gone, the quote after it ends the string and the INSERT runs.
SJIS_SMUGGLE = b"select E'\x95\\'; insert into fence_marks values (%d); --'"


def only_selects(text: str) -> Verdict:
    """A gate that holds anything the classifier does not read as a plain SELECT."""
    if all(set(c.categories) <= {"select"} for c in classify(text, "postgres")):
        return ALLOW
    return Verdict("hold", "held", rule="t")


@pytest.fixture(scope="module")
def selects_only(pg_server):
    relay = EngineRelay(pg_server.port, lambda: PostgresEngine(only_selects, database="app"))
    yield relay
    relay.close()


def test_the_sjis_smuggle_runs_an_insert_the_classifier_cannot_see(fence_db):
    """The control for the test below, straight against PostgreSQL (no engine): after the
    opaque switch the server reads the hidden INSERT and runs it."""
    assert only_selects(_text(SJIS_SMUGGLE % 4)) == ALLOW  # the gateway's reading: one SELECT
    assert only_selects("insert into fence_marks values (4)") != ALLOW
    client = RawClient(fence_db.port, "app_user", fence_db.app_password, "app")
    client.sock.sendall(Q("select hoop_to_sjis()") + msg(b"Q", SJIS_SMUGGLE % 4 + b"\0"))
    client.until(b"Z")
    client.until(b"Z")
    assert marks(fence_db, 4) == 1


def test_a_routine_switching_to_sjis_ends_the_session_before_a_pipelined_smuggle_runs(fence_db, selects_only):
    """The same two statements in one write through the engine: the second one's text does
    not read the same in every encoding, so it waits behind the fence for the first one's
    ReadyForQuery; the server's ParameterStatus client_encoding=SJIS comes before it, and the
    session ends with the smuggle never sent. (Without the fence for non-ASCII text, it runs.)"""
    client = RawClient(selects_only.port, "app_user", fence_db.app_password, "app")
    n = len(selects_only.events)
    smuggle = SJIS_SMUGGLE % 1
    client.sock.sendall(Q("select hoop_to_sjis()") + msg(b"Q", smuggle + b"\0"))
    got = client.rest()
    kinds = [k for k, _ in got]
    assert kinds[:3] == [b"T", b"D", b"C"] and kinds[-1] == b"E"  # it ran; then the refusal
    fatal = error_fields(got[-1][1])
    assert fatal["S"] == "FATAL" and "client_encoding SJIS is not supported" in fatal["M"]
    assert marks(fence_db, 1) == 0  # the smuggled INSERT never reached the server
    events = selects_only.events[n:]
    assert events[:2] == [StatementStarted("select hoop_to_sjis()", "query"), StatementFinished("SELECT 1")]
    assert isinstance(events[2], StatementBlocked) and events[2].text == _text(smuggle)
    assert events[2].verdict.rule == "session-ended"
    assert isinstance(events[3], ProtocolError) and "SJIS" in events[3].reason


def test_an_ascii_statement_pipelined_after_the_switch_goes_at_once_and_is_recorded_so(fence_db, selects_only):
    """ASCII text reads the same in every encoding, so the fence lets it go behind the switching
    call without waiting; the record says it was sent and that its outcome is unknown (the
    session ended at the switch, before its answer)."""
    client = RawClient(selects_only.port, "app_user", fence_db.app_password, "app")
    n = len(selects_only.events)
    client.sock.sendall(Q("select hoop_to_sjis()") + Q("select 5"))
    got = client.rest()
    assert error_fields(got[-1][1])["S"] == "FATAL"
    events = selects_only.events[n:]
    assert events[:3] == [StatementStarted("select hoop_to_sjis()", "query"), StatementStarted("select 5", "query"),
                          StatementFinished("SELECT 1")]
    assert events[3] == StatementFailed(ENDED_SQLSTATE, ENDED_MESSAGE)  # sent, outcome unknown
    assert isinstance(events[4], ProtocolError) and "SJIS" in events[4].reason


def test_the_same_pipeline_with_a_safe_encoding_runs_both(fence_db, pinned):
    """The control for the test above: the INSERT does run when the switch is allowed."""
    client = RawClient(pinned.port, "app_user", fence_db.app_password, "app")
    client.sock.sendall(Q("select hoop_to_latin1()") + Q("insert into fence_marks values (2)"))
    client.until(b"Z")
    client.until(b"Z")
    assert marks(fence_db, 2) == 1


def test_a_bind_of_a_statement_made_by_sql_prepare_is_refused(fence_db, pinned):
    """An approved `PREPARE s AS …` must not run again and again through protocol Binds."""
    client = RawClient(pinned.port, "app_user", fence_db.app_password, "app")
    client.sock.sendall(Q("prepare s as insert into fence_marks values (3)"))
    client.until(b"Z")
    bind = msg(b"B", b"\0s\0" + struct.pack("!hhh", 0, 0, 0))
    client.sock.sendall(bind + msg(b"E", b"\0\0\0\0\0") + msg(b"S"))
    got = client.until(b"Z")
    assert error_fields(got[0][1])["C"] == DENY_SQLSTATE and 'prepared statement "s"' in error_fields(got[0][1])["M"]
    assert marks(fence_db, 3) == 0
    client.sock.sendall(Q("select 1"))  # the session stays usable
    assert [k for k, _ in client.until(b"Z")] == [b"T", b"D", b"C", b"Z"]


def _logged_in(gate=allow_all) -> PostgresEngine:
    engine = PostgresEngine(gate)
    body = struct.pack("!I", 196608) + b"user\0alice\0\0"
    engine.from_client(struct.pack("!I", len(body) + 4) + body)
    engine.from_server(msg(b"R", b"\0\0\0\0") + msg(b"Z", b"I"))
    return engine


def test_a_non_ascii_parse_after_an_execute_in_one_segment_is_refused():
    engine = _logged_in()
    seg = msg(b"P", b"\0select f()\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0")
    sneaky = "select E'\u4e2d\\' , 1".encode()  # GBK reads the last byte of 中 with the backslash
    out = engine.from_client(seg + msg(b"P", b"\0" + sneaky + b"\0\0\0") + msg(b"S"))
    blocked = [e for e in out.events if isinstance(e, StatementBlocked)]
    assert blocked and blocked[0].verdict.rule == "encoding-unknown"
    assert sneaky not in out.to_server  # a stand-in went instead
    ascii_ok = _logged_in()
    out = ascii_ok.from_client(seg + msg(b"P", b"\0select 2\0\0\0") + msg(b"S"))
    assert not any(isinstance(e, StatementBlocked) for e in out.events)


_CODECS = {"shift_jis": 0, "big5": 0, "gbk": 0, "gb18030": 0, "johab": 0, "cp949": 0}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_text_called_encoding_safe_keeps_every_ascii_byte_in_every_refused_codec(raw):
    """Python's codecs for the refused encodings (cp949 is UHC) must never join an ASCII byte
    of text the engine lets through into a multibyte character."""
    if not reads_the_same_in_every_encoding(raw):
        return
    for codec in _CODECS:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue  # the server refuses invalid input as well
        assert [c for c in text if c.isascii()] == [chr(b) for b in raw if b < 0x80], codec


def _walked(raw: bytes) -> bool:
    """The specification of reads_the_same_in_every_encoding, byte by byte: each refused
    encoding's character lengths as the server's mblen gives them (SJIS: half-width katakana
    one byte, other leads two; BIG5/GBK/UHC two; GB18030 four when a digit follows the lead;
    JOHAB three after 0x8F); false when a character would take in an ASCII byte."""
    lengths = (
        lambda i: 1 if 0xA1 <= raw[i] <= 0xDF else 2,
        lambda i: 2,
        lambda i: 4 if i + 1 < len(raw) and 0x30 <= raw[i + 1] <= 0x39 else 2,
        lambda i: 3 if raw[i] == 0x8F else 2,
    )
    for mblen in lengths:
        i = 0
        while i < len(raw):
            step = mblen(i) if raw[i] >= 0x80 else 1
            if any(b < 0x80 for b in raw[i + 1 : i + step]):
                return False
            i += step
    return True


# The bytes at each edge of a role: ASCII/lead, GB18030's digits, JOHAB's 0x8F, SJIS's katakana.
_ROLES = st.sampled_from([bytes([b]) for b in (0x27, 0x2F, 0x30, 0x39, 0x3A, 0x5C, 0x7F, 0x80, 0x8E, 0x8F, 0x90, 0xA0, 0xA1, 0xDF, 0xE0, 0xFF)])


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.binary(max_size=40), st.lists(_ROLES, max_size=30).map(b"".join)))
def test_the_fast_encoding_check_is_the_byte_by_byte_walk(raw):
    """The check the fence runs on every non-ASCII statement behind it is done with C-speed
    primitives; it must say exactly what the byte-by-byte walk says."""
    assert reads_the_same_in_every_encoding(raw) == _walked(raw)


def test_the_safe_spellings_are_the_servers(pg_server):
    """Each client_encoding spelling the engine accepts names, for the server, the encoding the
    engine thinks; every encoding the server can report is on the allow-list or refused."""
    # A UTF8 server has no conversion to MULE_INTERNAL (refused by the server itself).
    aliases = [(a, c) for a, c in _SAFE_ALIASES.items() if c != "MULE_INTERNAL"]
    script = "".join(f"SET client_encoding TO '{alias}';\nSHOW client_encoding;\n" for alias, _ in aliases)
    env = {**os.environ, "PGPASSWORD": pg_server.superpassword}
    url = f"postgresql://{pg_server.superuser}@127.0.0.1:{pg_server.port}/app"
    done = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url],
                          input=script.encode(), env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = [line for line in done.stdout.decode("ascii").split() if line != "SET"]
    assert shown == [canonical for _, canonical in aliases]
    with pg_server.connect("app") as conn:
        names = {r[0] for r in conn.execute(
            "SELECT pg_encoding_to_char(i) FROM generate_series(0, 60) i WHERE pg_encoding_to_char(i) <> ''")}
    from hoopcli.gateway.protocols.pgwire.encodings import UNSAFE_CLIENT_ENCODINGS

    assert names == SAFE_CLIENT_ENCODINGS | UNSAFE_CLIENT_ENCODINGS


def test_session_started_names_the_database_asked_for_even_when_refused():
    engine = PostgresEngine(allow_all, database="app")
    body = struct.pack("!I", 196608) + b"user\0u\0database\0other\0\0"
    out = engine.from_client(struct.pack("!I", len(body) + 4) + body)
    assert out.close and out.to_server == b""
    assert out.events[0] == SessionStarted("u", "other")
    fields = error_fields(out.to_client[5:])
    assert fields["S"] == "FATAL" and fields["C"] == DENY_SQLSTATE  # as PostgreSQL's own "permission denied for database"


@pytest.mark.parametrize("garbage", [b"\0\0\0\0\0", b"\xff\0\0\0\x04", msg(b"S", b"x")])
def test_a_refused_statement_followed_by_garbage_in_the_same_write_never_reaches_the_server(garbage):
    """The refusal withheld the statement; the broken bytes after it must not undo that (the
    relay writes what the engine passed on, then closes: the server would still run it)."""
    def deny_drop(text: str) -> Verdict:
        return Verdict("deny") if "drop" in text else ALLOW

    for refused in (Q("drop table t"), msg(b"P", b"\0drop table t\0\0\0")):
        engine = _logged_in(deny_drop)
        out = engine.from_client(refused + garbage)
        assert out.close and b"drop" not in out.to_server
        assert any(isinstance(e, StatementBlocked) for e in out.events)
