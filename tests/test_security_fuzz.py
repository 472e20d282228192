"""Fuzzing what the gateway parses from the network: the HTTP/CONNECT head and both wire engines.

Properties (hypothesis, bounded for CI; `bench/fuzz_deep.py` runs the same ones for hours):

* head parser (`find_head_end`, `parse_head`, `parse_connect_authority`, the request's
  `content_length` and `bearer`): whatever the bytes, only `BadRequest` escapes, and what is
  returned is what the docstrings promise;
* engines (PostgreSQL, MySQL/MariaDB), fed random streams from both sides at random splits:
  no exception escapes, every feed returns quickly, a `ProtocolError` event and `close=True`
  come together, a closed engine stays closed and inert, the engine's own catch-all
  ("internal error" / "engine error") never fires, and a stream that is malformed by
  construction always ends in a `ProtocolError` with nothing of the bad message passed on;
* live: a malformed PostgreSQL stream through a real CONNECT ends the session with a
  `session_end` record whose outcome is "error", and the gateway keeps serving.

HOOP_FUZZ_EXAMPLES (default 200) sets max_examples for every property here.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopcli.gateway.http import MAX_HEAD_BYTES, BadRequest, Request, find_head_end, parse_connect_authority, parse_head
from hoopcli.gateway.protocols.base import ALLOW, Output, ProtocolError, Verdict
from hoopcli.gateway.protocols.mysql import MySQLEngine
from hoopcli.gateway.protocols.postgres import PostgresEngine

EXAMPLES = int(os.environ.get("HOOP_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# One feed of at most a few KiB must never take long. Measured in CPU time of this thread, so
# a busy machine descheduling the test does not count; generous for a slow 2-core machine.
FEED_BUDGET_S = 0.5
BUG_MARKERS = ("internal error", "engine error")


# ---- the HTTP head ------------------------------------------------------------------------

METHODS = ["CONNECT", "GET", "POST", "connect", "CONNECT ", "", "C0NNECT", "PUT"]
AUTHORITIES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.builds(lambda n, p: f"{n}:{p}", st.sampled_from(["app-db", "", "a:b", "[::1]", "127.0.0.1", "x" * 300]),
              st.one_of(st.integers(-5, 70000).map(str), st.text(alphabet="0123456789+- ", max_size=8))),
    # port-like digit runs of any length (int() of more than 4300 digits raises ValueError)
    st.builds(lambda n, digits: f"{n}:{digits}", st.sampled_from(["app-db", "a"]), st.text(alphabet="0123456789", min_size=1, max_size=40)),
    st.builds(lambda n, d, k: f"{n}:{d * k}", st.sampled_from(["app-db", "a"]), st.sampled_from("0123456789"), st.integers(1, 6000)),
)
HEADER_LINES = st.lists(
    st.one_of(
        st.builds(lambda v: f"Proxy-Authorization: {v}", st.sampled_from(["Bearer x.y.z", "Bearer", "Basic abc", "bearer  t ", ""])),
        st.builds(lambda v: f"Content-Length: {v}", st.one_of(st.integers(-1, 10**6).map(str), st.text(alphabet="0123456789 +-x", max_size=12),
                                                              st.builds(lambda d, k: d * k, st.sampled_from("0123456789"), st.integers(1, 6000)))),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
        st.just(" leading-space: x"),
        st.just(":no-name"),
    ),
    max_size=6,
)
HEADS = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda m, a, v, hs, end: (f"{m} {a} {v}\r\n" + "".join(h + "\r\n" for h in hs) + end).encode("latin-1", "replace"),
        st.sampled_from(METHODS), AUTHORITIES, st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1", ""]),
        HEADER_LINES, st.sampled_from(["\r\n", "", "\n", "\r\n\r\n"]),
    ),
)


def _full_request(buf: bytes) -> None:
    """What the gateway does with the bytes of a request head; only BadRequest may escape."""
    end = find_head_end(buf)
    if end < 0:
        assert len(buf) <= MAX_HEAD_BYTES or b"\r\n\r\n" in buf
        return
    assert buf[end - 4 : end] == b"\r\n\r\n" and buf.find(b"\r\n\r\n") == end - 4
    request = parse_head(buf[:end])
    assert isinstance(request, Request)
    assert request.method.isalpha() and request.method.isupper() and request.target
    assert all(k == k.lower() and v == v.strip() for k, v in request.headers.items())
    token = request.bearer("proxy-authorization")
    assert token is None or (token and token == token.strip())
    length = request.content_length
    assert 0 <= length
    if request.method == "CONNECT":
        name, port = parse_connect_authority(request.target)
        assert name and 0 < port < 65536


@FUZZ
@given(HEADS)
def test_head_parser_only_raises_bad_request(buf):
    try:
        _full_request(buf)
    except BadRequest as exc:
        assert exc.status in (400, 404, 413, 431) and exc.reason


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 3 * MAX_HEAD_BYTES), st.booleans())
def test_head_end_is_found_or_the_head_is_capped(prefix, filler, terminated):
    buf = prefix.replace(b"\r\n\r\n", b"") + b"a" * filler + (b"\r\n\r\n" if terminated else b"")
    try:
        end = find_head_end(buf)
    except BadRequest as exc:
        assert exc.status == 431
        assert len(buf) > MAX_HEAD_BYTES
        return
    if terminated:
        assert end == buf.find(b"\r\n\r\n") + 4 and end <= MAX_HEAD_BYTES + 4
    else:
        assert end == -1 and len(buf) <= MAX_HEAD_BYTES


@FUZZ
@given(AUTHORITIES)
def test_connect_authority_is_a_name_and_a_port_or_bad_request(target):
    try:
        name, port = parse_connect_authority(target)
    except BadRequest as exc:
        assert exc.status == 400
        return
    assert name and ":" not in target[len(name) + 1 :] and 0 < port < 65536
    assert target == f"{name}:{target.rsplit(':', 1)[1]}" and int(target.rsplit(":", 1)[1]) == port


@pytest.mark.parametrize("digits", [4300, 4301, 5000, 12000])
def test_a_huge_port_number_is_a_bad_request(digits):
    # int() refuses strings of more than 4300 digits (Python >= 3.11) with ValueError
    with pytest.raises(BadRequest):
        parse_connect_authority("app-db:" + "9" * digits)


@pytest.mark.parametrize("digits", [4300, 4301, 5000])
def test_a_huge_content_length_is_a_bad_request(digits):
    request = parse_head(f"POST /api/approvals/x/approve HTTP/1.1\r\nContent-Length: {'9' * digits}\r\n\r\n".encode())
    with pytest.raises(BadRequest) as caught:
        request.content_length
    assert caught.value.status in (400, 413)


# ---- engine harness -------------------------------------------------------------------------


def _gate(text: str) -> Verdict:
    if "drop" in text.lower():
        return Verdict("hold", "held", request_id="r1")
    if "boom" in text.lower():
        raise RuntimeError("a gate that fails")  # must fail closed, not escape
    return ALLOW


class Harness:
    """Feeds an engine and checks the invariants every Output must keep."""

    def __init__(self, engine):
        self.engine = engine
        self.closed = False
        self.errors: list[ProtocolError] = []
        self.to_server = bytearray()
        self.to_client = bytearray()

    def feed(self, direction: str, data: bytes) -> Output:
        t0 = time.thread_time()
        out = self.engine.from_client(data) if direction == "c" else self.engine.from_server(data)
        elapsed = time.thread_time() - t0
        assert elapsed < FEED_BUDGET_S, f"one feed of {len(data)} bytes took {elapsed:.3f}s of CPU"
        assert isinstance(out, Output)
        assert isinstance(out.to_server, bytes) and isinstance(out.to_client, bytes)
        if self.closed:
            assert out.close and not out.to_server and not out.to_client and not out.events
            return out
        errors = [e for e in out.events if isinstance(e, ProtocolError)]
        assert bool(errors) == out.close, (errors, out.close)
        for e in errors:
            assert e.direction in ("client", "server")
            assert not any(m in e.reason for m in BUG_MARKERS), f"the engine's catch-all fired: {e.reason}"
        self.errors += errors
        self.closed = out.close
        self.to_server += out.to_server
        self.to_client += out.to_client
        return out

    def feed_split(self, direction: str, data: bytes, cuts: list[int]) -> None:
        points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
        prev = 0
        for p in points:
            if p > prev:
                self.feed(direction, data[prev:p])
            prev = p


# ---- PostgreSQL ----------------------------------------------------------------------------


def pg_msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def pg_startup(user: str = "app_user", database: str = "app") -> bytes:
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    return struct.pack("!I", len(body) + 4) + body


PG_LOGIN = pg_msg(b"R", struct.pack("!I", 0)) + pg_msg(b"S", b"server_version\x0015\0") + pg_msg(b"K", struct.pack("!II", 1, 2)) + pg_msg(b"Z", b"I")
PG_CLIENT = [
    pg_msg(b"Q", b"select 1\0"), pg_msg(b"Q", b"drop table t\0"), pg_msg(b"Q", b"select boom\0"),
    pg_msg(b"P", b"\0select $1\0\0\0"), pg_msg(b"B", b"\0\0\0\0\0\0\0\0"), pg_msg(b"D", b"P\0"), pg_msg(b"E", b"\0\0\0\0\0"),
    pg_msg(b"S"), pg_msg(b"H"), pg_msg(b"C", b"S\0"), pg_msg(b"d", b"row\n"), pg_msg(b"c"), pg_msg(b"f", b"x\0"), pg_msg(b"p", b"pw\0"),
    # text a client_encoding switch could change: the encoding fence holds these (and what follows)
    pg_msg(b"Q", "select '中'\0".encode()), pg_msg(b"P", "\0select '中', $1\0\0\0".encode()), pg_msg(b"Q", "copy t from stdin\0".encode()),
]
PG_SERVER = [
    pg_msg(b"1"), pg_msg(b"2"), pg_msg(b"3"), pg_msg(b"n"), pg_msg(b"I"), pg_msg(b"s"), pg_msg(b"T", b"\0\0"),
    pg_msg(b"D", b"\0\0"), pg_msg(b"C", b"SELECT 1\0"), pg_msg(b"Z", b"I"), pg_msg(b"Z", b"T"), pg_msg(b"Z", b"E"),
    pg_msg(b"E", b"SERROR\0C42601\0Msyntax\0\0"), pg_msg(b"N", b"Mnote\0\0"), pg_msg(b"G", b"\0\0\0"), pg_msg(b"H", b"\0\0\0"),
    pg_msg(b"d", b"x"), pg_msg(b"c"),
]
PG_PREFIXES = [b"", pg_startup(), struct.pack("!II", 8, 80877103) + pg_startup()]


def _pieces(pool):
    return st.lists(st.one_of(st.sampled_from(pool), st.binary(max_size=40)), max_size=10).map(b"".join)


@FUZZ
@given(
    prefix=st.sampled_from(PG_PREFIXES),
    login=st.booleans(),
    steps=st.lists(st.tuples(st.sampled_from("cs"), st.one_of(_pieces(PG_CLIENT), _pieces(PG_SERVER)), st.lists(st.integers(0, 500), max_size=5)), max_size=10),
    gated=st.booleans(),
    record=st.booleans(),
)
def test_postgres_engine_random_streams_both_sides(prefix, login, steps, gated, record):
    h = Harness(PostgresEngine(_gate if gated else None, record))
    h.feed("c", prefix)
    if login and prefix:
        h.feed("s", PG_LOGIN)
    for direction, data, cuts in steps:
        h.feed_split(direction, data, cuts)
    if gated:  # what the gate held never reached the server as a statement
        assert not [m for m in pg_statements(bytes(h.to_server)) if b"drop" in m.lower()]


def pg_statements(to_server: bytes) -> list[bytes]:
    """The Query and Parse messages in what the engine forwarded (after the start-up packet)."""
    if not to_server:
        return []
    i = struct.unpack_from("!I", to_server)[0]  # the StartupMessage has no type byte
    found = []
    while i + 5 <= len(to_server):
        kind, ln = to_server[i : i + 1], struct.unpack_from("!I", to_server, i + 1)[0]
        if kind in (b"Q", b"P"):
            found.append(to_server[i + 5 : i + 1 + ln])
        i += 1 + ln
    return found


PG_VALID_CLIENT = [
    pg_msg(b"Q", b"select 1\0"),
    pg_msg(b"P", b"\0select 2\0\0\0") + pg_msg(b"B", b"\0\0\0\0\0\0\0\0") + pg_msg(b"E", b"\0\0\0\0\0") + pg_msg(b"S"),
    pg_msg(b"Q", "select '中'\0".encode()),  # GBK reads 中's last byte and the quote as one character
]
_PG_ENCODING_BOUND = 2  # PG_VALID_CLIENT[2]: its text may read differently after a switch


def pg_forwarded_before_the_bad(valid: list[int]) -> bytes:
    """What the engine forwards of the valid messages when a broken one follows them and the
    server answers nothing: everything up to the first one whose text may read differently
    after an encoding switch by a statement before it (the fence holds it, and all after it,
    for that statement's ReadyForQuery; the broken message then ends the session)."""
    out = b""
    for k, n in enumerate(valid):
        if n == _PG_ENCODING_BOUND and k > 0:  # a Query or a Sync after a Bind went before it
            break
        out += PG_VALID_CLIENT[n]
    return out
PG_CLIENT_TYPES = set(b"BCDEFHPQSXcdfp")
PG_SERVER_TYPES = set(b"RKSZTDCIEN A123nstGHWdcVv".replace(b" ", b""))


def _bad_pg_client(kind: int, t: int, ln: int) -> bytes:
    if kind == 0:  # an unknown message type
        return bytes((t,)) + struct.pack("!I", 4 + ln % 32) + b"\0" * (ln % 32)
    if kind == 1:  # a length below 4
        return b"Q" + struct.pack("!I", ln % 4)
    if kind == 2:  # a Sync with a body
        return b"S" + struct.pack("!I", 5 + ln % 8) + b"\0" * (1 + ln % 8)
    return b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select"  # declares more than MAX_MESSAGE_BYTES


@FUZZ
@given(
    valid=st.lists(st.integers(0, len(PG_VALID_CLIENT) - 1), max_size=3),
    kind=st.integers(0, 3),
    t=st.sampled_from(sorted(set(range(256)) - PG_CLIENT_TYPES)),
    ln=st.integers(0, 1000),
    trailing=st.binary(max_size=30),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_postgres_malformed_client_stream_is_a_protocol_error(valid, kind, t, ln, trailing, cuts):
    h = Harness(PostgresEngine(None))
    h.feed("c", pg_startup())
    h.feed("s", PG_LOGIN)
    good = b"".join(PG_VALID_CLIENT[n] for n in valid)
    h.feed_split("c", good + _bad_pg_client(kind, t, ln) + trailing, cuts)
    assert h.closed and h.errors and h.errors[-1].direction == "client"
    # The valid messages the fence let go, and nothing of the bad one.
    assert bytes(h.to_server) == pg_startup() + pg_forwarded_before_the_bad(valid)


@FUZZ
@given(
    t=st.sampled_from(sorted(set(range(256)) - PG_SERVER_TYPES)),
    short=st.booleans(),
    ln=st.integers(0, 1000),
    cuts=st.lists(st.integers(0, 100), max_size=4),
)
def test_postgres_malformed_server_stream_is_a_protocol_error(t, short, ln, cuts):
    h = Harness(PostgresEngine(None))
    h.feed("c", pg_startup())
    bad = (b"Z" + struct.pack("!I", ln % 4)) if short else bytes((t,)) + struct.pack("!I", 4 + ln % 16) + b"\0" * (ln % 16)
    h.feed_split("s", PG_LOGIN + bad, cuts)
    assert h.closed and h.errors[-1].direction == "server"
    assert bytes(h.to_client) == PG_LOGIN


@FUZZ
@given(ln=st.one_of(st.integers(0, 7), st.integers(10_001, 2**32 - 1)), code=st.integers(0, 2**32 - 1), tls=st.booleans())
def test_postgres_bad_startup_is_a_protocol_error(ln, code, tls):
    h = Harness(PostgresEngine(None))
    data = b"\x16\x03\x01\x02\x00" if tls else struct.pack("!II", ln, code) + b"\0" * 8
    h.feed("c", data)
    assert h.closed and h.errors and h.to_server == b""


# ---- MySQL / MariaDB ------------------------------------------------------------------------


def my_pkt(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload


MY_CAPS_SERVER = 0x01FFF7FF & ~(1 << 5) & ~(1 << 11)  # no compression, no TLS
MY_CAPS_CLIENT = (1 << 3) | (1 << 9) | (1 << 13) | (1 << 15) | (1 << 16) | (1 << 17) | (1 << 19) | (1 << 21)


def my_greeting() -> bytes:
    p = b"\x0a10.11.6-MariaDB\0" + (7).to_bytes(4, "little") + b"abcdefgh\0"
    p += (MY_CAPS_SERVER & 0xFFFF).to_bytes(2, "little") + b"\x2d" + (2).to_bytes(2, "little")
    p += (MY_CAPS_SERVER >> 16).to_bytes(2, "little") + bytes((21,)) + b"\0" * 10 + b"ijklmnopqrst\0" + b"mysql_native_password\0"
    return my_pkt(0, p)


def my_login() -> bytes:
    p = MY_CAPS_CLIENT.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\0" * 23
    p += b"app_user\0" + bytes((20,)) + b"s" * 20 + b"app\0" + b"mysql_native_password\0"
    return my_pkt(1, p)


def my_ok(seq: int) -> bytes:
    return my_pkt(seq, b"\x00\x00\x00\x02\x00\x00\x00")


MY_CLIENT = [
    my_pkt(0, b"\x03select 1"), my_pkt(0, b"\x03drop table t"), my_pkt(0, b"\x03select boom"), my_pkt(0, b"\x16select ?"),
    my_pkt(0, b"\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00"), my_pkt(0, b"\x19\x01\x00\x00\x00"), my_pkt(0, b"\x0e"), my_pkt(0, b"\x02app"),
    my_pkt(0, b"\x01"), my_pkt(2, b"file-data"), my_pkt(3, b""),
]
MY_SERVER = [
    my_ok(1), my_pkt(1, b"\xff\x28\x04#42000boom"), my_pkt(1, b"\x01"), my_pkt(2, b"\x03def\x00\x00\x00\x01c\x01c\x0c!\x00\xff\x00\x00\x00\xfd\x00\x00\x00\x00\x00"),
    my_pkt(3, b"\xfe\x00\x00\x02\x00"), my_pkt(4, b"\x011"), my_pkt(5, b"\xfe\x00\x00\x02\x00"),
    my_pkt(1, b"\x00\x01\x00\x00\x00\x01\x00\x01\x00\x00\x00"), my_pkt(1, b"\xfb/etc/passwd"),
]


@FUZZ
@given(
    logged_in=st.booleans(),
    steps=st.lists(st.tuples(st.sampled_from("cs"), st.one_of(_pieces(MY_CLIENT), _pieces(MY_SERVER)), st.lists(st.integers(0, 500), max_size=5)), max_size=10),
    gated=st.booleans(),
    record=st.booleans(),
)
def test_mysql_engine_random_streams_both_sides(logged_in, steps, gated, record):
    h = Harness(MySQLEngine(_gate if gated else None, record))
    if logged_in:
        h.feed("s", my_greeting())
        h.feed("c", my_login())
        h.feed("s", my_ok(2))
    for direction, data, cuts in steps:
        h.feed_split(direction, data, cuts)
    if gated and logged_in:  # what the gate held never reached the server as a statement
        assert not [c for c in my_commands(bytes(h.to_server)) if b"drop" in c.lower()]


def my_commands(to_server: bytes) -> list[bytes]:
    """COM_QUERY and COM_STMT_PREPARE packets (sequence id 0) in what the engine forwarded."""
    found, i = [], 0
    while i + 4 <= len(to_server):
        ln, seq = int.from_bytes(to_server[i : i + 3], "little"), to_server[i + 3]
        payload = to_server[i + 4 : i + 4 + ln]
        if seq == 0 and payload[:1] in (b"\x03", b"\x16"):
            found.append(payload)
        i += 4 + ln
    return found


def test_the_forwarded_statement_checks_can_fail():
    """The two parsers above find a forwarded DROP (so the fuzz assertions are not vacuous)."""
    assert my_commands(my_login() + my_pkt(0, b"\x03DROP table t")) == [b"\x03DROP table t"]
    assert pg_statements(pg_startup() + pg_msg(b"Q", b"drop table t\0")) == [b"drop table t\0"]
    h = Harness(MySQLEngine(_gate))
    h.feed("s", my_greeting())
    h.feed("c", my_login())
    h.feed("s", my_ok(2))
    h.feed("c", my_pkt(0, b"\x03drop table t") + my_pkt(0, b"\x03select 1"))
    assert my_commands(bytes(h.to_server)) == [b"\x03select 1"]


def _bad_mysql(kind: int, n: int) -> tuple[str, bytes]:
    if kind == 0:  # a command packet out of sequence
        return "c", my_pkt(1 + n % 200, b"\x03select 1")
    if kind == 1:  # an empty command packet
        return "c", my_pkt(0, b"")
    if kind == 2:  # a result set with zero columns
        return "s", my_pkt(1, b"\xfc\x00\x00")  # a column count of 0, length-encoded in 3 bytes
    return "s", my_pkt(1, b"\xfe" if n % 2 else b"")  # EOF / empty where a result is due


@FUZZ
@given(kind=st.integers(0, 3), n=st.integers(0, 1000), cuts=st.lists(st.integers(0, 60), max_size=5))
def test_mysql_malformed_stream_is_a_protocol_error(kind, n, cuts):
    h = Harness(MySQLEngine(None))
    h.feed("s", my_greeting())
    h.feed("c", my_login())
    h.feed("s", my_ok(2))
    direction, bad = _bad_mysql(kind, n)
    if direction == "s":
        h.feed("c", my_pkt(0, b"\x03select 1"))  # the server now owes a result
    h.feed_split(direction, bad, cuts)
    assert h.closed and h.errors[-1].direction == ("client" if direction == "c" else "server")


@FUZZ
@given(first=st.integers(0, 255).filter(lambda b: b not in (0x0A, 0xFF)), body=st.binary(max_size=40), client_first=st.booleans())
def test_mysql_bad_greeting_or_early_client_is_a_protocol_error(first, body, client_first):
    h = Harness(MySQLEngine(None))
    if client_first:
        h.feed("c", my_login())
    else:
        h.feed("s", my_pkt(0, bytes((first,)) + body))
    assert h.closed and h.errors


# ---- no quadratic buffering -----------------------------------------------------------------


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_large_statement_in_small_chunks_is_linear(engine):
    text = b"select '" + b"x" * (512 * 1024) + b"'"
    if engine == "postgres":
        h = Harness(PostgresEngine(None))
        h.feed("c", pg_startup())
        h.feed("s", PG_LOGIN)
        data = pg_msg(b"Q", text + b"\0")
    else:
        h = Harness(MySQLEngine(None))
        h.feed("s", my_greeting())
        h.feed("c", my_login())
        h.feed("s", my_ok(2))
        data = my_pkt(0, b"\x03" + text)
    before = len(h.to_server)
    t0 = time.thread_time()
    for i in range(0, len(data), 512):
        h.feed("c", data[i : i + 512])
    elapsed = time.thread_time() - t0
    assert not h.closed and len(h.to_server) - before == len(data)
    assert elapsed < 2.0, f"{len(data)} bytes in 512-byte chunks took {elapsed:.2f}s"


# ---- live: a malformed stream through the real gateway ----------------------------------------


def _tunnel(gateway, target: str, token: str):
    ctx = ssl.create_default_context(cafile=gateway.ca_file)
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    tls.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Bearer {token}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tls.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return tls


def _drain(tls) -> bytes:
    got = b""
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    return got


def _session_ends(gateway, session_id: str) -> list[dict]:
    # After a barrier: a second session_end submitted before the call would be there too.
    return gateway.records(kind="session_end", session_id=session_id, ended=True)


def _session_id_for(gateway, marker_user: str) -> str:
    from hoopcli.gateway.audit import open_store

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open_store(gateway.audit_store) as store:
            for rec in reversed(store.query(kind="session_end")):
                if rec["db_user"] == marker_user:
                    return rec["session_id"]
        time.sleep(0.05)
    raise AssertionError(f"no session for {marker_user}")


@pytest.mark.parametrize("garbage", [b"\xff\x00\x00\x00\x08abcd", b"Q\x00\x00\x00\x02", b"Q\x7f\xff\xff\xf0select"])
def test_live_malformed_postgres_stream_ends_the_session_with_an_error_record(gateway, tokens, pg_server, garbage):
    import secrets

    user = f"fuzz_{secrets.token_hex(4)}"  # unique, so the test finds its own session
    tls = _tunnel(gateway, f"app-db:{pg_server.port}", tokens("alice"))
    with tls:
        tls.sendall(pg_startup(user=user))
        tls.settimeout(5)
        assert tls.recv(1)  # the server's authentication request: the relay is up
        tls.sendall(garbage)
        _drain(tls)  # the gateway closes the session
    ends = _session_ends(gateway, _session_id_for(gateway, user))
    assert len(ends) == 1, ends  # a session ends once
    assert ends[0]["outcome"] == "error" and "protocol error from client" in ends[0]["message"], ends
    assert gateway.alive()
    assert gateway.connect_status(f"app-db:{pg_server.port}", None)[0] == 407  # still serving


def test_live_huge_port_or_content_length_is_400_not_500(gateway, tokens):
    log = gateway.workdir / "gateway.log"
    seen = log.stat().st_size
    for raw in (f"CONNECT app-db:{'9' * 5000} HTTP/1.1\r\nProxy-Authorization: Bearer {tokens('alice')}\r\n\r\n",
                f"POST /api/whoami HTTP/1.1\r\nContent-Length: {'9' * 5000}\r\n\r\n"):
        answer = gateway.raw(raw.encode())
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ")), answer[:120]
    with open(log, "rb") as f:
        f.seek(seen)
        assert b"Traceback" not in f.read()


def test_live_protocol_error_gives_exactly_one_session_end(gateway, tokens, pg_server):
    """A session the engine ended for a protocol error has ONE session_end, outcome "error" —
    not that one followed by a second one saying "ok"."""
    import secrets

    user = f"fuzz_{secrets.token_hex(4)}"
    tls = _tunnel(gateway, f"app-db:{pg_server.port}", tokens("alice"))
    with tls:
        tls.sendall(pg_startup(user=user))
        tls.settimeout(5)
        assert tls.recv(1)
        tls.sendall(b"\xff\x00\x00\x00\x08abcd")
        _drain(tls)
    ends = _session_ends(gateway, _session_id_for(gateway, user))
    assert [r["outcome"] for r in ends] == ["error"], ends
    assert (ends[0]["details"] or {}).get("bytes_up") is not None  # with the session's figures
