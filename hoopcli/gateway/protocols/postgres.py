"""PostgreSQL frontend/backend protocol v3, watched from the middle (sans-io).

One `PostgresEngine` per client session. The relay feeds it the bytes each side sent and
passes on what it answers; the engine never buffers more than one incomplete message per
direction, and messages whose bodies it does not need (DataRow, CopyData, password
messages, ...) are streamed through without being buffered at all.

What the server still owes an answer to is kept in one FIFO, in the order the client sent
it (Parse, Bind, Describe, Close, Execute, Sync, Query, FunctionCall, plus entries the
engine makes up itself). Each server message retires the head it answers, so outcomes are
attributed exactly, however deeply the client pipelines.

Rules (each one is tested in tests/test_protocol_postgres.py):

* Simple Query: one `StatementStarted(text, "query")` per Q message, however many
  statements the string holds. It ends with ONE outcome: the first ErrorResponse
  (`StatementFailed`, emitted at once: the server abandons the rest of the string) or, at
  ReadyForQuery, `StatementFinished` with the LAST CommandComplete tag ("EMPTY QUERY" when
  the string held no statement).
* Extended protocol: every Execute gets its own outcome: CommandComplete → its tag,
  EmptyQueryResponse → "EMPTY QUERY", PortalSuspended → "SUSPENDED", ErrorResponse →
  failed. After an error the server skips everything up to the next Sync; the Executes
  (and Queries) it skipped are reported failed at that Sync's ReadyForQuery: the first one
  with the error itself when the error came from a Parse/Bind/Describe/Close ahead of it
  (its own statement could not run), every other one with SQLSTATE 25P02
  (in_failed_sql_transaction: "commands ignored until end of transaction block" — the
  segment up to Sync is one implicit transaction block).
* FunctionCall ('F') is gated and recorded like a query, with the text
  "<function call oid N>" (the protocol carries no name).
* Gating: a Q (or F) is judged when it is complete, a Parse when it is complete. A held or
  denied statement is never forwarded; the client gets an ErrorResponse — SQLSTATE 42501
  (insufficient_privilege) for deny, 57W01 for hold — and the session stays usable.
  57W01: class 57 is "operator intervention" (someone has to approve), and a subclass
  starting with W lies in the implementation-defined range PostgreSQL itself does not use
  (its own codes use P), so it can never be mistaken for a real server error.
  - Outside an extended-protocol segment (nothing sent since the last Sync), a Q is
    answered ErrorResponse + ReadyForQuery(the last transaction status seen from the
    server). A blocked Parse drops every message after it up to and including the Sync and
    is answered like a failed Parse: the ErrorResponse at once (a client waiting after a
    Flush sees it), ReadyForQuery at the Sync. Synthetic answers are queued behind
    everything the server still owes, so they reach the client exactly where the real
    answer would have. (Unlike a real failed Parse, a dropped unnamed Parse leaves the
    server's previous unnamed statement in place; clients Parse again after an error.)
  - Inside an open segment (Parse/Bind/Execute already forwarded without a Sync), dropping
    messages would leave the server with half a segment (its replies unflushed, and a later
    Sync committing work the client saw fail). So the blocked message is replaced by one
    that fails at the server (`hoop_blocked_statement`, a syntax error); the server aborts
    the implicit transaction exactly as for a real failure, the engine swallows that
    error and passes the client its own ErrorResponse instead.
  A blocked statement does not abort an explicit transaction block in the first case: the
  server never saw it. If the gate raises, the statement is denied (fail closed).
* An approval runs once. A Parse the gate let through on a grant (verdict allow with a
  request_id) may be bound once: the first Bind of that statement passes, every later one in
  the session is refused like a blocked Parse (`StatementBlocked`, rule "grant-used", 42501):
  at the start of a segment by dropping through Sync, inside one by a stand-in Bind the
  server must fail (statement `hoop_grant_used`, two parameter formats for three parameters,
  an ERROR whichever PostgreSQL checks first) whose error is swapped for the refusal. The
  grant counts as used at its first Bind even if the server then fails or skips that Bind.
  A name stops being tracked only when the server confirms it no longer holds the granted
  statement: the ParseComplete of a later Parse of that name or the CloseComplete of a Close
  (a Parse or Close the server fails or skips changes nothing: a named statement cannot be
  redefined, and a skipped Parse leaves the old unnamed one in place). Until that answer, a
  Bind of the name in a later segment is judged against every statement the name may hold;
  a Bind in the same segment as that Parse or Close binds its outcome or is skipped with it.
  Sessions without granted statements pay one empty-dict check per Bind, Parse, Close and Sync.
* Parameters are only decoded with record_params=True: text format as UTF-8, binary as hex,
  None for NULL. The Bind is then buffered whole, so MAX_MESSAGE_BYTES applies to it.
* Password / SASL messages ('p') are streamed through and never looked at.
* Startup: SSLRequest and GSSENCRequest are answered "N" by the engine and not forwarded;
  CancelRequest is forwarded and ends the client stream; a StartupMessage (protocol 3.x)
  gives `SessionStarted(user, database or user)`.
* A message the engine must buffer (Q, P, E, C, D, ErrorResponse, ...) declaring more than
  MAX_MESSAGE_BYTES, a length below 4, an unknown message type or startup code all give a
  `ProtocolError` and close=True; no exception leaves the engine.

Known limits: statement text is decoded as UTF-8 whatever client_encoding says; a COPY FROM
STDIN that fails at the server while the client is still sending may leave the client's
trailing Sync unattributed (outcomes then resynchronise at the next ReadyForQuery). An SQL
`EXECUTE name` of a protocol-level prepared statement is judged by the gate as that text;
the run-once rule above applies to Bind only.
"""

from __future__ import annotations

import struct
from collections import deque

from .base import (
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
    "DENY_SQLSTATE",
    "HOLD_SQLSTATE",
    "SKIPPED_SQLSTATE",
    "PostgresEngine",
    "error_response",
    "ready_for_query",
]

DENY_SQLSTATE = "42501"  # insufficient_privilege
HOLD_SQLSTATE = "57W01"  # operator intervention, hoop's own subclass: awaiting approval
SKIPPED_SQLSTATE = "25P02"  # in_failed_sql_transaction: skipped after an earlier error
SKIPPED_MESSAGE = "not executed: an earlier message before Sync failed"

EMPTY_TAG = "EMPTY QUERY"
SUSPENDED_TAG = "SUSPENDED"
FUNCTION_TAG = "FUNCTION CALL"

# The replacement for a statement blocked inside an open extended-protocol segment: a bare
# identifier is a syntax error in every PostgreSQL version.
_BLOCKED_SQL = b"hoop_blocked_statement"

GRANT_USED_MESSAGE = "hoop: an approval lets a statement run once; ask again: prepare it anew to request another approval"
# The replacement for a refused Bind inside an open segment: a statement the client never
# made, and two parameter formats for three parameters. PostgreSQL raises an ERROR for
# either, whichever it checks first, so the Bind fails even if a client named a statement so.
_USED_BIND_BODY = b"\0hoop_grant_used\0" + struct.pack("!hhhh", 2, 0, 0, 3)
_USED_BIND = b"B" + struct.pack("!I", len(_USED_BIND_BODY) + 4) + _USED_BIND_BODY

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP = 10_000  # PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
_MAX_LEN = 0x7FFFFFFF  # lengths are signed int32 on the wire
_MAX_NAMES = 10_000  # prepared statements / portals remembered per session

_U32 = struct.Struct("!I").unpack_from
_TYPE_LEN = struct.Struct("!BI").unpack_from  # a message's type byte and length in one call
_I32 = struct.Struct("!i").unpack_from
_I16 = struct.Struct("!h").unpack_from
_U32_PACK = struct.Struct("!I").pack

# FIFO entry kinds. Extended-protocol kinds (an error makes the server skip to Sync) come
# first, then the kinds a ReadyForQuery answers, then the ones retired as soon as they
# reach the head.
# _PARSE_T / _CLOSE_T: a Parse or Close of a statement name tracked for a grant (its answer
# settles what the name holds). _INJ_P: our stand-in for a blocked Parse or a refused Bind.
_PARSE, _BIND, _DESCRIBE, _CLOSE, _PARSE_T, _CLOSE_T, _EXEC, _INJ_P = range(8)
_STARTUP, _SYNC, _QUERY, _INJ_Q = range(8, 12)
_SYNTH_E, _SYNTH_Z, _COPYEND = 12, 13, 14
_SYNTH = _SYNTH_E  # every kind from here on is retired as soon as it reaches the head

# Frontend message types after startup.
_CLIENT_TYPES = frozenset(b"BCDEFHPQSXcdfp")
# Frontend messages forwarded while incomplete: their bodies are never needed.
_CLIENT_STREAMED = frozenset(b"dfp")
# Backend message types.
_SERVER_TYPES = frozenset(b"RKSZTDCIENA123nstGHWdcVv")


class _Broken(Exception):
    """The stream broke the protocol; caught inside the engine, never raised to callers.

    `at`: offset of the offending message in the chunk; what precedes it is passed on.
    `answer`: bytes for the client before the session closes (a refusal it can show).
    """

    at = 0
    answer = b""


# Client encodings whose multibyte characters may end in an ASCII byte (0x5C backslash, 0x27
# quote): the gateway would read statements differently from the server, so a policy could be
# fooled (`SELECT E'<0x95 0x5C>' ; DROP …`). Sessions that switch to one are ended.
UNSAFE_CLIENT_ENCODINGS = frozenset({b"SJIS", b"SHIFT_JIS_2004", b"BIG5", b"GBK", b"UHC", b"GB18030", b"JOHAB"})


def _check_parameter_status(data: bytes, start: int, end: int) -> None:
    name, _, rest = data[start + 5 : end].partition(b"\0")
    if name == b"client_encoding":
        value = rest.split(b"\0", 1)[0].upper()
        if value in UNSAFE_CLIENT_ENCODINGS:
            refusal = _Broken(f"client_encoding {value.decode('ascii', 'replace')} refused: the gateway reads statements as UTF-8")
            refusal.answer = error_response(
                "22021",
                f"hoop: client_encoding {value.decode('ascii', 'replace')} is not supported through the gateway; use UTF8",
            )
            raise refusal


def error_response(code: str, message: str, detail: str | None = None) -> bytes:
    """A PostgreSQL ErrorResponse (severity ERROR) as the server would send it."""
    body = b"SERROR\0VERROR\0C" + _cstr(code) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    body += b"\0"
    return b"E" + _U32_PACK(len(body) + 4) + body


def ready_for_query(status: bytes = b"I") -> bytes:
    return b"Z\0\0\0\x05" + status


def _cstr(text: str) -> bytes:
    return text.replace("\0", "").encode("utf-8") + b"\0"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _remember(table: dict, key: bytes, value) -> None:
    if len(table) >= _MAX_NAMES and key not in table:
        del table[next(iter(table))]  # the oldest
    table[key] = value


class _Grant:
    """A statement the gate let through on an approval: it may be bound once."""

    __slots__ = ("text", "request_id", "used")

    def __init__(self, text: str, request_id: str) -> None:
        self.text = text
        self.request_id = request_id
        self.used = False


class _Slot:
    """What one statement name may hold at the server, for a name that held a grant.

    held: the grant the server holds under the name as far as it has confirmed (None: no
    grant). pending: the Parses and Closes of the name the server has not answered yet, in
    order, as (segment number, the grant that Parse brings or None for anything else).
    """

    __slots__ = ("held", "pending")

    def __init__(self) -> None:
        self.held: _Grant | None = None
        self.pending: list[tuple[int, _Grant | None]] = []


class PostgresEngine:
    """Observes one PostgreSQL session; see the module docstring for the rules."""

    __slots__ = (
        "_gate",
        "_record",
        "_closed",
        # client side
        "_c_mode",
        "_c_pend",
        "_c_need",
        "_c_skip",
        "_c_skip_drop",
        "_c_copy",
        "_drop",
        "_seg_open",
        "_seg_no",
        "_stmts",
        "_portals",
        "_granted",
        "_tracked",
        # server side
        "_s_pend",
        "_s_need",
        "_s_skip",
        "_s_copy",
        "_fifo",
        "_payloads",
        "_skipping",
        "_skip_err",
        "_q_tag",
        "_q_failed",
        "_tx",
    )

    def __init__(self, gate: Gate | None = None, record_params: bool = False) -> None:
        if gate is not None and not callable(gate):
            raise TypeError("PostgresEngine(gate=...) must be a callable taking the statement text")
        self._gate = gate
        self._record = bool(record_params)
        self._closed = False
        self._c_mode = 0  # 0: startup packets, 1: typed messages, 2: after CancelRequest
        self._c_pend: bytearray | None = None  # an incomplete message being buffered
        self._c_need = 0  # its full size, 0 while even its header is incomplete
        self._c_skip = 0  # bytes left of a message being streamed through
        self._c_skip_drop = False  # ... and dropped instead of forwarded
        self._c_copy = False  # the server is reading COPY data from the client
        self._drop = 0  # 1: dropping through Sync; 2: dropping up to Sync, which is forwarded
        self._seg_open = False  # extended messages forwarded since the last Sync
        self._seg_no = 0  # segments forwarded while _granted is not empty (tells them apart)
        self._stmts: dict[bytes, str] = {}
        self._portals: dict[bytes, tuple[str, tuple[str | None, ...] | None]] = {}
        # Statement names that held a grant (see the module docstring); empty in most sessions,
        # and then nothing else of this is looked at.
        self._granted: dict[bytes, _Slot] = {}
        self._tracked: deque[bytes] = deque()  # the name of each _PARSE_T / _CLOSE_T entry
        self._s_pend: bytearray | None = None
        self._s_need = 0
        self._s_skip = 0
        self._s_copy = False
        self._fifo: deque[int] = deque()
        self._payloads: deque[bytes] = deque()  # one per _SYNTH_E / _INJ_P / _INJ_Q entry
        self._skipping = False  # the server is discarding messages until Sync
        self._skip_err: tuple[str, str] | None = None
        self._q_tag = ""  # state of the Query at the head of the FIFO
        self._q_failed = False
        self._tx = b"I"

    # ---- client → server -------------------------------------------------------------

    def from_client(self, data: bytes) -> Output:
        if self._closed:
            return Output(close=True)
        if not data:
            return Output()
        if type(data) is not bytes:
            data = bytes(data)
        try:
            return self._from_client(data)
        except Exception as exc:  # a bug of ours: end the session instead of the relay
            return self._internal_error(exc, "client")

    def _from_client(self, data: bytes) -> Output:
        i = 0
        fwd = 0
        if self._c_skip:
            k = self._c_skip
            n = len(data)
            if n <= k:
                self._c_skip = k - n
                return Output() if self._c_skip_drop else Output(to_server=data)
            self._c_skip = 0
            i = k
            if self._c_skip_drop:
                fwd = k
        elif self._c_pend is not None:
            pend = self._c_pend
            pend += data
            if len(pend) < self._c_need:  # (a need of 0: header incomplete, re-parse)
                return Output()
            data = bytes(pend)
            self._c_pend = None
            self._c_need = 0
        parts: list[bytes] = []
        to_client: list[bytes] = []
        events: list[Event] = []
        run_end = len(data)
        try:
            if self._c_mode == 0:
                i, fwd, run_end = self._startup(data, i, fwd, parts, to_client, events)
            if self._c_mode == 1 and i < len(data):
                i, fwd, run_end = self._client_messages(data, i, fwd, parts, to_client, events)
            elif self._c_mode == 2 and i < len(data):
                exc = _Broken("the client sent data after a CancelRequest")
                exc.at = i
                raise exc
        except _Broken as exc:
            self._closed = True
            events.append(ProtocolError(str(exc), "client"))
            run_end = exc.at
            if run_end < fwd:
                run_end = fwd
            out = Output(events=events, close=True)
            if fwd < run_end:
                parts.append(data[fwd:run_end])
            out.to_server = b"".join(parts)
            out.to_client = b"".join(to_client)
            return out
        if not parts and fwd == 0 and run_end == len(data):
            to_server = data
        else:
            if fwd < run_end:
                parts.append(data[fwd:run_end])
            to_server = b"".join(parts)
        return Output(to_server, b"".join(to_client) if to_client else b"", events)

    def _startup(self, data, i, fwd, parts, to_client, events):
        """Untyped packets: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage."""
        n = len(data)
        try:
            while self._c_mode == 0 and i < n:
                if data[i] == 0x16:
                    raise _Broken("the client started TLS directly; the tunnel carries plain PostgreSQL")
                if n - i < 8:
                    if n - i >= 4:
                        ln = _U32(data, i)[0]
                        if ln < 8 or ln > _MAX_STARTUP:
                            raise _Broken(f"startup packet length {ln} out of range")
                    self._c_pend = bytearray(data[i:])
                    return i, fwd, i
                ln, code = struct.unpack_from("!II", data, i)
                if ln < 8 or ln > _MAX_STARTUP:
                    raise _Broken(f"startup packet length {ln} out of range")
                end = i + ln
                if end > n:
                    self._c_pend = bytearray(data[i:])
                    self._c_need = ln
                    return i, fwd, i
                if code == _SSL_REQUEST or code == _GSSENC_REQUEST:
                    if ln != 8:
                        raise _Broken("malformed SSLRequest/GSSENCRequest")
                    if fwd < i:
                        parts.append(data[fwd:i])
                    fwd = end
                    to_client.append(b"N")  # no TLS/GSS inside the tunnel; the client goes on in plain
                elif code == _CANCEL_REQUEST:
                    if ln < 12:
                        raise _Broken("malformed CancelRequest")
                    self._c_mode = 2
                    i = end
                    break
                elif code >> 16 == 3:
                    events.append(self._startup_message(data, i + 8, end))
                    self._c_mode = 1
                    self._fifo.append(_STARTUP)
                else:
                    raise _Broken(f"unknown startup code {code}")
                i = end
        except _Broken as exc:
            exc.at = i
            raise
        return i, fwd, n

    def _startup_message(self, data: bytes, start: int, end: int) -> SessionStarted:
        fields = data[start:end].split(b"\0")
        if len(fields) < 2 or fields[-1] != b"" or fields[-2] != b"":
            raise _Broken("malformed StartupMessage")
        params = {}
        for k in range(0, len(fields) - 2, 2):
            params[fields[k]] = fields[k + 1]
        user = params.get(b"user")
        if not user:
            raise _Broken("the StartupMessage names no user")
        database = params.get(b"database") or user
        return SessionStarted(_text(user), _text(database))

    def _client_messages(self, data, i, fwd, parts, to_client, events):
        """Typed frontend messages from offset i; returns (i, fwd, end of forwarded run)."""
        n = len(data)
        fifo = self._fifo
        try:
            while n - i >= 5:
                t = data[i]
                ln = _U32(data, i + 1)[0]
                if ln < 4 or ln > _MAX_LEN:
                    raise _Broken(f"message length {ln} out of range")
                end = i + 1 + ln
                if end > n:
                    return self._client_tail(data, i, t, ln, fwd, parts, to_client, events)
                if self._drop:
                    # A blocked Parse: the rest of its segment is dropped.
                    if t not in _CLIENT_TYPES:
                        raise _Broken(f"unknown frontend message type {t:#04x}")
                    if t == 0x53:  # S
                        if ln != 4:
                            raise _Broken("malformed Sync")
                        if self._drop == 2:
                            self._drop = 0
                            self._seg_open = False
                            if self._granted:
                                self._seg_no += 1
                            fifo.append(_SYNC)
                            i = end
                            continue
                        self._drop = 0
                        self._answer(None, to_client)  # the ReadyForQuery for the dropped segment
                    elif t == 0x58:  # X: let the server end the session cleanly
                        i = end
                        continue
                    if fwd < i:
                        parts.append(data[fwd:i])
                    fwd = end
                elif t == 0x42:  # B Bind
                    if self._granted:
                        grant = self._used_grant(data, i + 5, end)
                        if grant is not None:
                            fwd = self._refuse_bind(data, i, end, fwd, parts, to_client, events, grant)
                            i = end
                            continue
                    self._bind(data, i + 5, end, True)
                    fifo.append(_BIND)
                    self._seg_open = True
                elif t == 0x45:  # E Execute
                    j = i + 5
                    z = data.find(0, j, end)
                    if z < 0:
                        raise _Broken("malformed Execute")
                    portal = data[j:z]
                    entry = self._portals.get(portal)
                    if entry is None:
                        events.append(StatementStarted(f"<unknown portal {_text(portal)!r}>", "execute"))
                    else:
                        events.append(StatementStarted(entry[0], "execute", entry[1]))
                    fifo.append(_EXEC)
                    self._seg_open = True
                elif t == 0x53:  # S Sync
                    if ln != 4:
                        raise _Broken("malformed Sync")
                    if not self._c_copy:  # during COPY FROM STDIN the server ignores Sync
                        fifo.append(_SYNC)
                        self._seg_open = False
                        if self._granted:
                            self._seg_no += 1
                elif t == 0x44:  # D Describe
                    fifo.append(_DESCRIBE)
                    self._seg_open = True
                elif t == 0x50:  # P Parse
                    fwd = self._parse(data, i, end, fwd, parts, to_client, events)
                elif t == 0x51:  # Q Query
                    fwd = self._query(data, i, end, fwd, parts, to_client, events)
                elif t == 0x64 or t == 0x70 or t == 0x48:  # d CopyData, p password, H Flush
                    pass
                elif t == 0x43:  # C Close
                    j = i + 5
                    z = data.find(0, j + 1, end)
                    if ln < 6 or z < 0:
                        raise _Broken("malformed Close")
                    what = data[j]
                    if what == 0x53:
                        name = data[j + 1 : z]
                        self._stmts.pop(name, None)
                        if self._granted and name in self._granted:
                            self._track(name, None, _CLOSE_T)
                        else:
                            fifo.append(_CLOSE)
                    else:
                        if what == 0x50:
                            self._portals.pop(data[j + 1 : z], None)
                        fifo.append(_CLOSE)
                    self._seg_open = True
                elif t == 0x63 or t == 0x66:  # c CopyDone, f CopyFail
                    self._copy_end()
                elif t == 0x46:  # F FunctionCall
                    fwd = self._function_call(data, i, end, fwd, parts, to_client, events)
                elif t == 0x58:  # X Terminate
                    pass
                else:
                    raise _Broken(f"unknown frontend message type {t:#04x}")
                i = end
        except _Broken as exc:
            exc.at = i
            raise
        if i < n:  # a few bytes of the next header
            self._c_pend = bytearray(data[i:])
            return n, fwd, i
        return i, fwd, n

    def _client_tail(self, data, i, t, ln, fwd, parts, to_client, events):
        """The chunk ends inside the message at i (header complete, body not)."""
        n = len(data)
        end = i + 1 + ln
        if t not in _CLIENT_TYPES:
            raise _Broken(f"unknown frontend message type {t:#04x}")
        if t in b"SHXc":
            raise _Broken(f"malformed {chr(t)} message")
        if self._drop:
            if fwd < i:
                parts.append(data[fwd:i])
            self._c_skip = end - n
            self._c_skip_drop = True
            return n, n, n
        if t in _CLIENT_STREAMED:
            if t == 0x66:
                self._copy_end()
            self._c_skip = end - n
            self._c_skip_drop = False
            return n, fwd, n
        if t == 0x42 and not self._record:
            # Only the portal and statement names are needed: stream the parameters.
            z = data.find(0, i + 5, n)
            if z >= 0 and data.find(0, z + 1, n) >= 0:
                if self._granted:
                    grant = self._used_grant(data, i + 5, n)
                    if grant is not None:  # refused: the rest of it is dropped
                        self._refuse_bind(data, i, end, fwd, parts, to_client, events, grant)
                        self._c_skip = end - n
                        self._c_skip_drop = True
                        return n, n, n
                self._bind(data, i + 5, n, False)
                self._fifo.append(_BIND)
                self._seg_open = True
                self._c_skip = end - n
                self._c_skip_drop = False
                return n, fwd, n
            need = 2 * (n - i) + 64
            if need < ln + 1:  # the names are incomplete: wait for a little more, not for all of it
                self._c_pend = bytearray(memoryview(data)[i:])
                self._c_need = need
                return n, fwd, i
        elif t == 0x46 and n - i >= 9:
            fwd2 = self._function_call(data, i, end, fwd, parts, to_client, events)
            self._c_skip = end - n
            if fwd2 != fwd:  # blocked: the rest of it is dropped too
                self._c_skip_drop = True
                return n, n, n
            self._c_skip_drop = False
            return n, fwd, n
        if ln + 1 > MAX_MESSAGE_BYTES:
            raise _Broken(
                f"a {chr(t)!r} message of {ln + 1} bytes is larger than the {MAX_MESSAGE_BYTES} bytes the gateway buffers"
            )
        self._c_pend = bytearray(memoryview(data)[i:])
        self._c_need = ln + 1
        return n, fwd, i

    def _bind(self, data: bytes, j: int, limit: int, whole: bool) -> None:
        z = data.find(0, j, limit)
        z2 = data.find(0, z + 1, limit) if z >= 0 else -1
        if z2 < 0:
            raise _Broken("malformed Bind")
        portal = data[j:z]
        name = data[z + 1 : z2]
        text = self._stmts.get(name)
        if text is None:
            text = f"<unknown prepared statement {_text(name)!r}>"
        params = _bind_params(data, z2 + 1, limit) if (self._record and whole) else None
        _remember(self._portals, portal, (text, params))

    def _parse(self, data, i, end, fwd, parts, to_client, events):
        j = i + 5
        z = data.find(0, j, end)
        z2 = data.find(0, z + 1, end) if z >= 0 else -1
        if z2 < 0:
            raise _Broken("malformed Parse")
        name = data[j:z]
        text = _text(data[z + 1 : z2])
        verdict = self._judge(text) if self._gate is not None else None
        if verdict is None or verdict.action == "allow":
            _remember(self._stmts, name, text)
            if self._granted or (verdict is not None and verdict.request_id is not None):
                grant = None
                if verdict is not None and verdict.request_id is not None:
                    grant = _Grant(text, verdict.request_id)
                self._track(name, grant, _PARSE_T)
            else:
                self._fifo.append(_PARSE)
            self._seg_open = True
            return fwd
        events.append(StatementBlocked(text, verdict))
        if self._seg_open and not name:
            self._stmts.pop(b"", None)  # the stand-in Parse replaces the unnamed statement
        body = name + b"\0" + _BLOCKED_SQL + b"\0\0\0"
        return self._withhold(data, i, end, fwd, parts, to_client, _refusal(verdict), b"P" + _U32_PACK(len(body) + 4) + body)

    def _withhold(self, data, i, end, fwd, parts, to_client, payload: bytes, stand_in: bytes) -> int:
        """Refuse the extended-protocol message at i (a Parse or a Bind); see the module docstring."""
        if fwd < i:
            parts.append(data[fwd:i])
        if self._seg_open:
            # Mid-segment: make the server fail a stand-in for it, and swap its error.
            parts.append(stand_in)
            self._fifo.append(_INJ_P)
            self._payloads.append(payload)
            self._drop = 2
        else:
            # Answered like a failed Parse: the error now, ReadyForQuery at the Sync.
            self._drop = 1
            self._answer(payload, to_client)
        return end

    # ---- grants: an approved statement is bound once ---------------------------------

    def _track(self, name: bytes, grant: _Grant | None, kind: int) -> None:
        """A Parse (grant: what it brings, if anything) or Close of a name that holds or
        gets a grant: forwarded, and what the name holds is settled by the server's answer."""
        slot = self._granted.get(name)
        if slot is None:
            if grant is None:
                self._fifo.append(_PARSE if kind == _PARSE_T else _CLOSE)
                return
            slot = self._granted[name] = _Slot()
        slot.pending.append((self._seg_no, grant))
        self._tracked.append(name)
        self._fifo.append(kind)

    def _settle(self, done: bool) -> None:
        """The server answered the oldest tracked Parse/Close: done (ParseComplete,
        CloseComplete), or failed or skipped it (the name keeps what it held)."""
        name = self._tracked.popleft()
        slot = self._granted.get(name)
        if slot is None or not slot.pending:  # cannot happen; nothing to settle
            return
        _, grant = slot.pending.pop(0)
        if done:
            slot.held = grant
        if slot.held is None and not slot.pending:
            del self._granted[name]

    def _used_grant(self, data: bytes, j: int, limit: int) -> _Grant | None:
        """For a Bind whose names lie in data[j:limit]: the used grant it would run again
        (refuse it), or None (it may go on; a grant it may run counts as used now)."""
        z = data.find(0, j, limit)
        z2 = data.find(0, z + 1, limit) if z >= 0 else -1
        if z2 < 0:
            raise _Broken("malformed Bind")
        slot = self._granted.get(data[z + 1 : z2])
        if slot is None:
            return None
        pending = slot.pending
        if pending and pending[-1][0] == self._seg_no:
            # A Parse or Close of this name earlier in this segment: the Bind binds what it
            # left, or the server skips the Bind along with it.
            maybe = [pending[-1][1]]
        else:
            maybe = [slot.held, *[g for _, g in pending]]
        for grant in maybe:
            if grant is not None and grant.used:
                return grant
        for grant in maybe:
            if grant is not None:
                grant.used = True
        return None

    def _refuse_bind(self, data, i, end, fwd, parts, to_client, events, grant: _Grant) -> int:
        verdict = Verdict("deny", GRANT_USED_MESSAGE, request_id=grant.request_id, rule="grant-used")
        events.append(StatementBlocked(grant.text, verdict))
        return self._withhold(data, i, end, fwd, parts, to_client, _refusal(verdict), _USED_BIND)

    def _query(self, data, i, end, fwd, parts, to_client, events):
        z = data.find(0, i + 5, end)
        text = _text(data[i + 5 : z if z >= 0 else end])
        if self._gate is None:
            events.append(StatementStarted(text, "query"))
            self._fifo.append(_QUERY)
            return fwd
        return self._gated(text, "query", data, i, end, fwd, parts, to_client, events)

    def _function_call(self, data, i, end, fwd, parts, to_client, events):
        if end - i < 9:
            raise _Broken("malformed FunctionCall")
        oid = _U32(data, i + 5)[0]
        text = f"<function call oid {oid}>"
        return self._gated(text, "function_call", data, i, end, fwd, parts, to_client, events)

    def _gated(self, text, kind, data, i, end, fwd, parts, to_client, events):
        verdict = self._judge(text) if self._gate is not None else None
        if verdict is None or verdict.action == "allow":
            events.append(StatementStarted(text, kind))
            self._fifo.append(_QUERY)
            return fwd
        events.append(StatementBlocked(text, verdict))
        if fwd < i:
            parts.append(data[fwd:i])
        payload = _refusal(verdict)
        if self._seg_open:
            parts.append(b"Q" + _U32_PACK(len(_BLOCKED_SQL) + 5) + _BLOCKED_SQL + b"\0")
            self._fifo.append(_INJ_Q)
            self._payloads.append(payload)
        else:
            self._answer(payload, to_client)
            self._answer(None, to_client)
        return end

    def _judge(self, text: str) -> Verdict:
        try:
            verdict = self._gate(text)
            if not isinstance(verdict, Verdict):
                raise TypeError("the gate returned no Verdict")
            return verdict
        except Exception:
            return Verdict("deny", "hoop: the policy check failed, so the statement was not sent")

    def _answer(self, payload: bytes | None, to_client: list[bytes]) -> None:
        """Answer the client ourselves (an ErrorResponse, or None: a ReadyForQuery), after
        everything the server still owes it."""
        fifo = self._fifo
        if not fifo and not self._s_skip:
            to_client.append(b"Z\0\0\0\x05" + self._tx if payload is None else payload)
        elif payload is None:
            fifo.append(_SYNTH_Z)
        else:
            fifo.append(_SYNTH_E)
            self._payloads.append(payload)

    def _copy_end(self) -> None:
        if self._c_copy:
            self._c_copy = False
        elif self._fifo:
            self._fifo.append(_COPYEND)

    # ---- server → client -------------------------------------------------------------

    def from_server(self, data: bytes) -> Output:
        if self._closed:
            return Output(close=True)
        if not data:
            return Output()
        if type(data) is not bytes:
            data = bytes(data)
        try:
            return self._from_server(data)
        except Exception as exc:
            return self._internal_error(exc, "server")

    def _from_server(self, data: bytes) -> Output:
        i = 0
        if self._s_skip:
            k = self._s_skip
            n = len(data)
            if n < k:
                self._s_skip = k - n
                return Output(to_client=data)
            self._s_skip = 0
            i = k
        elif self._s_pend is not None:
            pend = self._s_pend
            pend += data
            if len(pend) < self._s_need:
                return Output()
            data = bytes(pend)
            self._s_pend = None
            self._s_need = 0
        n = len(data)
        fifo = self._fifo
        events: list[Event] = []
        parts: list[bytes] = []
        fwd = 0
        run_end = n
        if fifo and fifo[0] >= _SYNTH:  # a streamed message just ended: release queued answers
            fwd = self._release(data, i, fwd, parts)
        try:
            while n - i >= 5:
                t = data[i]
                ln = _U32(data, i + 1)[0]
                if ln < 4 or ln > _MAX_LEN:
                    raise _Broken(f"message length {ln} out of range")
                end = i + 1 + ln
                if t == 0x44 or t == 0x64:  # D DataRow, d CopyData: never looked into
                    if end > n:
                        self._s_skip = end - n
                        i = n
                        break
                    i = end
                    if i < n and data[i] | 0x20 == 0x64:  # t | 0x20 == 0x64: D or d only
                        # The rest of a run of them (COPY TO STDOUT, large results) in a tighter
                        # loop: ~80 instead of ~120 ns a message. Anything else, or a message
                        # that does not end in this chunk, goes back to the loop above.
                        last = n - 5
                        while i <= last:
                            t, ln = _TYPE_LEN(data, i)
                            end = i + 1 + ln
                            if t | 0x20 != 0x64 or ln < 4 or end > n:
                                break
                            i = end
                    continue
                if t == 0x43 or t == 0x5A or t == 0x45 or t == 0x53:  # C, Z, E, S: bodies needed
                    if end > n:
                        if ln + 1 > MAX_MESSAGE_BYTES:
                            raise _Broken(
                                f"a {chr(t)!r} message of {ln + 1} bytes is larger than the "
                                f"{MAX_MESSAGE_BYTES} bytes the gateway buffers"
                            )
                        self._s_pend = bytearray(memoryview(data)[i:])
                        self._s_need = ln + 1
                        run_end = i
                        i = n
                        break
                    if t == 0x43:  # CommandComplete
                        if fifo:
                            k = fifo[0]
                            if k == _EXEC:
                                fifo.popleft()
                                events.append(StatementFinished(_tag(data, i, end)))
                            elif k == _QUERY:
                                self._q_tag = _tag(data, i, end)
                        if self._s_copy:
                            self._s_copy = self._c_copy = False
                    elif t == 0x5A:  # ReadyForQuery
                        if ln != 5:
                            raise _Broken("malformed ReadyForQuery")
                        self._tx = data[i + 5 : end]
                        if fifo and fifo[0] == _SYNC and not self._skipping:
                            fifo.popleft()  # the common case, inlined
                        else:
                            fwd = self._ready(data, i, end, fwd, parts, events)
                    elif t == 0x53:  # ParameterStatus
                        _check_parameter_status(data, i, end)
                    else:  # ErrorResponse
                        fwd = self._error(data, i, end, fwd, parts, events)
                        if self._s_copy:
                            self._s_copy = self._c_copy = False
                elif t == 0x54 or t == 0x6E:  # T RowDescription, n NoData
                    if fifo and fifo[0] == _DESCRIBE:
                        fifo.popleft()
                elif t == 0x32:  # 2 BindComplete
                    if fifo and fifo[0] == _BIND:
                        fifo.popleft()
                elif t == 0x31:  # 1 ParseComplete
                    if fifo and fifo[0] == _PARSE:
                        fifo.popleft()
                    elif fifo and fifo[0] == _PARSE_T:
                        fifo.popleft()
                        self._settle(True)
                elif t == 0x33:  # 3 CloseComplete
                    if fifo and fifo[0] == _CLOSE:
                        fifo.popleft()
                    elif fifo and fifo[0] == _CLOSE_T:
                        fifo.popleft()
                        self._settle(True)
                elif t == 0x49 or t == 0x73:  # I EmptyQueryResponse, s PortalSuspended
                    if fifo:
                        k = fifo[0]
                        if k == _EXEC:
                            fifo.popleft()
                            events.append(StatementFinished(EMPTY_TAG if t == 0x49 else SUSPENDED_TAG))
                        elif k == _QUERY and t == 0x49:
                            self._q_tag = EMPTY_TAG
                elif t == 0x47:  # G CopyInResponse
                    self._copy_in_started()
                elif t == 0x56:  # V FunctionCallResponse
                    if fifo and fifo[0] == _QUERY:
                        self._q_tag = FUNCTION_TAG
                elif t not in _SERVER_TYPES:
                    raise _Broken(f"unknown backend message type {t:#04x}")
                if end > n:  # the rest of a message we need no more of
                    self._s_skip = end - n
                    i = n
                    break
                if fifo and fifo[0] >= _SYNTH:  # queued answers now due, right after this message
                    fwd = self._release(data, end, fwd, parts)
                i = end
            else:
                if i < n:  # a few bytes of the next header
                    self._s_pend = bytearray(data[i:])
                    self._s_need = 0
                    run_end = i
        except _Broken as exc:
            self._closed = True
            events.append(ProtocolError(str(exc), "server"))
            run_end = max(i, fwd)
            if fwd < run_end:
                parts.append(data[fwd:run_end])
            parts.append(exc.answer)
            return Output(to_client=b"".join(parts), events=events, close=True)
        if not parts and fwd == 0 and run_end == n:
            return Output(to_client=data, events=events)
        if fwd < run_end:
            parts.append(data[fwd:run_end])
        return Output(to_client=b"".join(parts), events=events)

    def _release(self, data: bytes, pos: int, fwd: int, parts: list[bytes]) -> int:
        """Send queued synthetic answers that have reached the head, right after pos."""
        fifo = self._fifo
        while fifo and fifo[0] >= _SYNTH:
            k = fifo.popleft()
            if k == _COPYEND:
                continue
            if fwd < pos:
                parts.append(data[fwd:pos])
            fwd = pos
            parts.append(self._payloads.popleft() if k == _SYNTH_E else b"Z\0\0\0\x05" + self._tx)
        return fwd

    def _ready(self, data, i, end, fwd, parts, events) -> int:
        fifo = self._fifo
        if self._skipping:
            self._retire(events, stop_at_query=False)
            self._skipping = False
            self._skip_err = None
        elif fifo:
            k = fifo[0]
            if k == _SYNC or k == _STARTUP:
                fifo.popleft()
            elif k == _QUERY:
                fifo.popleft()
                if not self._q_failed:
                    events.append(StatementFinished(self._q_tag))
                self._q_tag = ""
                self._q_failed = False
            elif k == _INJ_Q:
                fifo.popleft()
                payload = self._payloads.popleft()
                if not self._q_failed:  # the server did not fail it: still refuse, in place
                    if fwd < i:
                        parts.append(data[fwd:i])
                    fwd = i
                    parts.append(payload)
                self._q_tag = ""
                self._q_failed = False
            else:  # out of step (should not happen): resynchronise on this ReadyForQuery
                self._retire(events, stop_at_query=True)
        return fwd

    def _retire(self, events: list[Event], stop_at_query: bool) -> None:
        """Retire entries a ReadyForQuery ends without their own answers (skipped to Sync)."""
        fifo = self._fifo
        payloads = self._payloads
        err = self._skip_err
        self._skip_err = None
        while fifo:
            k = fifo.popleft()
            if k == _SYNC:
                return
            if stop_at_query and (k == _QUERY or k == _STARTUP or k == _INJ_Q):
                if k == _QUERY and not self._q_failed:
                    events.append(StatementFinished(self._q_tag))
                elif k == _INJ_Q:
                    payloads.popleft()
                self._q_tag = ""
                self._q_failed = False
                return
            if k == _EXEC or k == _QUERY:
                if err is not None:
                    events.append(StatementFailed(err[0], err[1]))
                    err = None
                else:
                    events.append(StatementFailed(SKIPPED_SQLSTATE, SKIPPED_MESSAGE))
                if k == _QUERY:
                    self._q_tag = ""
                    self._q_failed = False
            elif k == _INJ_P or k == _INJ_Q or k == _SYNTH_E:
                payloads.popleft()
            elif k == _PARSE_T or k == _CLOSE_T:
                self._settle(False)

    def _error(self, data, i, end, fwd, parts, events) -> int:
        fifo = self._fifo
        if not fifo or self._skipping:
            return fwd
        k = fifo[0]
        if k == _SYNC or k == _STARTUP:  # an error at Sync (commit) or while logging in
            return fwd
        code, message = _error_fields(data, i + 5, end)
        if k == _EXEC:
            fifo.popleft()
            events.append(StatementFailed(code, message))
            self._skipping = True
        elif k <= _CLOSE_T:  # Parse, Bind, Describe or Close failed
            fifo.popleft()
            if k >= _PARSE_T:
                self._settle(False)
            self._skipping = True
            self._skip_err = (code, message)
        elif k == _INJ_P:  # our stand-in for a blocked Parse or refused Bind failed, as intended
            fifo.popleft()
            fwd = self._swallow(data, i, end, fwd, parts, self._payloads.popleft())
            self._skipping = True
        elif k == _QUERY:
            if not self._q_failed:
                self._q_failed = True
                events.append(StatementFailed(code, message))
        elif k == _INJ_Q:
            if not self._q_failed:
                self._q_failed = True
                fwd = self._swallow(data, i, end, fwd, parts, self._payloads[0])
        return fwd

    @staticmethod
    def _swallow(data, i, end, fwd, parts, payload) -> int:
        if fwd < i:
            parts.append(data[fwd:i])
        parts.append(payload)
        return end

    def _copy_in_started(self) -> None:
        """CopyInResponse: the Syncs the client sent after the COPY and before its CopyDone
        or CopyFail are read as part of the copy, and ignored, by the server."""
        self._s_copy = True
        fifo = self._fifo
        if len(fifo) < 2 or (_SYNC not in fifo and _COPYEND not in fifo):
            self._c_copy = True
            return
        kept = [fifo.popleft()]
        ended = False
        while fifo:
            k = fifo.popleft()
            if not ended and k == _SYNC:
                continue
            if not ended and k == _COPYEND:
                ended = True
                continue
            kept.append(k)
        fifo.extend(kept)
        if not ended:
            self._c_copy = True

    # ---- failure ---------------------------------------------------------------------

    def _internal_error(self, exc: Exception, direction) -> Output:
        self._closed = True
        reason = f"internal error in the postgres engine ({type(exc).__name__})"
        return Output(events=[ProtocolError(reason, direction)], close=True)


def _refusal(verdict: Verdict) -> bytes:
    if verdict.action == "hold":
        code = HOLD_SQLSTATE
        message = verdict.message or "hoop: statement held for approval"
    else:
        code = DENY_SQLSTATE
        message = verdict.message or "hoop: statement denied by policy"
    detail = f"hoop request {verdict.request_id}" if verdict.request_id else None
    return error_response(code, message, detail)


def _bind_params(data: bytes, j: int, end: int) -> tuple[str | None, ...]:
    try:
        nfmt = _I16(data, j)[0]
        if nfmt < 0:
            raise _Broken("malformed Bind")
        fmts = struct.unpack_from(f"!{nfmt}h", data, j + 2) if nfmt else ()
        j += 2 + 2 * nfmt
        count = _I16(data, j)[0]
        j += 2
        if count < 0:
            raise _Broken("malformed Bind")
        values: list[str | None] = []
        for k in range(count):
            size = _I32(data, j)[0]
            j += 4
            if size == -1:
                values.append(None)
                continue
            if size < 0 or j + size > end:
                raise _Broken("malformed Bind")
            raw = data[j : j + size]
            j += size
            fmt = fmts[k] if k < nfmt else (fmts[0] if nfmt == 1 else 0)
            values.append(raw.decode("utf-8", "replace") if fmt == 0 else raw.hex())
        if j > end:
            raise _Broken("malformed Bind")
        return tuple(values)
    except struct.error:
        raise _Broken("malformed Bind") from None


def _tag(data: bytes, i: int, end: int) -> str:
    return data[i + 5 : end].split(b"\0", 1)[0].decode("ascii", "replace")


def _error_fields(data: bytes, j: int, end: int) -> tuple[str, str]:
    code = ""
    message = ""
    while j < end and data[j] != 0:
        field = data[j]
        z = data.find(0, j + 1, end)
        if z < 0:
            break
        if field == 0x43:  # C
            code = data[j + 1 : z].decode("ascii", "replace")
        elif field == 0x4D:  # M
            message = _text(data[j + 1 : z])
        j = z + 1
    return code, message
