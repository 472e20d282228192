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
* FunctionCall ('F') is buffered whole, gated and recorded like a query, with the text
  "<function call oid N (arg, …); call sha256 H>" (the protocol carries no name): an approval
  is for that exact call, arguments included.
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
  gives `SessionStarted(user, database or user)` and is checked before it is forwarded
  (pgwire/startup.py): another database than `database=` (pinning, 42501), replication,
  `_pq_.*`, `options` switches other than -c, and a client_encoding off the allow-list are
  refused with a FATAL ErrorResponse and a `StatementBlocked`; every other setting is judged
  by the gate as `SET name TO 'value'` and recorded as a statement of kind "startup".
* The encoding fence (pgwire/fence.py): after forwarding a Query, a FunctionCall, or the Sync
  of a segment with a Bind or Execute, the engine holds the next Query or Parse whose text
  (and name) does not read the same in every refused encoding (pgwire/encodings.py), and
  everything after it, until the server's ReadyForQuery for every statement forwarded before
  it; ASCII text, and every other message, goes on at once, in order. Behind a statement whose
  text says COPY everything waits, as a whole fence, until the server answers it; while the
  server reads COPY data only COPY messages pass; anything passes while the server skips to a
  Sync not yet sent. A ParameterStatus client_encoding off the allow-list ends the session at once: the
  statement that switched is recorded as it ended (it ran), statements forwarded after it as
  failed 08006 (outcome unknown: they read the same, and may have run), held statements as
  `StatementBlocked` rule "session-ended", and nothing more reaches the server. Inside one
  segment, a Parse or Query after a Bind or Execute is refused (rule "encoding-unknown")
  unless its text reads the same in every refused encoding.
* A Bind of a statement name the engine never saw a Parse for (SQL PREPARE, a routine) is
  refused like a blocked Parse (rule "unknown-statement"): the gate never judged its text.
* A message the engine must buffer (Q, P, E, C, D, ErrorResponse, ...) declaring more than
  MAX_MESSAGE_BYTES, a length below 4, an unknown message type or startup code all give a
  `ProtocolError` and close=True; no exception leaves the engine.

Known limits: statement text is decoded as UTF-8 whatever client_encoding says (only
encodings whose ASCII bytes are always ASCII are allowed, so the lexical structure matches);
SQL `DEALLOCATE s` then `PREPARE s AS …` re-defines a name the engine knows from a Parse
without it noticing (the PREPARE itself is judged by the gate); a COPY FROM
STDIN that fails at the server while the client is still sending may leave the client's
trailing Sync unattributed (outcomes then resynchronise at the next ReadyForQuery). An SQL
`EXECUTE name` of a protocol-level prepared statement is judged by the gate as that text;
the run-once rule above applies to Bind only.
"""

from __future__ import annotations

from collections import deque

from .base import Gate, Output, ProtocolError
from .pgwire.client import ClientMixin
from .pgwire.encodings import UNSAFE_CLIENT_ENCODINGS
from .pgwire.grants import GrantsMixin, _Slot
from .pgwire.server import ServerMixin
from .pgwire.wire import (
    DENY_SQLSTATE,
    EMPTY_TAG,
    FUNCTION_TAG,
    GRANT_USED_MESSAGE,
    HOLD_SQLSTATE,
    SKIPPED_MESSAGE,
    SKIPPED_SQLSTATE,
    SUSPENDED_TAG,
    error_response,
    ready_for_query,
)

__all__ = [
    "DENY_SQLSTATE",
    "EMPTY_TAG",
    "FUNCTION_TAG",
    "GRANT_USED_MESSAGE",
    "HOLD_SQLSTATE",
    "SKIPPED_MESSAGE",
    "SKIPPED_SQLSTATE",
    "SUSPENDED_TAG",
    "UNSAFE_CLIENT_ENCODINGS",
    "PostgresEngine",
    "error_response",
    "ready_for_query",
]


class PostgresEngine(ClientMixin, ServerMixin, GrantsMixin):
    """Observes one PostgreSQL session; see the module docstring for the rules."""

    __slots__ = (
        "_gate",
        "_pinned",
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
        "_seg_runs",
        "_fence",
        "_fence_strict",
        "_seg_copy",
        "_held",
        "_held_from",
        "_held_size",
        "_held_unsafe",
        "_releasing",
        "_frame_skip",
        "_frame_head",
        "_up",
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

    def __init__(self, gate: Gate | None = None, record_params: bool = False, *, database: str | None = None) -> None:
        if gate is not None and not callable(gate):
            raise TypeError("PostgresEngine(gate=...) must be a callable taking the statement text")
        if database is not None and (not isinstance(database, str) or not database):
            raise TypeError("PostgresEngine(database=...) must be a database name or None")
        self._gate = gate
        self._pinned = database  # a StartupMessage for any other database is refused
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
        self._seg_runs = False  # ... among them a Bind or Execute (code may have run)
        self._fence = False  # statements forwarded may switch the encoding (pgwire/fence.py)
        self._fence_strict = False  # ... or start a COPY FROM STDIN: every message waits
        self._seg_copy = False  # the open segment executed what may be a COPY
        self._held: deque[bytes] | None = None  # what the client sent behind the fence, as it came
        self._held_from = 0  # where in the first chunk the held messages start
        self._held_size = 0  # how many bytes are held
        self._held_unsafe = False  # the first held message waits for its text, whatever comes
        self._releasing: deque[bytes] | None = None  # the chunks still held while some are let go
        self._frame_skip = 0  # held bytes still to come of a framed message (fence.py _frame)
        self._frame_head = b""  # ... or the start of a header split between two arrivals
        self._up: list[bytes] = []  # ... and let go while a server chunk is read
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

    # ---- failure ---------------------------------------------------------------------

    def _internal_error(self, exc: Exception, direction) -> Output:
        self._closed = True
        reason = f"internal error in the postgres engine ({type(exc).__name__})"
        return Output(events=[ProtocolError(reason, direction)], close=True)

