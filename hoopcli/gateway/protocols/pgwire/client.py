"""Client → server: the startup packets and the typed frontend messages (see ..postgres)."""

from __future__ import annotations

import struct

from ..base import (
    MAX_MESSAGE_BYTES,
    Event,
    Output,
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFinished,
    StatementStarted,
    Verdict,
)
from .encodings import reads_the_same_in_every_encoding
from .fence import FenceMixin, may_copy
from .grants import _Grant
from .startup import read_startup, setting_statement
from .wire import (
    function_call_text,
    _BIND,
    _BLOCKED_SQL,
    _CANCEL_REQUEST,
    _CLIENT_STREAMED,
    _CLIENT_TYPES,
    _CLOSE,
    _CLOSE_T,
    _COPYEND,
    _DESCRIBE,
    _EXEC,
    _GSSENC_REQUEST,
    _INJ_P,
    _INJ_Q,
    _MAX_LEN,
    _MAX_STARTUP,
    _PARSE,
    _PARSE_T,
    _QUERY,
    _SSL_REQUEST,
    _STARTUP,
    _SYNC,
    _SYNTH_E,
    _SYNTH_Z,
    _U32,
    _U32_PACK,
    _USED_BIND,
    _bind_params,
    _Broken,
    _refusal,
    _Refused,
    _remember,
    _text,
    fatal_response,
)

UNKNOWN_STATEMENT_MESSAGE = (
    'hoop: prepared statement "{name}" was not prepared by a Parse on this connection, so the gateway '
    "cannot tell what it runs; prepare it with the protocol's Parse (not SQL PREPARE)"
)
ENCODING_UNKNOWN = Verdict(
    "deny",
    "hoop: a statement with non-ASCII text cannot follow a Bind or Execute in the same pipeline segment: "
    "the gateway cannot tell which client_encoding the server will read it in; send Sync before it",
    rule="encoding-unknown",
)


class ClientMixin(FenceMixin):
    __slots__ = ()

    def _from_client(self, data: bytes, start: int = 0) -> Output:
        """`start`: where the messages begin in data (a release of held bytes, see fence.py;
        then nothing is buffered or streamed from before)."""
        if self._held is not None and not self._c_skip:
            try:
                self._hold(data, 0)
            except _Broken as exc:
                self._closed = True
                events = self._abandon_held(str(exc))
                events.append(ProtocolError(str(exc), "client"))
                return Output(events=events, close=True)
            return Output()
        i = fwd = start
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
            events += self._abandon_held(str(exc))
            if exc.protocol:
                events.append(ProtocolError(str(exc), "client"))
            to_client.append(exc.answer)
            if exc.fwd > fwd:
                fwd = exc.fwd
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
                    self._startup_message(data, i + 8, end, events)
                    self._c_mode = 1
                    self._fifo.append(_STARTUP)
                else:
                    raise _Broken(f"unknown startup code {code}")
                i = end
        except _Broken as exc:
            exc.at = i
            exc.fwd = fwd  # a refused message before it must stay withheld
            raise
        return i, fwd, n

    def _startup_message(self, data: bytes, start: int, end: int, events: list[Event]) -> None:
        """Who logs in, and what the server would apply: refused (`_Refused`) unless every
        part of it may reach the server (see startup.py)."""
        fields = data[start:end].split(b"\0")
        if len(fields) < 2 or fields[-1] != b"" or fields[-2] != b"":
            raise _Broken("malformed StartupMessage")
        pairs = [(_text(fields[k]), _text(fields[k + 1])) for k in range(0, len(fields) - 2, 2)]
        if any(not name for name, _ in pairs):  # the server reads an empty name as the end
            raise _Broken("malformed StartupMessage")
        startup = read_startup(pairs, self._pinned)
        if not startup.user:
            raise _Broken("the StartupMessage names no user")
        events.append(SessionStarted(startup.user, startup.database))
        if startup.refusal is not None:
            what = f"<startup database={startup.database!r}>"
            self._refuse_startup(what, Verdict("deny", startup.refusal.message, rule=startup.refusal.rule), startup.refusal.code, events)
        for name, value in startup.settings:
            if name == "application_name":
                continue
            text = setting_statement(name, value)
            verdict = self._judge(text) if self._gate is not None else None
            if verdict is not None and verdict.action != "allow":
                self._refuse_startup(text, verdict, None, events)
            events.append(StatementStarted(text, "startup"))
            events.append(StatementFinished("SET"))

    def _refuse_startup(self, text: str, verdict: Verdict, code: str | None, events: list[Event]) -> None:
        events.append(StatementBlocked(text, verdict))
        refused = _Refused(verdict.message)
        refused.answer = fatal_response(code, verdict.message) if code else _refusal(verdict, fatal=True)
        raise refused

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
                if self._fence and (t == 0x51 or t == 0x50 or self._fence_strict or self._s_copy):
                    if self._fence_holds(data, i, t, end):
                        self._hold(data, i, self._fence_rule(t) is None)
                        return n, fwd, i
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
                            if self._seg_runs:
                                self._raise_fence()
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
                    if not self._bind(data, i + 5, end, True):
                        fwd = self._refuse_unknown(data, i, end, fwd, parts, to_client, events)
                        i = end
                        continue
                    fifo.append(_BIND)
                    self._seg_open = self._seg_runs = True
                elif t == 0x45:  # E Execute
                    j = i + 5
                    z = data.find(0, j, end)
                    if z < 0:
                        raise _Broken("malformed Execute")
                    portal = data[j:z]
                    entry = self._portals.get(portal)
                    if entry is None:
                        events.append(StatementStarted(f"<unknown portal {_text(portal)!r}>", "execute"))
                        self._seg_copy = True  # (a cursor: it cannot COPY, but nothing is lost)
                    else:
                        events.append(StatementStarted(entry[0], "execute", entry[1]))
                        if may_copy(entry[0]):
                            self._seg_copy = True
                    fifo.append(_EXEC)
                    self._seg_open = self._seg_runs = True
                elif t == 0x53:  # S Sync
                    if ln != 4:
                        raise _Broken("malformed Sync")
                    if not self._c_copy:  # during COPY FROM STDIN the server ignores Sync
                        fifo.append(_SYNC)
                        self._seg_open = False
                        if self._granted:
                            self._seg_no += 1
                        if self._seg_runs:
                            self._raise_fence()
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
            exc.fwd = fwd  # a refused message before it must stay withheld
            raise
        if i < n:  # a few bytes of the next header
            # (a Query or Parse waits for its text, buffered: the end given says incomplete)
            if self._fence and self._fence_holds(data, i, data[i], n + 1):
                self._hold(data, i)
            else:
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
                if not self._bind(data, i + 5, n, False):  # refused: the rest of it is dropped
                    self._refuse_unknown(data, i, end, fwd, parts, to_client, events)
                    self._c_skip = end - n
                    self._c_skip_drop = True
                    return n, n, n
                self._fifo.append(_BIND)
                self._seg_open = self._seg_runs = True
                self._c_skip = end - n
                self._c_skip_drop = False
                return n, fwd, n
            need = 2 * (n - i) + 64
            if need < ln + 1:  # the names are incomplete: wait for a little more, not for all of it
                self._c_pend = bytearray(memoryview(data)[i:])
                self._c_need = need
                return n, fwd, i
        if ln + 1 > MAX_MESSAGE_BYTES:
            raise _Broken(
                f"a {chr(t)!r} message of {ln + 1} bytes is larger than the {MAX_MESSAGE_BYTES} bytes the gateway buffers"
            )
        self._c_pend = bytearray(memoryview(data)[i:])
        self._c_need = ln + 1
        return n, fwd, i

    def _bind(self, data: bytes, j: int, limit: int, whole: bool) -> bool:
        """Remember what the portal runs; False (refuse the Bind) when the engine never saw
        the statement's Parse: an SQL PREPARE, or a routine, may have made it out of sight."""
        z = data.find(0, j, limit)
        z2 = data.find(0, z + 1, limit) if z >= 0 else -1
        if z2 < 0:
            raise _Broken("malformed Bind")
        portal = data[j:z]
        name = data[z + 1 : z2]
        text = self._stmts.get(name)
        if text is None:
            return False
        params = _bind_params(data, z2 + 1, limit) if (self._record and whole) else None
        _remember(self._portals, portal, (text, params))
        return True

    def _refuse_unknown(self, data, i, end, fwd, parts, to_client, events) -> int:
        j = i + 5
        z = data.find(0, j, len(data))
        name = _text(data[z + 1 : data.find(0, z + 1, len(data))])
        verdict = Verdict("deny", UNKNOWN_STATEMENT_MESSAGE.format(name=name), rule="unknown-statement")
        events.append(StatementBlocked(f"<unknown prepared statement {name!r}>", verdict))
        return self._withhold(data, i, end, fwd, parts, to_client, _refusal(verdict), _USED_BIND)

    def _parse(self, data, i, end, fwd, parts, to_client, events):
        j = i + 5
        z = data.find(0, j, end)
        z2 = data.find(0, z + 1, end) if z >= 0 else -1
        if z2 < 0:
            raise _Broken("malformed Parse")
        name = data[j:z]
        text = _text(data[z + 1 : z2])
        if self._seg_runs and not reads_the_same_in_every_encoding(data[z + 1 : z2]):
            verdict = ENCODING_UNKNOWN
        else:
            verdict = self._judge(text) if self._gate is not None else None
        if verdict is None or verdict.action == "allow":
            if not name or name not in self._stmts:
                # A named statement cannot be redefined: the server refuses the Parse (42P05) and
                # the name keeps its text, which later Binds must be recorded as (red team: a
                # rejected re-Parse made a DELETE's run recorded as "SELECT 42"). Only an SQL
                # DEALLOCATE, which the engine does not read, frees the name (a known limit).
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

    def _query(self, data, i, end, fwd, parts, to_client, events):
        z = data.find(0, i + 5, end)
        raw = data[i + 5 : z if z >= 0 else end]
        text = _text(raw)
        if self._seg_runs and not reads_the_same_in_every_encoding(raw):
            return self._gated(text, "query", data, i, end, fwd, parts, to_client, events, ENCODING_UNKNOWN)
        if self._gate is None:
            self._raise_fence(may_copy(text))
            events.append(StatementStarted(text, "query"))
            self._fifo.append(_QUERY)
            return fwd
        return self._gated(text, "query", data, i, end, fwd, parts, to_client, events)

    def _function_call(self, data, i, end, fwd, parts, to_client, events):
        # Judged whole (buffered like a Query): its text carries its arguments and their hash.
        if end - i < 9:
            raise _Broken("malformed FunctionCall")
        text = function_call_text(data[i + 5 : end])
        return self._gated(text, "function_call", data, i, end, fwd, parts, to_client, events)

    def _gated(self, text, kind, data, i, end, fwd, parts, to_client, events, verdict=None):
        if verdict is None and self._gate is not None:
            verdict = self._judge(text)
        if verdict is None or verdict.action == "allow":
            events.append(StatementStarted(text, kind))
            self._fifo.append(_QUERY)
            self._raise_fence(kind == "query" and may_copy(text))  # see fence.py
            return fwd
        events.append(StatementBlocked(text, verdict))
        if fwd < i:
            parts.append(data[fwd:i])
        payload = _refusal(verdict)
        if self._seg_open:
            parts.append(b"Q" + _U32_PACK(len(_BLOCKED_SQL) + 5) + _BLOCKED_SQL + b"\0")
            self._fifo.append(_INJ_Q)
            self._payloads.append(payload)
            if self._seg_runs:  # its ReadyForQuery reports what the segment switched
                self._raise_fence()
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
