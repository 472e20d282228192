"""An approval runs once: the statements the gate let through on a grant, and the Binds of
them the engine refuses after the first (see the rules in ..postgres)."""

from __future__ import annotations

from ..base import StatementBlocked, Verdict
from .wire import (
    _CLOSE,
    _PARSE,
    _PARSE_T,
    _USED_BIND,
    GRANT_USED_MESSAGE,
    _Broken,
    _refusal,
)


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


class GrantsMixin:
    __slots__ = ()

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
