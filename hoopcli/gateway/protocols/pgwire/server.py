"""Server → client: attributing each backend message to what the client sent (see ..postgres)."""

from __future__ import annotations

from ..base import (
    MAX_MESSAGE_BYTES,
    Event,
    Output,
    ProtocolError,
    StatementFailed,
    StatementFinished,
)
from .encodings import EncodingRefused, check_parameter_status
from .wire import (
    _BIND,
    _CLOSE,
    _CLOSE_T,
    _COPYEND,
    _DESCRIBE,
    _EXEC,
    _INJ_P,
    _INJ_Q,
    _MAX_LEN,
    _PARSE,
    _PARSE_T,
    _QUERY,
    _SERVER_TYPES,
    _STARTUP,
    _SYNC,
    _SYNTH,
    _SYNTH_E,
    _TYPE_LEN,
    _U32,
    EMPTY_TAG,
    ENDED_MESSAGE,
    ENDED_SQLSTATE,
    FUNCTION_TAG,
    SKIPPED_MESSAGE,
    SKIPPED_SQLSTATE,
    SUSPENDED_TAG,
    _Broken,
    _error_fields,
    _tag,
)


class ServerMixin:
    __slots__ = ()

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
                        if self._fence:
                            fwd = self._open_fence(data, end, fwd, parts, events)
                    elif t == 0x53:  # ParameterStatus
                        check_parameter_status(data, i, end)
                    else:  # ErrorResponse
                        fwd = self._error(data, i, end, fwd, parts, events)
                        if self._s_copy:
                            self._s_copy = self._c_copy = False
                        if self._fence:
                            fwd = self._open_fence(data, end, fwd, parts, events)
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
                    if self._fence:
                        fwd = self._open_fence(data, end, fwd, parts, events)
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
            if isinstance(exc, EncodingRefused):
                self._settle_switch(events)
            events += self._abandon_held(str(exc))
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
        out = Output(to_client=b"".join(parts), events=events)
        if self._up:  # client messages the fence let go in this chunk
            out.to_server = b"".join(self._up)
            self._up.clear()
            out.close = self._closed
        return out

    def _settle_switch(self, events: list[Event]) -> None:
        """The server reported an encoding switch the gateway refuses, before the
        ReadyForQuery of the statement that made it: that statement ran (it is recorded so);
        anything else still outstanding ends unknown with the session."""
        fifo = self._fifo
        if fifo and fifo[0] == _QUERY and not self._q_failed:
            fifo.popleft()
            events.append(StatementFinished(self._q_tag or FUNCTION_TAG))
        for k in fifo:
            if k == _EXEC or k == _QUERY:
                events.append(StatementFailed(ENDED_SQLSTATE, ENDED_MESSAGE))
        fifo.clear()

    def _open_fence(self, data: bytes, pos: int, fwd: int, parts: list[bytes], events: list[Event]) -> int:
        """Right after the message at data[:pos] (a ReadyForQuery, an ErrorResponse or a
        CopyInResponse): lower the fence once everything before it is answered, and let what
        the client sent behind it go on, if it may now (see fence.py)."""
        if self._fence_answered():
            self._fence = self._fence_strict = False
        elif self._held is None or self._head_waits():
            return fwd
        if self._held is None:
            return fwd
        if self._fifo and self._fifo[0] >= _SYNTH:  # answers queued before these messages go first
            fwd = self._release(data, pos, fwd, parts)
        more = self._let_go()
        if fwd < pos:
            parts.append(data[fwd:pos])
        parts.append(more.to_client)
        self._up.append(more.to_server)
        events += more.events
        return pos

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
