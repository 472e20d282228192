"""MySQLEngine as a script: hand-built packets in, bytes and events out, no sockets.

Every conversation is fed three ways (whole messages, one byte at a time, random splits) and
must give the same bytes and events each time.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopcli.gateway.protocols.base import (
    Output,
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
)
from hoopcli.gateway.protocols.mysql import MySQLEngine
from hoopcli.gateway.protocols.mysql import framing as mysql_framing
from tests.support.mysql_wire import (
    AUTOCOMMIT,
    CLIENT_CAPS,
    CURSOR_EXISTS,
    DEPRECATE_EOF,
    MORE_RESULTS,
    SECRET,
    USED,
    USED_ERR,
    Conv,
    binary_resultset,
    cmd,
    coldef,
    eof,
    err,
    execute,
    grants,
    greeting,
    logged_in,
    login_packet,
    lstr,
    ok,
    pkt,
    prepare_ok,
    query,
    resultset,
    split_random,
    split_whole,
)


# Packet builders, the three ways of feeding and Conv live in tests/support/mysql_wire.py.


# ---- statements and results ------------------------------------------------------------------


def test_query_ok(split):
    conv = logged_in(split)
    conv.client(query("insert into t values (1),(2)"))
    conv.server(ok(1, affected=2))
    conv.client(query("update t set a = 1 where a = 2"))
    conv.server(ok(1, affected=1))
    to_server, to_client, events = conv.take()
    assert to_server == query("insert into t values (1),(2)") + query("update t set a = 1 where a = 2")
    assert to_client == ok(1, affected=2) + ok(1, affected=1)
    assert events == [
        StatementStarted("insert into t values (1),(2)", "query"),
        StatementFinished("OK 2 rows affected"),
        StatementStarted("update t set a = 1 where a = 2", "query"),
        StatementFinished("OK 1 row affected"),
    ]


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_result_set(split, deprecate_eof):
    conv = logged_in(split, deprecate_eof=deprecate_eof)
    rows = [(b"1", b"one"), (b"2", None), (b"\xfe" * 3, b"")]  # a row may start with 0xFE
    response = resultset(rows, deprecate_eof)
    conv.client(query("select a, b from t"))
    conv.server(response)
    conv.client(query("select 1 from dual where false"))
    empty = resultset([], deprecate_eof)
    conv.server(empty)
    to_server, to_client, events = conv.take()
    assert to_client == response + empty
    assert events == [
        StatementStarted("select a, b from t", "query"),
        StatementFinished("SELECT 3"),
        StatementStarted("select 1 from dual where false", "query"),
        StatementFinished("SELECT 0"),
    ]


def test_whole_chunks_are_passed_on_as_the_same_object():
    conv = logged_in(split_whole)
    data = query("select a from t")
    out = conv.engine.from_client(data)
    assert out.to_server is data
    response = resultset([(b"x" * 100,)] * 50, deprecate_eof=False)
    out = conv.engine.from_server(response)
    assert out.to_client is response
    assert out.events == [StatementFinished("SELECT 50")]
    pipelined = query("select 1") + cmd(0x0E) + query("select 2")  # held for the gate, then let go
    out = conv.engine.from_client(pipelined)
    assert out.to_server is pipelined


def test_error(split):
    conv = logged_in(split)
    conv.client(query("select * from nosuch"))
    conv.server(err(1, 1146, "42S02", "Table 'app.nosuch' doesn't exist"))
    assert conv.take()[2] == [
        StatementStarted("select * from nosuch", "query"),
        StatementFailed("1146/42S02", "Table 'app.nosuch' doesn't exist"),
    ]


def test_error_in_the_middle_of_rows(split):
    conv = logged_in(split)
    conv.client(query("select slow()"))
    partial = resultset([(b"1",)], deprecate_eof=False)
    partial = partial[: -len(eof(0))]  # drop the terminator
    conv.server(partial + err(5, 1317, "70100", "Query execution was interrupted"))
    assert conv.take()[2][-1] == StatementFailed("1317/70100", "Query execution was interrupted")


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_multiple_results(split, deprecate_eof):
    conv = logged_in(split, deprecate_eof=deprecate_eof)
    conv.client(query("call p()"))
    first = resultset([(b"a",), (b"b",)], deprecate_eof, status=AUTOCOMMIT | MORE_RESULTS)
    conv.server(first)
    conv.server(ok(7, affected=1, status=AUTOCOMMIT | MORE_RESULTS))
    conv.server(ok(8, affected=0))
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], deprecate_eof))
    assert conv.take()[2] == [
        StatementStarted("call p()", "query"),
        StatementFinished("SELECT 2; OK 1 row affected; OK 0 rows affected"),
        StatementStarted("select 1", "query"),
        StatementFinished("SELECT 1"),
    ]


def test_error_after_a_first_result(split):
    conv = logged_in(split)
    conv.client(query("select 1; select nosuch"))
    conv.server(resultset([(b"1",)], False, status=AUTOCOMMIT | MORE_RESULTS))
    conv.server(err(1, 1054, "42S22", "Unknown column 'nosuch'"))
    assert conv.take()[2][1:] == [StatementFailed("1054/42S22", "Unknown column 'nosuch'")]


def test_progress_reports_are_not_errors(split):
    conv = logged_in(split)
    conv.client(query("alter table t add c int"))
    progress = pkt(1, b"\xff\xff\xff" + b"\x01\x01\x01\x10\x27\x00" + lstr(b"copy to tmp table"))
    conv.server(progress + ok(2))
    assert conv.take()[2] == [
        StatementStarted("alter table t add c int", "query"),
        StatementFinished("OK 0 rows affected"),
    ]


def test_init_db(split):
    conv = logged_in(split)
    conv.client(cmd(0x02, b"other`db"))
    conv.server(ok(1))
    assert conv.take()[2] == [StatementStarted("USE `other``db`", "init_db"), StatementFinished("OK 0 rows affected")]


def test_plain_commands_pass_without_events(split):
    conv = logged_in(split)
    stream_c = cmd(0x0E) + cmd(0x09)  # ping, statistics (pipelined)
    conv.client(stream_c)
    stream_s = ok(1) + pkt(1, b"Uptime: 42  Threads: 1  Questions: 7")
    conv.server(stream_s)
    conv.client(cmd(0x04, b"t\0"))  # field list
    fields = coldef(1, b"a") + coldef(2, b"b") + eof(3)
    conv.server(fields)
    conv.client(cmd(0x1F))  # reset connection
    conv.server(ok(1))
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], False))
    conv.client(cmd(0x01))  # quit
    to_server, to_client, events = conv.take()
    assert to_server == stream_c + cmd(0x04, b"t\0") + cmd(0x1F) + query("select 1") + cmd(0x01)
    assert to_client == stream_s + fields + ok(1) + resultset([(b"1",)], False)
    assert events == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_change_user(split):
    conv = logged_in(split)
    body = b"other\0" + bytes((len(SECRET),)) + SECRET + b"otherdb\0" + b"\x2d\x00" + b"mysql_native_password\0"
    conv.client(cmd(0x11, body))
    conv.server(pkt(1, b"\xfe" + b"mysql_native_password\0" + b"0123456789abcdefghij\0"))
    conv.client(pkt(2, SECRET))
    conv.server(ok(3))
    conv.client(query("select 2"))
    conv.server(resultset([(b"2",)], False))
    events = conv.take()[2]
    assert events == [
        SessionStarted("other", "otherdb"),
        StatementStarted("select 2", "query"),
        StatementFinished("SELECT 1"),
    ]
    assert "very-secret" not in repr(events)


def test_load_data_local_infile(split):
    conv = logged_in(split)
    text = "load data local infile '/tmp/x.csv' into table t"
    conv.client(query(text))
    conv.server(pkt(1, b"\xfb/tmp/x.csv"))
    # the file, in packets whose ids run on (and wrap), then the empty packet that ends it
    file_packets = b"".join(pkt((2 + k) % 256, b"1,confidential\n" * 3) for k in range(260)) + pkt(6, b"")
    conv.client(file_packets)
    conv.server(ok(7, affected=780))
    conv.client(query("select 1"))
    to_server, to_client, events = conv.take()
    assert to_server == query(text) + file_packets + query("select 1")
    assert events == [
        StatementStarted(text, "query"),
        StatementFinished("OK 780 rows affected"),
        StatementStarted("select 1", "query"),
    ]
    assert "confidential" not in repr(events)


# ---- prepared statements ---------------------------------------------------------------------


PARAMS = [
    (0x08, (5).to_bytes(8, "little", signed=True)),
    (0xFD, lstr("héllo".encode())),
    (0x06, None),
    (0x05, struct.pack("<d", 1.5)),
    (0x0C, bytes((7,)) + (2026).to_bytes(2, "little") + bytes((11, 23, 12, 30, 5))),
    (0x01, b"\xff"),
]
PARAM_TEXT = ("5", "héllo", None, "1.5", "2026-11-23 12:30:05", "-1")


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_prepare_execute_close(split, deprecate_eof):
    conv = logged_in(split, deprecate_eof=deprecate_eof, record_params=True)
    text = "select c from t where a = ? and b = ? and c <=> ? and d = ? and e = ? and f = ?"
    conv.client(cmd(0x16, text.encode()))
    conv.server(prepare_ok(9, columns=1, params=6, deprecate_eof=deprecate_eof))
    conv.client(execute(9, PARAMS))
    conv.server(binary_resultset(3, deprecate_eof))
    conv.client(execute(9, PARAMS, send_types=False))  # types from the first execute
    conv.server(binary_resultset(0, deprecate_eof))
    conv.client(cmd(0x19, (9).to_bytes(4, "little")))  # close: no answer
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], deprecate_eof))
    assert conv.take()[2] == [
        StatementStarted(text, "prepare"),
        StatementFinished("PREPARE"),
        StatementStarted(text, "execute", PARAM_TEXT),
        StatementFinished("SELECT 3"),
        StatementStarted(text, "execute", PARAM_TEXT),
        StatementFinished("SELECT 0"),
        StatementStarted("select 1", "query"),
        StatementFinished("SELECT 1"),
    ]


def test_execute_params_only_when_asked(split):
    conv = logged_in(split)
    conv.client(cmd(0x16, b"insert into t values (?)"))
    conv.server(prepare_ok(1, columns=0, params=1, deprecate_eof=False))
    conv.client(execute(1, [(0x03, (7).to_bytes(4, "little"))]))
    conv.server(ok(1, affected=1))
    assert conv.take()[2][2:] == [
        StatementStarted("insert into t values (?)", "execute", None),
        StatementFinished("OK 1 row affected"),
    ]


def test_long_data_parameters_are_marked(split):
    conv = logged_in(split, record_params=True)
    conv.client(cmd(0x16, b"insert into t values (?, ?)"))
    conv.server(prepare_ok(3, columns=0, params=2, deprecate_eof=False))
    conv.client(cmd(0x18, (3).to_bytes(4, "little") + (1).to_bytes(2, "little") + b"blob" * 100))
    body = (3).to_bytes(4, "little") + b"\0" + (1).to_bytes(4, "little") + b"\0" + b"\x01" + b"\x03\x00\xfc\x00"
    body += (4).to_bytes(4, "little")  # only the first value: the second came as long data
    conv.client(cmd(0x17, body))
    conv.server(ok(1, affected=1))
    assert conv.take()[2][2] == StatementStarted("insert into t values (?, ?)", "execute", ("4", "<long data>"))


def test_prepare_error_and_unknown_statement(split):
    conv = logged_in(split)
    conv.client(cmd(0x16, b"select nosuch"))
    conv.server(err(1, 1054, "42S22", "Unknown column"))
    conv.client(execute(77, None))
    conv.server(err(1, 1243, "HY000", "Unknown prepared statement handler"))
    assert conv.take()[2] == [
        StatementStarted("select nosuch", "prepare"),
        StatementFailed("1054/42S22", "Unknown column"),
        StatementStarted("/* unknown prepared statement 77 */", "execute"),
        StatementFailed("1243/HY000", "Unknown prepared statement handler"),
    ]


@pytest.mark.parametrize("deprecate_eof", [False, True])
def test_cursor_and_fetch(split, deprecate_eof):
    conv = logged_in(split, deprecate_eof=deprecate_eof)
    conv.client(cmd(0x16, b"select c from t"))
    conv.server(prepare_ok(4, columns=1, params=0, deprecate_eof=deprecate_eof))
    conv.client(execute(4, None, flags=1))
    opened = [pkt(1, b"\x01"), coldef(2, b"c")]
    status = AUTOCOMMIT | CURSOR_EXISTS
    opened.append(ok(3, status=status, header=0xFE) if deprecate_eof else eof(3, status))
    conv.server(b"".join(opened))
    conv.client(cmd(0x1C, (4).to_bytes(4, "little") + (2).to_bytes(4, "little")))
    rows = pkt(1, b"\x00\x00" + b"\x01" * 8) + pkt(2, b"\x00\x00" + b"\x02" * 8)
    last = ok(3, status=AUTOCOMMIT | 0x80, header=0xFE) if deprecate_eof else eof(3, AUTOCOMMIT | 0x80)
    conv.server(rows + last)
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], deprecate_eof))
    assert conv.take()[2][2:] == [
        StatementStarted("select c from t", "execute"),
        StatementFinished("CURSOR"),
        StatementStarted("select 1", "query"),
        StatementFinished("SELECT 1"),
    ]


# ---- framing -----------------------------------------------------------------------------------


def test_continuation_packets_both_ways():
    for split in (split_whole, split_random):
        conv = logged_in(split)
        text = "select '" + "x" * (0xFFFFFF + 10) + "'"
        payload = b"\x03" + text.encode()
        wire = pkt(0, payload[:0xFFFFFF]) + pkt(1, payload[0xFFFFFF:])
        conv.client(wire)
        big = b"\x00" * 0 + lstr(b"y" * (0xFFFFFF + 5))  # one text column, > 16 MiB
        rows = pkt(4, big[:0xFFFFFF]) + pkt(5, big[0xFFFFFF:])
        response = pkt(1, b"\x01") + coldef(2, b"c") + eof(3) + rows + eof(6)
        conv.server(response)
        to_server, to_client, events = conv.take()
        assert to_server == wire and to_client == response
        assert events == [StatementStarted(text, "query"), StatementFinished("SELECT 1")]


def test_exact_multiple_of_16mib_ends_with_an_empty_packet():
    conv = logged_in(split_whole)
    payload = b"\x03" + b"-" * (0xFFFFFF - 1)
    wire = pkt(0, payload) + pkt(1, b"")
    out = conv.engine.from_client(wire)
    assert out.to_server == wire
    assert out.events == [StatementStarted("-" * (0xFFFFFF - 1), "query")]


def test_oversize_statement_is_refused_and_the_session_goes_on(monkeypatch, split):
    monkeypatch.setattr(mysql_framing, "MAX_MESSAGE_BYTES", 1000)
    conv = logged_in(split)
    conv.client(query("select '" + "z" * 2000 + "'") + query("select 1"))
    assert not conv.closed
    assert conv.to_server == query("select 1")  # nothing of the big one reached the server
    [blocked, started] = conv.events
    assert isinstance(blocked, StatementBlocked) and blocked.verdict.rule == "too-large"
    assert blocked.text == "<COM_QUERY of 2010 bytes, not read>"
    assert started == StatementStarted("select 1", "query")
    assert conv.to_client[4] == 0xFF and b"larger than the gateway reads" in conv.to_client


def test_oversize_prepare_also_refuses_executing_the_last_prepared(monkeypatch, split):
    monkeypatch.setattr(mysql_framing, "MAX_MESSAGE_BYTES", 1000)
    conv = logged_in(split)
    conv.client(cmd(0x16, b"delete from t -- " + b"z" * 2000) + execute(0xFFFFFFFF, None))
    assert conv.to_server == b"" and not conv.closed
    assert [e.verdict.rule for e in conv.events] == ["too-large", "mysql-refused-prepare"]


def test_big_rows_are_never_buffered(monkeypatch):
    monkeypatch.setattr(mysql_framing, "MAX_MESSAGE_BYTES", 1000)
    conv = logged_in(split_random, deprecate_eof=True)
    conv.client(query("select big"))
    response = resultset([(b"r" * 5000,)] * 3, deprecate_eof=True)
    conv.server(response)
    assert not conv.closed
    assert bytes(conv.to_client) == response
    assert conv.events[-1] == StatementFinished("SELECT 3")


@pytest.mark.parametrize(
    "direction, data",
    [
        ("client", query("select 1")),  # before the greeting
        ("server", pkt(0, b"\x09" + b"5.0\0" + b"\0" * 20)),  # protocol 9
        ("server", pkt(0, b"\x0a" + b"no terminator")),
    ],
)
def test_garbage_before_login(split, direction, data):
    conv = Conv(split)
    getattr(conv, direction)(data)
    assert conv.closed
    assert isinstance(conv.events[-1], ProtocolError)
    assert conv.events[-1].direction == direction


def test_garbage_after_login(split):
    conv = logged_in(split)
    conv.client(pkt(3, b"\x03select 1"))  # a command must have sequence id 0
    assert conv.closed and conv.events[-1].direction == "client"
    conv = logged_in(split)
    conv.client(query("select 1"))
    conv.server(pkt(1, b"\x00\xfc"))  # truncated OK
    assert conv.closed and conv.events[-1].direction == "server"
    conv = logged_in(split)
    conv.client(query("select 1"))
    conv.server(pkt(1, b"\xfb\xfb"))  # LOCAL INFILE request is fine ...
    conv.client(pkt(0, b""))  # ... (empty file)
    conv.server(eof(3))  # but an EOF where OK/ERR is due is not
    assert conv.closed and conv.events[-1].direction == "server"


def test_after_a_protocol_error_nothing_passes():
    engine = MySQLEngine()
    assert engine.from_client(b"\x01\x00\x00\x00\x03").close
    out = engine.from_server(greeting())
    assert out.close and out.to_client == b"" and out.events == []


def test_empty_feed_is_harmless():
    engine = MySQLEngine()
    assert engine.from_server(b"") == Output()
    assert engine.from_client(b"") == Output()


# ---- fuzzing -----------------------------------------------------------------------------------

CONVERSATION = [
    ("server", greeting()),
    ("client", login_packet(caps=CLIENT_CAPS | DEPRECATE_EOF)),
    ("server", pkt(2, b"\xfe" + b"mysql_native_password\0" + b"0123456789abcdefghij\0")),
    ("client", pkt(3, SECRET)),
    ("server", ok(4)),
    ("client", query("select a from t") + query("drop table t")),
    ("server", resultset([(b"1",), (b"2",)], True)),
    ("client", cmd(0x16, b"insert into t values (?)")),
    ("server", prepare_ok(1, 0, 1, True)),
    ("client", execute(1, [(0x03, (7).to_bytes(4, "little"))])),
    ("server", ok(1, affected=1)),
    ("client", query("call p()")),
    ("server", resultset([(b"x",)], True, status=MORE_RESULTS) + ok(5)),
    ("client", query("select nosuch")),
    ("server", err(1, 1054, "42S22", "Unknown column")),
    ("client", cmd(0x16, b"truncate t")),
    ("server", prepare_ok(2, 0, 0, True)),
    ("client", execute(2, None) + execute(2, None) + execute(0xFFFFFFFF, None) + query("select 2")),
    ("server", ok(1) + resultset([(b"2",)], True)),
]


def run_conversation(cuts: list[int] | None) -> tuple[bytes, bytes, list]:
    conv = Conv(split_whole, MySQLEngine(gate=grants, record_params=True))
    for direction, data in CONVERSATION:
        if cuts is None:
            chunks = [data]
        else:
            points = sorted({c % len(data) for c in cuts} - {0})
            bounds = [0, *points, len(data)]
            chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        for chunk in chunks:
            getattr(conv, direction)(chunk)
    assert not conv.closed
    return conv.take()


WHOLE = run_conversation(None)


def test_the_conversation_refuses_the_second_run_of_its_granted_statement():
    assert WHOLE[2][-6:] == [
        StatementStarted("truncate t", "execute", ()),  # recorded: no parameters
        StatementBlocked("truncate t", USED),
        StatementBlocked("truncate t", USED),
        StatementStarted("select 2", "query"),
        StatementFinished("OK 0 rows affected"),
        StatementFinished("SELECT 1"),
    ]
    assert WHOLE[1].endswith(ok(1) + USED_ERR + USED_ERR + resultset([(b"2",)], True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_fuzz_any_split_gives_the_same_bytes_and_events(cuts):
    assert run_conversation(cuts) == WHOLE


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.one_of(
                st.binary(max_size=48),
                # well-framed packets with random payloads get deeper into the parser
                st.builds(lambda seq, body: pkt(seq, body), st.sampled_from([0, 1, 2, 3]), st.binary(max_size=40)),
            ),
        ),
        max_size=16,
    ),
    st.sampled_from(["fresh", "logged_in", "query", "prepare", "execute", "granted"]),
    st.booleans(),
)
def test_fuzz_garbage_never_escapes(feeds, start, deprecate_eof):
    engine = MySQLEngine(gate=grants, record_params=True)
    if start != "fresh":
        engine.from_server(greeting())
        engine.from_client(login_packet(caps=CLIENT_CAPS | (DEPRECATE_EOF if deprecate_eof else 0)))
        engine.from_server(ok(2))
    if start == "query":  # the server's garbage is parsed as a response
        engine.from_client(query("select 1"))
    elif start in ("prepare", "execute"):
        engine.from_client(cmd(0x16, b"select ?"))
        if start == "execute":
            engine.from_server(prepare_ok(1, 1, 1, deprecate_eof))
            engine.from_client(execute(1, [(0x03, (7).to_bytes(4, "little"))]))
    elif start == "granted":  # executes are withheld and checked from here on
        engine.from_client(cmd(0x16, b"truncate t"))
        engine.from_server(prepare_ok(1, 0, 0, deprecate_eof))
        engine.from_client(execute(1, None))
        engine.from_server(ok(1))
    closed = False
    for to_server, data in feeds:
        out = engine.from_client(data) if to_server else engine.from_server(data)
        assert isinstance(out, Output)
        if closed:
            assert out.close and not out.to_client and not out.to_server and not out.events
        elif out.close:
            assert isinstance(out.events[-1], ProtocolError)
        closed = closed or out.close
