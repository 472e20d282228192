"""Hand-built MySQL packets and a scripted conversation with MySQLEngine (no sockets).

Used by the tests/test_protocol_mysql*.py files. Every conversation can be fed three ways
(whole messages, one byte at a time, random splits): the `split` fixture gives each.
"""

from __future__ import annotations

import pytest

import random

from hoopcli.gateway.protocols.base import ALLOW, Output, SessionStarted, Verdict
from hoopcli.gateway.protocols.mysql import GRANT_USED_MESSAGE, MySQLEngine, err_packet

# ---- capability flags used by the hand-built packets ----------------------------------------

CONNECT_WITH_DB = 1 << 3
COMPRESS = 1 << 5
LOCAL_FILES = 1 << 7
PROTOCOL_41 = 1 << 9
SSL = 1 << 11
TRANSACTIONS = 1 << 13
SECURE_CONNECTION = 1 << 15
MULTI_STATEMENTS = 1 << 16
MULTI_RESULTS = 1 << 17
PS_MULTI_RESULTS = 1 << 18
PLUGIN_AUTH = 1 << 19
CONNECT_ATTRS = 1 << 20
LENENC_AUTH = 1 << 21
SESSION_TRACK = 1 << 23
DEPRECATE_EOF = 1 << 24
# MariaDB extended capabilities (the upper 32 bits, as a 32-bit word)
EXT_PROGRESS = 1 << 0
EXT_BULK = 1 << 2
EXT_CACHE_METADATA = 1 << 4

SERVER_CAPS = (
    CONNECT_WITH_DB | COMPRESS | LOCAL_FILES | PROTOCOL_41 | SSL | TRANSACTIONS | SECURE_CONNECTION
    | MULTI_STATEMENTS | MULTI_RESULTS | PS_MULTI_RESULTS | PLUGIN_AUTH | CONNECT_ATTRS
    | LENENC_AUTH | SESSION_TRACK | DEPRECATE_EOF
)
SERVER_EXT = EXT_PROGRESS | EXT_BULK | EXT_CACHE_METADATA
CLIENT_CAPS = (
    CONNECT_WITH_DB | LOCAL_FILES | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | MULTI_STATEMENTS
    | MULTI_RESULTS | PS_MULTI_RESULTS | PLUGIN_AUTH | CONNECT_ATTRS | LENENC_AUTH
)
MORE_RESULTS = 0x0008
CURSOR_EXISTS = 0x0040
AUTOCOMMIT = 0x0002

SECRET = b"\x13\x37very-secret-scramble-reply\x99"

# ---- packet builders -------------------------------------------------------------------------


def pkt(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload


def lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def lstr(b: bytes) -> bytes:
    return lenenc(len(b)) + b


def greeting(caps: int = SERVER_CAPS, ext: int = SERVER_EXT) -> bytes:
    p = b"\x0a" + b"10.11.19-MariaDB\0" + (77).to_bytes(4, "little") + b"abcdefgh\0"
    p += (caps & 0xFFFF).to_bytes(2, "little") + b"\x2d" + AUTOCOMMIT.to_bytes(2, "little")
    p += (caps >> 16).to_bytes(2, "little") + bytes((21,)) + b"\0" * 6 + ext.to_bytes(4, "little")
    p += b"ijklmnopqrst\0" + b"mysql_native_password\0"
    return pkt(0, p)


def login_packet(
    user: bytes = b"app_user",
    db: bytes | None = b"app",
    caps: int = CLIENT_CAPS,
    ext: int = 0,
    seq: int = 1,
    collation: int = 45,
    auth: bytes | None = None,
) -> bytes:
    """A HandshakeResponse41; auth replaces the (length-prefixed) auth data field whole."""
    if db is not None:
        caps |= CONNECT_WITH_DB
    else:
        caps &= ~CONNECT_WITH_DB
    p = caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + bytes((collation,)) + b"\0" * 19
    p += ext.to_bytes(4, "little") + user + b"\0" + (lstr(SECRET) if auth is None else auth)
    if db is not None:
        p += db + b"\0"
    p += b"mysql_native_password\0" + lstr(lstr(b"_client_name") + lstr(b"libmariadb"))
    return pkt(seq, p)


def ok(seq: int, affected: int = 0, status: int = AUTOCOMMIT, header: int = 0x00, insert_id: int = 0) -> bytes:
    return pkt(seq, bytes((header,)) + lenenc(affected) + lenenc(insert_id) + status.to_bytes(2, "little") + b"\0\0")


def eof(seq: int, status: int = AUTOCOMMIT) -> bytes:
    return pkt(seq, b"\xfe\0\0" + status.to_bytes(2, "little"))


def err(seq: int, errno: int, state: str, message: str) -> bytes:
    return pkt(seq, b"\xff" + errno.to_bytes(2, "little") + b"#" + state.encode() + message.encode())


def coldef(seq: int, name: bytes, type_: int = 0xFD) -> bytes:
    p = lstr(b"def") + lstr(b"app") + lstr(b"t") + lstr(b"t") + lstr(name) + lstr(name)
    p += b"\x0c" + (33).to_bytes(2, "little") + (255).to_bytes(4, "little") + bytes((type_,)) + b"\0\0\0\0\0"
    return pkt(seq, p)


def text_row(seq: int, *values: bytes | None) -> bytes:
    return pkt(seq, b"".join(b"\xfb" if v is None else lstr(v) for v in values))


def resultset(rows: list[tuple[bytes | None, ...]], deprecate_eof: bool, status: int = AUTOCOMMIT) -> bytes:
    ncols = len(rows[0]) if rows else 1
    out = [pkt(1, lenenc(ncols))]
    seq = 2
    for k in range(ncols):
        out.append(coldef(seq, f"c{k}".encode()))
        seq += 1
    if not deprecate_eof:
        out.append(eof(seq))
        seq += 1
    for row in rows:
        out.append(text_row(seq, *row))
        seq += 1
    out.append(ok(seq, status=status, header=0xFE) if deprecate_eof else eof(seq, status))
    return b"".join(out)


def cmd(code: int, body: bytes = b"", seq: int = 0) -> bytes:
    return pkt(seq, bytes((code,)) + body)


def query(text: str, seq: int = 0) -> bytes:
    return cmd(0x03, text.encode(), seq)


# ---- feeding ---------------------------------------------------------------------------------


def split_whole(data: bytes) -> list[bytes]:
    return [data]


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_random(data: bytes, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed + len(data))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12)))) if len(data) > 1 else []
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


SPLITS = {"whole": split_whole, "bytes": split_bytes, "random": split_random}


@pytest.fixture(params=list(SPLITS))
def split(request):
    """Each conversation fed whole, one byte at a time, and in random pieces (a plugin of
    tests/conftest.py, so every test module has it)."""
    return SPLITS[request.param]


class Conv:
    """Feeds a conversation through one engine and gathers what comes out."""

    def __init__(self, split, engine: MySQLEngine | None = None) -> None:
        self.split = split
        self.engine = engine or MySQLEngine()
        self.reset()

    def reset(self) -> None:
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.events: list = []
        self.closed = False

    def client(self, data: bytes) -> Conv:
        return self._feed(self.engine.from_client, data)

    def server(self, data: bytes) -> Conv:
        return self._feed(self.engine.from_server, data)

    def _feed(self, fn, data: bytes) -> Conv:
        for chunk in self.split(data):
            out = fn(chunk)
            assert isinstance(out, Output)
            self.to_server += out.to_server
            self.to_client += out.to_client
            self.events += out.events
            self.closed = self.closed or out.close
        return self

    def take(self) -> tuple[bytes, bytes, list]:
        result = bytes(self.to_server), bytes(self.to_client), list(self.events)
        self.reset()
        return result


def logged_in(split, deprecate_eof: bool = False, **engine_kw) -> Conv:
    conv = Conv(split, MySQLEngine(**engine_kw))
    conv.server(greeting())
    conv.client(login_packet(caps=CLIENT_CAPS | (DEPRECATE_EOF if deprecate_eof else 0)))
    conv.server(ok(2))
    assert conv.events == [SessionStarted("app_user", "app")]
    conv.reset()
    return conv


def clear_caps(packet: bytes, lower: int, ext: int) -> bytes:
    """The greeting as the engine should rewrite it (offsets for the builder above)."""
    b = bytearray(packet)
    lo = 4 + 1 + len(b"10.11.19-MariaDB\0") + 4 + 9
    caps = int.from_bytes(b[lo : lo + 2], "little") | int.from_bytes(b[lo + 5 : lo + 7], "little") << 16
    caps &= ~lower
    b[lo : lo + 2] = (caps & 0xFFFF).to_bytes(2, "little")
    b[lo + 5 : lo + 7] = (caps >> 16).to_bytes(2, "little")
    e = lo + 5 + 2 + 1 + 6
    b[e : e + 4] = (int.from_bytes(b[e : e + 4], "little") & ~ext).to_bytes(4, "little")
    return bytes(b)


# ---- prepared statements ---------------------------------------------------------------------


def prepare_ok(stmt_id: int, columns: int, params: int, deprecate_eof: bool) -> bytes:
    head = b"\x00" + stmt_id.to_bytes(4, "little") + columns.to_bytes(2, "little") + params.to_bytes(2, "little")
    out = [pkt(1, head + b"\0\0\0")]
    seq = 2
    for k in range(params):
        out.append(coldef(seq, b"?"))
        seq += 1
    if params and not deprecate_eof:
        out.append(eof(seq))
        seq += 1
    for k in range(columns):
        out.append(coldef(seq, f"c{k}".encode()))
        seq += 1
    if columns and not deprecate_eof:
        out.append(eof(seq))
    return b"".join(out)


def execute(stmt_id: int, params: list[tuple[int, bytes | None]] | None, flags: int = 0, send_types=True) -> bytes:
    body = stmt_id.to_bytes(4, "little") + bytes((flags,)) + (1).to_bytes(4, "little")
    if params:
        n = len(params)
        bitmap = bytearray((n + 7) // 8)
        for k, (_, value) in enumerate(params):
            if value is None:
                bitmap[k >> 3] |= 1 << (k & 7)
        body += bytes(bitmap) + (b"\x01" if send_types else b"\x00")
        if send_types:
            body += b"".join(bytes((t, 0)) for t, _ in params)
        body += b"".join(v for _, v in params if v is not None)
    return cmd(0x17, body)


def binary_resultset(rows: int, deprecate_eof: bool, status: int = AUTOCOMMIT) -> bytes:
    out = [pkt(1, b"\x01"), coldef(2, b"c", type_=0x08)]
    seq = 3
    if not deprecate_eof:
        out.append(eof(seq, status))
        seq += 1
    for k in range(rows):
        out.append(pkt(seq, b"\x00\x00" + k.to_bytes(8, "little")))
        seq += 1
    out.append(ok(seq, status=status, header=0xFE) if deprecate_eof else eof(seq, status))
    return b"".join(out)


# ---- scripted gates ----------------------------------------------------------------------------


def hold_drops(text: str) -> Verdict:
    if "drop" in text.lower():
        return Verdict("hold", "waiting for approval (req-1)", request_id="req-1", rule="ddl")
    if "delete" in text.lower():
        return Verdict("deny", "deletes are not allowed", rule="no-delete")
    return ALLOW


def grants(text: str) -> Verdict:
    """"truncate" is allowed on an approval (request req-5); the rest as hold_drops."""
    if "truncate" in text.lower():
        return Verdict("allow", request_id="req-5", rule="rule 0: truncate")
    return hold_drops(text)


USED = Verdict("deny", GRANT_USED_MESSAGE, request_id="req-5", rule="grant-used")
USED_ERR = err_packet(1227, "42000", GRANT_USED_MESSAGE)
