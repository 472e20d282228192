"""MySQLEngine: the phases (framing, login, commands, results) put together for one session."""

from __future__ import annotations

import logging
from collections import deque

from ..base import Event, Gate, Output, ProtocolError
from .commands import ClientSide
from .constants import _GREETING
from .framing import FramedEngine, _Stream
from .login import LoginPhase, _Refused
from .results import ServerSide
from .state import _Pending, _Stmt
from .wire import _Malformed

log = logging.getLogger("hoopcli.gateway.protocols.mysql")


class MySQLEngine(FramedEngine, LoginPhase, ClientSide, ServerSide):
    """One MySQL/MariaDB client session, observed (and gated) in both directions.

    database: when given, the only default database the session may name at login or in
    COM_CHANGE_USER (USE and COM_INIT_DB are the gate's to judge).
    """

    def __init__(self, gate: Gate | None = None, record_params: bool = False, *, database: str | None = None) -> None:
        self._gate = gate
        self._record_params = record_params
        self._pinned_db = None if database is None else database.encode("utf-8")
        self._client = _Stream("client")
        self._server = _Stream("server")
        self._mode = _GREETING
        self._auth_seq = -1  # the id of the one auth packet the server awaits (-1: none)
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
        except _Refused as exc:
            return self._fail(str(exc), st.direction, exc.reply)
        except _Malformed as exc:
            return self._fail(str(exc), st.direction)
        except Exception as exc:  # our bug, never the relay's problem: end the session cleanly
            log.exception("mysql engine failed on %s data", st.direction)
            return self._fail(f"engine error ({type(exc).__name__}) on {st.direction} data", st.direction)
        if st.direction == "client":
            return Output(to_server=out, to_client=b"".join(extra), events=events)
        return Output(to_client=out, events=events)

    def _fail(self, reason: str, direction: str, reply: bytes = b"") -> Output:
        self._dead = True
        events = self._events
        events.append(ProtocolError(reason, direction))  # type: ignore[arg-type]
        return Output(to_client=reply, events=events, close=True)

