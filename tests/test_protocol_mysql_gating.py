"""MySQLEngine's gate as a script (no sockets): what it withholds, how it answers (ERR packets
with the right sequence id, the session going on), and approvals that run once. Each
conversation is fed three ways (the `split` fixture).
"""

from __future__ import annotations

import pytest

from hoopcli.gateway.protocols.base import (
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    Verdict,
)
from hoopcli.gateway.protocols.mysql import GRANT_USED_MESSAGE, MySQLEngine, err_packet
from tests.support.mysql_wire import (
    USED,
    USED_ERR,
    Conv,
    binary_resultset,
    cmd,
    err,
    execute,
    grants,
    greeting,
    hold_drops,
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


# ---- gating ----------------------------------------------------------------------------------


def test_hold_answers_the_client_and_the_session_goes_on(split):
    seen: list[str] = []

    def gate(text: str) -> Verdict:
        seen.append(text)
        return hold_drops(text)

    conv = logged_in(split, gate=gate)
    conv.client(query("drop table t"))
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert to_client == err_packet(1227, "HY000", "waiting for approval (req-1)", seq=1)
    assert to_client[3] == 1  # sequence id 1
    assert events == [StatementBlocked("drop table t", hold_drops("drop table t"))]
    assert seen == ["drop table t"]  # asked once, with the whole text however it was split
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], False))
    to_server, _, events = conv.take()
    assert to_server == query("select 1")
    assert events == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_deny_uses_42000(split):
    conv = logged_in(split, gate=hold_drops)
    conv.client(query("delete from t"))
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert to_client == err_packet(1227, "42000", "deletes are not allowed")
    assert events == [StatementBlocked("delete from t", hold_drops("delete from t"))]


def test_default_messages_when_the_verdict_has_none(split):
    conv = logged_in(split, gate=lambda text: Verdict("hold"))
    conv.client(query("select 1"))
    assert conv.take()[1] == err_packet(1227, "HY000", "statement held for approval")


def test_gate_error_counts_as_deny(split):
    def broken(text: str) -> Verdict:
        raise RuntimeError("policy store down")

    conv = logged_in(split, gate=broken)
    conv.client(query("select 1"))
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert to_client == err_packet(1227, "42000", "statement refused: the policy check failed")
    assert events[0].verdict.rule == "gate-error"


def test_refusal_waits_behind_earlier_answers(split):
    """A pipelined, refused command is answered after the commands before it."""
    conv = logged_in(split, gate=hold_drops)
    stream = query("select 1") + query("drop table t") + query("select 2")
    conv.client(stream)
    to_server, to_client, events = conv.take()
    assert to_server == query("select 1") + query("select 2")
    assert to_client == b""
    r1, r2 = resultset([(b"1",)], False), resultset([(b"2",)], False)
    conv.server(r1 + r2)
    _, to_client, later = conv.take()
    assert to_client == r1 + err_packet(1227, "HY000", "waiting for approval (req-1)") + r2
    assert events + later == [
        StatementStarted("select 1", "query"),
        StatementBlocked("drop table t", hold_drops("drop table t")),
        StatementStarted("select 2", "query"),
        StatementFinished("SELECT 1"),
        StatementFinished("SELECT 1"),
    ]


def test_gated_commands_beyond_com_query(split):
    conv = logged_in(split, gate=hold_drops)
    conv.client(cmd(0x06, b"app"))  # COM_DROP_DB
    conv.client(cmd(0x16, b"drop table t"))  # COM_STMT_PREPARE
    conv.client(execute(0xFFFFFFFF, None))  # pipelined execute of "the last prepared"
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert [type(e) for e in events] == [StatementBlocked] * 3
    assert events[0].text == "DROP DATABASE `app`"
    assert events[1].text == "drop table t"
    assert events[2].verdict.rule == "mysql-refused-prepare"
    assert to_client.count(b"\xff\xcb\x04#") == 3  # three ERR 1227 packets


def test_unsupported_commands_are_refused(split):
    conv = logged_in(split)
    conv.client(cmd(0x12, b"\0" * 10 + b"binlog.000001"))  # COM_BINLOG_DUMP
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert to_client == err_packet(1235, "42000", "the gateway does not relay COM_BINLOG_DUMP")
    assert events[0].verdict.rule == "mysql-unsupported-command"


def test_pipelined_command_during_auth_is_gated(split):
    conv = Conv(split, MySQLEngine(gate=hold_drops))
    conv.server(greeting())
    conv.client(login_packet() + query("drop table t") + query("select 1"))
    to_server, to_client, events = conv.take()
    assert to_server == login_packet() + query("select 1")
    conv.server(ok(2) + resultset([(b"1",)], False))
    _, to_client, later = conv.take()
    assert to_client == ok(2) + err_packet(1227, "HY000", "waiting for approval (req-1)") + resultset([(b"1",)], False)
    assert [type(e) for e in events + later] == [
        SessionStarted, StatementBlocked, StatementStarted, StatementFinished
    ]


# ---- approvals run once -------------------------------------------------------------------------


def close_stmt(stmt_id: int) -> bytes:
    return cmd(0x19, stmt_id.to_bytes(4, "little"))


def reset_stmt(stmt_id: int) -> bytes:
    return cmd(0x1A, stmt_id.to_bytes(4, "little"))


def granted_and_run(conv: Conv, stmt_id: int = 5) -> None:
    conv.client(cmd(0x16, b"truncate t"))
    conv.server(prepare_ok(stmt_id, columns=0, params=0, deprecate_eof=False))
    conv.client(execute(stmt_id, None))
    conv.server(ok(1))
    to_server, _, events = conv.take()
    assert to_server == cmd(0x16, b"truncate t") + execute(stmt_id, None)
    assert [(type(e), getattr(e, "text", None)) for e in events] == [
        (StatementStarted, "truncate t"),
        (StatementFinished, None),
        (StatementStarted, "truncate t"),
        (StatementFinished, None),
    ]


def assert_used(conv: Conv, data: bytes) -> None:
    conv.client(data)
    assert conv.take() == (b"", USED_ERR, [StatementBlocked("truncate t", USED)])


def test_a_granted_statement_executes_once(split):
    conv = logged_in(split, gate=grants)
    granted_and_run(conv)
    assert_used(conv, execute(5, None))
    assert_used(conv, execute(5, None))
    assert_used(conv, execute(0xFFFFFFFF, None))  # "the last prepared" is the same statement
    assert_used(conv, cmd(0xFA, (5).to_bytes(4, "little") + b"\0\0"))  # nor in bulk
    conv.client(reset_stmt(5))  # COM_STMT_RESET does not re-arm it
    conv.server(ok(1))
    conv.take()
    assert_used(conv, execute(5, None))
    conv.client(query("select 1"))  # the session goes on
    conv.server(resultset([(b"1",)], False))
    assert conv.take()[2] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_a_closed_granted_statement_is_the_servers_to_refuse(split):
    conv = logged_in(split, gate=grants)
    granted_and_run(conv)
    conv.client(close_stmt(5) + execute(5, None))  # ids are never reused: the server fails it
    conv.server(err(1, 1243, "HY000", "Unknown prepared statement handler"))
    to_server, _, events = conv.take()
    assert to_server == close_stmt(5) + execute(5, None)
    assert events == [
        StatementStarted("/* unknown prepared statement 5 */", "execute"),
        StatementFailed("1243/HY000", "Unknown prepared statement handler"),
    ]


def test_pipelined_executes_of_the_last_prepared(split):
    conv = logged_in(split, gate=grants)
    conv.client(cmd(0x16, b"truncate t") + execute(0xFFFFFFFF, None) + execute(0xFFFFFFFF, None))
    to_server, to_client, events = conv.take()
    assert to_server == cmd(0x16, b"truncate t") + execute(0xFFFFFFFF, None)
    assert to_client == b""  # the refusal waits behind the answers still due
    answer = prepare_ok(8, columns=0, params=0, deprecate_eof=False) + ok(1)
    conv.server(answer)
    assert conv.take()[1] == answer + USED_ERR
    assert events[-1] == StatementBlocked("truncate t", USED)
    assert_used(conv, execute(8, None))


def test_an_execute_of_an_id_not_given_yet_waits_for_the_granted_prepare(split):
    # A client that guesses the id its granted prepare will get would run it unseen.
    conv = logged_in(split, gate=grants)
    conv.client(cmd(0x16, b"truncate t") + execute(6, None))
    to_server, _, events = conv.take()
    assert to_server == cmd(0x16, b"truncate t")
    assert events[-1].verdict.rule == "grant-pending" and events[-1].verdict.request_id == "req-5"
    conv.server(prepare_ok(6, columns=0, params=0, deprecate_eof=False))
    assert conv.take()[1].endswith(err_packet(1227, "42000", events[-1].verdict.message))
    conv.client(execute(6, None))  # by the id it was given: its one run
    conv.server(ok(1))
    assert conv.take()[0] == execute(6, None)
    assert_used(conv, execute(6, None))


def test_statements_never_granted_execute_any_number_of_times(split):
    conv = logged_in(split, gate=grants, record_params=True)
    granted_and_run(conv)  # executes are now withheld until complete, and checked
    conv.client(cmd(0x16, b"select c from t where a = ?"))
    conv.server(prepare_ok(6, columns=1, params=1, deprecate_eof=False))
    conv.take()
    for k in range(4):
        data = execute(6, [(0x08, k.to_bytes(8, "little"))])
        conv.client(data)
        conv.server(binary_resultset(1, False))
        to_server, _, events = conv.take()
        assert to_server == data
        assert events == [StatementStarted("select c from t where a = ?", "execute", (str(k),)), StatementFinished("SELECT 1")]


def test_reset_connection_forgets_granted_statements(split):
    conv = logged_in(split, gate=grants)
    granted_and_run(conv)
    conv.client(cmd(0x1F))  # COM_RESET_CONNECTION
    conv.server(ok(1))
    conv.client(execute(5, None))  # unknown now, at the server too
    assert conv.take()[0] == cmd(0x1F) + execute(5, None)


def test_sessions_without_grants_never_withhold_executes():
    conv = logged_in(split_whole, gate=hold_drops)
    conv.client(cmd(0x16, b"select ?"))
    conv.server(prepare_ok(2, columns=1, params=1, deprecate_eof=False))
    data = execute(2, [(0x08, (1).to_bytes(8, "little"))])
    out = conv.engine.from_client(data[:7])
    assert out.to_server == data[:7]  # passed on before the packet is complete
    assert not conv.engine._granted




# ---- refusals of commands sent as several 16 MiB packets (issue 17, item 8) ---------------------


def multi_packet(code: int, body: bytes) -> tuple[bytes, int]:
    """A command split into 16 MiB physical packets as a client sends it; its last id."""
    payload = bytes((code,)) + body
    chunks = [payload[k : k + 0xFFFFFF] for k in range(0, len(payload), 0xFFFFFF)]
    if len(chunks[-1]) == 0xFFFFFF:
        chunks.append(b"")
    return b"".join(pkt(seq, c) for seq, c in enumerate(chunks)), len(chunks) - 1


BIG = b" -- " + b"x" * (0xFFFFFF + 100)  # a comment that pushes the command past 16 MiB


@pytest.mark.parametrize(
    "code, text, rule",
    [
        (0x03, b"drop table t", "ddl"),  # hold
        (0x03, b"delete from t", "no-delete"),  # deny
        (0x16, b"drop table t", "ddl"),  # a prepare held
    ],
)
def test_refusing_a_multi_packet_command_answers_with_the_next_sequence_id(code, text, rule):
    for split in (split_whole, split_random):
        conv = logged_in(split, gate=hold_drops)
        wire, last = multi_packet(code, text + BIG)
        conv.client(wire)
        to_server, to_client, events = conv.take()
        assert to_server == b"" and last == 1
        assert to_client[3] == last + 1  # not 1: the client would report a packet out of order
        assert [e.verdict.rule for e in events] == [rule]
        conv.client(query("select 1"))  # and the session goes on
        conv.server(resultset([(b"1",)], False))
        assert conv.take()[2] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_a_command_of_exactly_16_mib_ends_with_an_empty_packet_and_is_answered_after_it():
    conv = logged_in(split_whole, gate=hold_drops)
    wire, last = multi_packet(0x03, b"drop table t" + b" " * (0xFFFFFF - 13))
    assert last == 1 and wire.endswith(pkt(1, b""))
    conv.client(wire)
    assert conv.to_client[3] == 2


def test_a_multi_packet_second_run_of_a_granted_statement_is_answered_in_sequence():
    conv = logged_in(split_whole, gate=grants)
    conv.client(cmd(0x16, b"truncate t"))
    conv.server(prepare_ok(5, columns=0, params=1, deprecate_eof=False))
    conv.client(execute(5, [(0xFD, lstr(b"a"))]))
    conv.server(ok(1))
    conv.take()
    body = (5).to_bytes(4, "little") + b"\0" + (1).to_bytes(4, "little") + b"\0\x01\xfd\x00" + lstr(b"b" * 0xFFFFFF)
    wire, last = multi_packet(0x17, body)
    conv.client(wire)
    to_server, to_client, events = conv.take()
    assert to_server == b"" and events == [StatementBlocked("truncate t", USED)]
    assert to_client == err_packet(1227, "42000", GRANT_USED_MESSAGE, seq=last + 1)


def test_a_refused_unsupported_command_is_answered_in_sequence():
    conv = logged_in(split_whole)
    wire, last = multi_packet(0x12, b"\0" * (0xFFFFFF + 10))  # COM_BINLOG_DUMP
    conv.client(wire)
    assert conv.to_server == b"" and conv.to_client[3] == last + 1 == 2


def test_the_sequence_id_wraps_like_the_wire():
    assert err_packet(1227, "42000", "x", seq=256)[3] == 0
