"""The encoding fence: client messages held behind a statement that may still change what the
server reads them as (see FenceMixin)."""

from __future__ import annotations

from collections import deque

from ..base import MAX_MESSAGE_BYTES, Event, Output, StatementBlocked, Verdict
from .encodings import reads_the_same_in_every_encoding
from .wire import _CLIENT_TYPES, _INJ_Q, _MAX_LEN, _QUERY, _STARTUP, _SYNC, _U32, _Broken, _text, function_call_text

# While the fence is up and the server reads COPY data, these still pass (it expects them).
_COPY_PASS = frozenset(b"dcfHS")
# FIFO kinds the server answers with a ReadyForQuery: while one is queued, the fence stays up.
_OWES_READY = frozenset((_SYNC, _QUERY, _INJ_Q, _STARTUP))


def may_copy(text: str) -> bool:
    """Only a statement that says COPY can start COPY FROM STDIN (not a routine, not SQL
    PREPARE: COPY cannot be prepared)."""
    return "copy" in text.lower()


def statement_reads_the_same(data: bytes, i: int, t: int, end: int) -> bool:
    """Whether the complete Query or Parse at data[i:end] reads the same in every client
    encoding the server may have switched to: its text, and for a Parse its name."""
    if t == 0x51:  # Q
        return reads_the_same_in_every_encoding(data[i + 5 : end])
    z = data.find(0, i + 5, end)  # P: name, text
    z = data.find(0, z + 1, end) if z >= 0 else -1
    return reads_the_same_in_every_encoding(data[i + 5 : z if z >= 0 else end])


class FenceMixin:
    """The fence: after the engine forwards what may run code (a Query, a FunctionCall, the
    Sync of a segment with a Bind or Execute), it holds the next Query or Parse whose text does
    not read the same in every encoding (encodings.py), and everything the client sends after
    it, until the server has sent the ReadyForQuery of everything forwarded before it.
    PostgreSQL reports a client_encoding switch (ParameterStatus) just before that
    ReadyForQuery, so no statement the switch could make the server read differently reaches
    it after a switch the gateway refuses (the session ends there; see server.py). Every
    other message goes on at once, in order: statement text that reads the same is the same
    statement after any switch, and a switch cannot move message boundaries (lengths are
    binary) or turn a name, a parameter or COPY data into SQL. Two exceptions hold
    everything, as a whole fence: behind a statement that may start COPY FROM STDIN (its text
    says COPY) until the server answers it, so no Query goes in among the COPY data (the
    server would take it as a broken COPY and never answer it), and while the server reads
    COPY data (only COPY messages pass). A client that does not pipeline never waits.
    Inside one segment it cannot wait (the ReadyForQuery only comes after Sync), so there a
    Parse or Query after a Bind or Execute must read the same in every encoding (client.py).

    Held bytes are kept as the chunks they arrived in, plus an offset into the first: a
    release feeds them on from that offset and, where the fence holds again, keeps the rest
    where it lies (no copy, no second framing), so a long pipeline is let go in linear time.
    """

    __slots__ = ()

    def _raise_fence(self, copy: bool = False) -> None:
        """A statement that may run code was forwarded (a Query or FunctionCall, with `copy`
        when its text says COPY, or the Sync of a segment that ran something)."""
        self._fence = True
        if copy or self._seg_copy:
            self._fence_strict = True
        self._seg_runs = self._seg_copy = False

    def _fence_rule(self, t: int) -> bool | None:
        """For a message of type t behind the fence: True, it waits; False, it goes; None, it
        waits if its statement text may read differently (a Query or Parse)."""
        if self._s_copy:
            return t not in _COPY_PASS
        if self._skipping and _SYNC not in self._fifo:
            # The server skips to a Sync the client has not sent yet: it reads none of this (the
            # fence of a Query inside a failed segment would wait for a ReadyForQuery that only
            # comes after that Sync).
            return False
        if self._fence_strict:
            return True
        return None if t == 0x51 or t == 0x50 else False

    def _fence_holds(self, data: bytes, i: int, t: int, end: int) -> bool:
        """Whether the message at data[i] waits behind the fence. A Query or Parse that has
        not all arrived goes on to be buffered (they always are) and is checked when whole."""
        rule = self._fence_rule(t)
        if rule is None:
            return end <= len(data) and not statement_reads_the_same(data, i, t, end)
        return rule

    def _fence_answered(self) -> bool:
        """True once the server answered everything forwarded before the fence went up (it
        stops at the first entry owing a ReadyForQuery: usually the head)."""
        return _OWES_READY.isdisjoint(self._fifo)

    def _head_waits(self) -> bool:
        """The fence is still up: whether the first held message must still wait (a text
        already found unsafe is not read again)."""
        rule = self._fence_rule(self._held[0][self._held_from])
        return self._held_unsafe if rule is None else rule

    def _hold(self, data: bytes, i: int, unsafe: bool = False) -> None:
        """Hold data[i:] and whatever the client sends after it; `unsafe`: the message at i
        waits for its text."""
        rest = self._releasing
        if rest is not None:  # a release stopped here: the bytes stay where they are
            self._releasing = None
            rest.appendleft(data)
            self._held, self._held_from, self._held_unsafe = rest, i, unsafe
            self._held_size += len(data) - i
            return
        held = self._held
        if held is None:
            held = self._held = deque()
            self._held_from = self._held_size = 0
            self._held_unsafe = unsafe
            self._frame_skip, self._frame_head = i, b""
        size = self._held_size + len(data) - (i if not held else 0)
        if size > MAX_MESSAGE_BYTES:
            raise _Broken(
                f"the client sent more than {MAX_MESSAGE_BYTES} bytes ahead of the server's answer "
                "to a statement that is still running"
            )
        if not held:
            self._held_from = i
        held.append(data)
        self._held_size = size
        self._frame(data)

    def _frame(self, data: bytes) -> None:
        """Frame what is held as it arrives, so a broken stream ends the session now and not
        when the fence opens (the bodies are read when they are let go)."""
        i = self._frame_skip
        if self._frame_head:  # a header split between two arrivals (then nothing to skip)
            data = self._frame_head + data
        n = len(data)
        while n - i >= 5:
            t = data[i]
            ln = _U32(data, i + 1)[0]
            if t not in _CLIENT_TYPES:
                raise _Broken(f"unknown frontend message type {t:#04x}")
            if ln < 4 or ln > _MAX_LEN or (ln != 4 and t in b"SHXc"):
                raise _Broken(f"a {chr(t)!r} message of length {ln} is malformed")
            if ln + 1 > MAX_MESSAGE_BYTES and t not in b"dfpBF":
                raise _Broken(
                    f"a {chr(t)!r} message of {ln + 1} bytes is larger than the {MAX_MESSAGE_BYTES} bytes the gateway buffers"
                )
            i += 1 + ln
        if i >= n:
            self._frame_skip, self._frame_head = i - n, b""
        else:
            self._frame_skip, self._frame_head = 0, data[i:]

    def _let_go(self) -> Output:
        """Feed what is held to the client side again, chunk by chunk from where the last
        release stopped, until the fence holds again (see _hold) or all of it went."""
        chunks, start = self._held, self._held_from
        self._held = None
        outs: list[Output] = []
        while chunks and self._held is None and not self._closed:
            data = chunks.popleft()
            self._held_size -= len(data) - start
            self._releasing = chunks
            outs.append(self._from_client(data, start))
            start = 0
        self._releasing = None
        if len(outs) == 1:
            return outs[0]
        return Output(
            b"".join(o.to_server for o in outs),
            b"".join(o.to_client for o in outs),
            [e for o in outs for e in o.events],
            any(o.close for o in outs),
        )

    def _abandon_held(self, reason: str) -> list[Event]:
        """The session ends with client messages still held: a record for each statement
        among them, saying it was not sent."""
        chunks, self._held = self._held, None
        if not chunks:
            return []
        held = b"".join(chunks)
        verdict = Verdict("deny", f"hoop: not sent to the server: the session was ended ({reason})", rule="session-ended")
        events: list[Event] = []
        i, n = self._held_from, len(held)
        while n - i >= 5:
            t = held[i]
            end = i + 1 + int.from_bytes(held[i + 1 : i + 5], "big")
            if end > n:
                break
            body = held[i + 5 : end]
            if t == 0x51:  # Q
                events.append(StatementBlocked(_text(body.split(b"\0", 1)[0]), verdict))
            elif t == 0x50:  # P
                events.append(StatementBlocked(_text(body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else b""), verdict))
            elif t == 0x46 and len(body) >= 4:  # F
                events.append(StatementBlocked(function_call_text(body), verdict))
            i = end
        return events
