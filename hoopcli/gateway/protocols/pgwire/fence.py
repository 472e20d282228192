"""The encoding fence: client messages held behind a statement that may still change what the
server reads them as (see FenceMixin)."""

from __future__ import annotations

from ..base import MAX_MESSAGE_BYTES, Event, StatementBlocked, Verdict
from .wire import _CLIENT_TYPES, _MAX_LEN, _SYNC, _U32, _Broken, _text

# While the fence is up and the server reads COPY data, these still pass (it expects them).
_COPY_PASS = frozenset(b"dcfHS")


class FenceMixin:
    """The fence: after the engine forwards what may run code (a Query, a FunctionCall, the
    Sync of a segment with a Bind or Execute), it holds everything the client sends next until
    the server's ReadyForQuery for it. PostgreSQL reports a client_encoding switch
    (ParameterStatus) just before that ReadyForQuery, so nothing reaches the server after a
    switch the gateway refuses (the session ends there; see server.py), and outcomes never
    mix with a COPY's. A client that does not pipeline (psql, most drivers) never waits for it.
    Inside one segment it cannot wait (the ReadyForQuery only comes after Sync), so there a
    Parse or Query after a Bind or Execute must read the same in every encoding (encodings.py).
    """

    __slots__ = ()

    def _fence_passes(self, t: int) -> bool:
        """What may pass the fence: COPY data while the server reads it, and anything while the
        server skips to a Sync the client has not sent yet (it reads none of it; the fence of a
        Query inside a failed segment would otherwise wait for a ReadyForQuery that only comes
        after that Sync)."""
        if self._s_copy:
            return t in _COPY_PASS
        return self._skipping and _SYNC not in self._fifo

    def _hold(self, data: bytes) -> None:
        held = self._held
        if held is None:
            held = self._held = bytearray()
            self._held_at = 0
        if len(held) + len(data) > MAX_MESSAGE_BYTES:
            raise _Broken(
                f"the client sent more than {MAX_MESSAGE_BYTES} bytes ahead of the server's answer "
                "to a statement that is still running"
            )
        held += data
        self._check_held(held)

    def _check_held(self, held: bytearray) -> None:
        """Frame what is held as it arrives, so a broken stream ends the session now and not
        when the fence opens (the bodies are read when they are let go)."""
        i, n = self._held_at, len(held)
        while n - i >= 5:
            t = held[i]
            ln = _U32(held, i + 1)[0]
            if t not in _CLIENT_TYPES:
                raise _Broken(f"unknown frontend message type {t:#04x}")
            if ln < 4 or ln > _MAX_LEN or (ln != 4 and t in b"SHXc"):
                raise _Broken(f"a {chr(t)!r} message of length {ln} is malformed")
            if ln + 1 > MAX_MESSAGE_BYTES and t not in b"dfpBF":
                raise _Broken(
                    f"a {chr(t)!r} message of {ln + 1} bytes is larger than the {MAX_MESSAGE_BYTES} bytes the gateway buffers"
                )
            i += 1 + ln
        self._held_at = i

    def _abandon_held(self, reason: str) -> list[Event]:
        """The session ends with client messages still held: a record for each statement
        among them, saying it was not sent."""
        held, self._held = self._held, None
        if not held:
            return []
        verdict = Verdict("deny", f"hoop: not sent to the server: the session was ended ({reason})", rule="session-ended")
        events: list[Event] = []
        i, n = 0, len(held)
        while n - i >= 5:
            t = held[i]
            end = i + 1 + int.from_bytes(held[i + 1 : i + 5], "big")
            if end > n:
                break
            body = bytes(held[i + 5 : end])
            if t == 0x51:  # Q
                events.append(StatementBlocked(_text(body.split(b"\0", 1)[0]), verdict))
            elif t == 0x50:  # P
                events.append(StatementBlocked(_text(body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else b""), verdict))
            elif t == 0x46 and len(body) >= 4:  # F
                events.append(StatementBlocked(f"<function call oid {int.from_bytes(body[:4], 'big')}>", verdict))
            i = end
        return events
