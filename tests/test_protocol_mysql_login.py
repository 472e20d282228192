"""MySQLEngine's start-up phase as a script (no sockets): the greeting it rewrites, the
capabilities it negotiates, the character sets and the pinned database it enforces at login and
in COM_CHANGE_USER. Each conversation is fed three ways (the `split` fixture).
"""

from __future__ import annotations

import pytest

from hoopcli.gateway.protocols.base import (
    ProtocolError,
    SessionStarted,
    StatementFinished,
    StatementStarted,
)
from hoopcli.gateway.protocols.mysql import MySQLEngine, err_packet
from hoopcli.gateway.protocols.mysql.charsets import SAFE_CHARSETS, SAFE_COLLATION_IDS
from tests.support.mysql_wire import (
    CLIENT_CAPS,
    COMPRESS,
    EXT_CACHE_METADATA,
    EXT_PROGRESS,
    LENENC_AUTH,
    SECRET,
    SERVER_CAPS,
    SSL,
    Conv,
    clear_caps,
    cmd,
    err,
    greeting,
    logged_in,
    login_packet,
    ok,
    pkt,
    query,
    resultset,
    split_whole,
)


# ---- handshake and login ---------------------------------------------------------------------


def test_greeting_loses_ssl_and_compression(split):
    conv = Conv(split)
    conv.server(greeting())
    to_server, to_client, events = conv.take()
    assert to_client == clear_caps(greeting(), SSL | COMPRESS, EXT_CACHE_METADATA)
    assert to_client != greeting()
    assert len(to_client) == len(greeting())
    assert events == [] and to_server == b""


def test_greeting_without_stripped_bits_passes_unchanged(split):
    plain = greeting(caps=SERVER_CAPS & ~(SSL | COMPRESS), ext=EXT_PROGRESS)
    conv = Conv(split)
    conv.server(plain)
    assert conv.take()[1] == plain


def test_login_auth_exchange_untouched_and_never_recorded(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.take()
    exchange_c = [login_packet(), pkt(3, SECRET), pkt(5, b"\x02")]
    exchange_s = [
        pkt(2, b"\xfe" + b"caching_sha2_password\0" + b"0123456789abcdefghij\0"),
        pkt(4, b"\x01\x04"),  # perform full authentication
        pkt(6, b"\x01" + b"-----BEGIN PUBLIC KEY-----" + SECRET),
    ]
    for c, s in zip(exchange_c, exchange_s):
        conv.client(c)
        conv.server(s)
    conv.client(pkt(7, SECRET * 3))
    conv.server(ok(8))
    to_server, to_client, events = conv.take()
    assert to_server == b"".join(exchange_c) + pkt(7, SECRET * 3)
    assert to_client == b"".join(exchange_s) + ok(8)
    assert events == [SessionStarted("app_user", "app")]
    assert "very-secret" not in repr(events)
    # and commands work afterwards
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], deprecate_eof=False))
    assert conv.take()[2] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_login_without_database(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet(user=b"root", db=None))
    assert conv.events == [SessionStarted("root", "")]


def test_ssl_request_is_refused(split):
    conv = Conv(split)
    conv.server(greeting())
    ssl_request = pkt(1, (CLIENT_CAPS | SSL).to_bytes(4, "little") + b"\0\0\0\1" + b"\x2d" + b"\0" * 23)
    conv.client(ssl_request)
    assert conv.closed
    assert conv.to_server == b""  # not forwarded
    assert [type(e) for e in conv.events] == [ProtocolError]
    assert conv.events[0].direction == "client"


def test_client_asking_for_compression_gets_none(split):
    """A bit the greeting did not offer is cleared in the response the server gets, as a server
    ignores it: the server never compresses, so the engine still reads every packet."""
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet(caps=CLIENT_CAPS | COMPRESS))
    assert not conv.closed
    assert conv.to_server == login_packet(caps=CLIENT_CAPS)
    assert conv.events == [SessionStarted("app_user", "app")]


def test_login_failure_ends_quietly(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet())
    conv.server(err(2, 1045, "28000", "Access denied for user 'app_user'@'127.0.0.1'"))
    assert conv.events == [SessionStarted("app_user", "app")]
    assert not conv.closed


def test_server_refusing_the_connection(split):
    conv = Conv(split)
    refusal = pkt(0, b"\xff" + (1040).to_bytes(2, "little") + b"Too many connections")
    conv.server(refusal)
    assert conv.take() == (b"", refusal, [])




# ---- capabilities: negotiated as a server would (issue 17, item 7) -----------------------------

QUERY_ATTRIBUTES = 1 << 27
LONG_PASSWORD = 1 << 0  # CLIENT_MYSQL to MariaDB


def test_query_attributes_the_greeting_never_offered_are_cleared_not_fatal(split):
    """libmysqlclient 8.x sets CLIENT_QUERY_ATTRIBUTES whatever the greeting says: the session
    goes on, the server gets the response without it, and a COM_QUERY is plain text."""
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet(caps=CLIENT_CAPS | QUERY_ATTRIBUTES | LONG_PASSWORD))
    assert not conv.closed
    forwarded = conv.to_server
    assert forwarded == login_packet(caps=CLIENT_CAPS)  # both bits cleared: MariaDB offered neither
    conv.server(ok(2))
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], deprecate_eof=False))
    assert conv.take()[2][-2:] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_mariadb_extended_bits_not_offered_are_cleared_too(split):
    conv = Conv(split)
    conv.server(greeting())  # offers progress, bulk, cache-metadata (which the engine strips)
    conv.client(login_packet(ext=EXT_PROGRESS | EXT_CACHE_METADATA | (1 << 3)))
    assert conv.to_server == login_packet(ext=EXT_PROGRESS)
    assert not conv.closed


def test_an_unchanged_response_is_forwarded_byte_for_byte(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet(ext=EXT_PROGRESS))
    assert conv.to_server == login_packet(ext=EXT_PROGRESS)


def test_the_engine_reads_the_login_the_way_the_server_will():
    """A client sets PLUGIN_AUTH_LENENC_CLIENT_DATA although the greeting did not offer it and
    shapes its auth data so that a length-encoded read finds database `app` and a one-byte
    read finds `other`. The server reads the forwarded (masked) packet the one-byte way, so the
    engine must too: it sees `other`, and the pinned connection refuses it."""
    auth = b"\xfc\x03\x00xyz" + b"app\0"
    auth += b"p" * (1 + 0xFC - len(auth)) + b"other\0"  # one-byte length 0xFC ends right here
    packet = login_packet(caps=CLIENT_CAPS, db=b"", auth=auth)
    conv = Conv(split_whole, MySQLEngine(database="app"))
    conv.server(greeting(caps=SERVER_CAPS & ~LENENC_AUTH))
    conv.client(packet)
    assert conv.closed and conv.to_server == b""
    assert "pinned" in conv.events[-1].reason and "'other'" in conv.events[-1].reason


def test_ssl_request_gets_a_clear_error_before_the_close(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.take()
    conv.client(pkt(1, (CLIENT_CAPS | SSL).to_bytes(4, "little") + b"\0\0\0\1" + b"\x2d" + b"\0" * 23))
    assert conv.closed and conv.to_server == b""
    assert conv.to_client[3] == 2 and conv.to_client[4] == 0xFF  # ERR, the id after the request's
    assert b"TLS" in conv.to_client


# ---- character sets: an allow-list (issue 17, item 2) ------------------------------------------

UNSAFE_IDS = {
    1: "big5", 84: "big5", 13: "sjis", 88: "sjis", 28: "gbk", 87: "gbk", 95: "cp932", 96: "cp932",
    248: "gb18030", 249: "gb18030", 250: "gb18030", 19: "euckr", 12: "ujis", 97: "eucjpms",
    24: "gb2312", 35: "ucs2", 54: "utf16", 56: "utf16le", 60: "utf32", 0: "none", 252: "unknown",
}  # fmt: skip


@pytest.mark.parametrize("collation", sorted(UNSAFE_IDS))
def test_a_login_in_an_unsafe_or_unknown_character_set_is_refused(collation):
    conv = Conv(split_whole)
    conv.server(greeting())
    conv.take()
    conv.client(login_packet(collation=collation))
    assert conv.closed and conv.to_server == b""  # the server never hears of it
    assert conv.to_client[3] == 2 and conv.to_client[4] == 0xFF
    assert int.from_bytes(conv.to_client[5:7], "little") == 1115
    assert b"use utf8mb4" in conv.to_client
    assert f"collation id {collation}" in conv.events[-1].reason


@pytest.mark.parametrize("collation", [8, 33, 45, 46, 63, 11, 224, 247, 255, 76, 192])
def test_a_login_in_an_ascii_safe_character_set_passes(collation):
    conv = Conv(split_whole)
    conv.server(greeting())
    conv.client(login_packet(collation=collation))
    assert not conv.closed and conv.to_server == login_packet(collation=collation)


def test_the_allow_list_matches_mysql_8s_collation_table():
    """Every id MySQL 8.4 gives a safe character set is allowed, and no id it gives another set
    is (mysql-connector-python ships the server's table). MariaDB's table: the live test."""
    from mysql.connector.charsets import MYSQL_CHARACTER_SETS

    for cid, entry in enumerate(MYSQL_CHARACTER_SETS):
        if entry is None:
            continue
        assert (cid in SAFE_COLLATION_IDS) == (entry[0] in SAFE_CHARSETS), (cid, entry)


def change_user(db: bytes = b"app", collation: bytes | None = b"\x2d\x00") -> bytes:
    body = b"other\0" + bytes((len(SECRET),)) + SECRET + db + b"\0"
    if collation is not None:
        body += collation + b"mysql_native_password\0"
    return cmd(0x11, body)


@pytest.mark.parametrize("collation", [28, 88, 1, 95, 248, 1111, 1112, 2000])
def test_change_user_to_an_unsafe_character_set_is_refused_and_the_session_goes_on(split, collation):
    conv = logged_in(split)
    conv.client(change_user(collation=collation.to_bytes(2, "little")))
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert to_client[3] == 1 and int.from_bytes(to_client[5:7], "little") == 1115
    assert [e.verdict.rule for e in events] == ["charset"]
    conv.client(query("select 1"))
    conv.server(resultset([(b"1",)], deprecate_eof=False))
    assert conv.take()[2] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_change_user_without_a_collation_keeps_the_sessions(split):
    conv = logged_in(split)
    conv.client(change_user(collation=None))
    assert conv.to_server == change_user(collation=None)
    assert conv.events == [SessionStarted("other", "app")]


# ---- the pinned database (issue 17, item 9) -------------------------------------------------------


def pinned_login(split, db: bytes | None) -> Conv:
    conv = Conv(split, MySQLEngine(database="app"))
    conv.server(greeting())
    conv.take()
    conv.client(login_packet(db=db))
    return conv


@pytest.mark.parametrize("db", [b"mysql", b"APP", b"app2", b"other_db", "ápp".encode()])
def test_a_login_naming_another_database_is_refused(split, db):
    conv = pinned_login(split, db)
    assert conv.closed and conv.to_server == b""
    assert conv.to_client == err_packet(1044, "42000", "hoop: this connection is pinned to database `app`", seq=2)
    [error] = conv.events
    assert isinstance(error, ProtocolError) and "pinned" in error.reason


@pytest.mark.parametrize("db", [b"app", None, b""])
def test_a_login_naming_the_pinned_database_or_none_passes(split, db):
    conv = pinned_login(split, db)
    assert not conv.closed and conv.to_server == login_packet(db=db)
    assert conv.events == [SessionStarted("app_user", (db or b"").decode())]


def test_change_user_to_another_database_is_refused_and_the_session_goes_on(split):
    conv = logged_in(split, database="app")
    conv.client(change_user(db=b"mysql"))
    to_server, to_client, events = conv.take()
    assert to_server == b""
    assert to_client == err_packet(1044, "42000", "hoop: this connection is pinned to database `app`", seq=1)
    assert [e.verdict.rule for e in events] == ["database-pinned"]
    conv.client(change_user(db=b"app"))
    assert conv.to_server == change_user(db=b"app")
    assert conv.events == [SessionStarted("other", "app")]


def test_an_unpinned_engine_lets_any_database_through(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet(db=b"mysql"))
    assert not conv.closed and conv.events == [SessionStarted("app_user", "mysql")]


# ---- the auth exchange carries auth data only ------------------------------------------------------


def test_a_packet_the_server_did_not_ask_for_during_auth_is_never_forwarded(split):
    """A command with a non-zero id sent right behind the login would reach a server that has
    already said OK as a command the gate never saw; only the answer to an auth request passes."""
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet() + pkt(2, b"\x03DROP TABLE t"))
    assert conv.closed and conv.to_server in (b"", login_packet())  # the session ends there
    assert "during authentication" in conv.events[-1].reason


def test_one_answer_per_auth_request(split):
    conv = Conv(split)
    conv.server(greeting())
    conv.client(login_packet())
    conv.server(pkt(2, b"\xfe" + b"mysql_native_password\0" + b"0123456789abcdefghij\0"))
    conv.client(pkt(3, SECRET))
    assert not conv.closed
    conv.client(pkt(4, SECRET))  # a second packet the server did not ask for
    assert conv.closed and conv.to_server == login_packet() + pkt(3, SECRET)
