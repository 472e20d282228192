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
from tests.support.mysql_wire import (
    CLIENT_CAPS,
    COMPRESS,
    EXT_CACHE_METADATA,
    EXT_PROGRESS,
    SECRET,
    SERVER_CAPS,
    SPLITS,
    SSL,
    Conv,
    clear_caps,
    err,
    greeting,
    login_packet,
    ok,
    pkt,
    query,
    resultset,
)


@pytest.fixture(params=list(SPLITS))
def split(request):
    """Each conversation fed whole, one byte at a time, and in random pieces."""
    return SPLITS[request.param]


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


