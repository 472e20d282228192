"""MySQL / MariaDB wire engine (sans-io): bytes in from either side, bytes out and events.

The relay feeds every chunk it reads to `from_client` or `from_server` and forwards what comes
back. Nothing here touches a socket or awaits.

What the engine does to the traffic
- The server greeting (Handshake v10) is the one packet it rewrites: it clears the capability
  bits it cannot follow, so the client never asks for them: CLIENT_SSL (the gateway terminates
  TLS itself; a client that insists on TLS anyway is a ProtocolError), CLIENT_COMPRESS and
  zstd compression, MySQL 8 query attributes and optional result-set metadata, and MariaDB's
  COM_MULTI and metadata caching. Every other byte passes unchanged, and when nothing in a
  chunk is withheld or rewritten the very same bytes object is handed back.
- The login (HandshakeResponse41, COM_CHANGE_USER) yields `SessionStarted(user, database)`.
  Auth exchanges (auth switch, more data, caching_sha2, ed25519, native password) pass through
  untouched and are never parsed or recorded, nor is LOAD DATA LOCAL file content.
- Statements. Every one that changes something or names SQL is shown to the gate first and
  withheld until it answers allow:
    COM_QUERY          -> StatementStarted(text, "query")
    COM_STMT_PREPARE   -> StatementStarted(text, "prepare"), tag "PREPARE"
    COM_INIT_DB        -> StatementStarted("USE `db`", "init_db")     (gated too: same as USE)
    COM_CREATE_DB/COM_DROP_DB/COM_PROCESS_KILL/COM_SHUTDOWN/COM_REFRESH -> the equivalent SQL
                          text ("DROP DATABASE `x`", "KILL 7", "SHUTDOWN", "FLUSH TABLES"),
                          kind "create_db", "drop_db", "kill", "shutdown", "refresh"
  COM_STMT_EXECUTE (kind "execute") and COM_STMT_BULK_EXECUTE ("bulk_execute") carry the text
  of their prepared statement and are not asked again: the prepare was. An execute of the
  MariaDB pipelining id -1 right after a refused prepare is refused too (the server would
  otherwise run the previous statement).
- An approval runs once. A statement whose prepare the gate allowed on a grant (allow with a
  request_id) may be executed once: its first execute (by id or by -1) passes, every later
  one is refused (rule "grant-used", ERR 1227/42000), and so is an execute of an id the
  server has not given out yet while such a prepare still awaits its answer (rule
  "grant-pending": it could be that id). COM_STMT_RESET does not re-arm it; COM_STMT_CLOSE,
  COM_RESET_CONNECTION and COM_CHANGE_USER forget it with the statement (ids are never
  reused in a connection). Once a session has had a granted prepare, its executes are
  withheld until complete, so that one can be refused whole: MAX_MESSAGE_BYTES applies to
  them then. Sessions without one pay an attribute check per execute. Commands that only read session state (ping,
  statistics, field list, fetch, stmt close/reset, set option, reset connection, quit) pass
  without events. Replication and other server-internal commands are refused.
- Results: one terminal event per StatementStarted, in order. OK -> "OK n rows affected"
  ("OK 1 row affected"); a result set -> "SELECT n" (n = rows); a cursor opened by an execute
  -> "CURSOR"; several results of one command (SERVER_MORE_RESULTS_EXISTS: multi-statements,
  CALL) -> their tags joined by "; ". ERR -> StatementFailed(f"{errno}/{sqlstate}", message)
  (MariaDB progress reports, errno 0xFFFF, are not errors).
- Refusals answer the client with an ERR packet (sequence id 1), so the session stays usable:
    deny -> 1227 / SQLSTATE 42000, hold -> 1227 / SQLSTATE HY000,
    refused protocol command -> 1235 / SQLSTATE 42000,
  message = the verdict's message (a default when empty), plus a `StatementBlocked` event. If
  earlier commands are still awaiting their answers (pipelining clients), the ERR is queued
  behind them. A gate that raises counts as deny (rule "gate-error").
- Parameters of COM_STMT_EXECUTE are decoded into strings only with record_params=True, and
  only from execute packets up to 1 MiB; otherwise (and for parameters sent as long data,
  pipelined executes whose prepare has not been answered yet, or types it cannot decode)
  they are None or the marker "<long data>".
- Framing: 3-byte length + sequence id, chunks split anywhere, 16 MiB continuation packets.
  A message the engine has to hold whole (a statement awaiting the gate) may not grow past
  MAX_MESSAGE_BYTES; row data is never buffered. Anything malformed yields ProtocolError and
  close=True; no exception escapes `from_client` / `from_server`.
- Sequence ids: a client packet with id 0 starts a command; outside LOAD DATA LOCAL and the
  auth exchanges a client packet with another id is a ProtocolError (the server would refuse it
  as out of order, and letting it through unparsed would hide a statement from the gate).
"""

from __future__ import annotations

import logging
import re
import struct
from collections import deque
from dataclasses import dataclass, field

from .base import (
    ALLOW,
    MAX_MESSAGE_BYTES,
    Event,
    Gate,
    Output,
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    Verdict,
)

__all__ = [
    "GRANT_USED_MESSAGE",
    "MySQLEngine",
    "ERRNO_BLOCKED",
    "ERRNO_UNSUPPORTED",
    "SQLSTATE_DENY",
    "SQLSTATE_HOLD",
    "STRIPPED_CAPABILITIES",
]

log = logging.getLogger(__name__)

# ---- protocol constants -------------------------------------------------------------------

CLIENT_MYSQL = 1 << 0  # CLIENT_LONG_PASSWORD; MariaDB servers leave it unset
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_COMPRESS = 1 << 5
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27
# MariaDB's extended capabilities live in the upper 32 bits.
MARIADB_CLIENT_COM_MULTI = 1 << 33
MARIADB_CLIENT_CACHE_METADATA = 1 << 36

# Capabilities the engine cannot follow: cleared in the greeting, refused in the response.
STRIPPED_CAPABILITIES = (
    CLIENT_SSL
    | CLIENT_COMPRESS
    | CLIENT_ZSTD_COMPRESSION_ALGORITHM
    | CLIENT_QUERY_ATTRIBUTES
    | CLIENT_OPTIONAL_RESULTSET_METADATA
    | MARIADB_CLIENT_COM_MULTI
    | MARIADB_CLIENT_CACHE_METADATA
)

SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040

MAX_PACKET = 0xFFFFFF  # a physical packet this long is continued by the next one

# Refusal errors sent to the client.
ERRNO_BLOCKED = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
ERRNO_UNSUPPORTED = 1235  # ER_NOT_SUPPORTED_YET
SQLSTATE_DENY = "42000"
SQLSTATE_HOLD = "HY000"

# Execute packets larger than this are relayed without decoding their parameters.
PARAMS_KEEP_BYTES = 1 << 20

# Commands (first payload byte of a client packet with sequence id 0).
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_CREATE_DB = 0x05
COM_DROP_DB = 0x06
COM_REFRESH = 0x07
COM_SHUTDOWN = 0x08
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA

_GATED = frozenset(
    {COM_QUERY, COM_STMT_PREPARE, COM_INIT_DB, COM_CREATE_DB, COM_DROP_DB, COM_PROCESS_KILL, COM_SHUTDOWN, COM_REFRESH}
)
# Commands relayed without a statement event: (response kind or None when none comes back).
_PLAIN = {
    COM_QUIT: None,
    COM_STMT_CLOSE: None,
    COM_STMT_SEND_LONG_DATA: None,
    COM_PING: "simple",
    COM_STATISTICS: "simple",
    COM_DEBUG: "simple",
    COM_SET_OPTION: "simple",
    COM_STMT_RESET: "simple",
    COM_RESET_CONNECTION: "simple",
    COM_PROCESS_INFO: "result",
    COM_FIELD_LIST: "fields",
    COM_STMT_FETCH: "fetch",
}
_COMMAND_NAMES = {
    0x00: "COM_SLEEP",
    0x0B: "COM_CONNECT",
    0x0F: "COM_TIME",
    0x10: "COM_DELAYED_INSERT",
    0x12: "COM_BINLOG_DUMP",
    0x13: "COM_TABLE_DUMP",
    0x14: "COM_CONNECT_OUT",
    0x15: "COM_REGISTER_SLAVE",
    0x1D: "COM_DAEMON",
    0x1E: "COM_BINLOG_DUMP_GTID",
    0xFE: "COM_MULTI",
}
_REFRESH_OPTIONS = (
    (0x01, "PRIVILEGES"),
    (0x02, "LOGS"),
    (0x04, "TABLES"),
    (0x08, "HOSTS"),
    (0x10, "STATUS"),
    (0x20, "THREADS"),
    (0x40, "SLAVE"),
    (0x80, "MASTER"),
)

# Client modes: what the client's next packet is.
_GREETING, _LOGIN, _AUTH, _COMMAND, _INFILE = range(5)

# Response states of a pending command.
_FIRST, _COLDEFS, _COLEOF, _ROWS, _DEFS = range(5)

_FORWARD = object()  # a held packet goes on unchanged
_DROP = object()  # a held packet is swallowed


# Character sets whose multibyte characters may end in an ASCII byte (0x5C backslash, 0x60
# backtick, 0x27 quote): the gateway would read statements differently from the server, so a
# policy could be fooled. Refused at login (the handshake's collation id) and when a statement
# switches to one (SET NAMES, SET CHARACTER SET, character_set_client/connection).
UNSAFE_COLLATION_IDS = frozenset({1, 84, 13, 88, 28, 87, 95, 96, 248, 249, 250})  # big5, sjis, gbk, cp932, gb18030
_UNSAFE_CHARSET_SWITCH = re.compile(
    r"(?is)\b(?:names|charset|character\s+set|character_set_client|character_set_connection)\b.{0,200}?\b(?:big5|sjis|cp932|gbk|gb18030)\b"
)
GRANT_USED_MESSAGE = "hoop: an approval lets a statement run once; ask again: prepare it anew to request another approval"
GRANT_PENDING_MESSAGE = (
    "hoop: a statement approved to run once is executed by the id its prepare returns; wait for that answer"
)

CHARSET_REFUSED = Verdict(
    "deny",
    "hoop: this character set is not supported through the gateway (its multibyte characters can hide quotes); use utf8mb4",
    rule="charset",
)


class _Malformed(Exception):
    """The peer broke the protocol; becomes a ProtocolError."""


# ---- small readers (bounds-checked) ---------------------------------------------------------


def _lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    """Length-encoded integer at pos -> (value, next position)."""
    if pos >= len(buf):
        raise _Malformed("truncated length-encoded integer")
    b = buf[pos]
    if b < 0xFB:
        return b, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(b)
    if width is None:
        raise _Malformed(f"invalid length-encoded integer prefix 0x{b:02x}")
    end = pos + 1 + width
    if end > len(buf):
        raise _Malformed("truncated length-encoded integer")
    return int.from_bytes(buf[pos + 1 : end], "little"), end


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    """NUL-terminated string at pos (lenient: the packet's end also terminates it)."""
    end = buf.find(b"\0", pos)
    if end < 0:
        return buf[pos:], len(buf)
    return buf[pos:end], end + 1


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload


def err_packet(errno: int, sqlstate: str, message: str, seq: int = 1) -> bytes:
    """An ERR packet in the 4.1 format (errno, '#', SQLSTATE, message)."""
    body = b"\xff" + errno.to_bytes(2, "little") + b"#" + sqlstate.encode("ascii")[:5].ljust(5, b"0")
    return _packet(seq, body + message.encode("utf-8")[: MAX_PACKET - 9])


def _rows_tag(n: int) -> str:
    return f"OK {n} row affected" if n == 1 else f"OK {n} rows affected"


# ---- per-session bookkeeping ----------------------------------------------------------------


@dataclass(slots=True)
class _Stmt:
    text: str
    num_params: int | None = None
    types: bytes | None = None
    long_data: set[int] = field(default_factory=set)
    grant: str | None = None  # the request id when the prepare was allowed on an approval
    used: bool = False  # ... and it has been executed once


_BLOCKED_STMT = _Stmt("")  # marker: the last prepare was refused


@dataclass(slots=True)
class _Pending:
    """One command awaiting its server response (or a refusal queued behind others)."""

    kind: str  # greeting, auth, result, prepare, simple, fields, fetch, synthetic
    statement: bool = False  # emits StatementFinished / StatementFailed
    state: int = _FIRST
    left: int = 0  # definitions still to come
    rows: int = 0
    tags: list[str] = field(default_factory=list)
    stmt: _Stmt | None = None
    cursor: bool = False
    reply: bytes = b""  # kind == "synthetic": the ERR packet to send when this is the head


class _Stream:
    """Framing state of one direction."""

    __slots__ = (
        "direction",
        "hdr",
        "remaining",
        "more",
        "cont",
        "awaiting_first",
        "pending",
        "hold",
        "held",
        "keep",
        "buf",
        "size",
        "first",
        "first_len",
        "seq",
        "pkt_start",
        "parts",
        "emit_from",
        "data",
    )

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.hdr = bytearray()  # a header split across chunks
        self.remaining = 0  # payload bytes left in the current physical packet
        self.more = False  # the current physical packet is 0xFFFFFF long: another follows
        self.cont = False  # the next header continues the current logical packet
        self.awaiting_first = False  # header read, first payload byte not yet seen
        self.pending = False  # undecided packet: its bytes are withheld until decided
        self.hold = False  # decided to withhold the whole packet until it is complete
        self.held = bytearray()  # withheld raw bytes from earlier chunks
        self.keep = 0  # payload bytes to collect: 0 none, -1 all, n a prefix
        self.buf = bytearray()
        self.size = 0  # payload bytes of the logical packet seen so far
        self.first = -1  # first payload byte (-1: empty packet)
        self.first_len = 0  # length of the first physical packet
        self.seq = 0
        self.pkt_start = -1  # where the current packet began in this chunk (-1: earlier)
        self.parts: list[bytes] = []
        self.emit_from = 0
        self.data = b""


class MySQLEngine:
    """One MySQL/MariaDB client session, observed (and gated) in both directions."""

    def __init__(self, gate: Gate | None = None, record_params: bool = False) -> None:
        self._gate = gate
        self._record_params = record_params
        self._client = _Stream("client")
        self._server = _Stream("server")
        self._mode = _GREETING
        self._queue: deque[_Pending] = deque([_Pending("greeting")])
        self._server_caps = 0
        self._caps = 0  # negotiated (client response & server greeting)
        self._deprecate_eof = False
        self._stmts: dict[int, _Stmt] = {}
        self._last_prepared: _Stmt | None = None
        self._granted = False  # a prepare was allowed on an approval: executes are checked
        self._events: list[Event] = []
        self._to_client_extra: list[bytes] = []
        self._dead = False

    # ---- the Engine interface ---------------------------------------------------------------

    def from_client(self, data: bytes) -> Output:
        return self._feed(self._client, data)

    def from_server(self, data: bytes) -> Output:
        return self._feed(self._server, data)

    # ---- feeding ------------------------------------------------------------------------------

    def _feed(self, st: _Stream, data: bytes) -> Output:
        if self._dead:
            return Output(close=True)
        self._events = events = []
        self._to_client_extra = extra = []
        try:
            out = self._run(st, data) if data else b""
        except _Malformed as exc:
            return self._fail(str(exc), st.direction)
        except Exception as exc:  # our bug, never the relay's problem: end the session cleanly
            log.exception("mysql engine failed on %s data", st.direction)
            return self._fail(f"engine error ({type(exc).__name__}) on {st.direction} data", st.direction)
        if st.direction == "client":
            return Output(to_server=out, to_client=b"".join(extra), events=events)
        return Output(to_client=out, events=events)

    def _fail(self, reason: str, direction: str) -> Output:
        self._dead = True
        events = self._events
        events.append(ProtocolError(reason, direction))  # type: ignore[arg-type]
        return Output(events=events, close=True)

    def _run(self, st: _Stream, data: bytes) -> bytes:
        n = len(data)
        i = 0
        st.parts = parts = []
        st.emit_from = 0
        st.data = data
        st.pkt_start = -1
        server = st.direction == "server"
        while i < n:
            if st.remaining == 0 and not st.awaiting_first:
                # ---- at a header ------------------------------------------------------------
                if not st.hdr:
                    if server and not st.cont and self._queue:
                        i = self._skip_rows(data, i, n)
                        if i >= n:
                            break
                    if not st.cont:
                        st.pkt_start = i
                        st.pending = self._may_hold(st)
                    if i + 4 <= n:
                        length = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16)
                        seq = data[i + 3]
                        i += 4
                    else:
                        st.hdr += data[i:]
                        i = n
                        break
                else:
                    take = min(4 - len(st.hdr), n - i)
                    st.hdr += data[i : i + take]
                    i += take
                    if len(st.hdr) < 4:
                        break
                    h = st.hdr
                    length = h[0] | (h[1] << 8) | (h[2] << 16)
                    seq = h[3]
                    st.hdr = bytearray()
                st.remaining = length
                st.more = length == MAX_PACKET
                if st.cont:
                    st.cont = False
                    if length == 0:
                        self._complete(st, i)
                    continue
                st.seq = seq
                st.first_len = length
                st.size = 0
                st.keep = 0
                if length == 0:
                    st.first = -1
                    self._decide(st, -1)
                    self._complete(st, i)
                else:
                    st.awaiting_first = True
                continue
            if st.awaiting_first:
                st.awaiting_first = False
                st.first = data[i]
                self._decide(st, data[i])
            # ---- inside a payload -----------------------------------------------------------
            take = st.remaining if st.remaining <= n - i else n - i
            keep = st.keep
            if keep:
                if keep < 0:
                    if st.size + take > MAX_MESSAGE_BYTES:
                        raise _Malformed(
                            f"{st.direction} message larger than {MAX_MESSAGE_BYTES} bytes"
                        )
                    if take == st.first_len and st.size == 0 and not st.more:
                        st.buf = data[i : i + take]  # type: ignore[assignment]  # whole, one copy
                    else:
                        st.buf += data[i : i + take]
                else:
                    room = keep - len(st.buf)
                    if room > 0:
                        if st.size == 0 and not st.more and take == st.first_len:
                            st.buf = data[i : i + min(take, room)]  # type: ignore[assignment]
                        else:
                            st.buf += data[i : i + min(take, room)]
            i += take
            st.size += take
            st.remaining -= take
            if st.remaining == 0:
                if st.more:
                    st.cont = True
                else:
                    self._complete(st, i)
        # ---- chunk end ------------------------------------------------------------------------
        if st.pending or st.hold:
            s = st.pkt_start if st.pkt_start > 0 else 0
            if s > st.emit_from:
                parts.append(data[st.emit_from : s])
            st.held += data[s:]
            if len(st.held) > MAX_MESSAGE_BYTES + 4096:
                raise _Malformed(f"{st.direction} message larger than {MAX_MESSAGE_BYTES} bytes")
            return b"".join(parts)
        if not parts and st.emit_from == 0:
            return data
        if st.emit_from < n:
            parts.append(data[st.emit_from :])
        return b"".join(parts)

    def _decide(self, st: _Stream, first: int) -> None:
        """First payload byte known: choose how much to keep and whether to withhold it."""
        if st.direction == "server":
            keep, hold = self._server_keep(first, st.first_len)
        else:
            keep, hold = self._client_keep(first, st.seq)
        st.keep = keep
        st.buf = bytearray()
        if st.pending:
            st.pending = False
            if hold:
                st.hold = True  # bytes before the packet are cut off only if it is not forwarded
            elif st.held:
                st.parts.append(bytes(st.held))
                st.held = bytearray()

    def _complete(self, st: _Stream, end: int) -> None:
        """A logical packet ended at `end` in the current chunk."""
        payload = bytes(st.buf) if isinstance(st.buf, bytearray) else st.buf
        st.buf = bytearray()
        if st.direction == "server":
            action = self._server_packet(st.first, payload, st.first_len, st.size)
        else:
            action = self._client_packet(st.first, st.seq, payload, st.size)
        if st.hold:
            st.hold = False
            if action is _FORWARD or action is None:
                if st.held:  # the packet began in an earlier chunk: nothing precedes it here
                    st.parts.append(bytes(st.held))
                    st.held = bytearray()
            else:
                start = st.pkt_start if st.pkt_start > 0 else 0
                if start > st.emit_from:
                    st.parts.append(st.data[st.emit_from : start])
                st.held = bytearray()
                if action is not _DROP:  # replacement bytes
                    st.parts.append(action)  # type: ignore[arg-type]
                st.emit_from = end
        if st.direction == "server":
            self._flush_synthetic(st, end)

    def _inject(self, st: _Stream, end: int, payload: bytes) -> None:
        if end > st.emit_from:
            st.parts.append(st.data[st.emit_from : end])
        st.parts.append(payload)
        st.emit_from = end

    def _may_hold(self, st: _Stream) -> bool:
        if st.direction == "server":
            return self._queue[0].kind == "greeting" if self._queue else False
        return self._mode != _INFILE

    # ---- the server side ----------------------------------------------------------------------

    def _skip_rows(self, data: bytes, i: int, n: int) -> int:
        """Hot path: count whole row / definition packets in this chunk without parsing."""
        head = self._queue[0]
        if head.state == _ROWS:
            limit = -1
        elif head.state in (_COLDEFS, _DEFS) and head.left > 1:
            limit = head.left - 1  # the last definition takes the slow path (state change)
        else:
            return i
        count = 0
        while i + 4 <= n and count != limit:
            length = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16)
            end = i + 4 + length
            if end > n or length == 0 or length == MAX_PACKET or data[i + 4] >= 0xFE:
                break
            count += 1
            i = end
        if count:
            if limit < 0:
                head.rows += count
            else:
                head.left -= count
        return i

    def _server_keep(self, first: int, first_len: int) -> tuple[int, bool]:
        if not self._queue:
            return 0, False
        head = self._queue[0]
        kind = head.kind
        if kind == "greeting":
            return -1, True  # small; rewritten before the client sees it
        if kind in ("auth", "change_user"):
            return 0, False  # only the first byte matters; auth contents are never read
        if first == 0xFF or first == -1 or (first == 0xFE and first_len < MAX_PACKET):
            return -1, False  # ERR, EOF, OK-as-EOF: small control packets
        if kind == "simple" or head.state == _FIRST:
            return -1, False
        return 0, False  # a row or a definition: relayed without being read

    def _server_packet(self, first: int, payload: bytes, first_len: int, size: int) -> object:
        if not self._queue:
            return None  # unsolicited (a server about to close); relayed as is
        head = self._queue[0]
        kind = head.kind
        if kind == "greeting":
            return self._on_greeting(first, payload)
        if kind in ("auth", "change_user"):
            if first == 0x00 or first == 0xFF:
                self._queue.popleft()
                self._mode = _COMMAND
            return None
        if first == 0xFF and len(payload) >= 3 and payload[1] == 0xFF and payload[2] == 0xFF:
            return None  # MariaDB progress report
        if kind == "synthetic":  # cannot be the head when a packet arrives
            raise _Malformed("server answered a command it never received")
        if kind == "simple":
            if first == 0xFF:
                self._failed(head, payload)
            elif first == 0x00:
                self._finished(head, self._ok_tag(payload)[0])
            else:
                self._finished(head, "OK")
            return None
        if kind == "prepare":
            return self._prepare_packet(head, first, payload)
        if kind == "fields":
            if first == 0xFF:
                self._failed(head, payload)
            elif first == 0xFE and (first_len < 9 or self._deprecate_eof and first_len < MAX_PACKET):
                self._finished(head, "OK")
            return None
        # kind == "result"
        state = head.state
        if state == _ROWS:
            if first == 0xFE and (first_len < 9 or self._deprecate_eof and first_len < MAX_PACKET):
                status = self._eof_status(payload)
                if head.cursor or status & SERVER_STATUS_CURSOR_EXISTS:
                    tag = "CURSOR"
                else:
                    tag = f"SELECT {head.rows}"
                self._result_done(head, tag, status)
            elif first == 0xFF:
                self._failed(head, payload)
            else:
                head.rows += 1
        elif state == _FIRST:
            if first == 0x00:
                tag, status = self._ok_tag(payload)
                self._result_done(head, tag, status)
            elif first == 0xFF:
                self._failed(head, payload)
            elif first == 0xFB:
                self._mode = _INFILE  # LOAD DATA LOCAL: the client sends the file, then OK/ERR
            elif first == 0xFE or first == -1:
                raise _Malformed("server sent an empty or EOF packet where a result was due")
            else:
                count, _ = _lenenc(payload, 0)
                if count == 0:
                    raise _Malformed("result set with zero columns")
                head.left = count
                head.rows = 0
                head.cursor = False
                head.state = _COLDEFS
        elif state == _COLDEFS:
            if first == 0xFF:
                self._failed(head, payload)
                return None
            head.left -= 1
            if head.left == 0:
                head.state = _ROWS if self._deprecate_eof else _COLEOF
        elif state == _COLEOF:
            if first != 0xFE:
                raise _Malformed("expected an EOF packet after the column definitions")
            status = self._eof_status(payload)
            if status & SERVER_STATUS_CURSOR_EXISTS:
                head.cursor = True
                self._result_done(head, "CURSOR", status)
            else:
                head.state = _ROWS
        return None

    def _prepare_packet(self, head: _Pending, first: int, payload: bytes) -> None:
        if head.state == _FIRST:
            if first == 0xFF:
                self._failed(head, payload)
                return
            if first != 0x00 or len(payload) < 9:
                raise _Malformed("malformed COM_STMT_PREPARE response")
            stmt_id = int.from_bytes(payload[1:5], "little")
            columns = int.from_bytes(payload[5:7], "little")
            params = int.from_bytes(payload[7:9], "little")
            stmt = head.stmt
            if stmt is not None:
                stmt.num_params = params
                self._stmts[stmt_id] = stmt
            eof = 0 if self._deprecate_eof else 1
            head.left = params + (eof if params else 0) + columns + (eof if columns else 0)
            if head.left == 0:
                self._finished(head, "PREPARE")
            else:
                head.state = _DEFS
        else:
            head.left -= 1
            if head.left == 0:
                self._finished(head, "PREPARE")

    def _on_greeting(self, first: int, payload: bytes) -> object:
        self._queue.popleft()
        if first == 0xFF:  # the server refused the connection (too many, host blocked)
            return None
        if first != 0x0A:
            raise _Malformed(f"unsupported handshake protocol version {first}")
        nul = payload.find(b"\0", 1)
        if nul < 0:
            raise _Malformed("malformed server greeting")
        lo = nul + 1 + 4 + 8 + 1  # version, connection id, scramble part 1, filler
        if len(payload) < lo + 2:
            raise _Malformed("truncated server greeting")
        caps = int.from_bytes(payload[lo : lo + 2], "little")
        hi = lo + 5  # charset (1) + status (2)
        ext = hi + 2 + 1 + 6  # auth data length (1) + filler (6)
        if len(payload) >= hi + 2:
            caps |= int.from_bytes(payload[hi : hi + 2], "little") << 16
        if len(payload) >= ext + 4 and not caps & CLIENT_MYSQL:
            caps |= int.from_bytes(payload[ext : ext + 4], "little") << 32
        self._server_caps = caps & ~STRIPPED_CAPABILITIES
        self._mode = _LOGIN
        if not caps & STRIPPED_CAPABILITIES:
            return _FORWARD
        new = bytearray(payload)
        new[lo : lo + 2] = (self._server_caps & 0xFFFF).to_bytes(2, "little")
        if len(payload) >= hi + 2:
            new[hi : hi + 2] = ((self._server_caps >> 16) & 0xFFFF).to_bytes(2, "little")
        if len(payload) >= ext + 4 and not caps & CLIENT_MYSQL:
            new[ext : ext + 4] = (self._server_caps >> 32).to_bytes(4, "little")
        return _packet(0, bytes(new))

    def _result_done(self, head: _Pending, tag: str, status: int) -> None:
        if status & SERVER_MORE_RESULTS_EXISTS:
            head.tags.append(tag)
            head.state = _FIRST
            head.rows = 0
            head.cursor = False
        else:
            self._finished(head, tag)

    def _finished(self, head: _Pending, tag: str) -> None:
        self._queue.popleft()
        if head.statement:
            if head.tags:
                tag = "; ".join([*head.tags, tag])
            self._events.append(StatementFinished(tag))

    def _failed(self, head: _Pending, payload: bytes) -> None:
        self._queue.popleft()
        if head.statement:
            code, message = self._parse_err(payload)
            self._events.append(StatementFailed(code, message))

    def _flush_synthetic(self, st: _Stream, end: int) -> None:
        q = self._queue
        while q and q[0].kind == "synthetic":
            self._inject(st, end, q.popleft().reply)

    @staticmethod
    def _parse_err(payload: bytes) -> tuple[str, str]:
        if len(payload) < 3:
            raise _Malformed("truncated ERR packet")
        errno = int.from_bytes(payload[1:3], "little")
        if len(payload) >= 9 and payload[3] == 0x23:  # '#'
            sqlstate = payload[4:9].decode("ascii", "replace")
            message = payload[9:]
        else:
            sqlstate = "HY000"
            message = payload[3:]
        return f"{errno}/{sqlstate}", _text(message)

    @staticmethod
    def _ok_tag(payload: bytes) -> tuple[str, int]:
        affected, pos = _lenenc(payload, 1)
        _, pos = _lenenc(payload, pos)  # last insert id
        status = int.from_bytes(payload[pos : pos + 2], "little") if pos + 2 <= len(payload) else 0
        return _rows_tag(affected), status

    def _eof_status(self, payload: bytes) -> int:
        if self._deprecate_eof:
            return self._ok_tag(payload)[1]
        return int.from_bytes(payload[3:5], "little") if len(payload) >= 5 else 0

    # ---- the client side ----------------------------------------------------------------------

    def _client_keep(self, first: int, seq: int) -> tuple[int, bool]:
        mode = self._mode
        if mode == _INFILE or (mode == _AUTH and seq != 0):
            return 0, False  # file content, auth data: relayed, never read
        if mode in (_GREETING, _LOGIN):
            return -1, True
        if seq != 0:
            return 0, False  # refused in _client_packet
        if first in _GATED or first == COM_CHANGE_USER:
            return -1, True
        if first in (COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE):
            refuse = self._granted or self._last_prepared is _BLOCKED_STMT
            return (PARAMS_KEEP_BYTES + 1 if self._record_params else 5), refuse
        if first == COM_STMT_SEND_LONG_DATA:
            return 7, False
        if first in (COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH):
            return 5, False
        if first in _PLAIN:
            return 64, False
        return 64, True  # refused

    def _client_packet(self, first: int, seq: int, payload: bytes, size: int) -> object:
        mode = self._mode
        if mode == _INFILE:
            if size == 0:
                self._mode = _COMMAND  # the empty packet ends the file
            return None
        if mode == _GREETING:
            raise _Malformed("client sent data before the server greeting")
        if mode == _LOGIN:
            self._on_login(payload)
            return _FORWARD
        if seq != 0:
            if mode == _AUTH:
                return None
            raise _Malformed(f"client packet out of sequence (id {seq}) where a command was due")
        if first < 0:
            raise _Malformed("empty command packet")
        if first == COM_QUERY:
            text = _text(payload[1:])
            if not self._allowed(text):
                return _DROP
            self._queue.append(_Pending("result", statement=True))
            self._events.append(StatementStarted(text, "query"))
            return _FORWARD
        if first == COM_STMT_PREPARE:
            text = _text(payload[1:])
            verdict = self._judge(text)
            if verdict is None:
                self._last_prepared = _BLOCKED_STMT
                return _DROP
            stmt = _Stmt(text)
            if verdict.request_id is not None:
                stmt.grant = verdict.request_id
                self._granted = True
            self._last_prepared = stmt
            self._queue.append(_Pending("prepare", statement=True, stmt=stmt))
            self._events.append(StatementStarted(text, "prepare"))
            return _FORWARD
        if first in (COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE):
            return self._on_execute(first, payload, size)
        if first in _GATED:  # init_db, create/drop db, kill, shutdown, refresh
            text, kind = self._command_text(first, payload)
            if not self._allowed(text):
                return _DROP
            self._queue.append(_Pending("simple", statement=True))
            self._events.append(StatementStarted(text, kind))
            return _FORWARD
        if first == COM_CHANGE_USER:
            self._on_change_user(payload)
            return _FORWARD
        if first in _PLAIN:
            self._plain_command(first, payload)
            return None
        name = _COMMAND_NAMES.get(first, f"command 0x{first:02x}")
        message = f"the gateway does not relay {name}"
        self._refuse(
            f"<{name}>",
            Verdict("deny", message, rule="mysql-unsupported-command"),
            ERRNO_UNSUPPORTED,
            SQLSTATE_DENY,
        )
        return _DROP

    def _plain_command(self, first: int, payload: bytes) -> None:
        if first == COM_STMT_CLOSE and len(payload) >= 5:
            self._stmts.pop(int.from_bytes(payload[1:5], "little"), None)
        elif first == COM_STMT_SEND_LONG_DATA and len(payload) >= 7:
            stmt = self._stmts.get(int.from_bytes(payload[1:5], "little"))
            if stmt is not None:
                stmt.long_data.add(int.from_bytes(payload[5:7], "little"))
        elif first == COM_STMT_RESET and len(payload) >= 5:
            stmt = self._stmts.get(int.from_bytes(payload[1:5], "little"))
            if stmt is not None:
                stmt.long_data.clear()
        elif first == COM_RESET_CONNECTION:
            self._stmts.clear()
            self._last_prepared = None
        kind = _PLAIN[first]
        if kind == "fetch":  # rows of an open cursor, ended like a result set's
            self._queue.append(_Pending("result", state=_ROWS))
        elif kind == "fields":
            self._queue.append(_Pending("fields", state=_ROWS))
        elif kind is not None:
            self._queue.append(_Pending(kind))

    def _on_execute(self, first: int, payload: bytes, size: int) -> object:
        if len(payload) < 5:
            raise _Malformed("truncated COM_STMT_EXECUTE")
        stmt_id = int.from_bytes(payload[1:5], "little")
        if stmt_id == 0xFFFFFFFF:
            stmt = self._last_prepared
            if stmt is _BLOCKED_STMT:
                self._refuse(
                    "<execute of the last prepared statement>",
                    Verdict(
                        "deny",
                        "the last prepared statement was not allowed; prepare it again",
                        rule="mysql-refused-prepare",
                    ),
                    ERRNO_BLOCKED,
                    SQLSTATE_DENY,
                )
                return _DROP
        else:
            stmt = self._stmts.get(stmt_id)
        if self._granted and self._grant_refused(stmt):
            return _DROP
        text = stmt.text if stmt is not None else f"/* unknown prepared statement {stmt_id} */"
        params = None
        if first == COM_STMT_EXECUTE:
            kind = "execute"
            if self._record_params and stmt is not None:
                params = self._decode_params(stmt, payload, size)
            if stmt is not None:
                stmt.long_data.clear()
        else:
            kind = "bulk_execute"
        self._queue.append(_Pending("result", statement=True))
        self._events.append(StatementStarted(text, kind, params))
        return _FORWARD

    def _command_text(self, first: int, payload: bytes) -> tuple[str, str]:
        arg = payload[1:]
        if first == COM_INIT_DB:
            return f"USE {_quote_ident(_text(arg))}", "init_db"
        if first == COM_CREATE_DB:
            return f"CREATE DATABASE {_quote_ident(_text(arg))}", "create_db"
        if first == COM_DROP_DB:
            return f"DROP DATABASE {_quote_ident(_text(arg))}", "drop_db"
        if first == COM_PROCESS_KILL:
            if len(arg) < 4:
                raise _Malformed("truncated COM_PROCESS_KILL")
            return f"KILL {int.from_bytes(arg[:4], 'little')}", "kill"
        if first == COM_SHUTDOWN:
            return "SHUTDOWN", "shutdown"
        flags = arg[0] if arg else 0
        names = [name for bit, name in _REFRESH_OPTIONS if flags & bit]
        return "FLUSH " + ", ".join(names or ["TABLES"]), "refresh"

    def _on_login(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise _Malformed("truncated handshake response")
        caps = int.from_bytes(payload[0:4], "little")
        if not caps & CLIENT_PROTOCOL_41:
            raise _Malformed("pre-4.1 handshake responses are not supported")
        if len(payload) < 32:
            raise _Malformed("truncated handshake response")
        if not caps & CLIENT_MYSQL:
            caps |= int.from_bytes(payload[28:32], "little") << 32
        if caps & CLIENT_SSL:
            raise _Malformed("client insists on TLS to the database; the gateway carries the session in TLS itself")
        if caps & STRIPPED_CAPABILITIES:
            raise _Malformed("client asked for a capability the gateway did not offer (compression?)")
        if payload[8] in UNSAFE_COLLATION_IDS:
            raise _Malformed(f"client character set (collation {payload[8]}) refused: its multibyte characters can hide quotes from the gateway; use utf8mb4")
        user, pos = _cstring(payload, 32)
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            n, pos = _lenenc(payload, pos)
            pos += n
        elif caps & CLIENT_SECURE_CONNECTION:
            if pos >= len(payload):
                raise _Malformed("truncated handshake response")
            pos += 1 + payload[pos]
        else:
            _, pos = _cstring(payload, pos)
        if pos > len(payload):
            raise _Malformed("truncated handshake response")
        database = b""
        if caps & CLIENT_CONNECT_WITH_DB and pos < len(payload):
            database, pos = _cstring(payload, pos)
        self._caps = caps & self._server_caps
        self._deprecate_eof = bool(caps & self._server_caps & CLIENT_DEPRECATE_EOF)
        self._mode = _AUTH
        self._queue.append(_Pending("auth"))
        self._events.append(SessionStarted(_text(user), _text(database)))

    def _on_change_user(self, payload: bytes) -> None:
        user, pos = _cstring(payload, 1)
        if self._caps & CLIENT_SECURE_CONNECTION:
            if pos >= len(payload):
                raise _Malformed("truncated COM_CHANGE_USER")
            pos += 1 + payload[pos]
        else:
            _, pos = _cstring(payload, pos)
        if pos > len(payload):
            raise _Malformed("truncated COM_CHANGE_USER")
        database, _ = _cstring(payload, pos)
        self._stmts.clear()
        self._last_prepared = None
        self._mode = _AUTH
        self._queue.append(_Pending("change_user"))
        self._events.append(SessionStarted(_text(user), _text(database)))

    # ---- gating ---------------------------------------------------------------------------------

    def _allowed(self, text: str) -> bool:
        return self._judge(text) is not None

    def _judge(self, text: str) -> Verdict | None:
        """The allow verdict for text, or None when it was refused (and answered)."""
        if _UNSAFE_CHARSET_SWITCH.search(text):
            self._refuse(text, CHARSET_REFUSED, ERRNO_BLOCKED, SQLSTATE_DENY)
            return None
        if self._gate is None:
            return ALLOW
        try:
            verdict = self._gate(text)
        except Exception:
            log.exception("gate failed; refusing the statement")
            verdict = Verdict("deny", "statement refused: the policy check failed", rule="gate-error")
        if verdict.action == "allow":
            return verdict
        if verdict.action == "hold":
            self._refuse(text, verdict, ERRNO_BLOCKED, SQLSTATE_HOLD)
        else:
            self._refuse(text, verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
        return None

    def _grant_refused(self, stmt: _Stmt | None) -> bool:
        """An execute in a session that had a granted prepare: refuse (and answer) the second
        run of a granted statement; count the first."""
        if stmt is None:  # an id the server has not given out (yet)
            for pending in self._queue:
                if pending.kind == "prepare" and pending.stmt is not None and pending.stmt.grant is not None:
                    verdict = Verdict("deny", GRANT_PENDING_MESSAGE, request_id=pending.stmt.grant, rule="grant-pending")
                    self._refuse(pending.stmt.text, verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
                    return True
            return False
        if stmt.grant is None:
            return False
        if stmt.used:
            verdict = Verdict("deny", GRANT_USED_MESSAGE, request_id=stmt.grant, rule="grant-used")
            self._refuse(stmt.text, verdict, ERRNO_BLOCKED, SQLSTATE_DENY)
            return True
        stmt.used = True
        return False

    def _refuse(self, text: str, verdict: Verdict, errno: int, sqlstate: str) -> None:
        message = verdict.message or (
            "statement held for approval" if verdict.action == "hold" else "statement denied by policy"
        )
        self._events.append(StatementBlocked(text, verdict))
        reply = err_packet(errno, sqlstate, message, seq=1)
        if self._queue:
            self._queue.append(_Pending("synthetic", reply=reply))
        else:
            self._to_client_extra.append(reply)

    # ---- parameters -------------------------------------------------------------------------------

    def _decode_params(self, stmt: _Stmt, payload: bytes, size: int) -> tuple[str | None, ...] | None:
        n = stmt.num_params
        if n is None or size > PARAMS_KEEP_BYTES:
            return None
        if n == 0:
            return ()
        try:
            return _decode_binary_params(stmt, payload, n)
        except (_Malformed, IndexError, ValueError, struct.error):
            return None


_FIXED = {0x01: 1, 0x02: 2, 0x0D: 2, 0x03: 4, 0x09: 4, 0x08: 8}
_DATES = {0x07, 0x0A, 0x0C, 0x11, 0x12}  # timestamp, date, datetime (+ 2 variants)
_TIMES = {0x0B, 0x13}
_STRINGS = {0x00, 0x0F, 0x10, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF}


def _decode_binary_params(stmt: _Stmt, payload: bytes, n: int) -> tuple[str | None, ...] | None:
    pos = 10  # command, statement id (4), flags (1), iteration count (4)
    nulls = payload[pos : pos + (n + 7) // 8]
    pos += (n + 7) // 8
    if len(nulls) != (n + 7) // 8 or pos >= len(payload):
        raise _Malformed("truncated parameters")
    bound = payload[pos]
    pos += 1
    if bound:
        stmt.types = payload[pos : pos + 2 * n]
        pos += 2 * n
    types = stmt.types
    if types is None or len(types) != 2 * n:
        return None
    out: list[str | None] = []
    for k in range(n):
        if nulls[k >> 3] & (1 << (k & 7)):
            out.append(None)
            continue
        if k in stmt.long_data:
            out.append("<long data>")
            continue
        t, unsigned = types[2 * k], types[2 * k + 1] & 0x80
        if t in _FIXED:
            w = _FIXED[t]
            raw = payload[pos : pos + w]
            if len(raw) != w:
                raise _Malformed("truncated parameter")
            out.append(str(int.from_bytes(raw, "little", signed=not unsigned)))
            pos += w
        elif t == 0x04 or t == 0x05:
            w = 4 if t == 0x04 else 8
            (value,) = struct.unpack_from("<f" if w == 4 else "<d", payload, pos)
            out.append(repr(value))
            pos += w
        elif t == 0x06:
            out.append(None)
        elif t in _DATES:
            ln = payload[pos]
            raw = payload[pos + 1 : pos + 1 + ln]
            pos += 1 + ln
            out.append(_date_text(raw))
        elif t in _TIMES:
            ln = payload[pos]
            raw = payload[pos + 1 : pos + 1 + ln]
            pos += 1 + ln
            out.append(_time_text(raw))
        elif t in _STRINGS:
            ln, pos = _lenenc(payload, pos)
            raw = payload[pos : pos + ln]
            if len(raw) != ln:
                raise _Malformed("truncated parameter")
            out.append(_text(raw))
            pos += ln
        else:
            return None
    return tuple(out)


def _date_text(raw: bytes) -> str:
    if len(raw) < 4:
        return "0000-00-00"
    y, mo, d = int.from_bytes(raw[0:2], "little"), raw[2], raw[3]
    text = f"{y:04d}-{mo:02d}-{d:02d}"
    if len(raw) >= 7:
        text += f" {raw[4]:02d}:{raw[5]:02d}:{raw[6]:02d}"
        if len(raw) >= 11:
            text += f".{int.from_bytes(raw[7:11], 'little'):06d}"
    return text


def _time_text(raw: bytes) -> str:
    if len(raw) < 8:
        return "00:00:00"
    neg = "-" if raw[0] else ""
    days = int.from_bytes(raw[1:5], "little")
    text = f"{neg}{days * 24 + raw[5]:02d}:{raw[6]:02d}:{raw[7]:02d}"
    if len(raw) >= 12:
        text += f".{int.from_bytes(raw[8:12], 'little'):06d}"
    return text
