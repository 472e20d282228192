"""The gateway's event loop side: accept, CONNECT, relay. It owns every socket.

One `ClientSide` protocol per accepted TLS connection reads an HTTP/1.1 head; a CONNECT for
a registered connection, with a verified bearer token from an allowed identity, is dialled
and then relayed byte for byte through that protocol's sans-io engine, which reports
statements to the session's `SessionRecorder`. Anything else goes to the small JSON API.

Relaying uses asyncio Protocols (no streams, no per-chunk `drain()`): the chunk a socket
delivers is handed to the engine and its output written straight to the peer transport, with
backpressure by pausing the reading side when the writing side's buffer fills up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque

from hoopcli.gateway.http import (
    CONNECT_OK,
    BadRequest,
    find_head_end,
    parse_connect_authority,
    parse_head,
    response,
)
from hoopcli.gateway.approvals import digest_statement
from hoopcli.gateway.audit.record import check
from hoopcli.gateway.identity import TokenRejected
from hoopcli.netutil import set_nodelay
from hoopcli.gateway.protocols.base import (
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    Verdict,
)

log = logging.getLogger(__name__)
DIAL_TIMEOUT = 10.0
HEAD_TIMEOUT = 30.0  # a client that opens TLS and never finishes its request is dropped


def new_session_id() -> str:
    return uuid.uuid4().hex[:16]


class SessionRecorder:
    """Turns one session's engine events into audit records (statement, outcome, timing).

    Hot path: one StatementStarted and one outcome per statement. The outcome's record is a
    statement tuple (audit/record.py): the session's checked fields once, the statement's
    own values raw (the audit writer formats and normalizes them off the event loop).

    With a journal (durability "process" or "power", audit/journal.py) a statement's start —
    who, when, what — is appended to it as the engine reports it, and the relay commits the
    journal before it forwards the engine's bytes (`ClientSide.upstream`); the outcome
    follows. Engines do not know which level runs.
    """

    __slots__ = ("submit", "enqueue", "journal", "base", "pending", "db_user", "database", "statements", "error", "_stmt")

    def __init__(self, submit, base: dict, enqueue, journal=None):
        self.submit = submit  # for records built here from any fields (checked on the way in)
        self.enqueue = enqueue  # for statement tuples of this checked session (AuditWriter.enqueue)
        self.journal = journal
        self.base = base
        self.pending: deque = deque()
        self.db_user = None
        self.database = None
        self.statements = 0
        self.error: str | None = None  # set when the engine gave up on the stream
        self._stmt = self._statement_base()

    def _statement_base(self) -> dict:
        base = {**self.base, "kind": "statement", "db_user": self.db_user, "database": self.database}
        check(base)  # once per session: its statements are enqueued unchecked
        return base

    def handle(self, events) -> None:
        for event in events:
            kind = type(event)
            if kind is StatementStarted:
                started = _wall()
                journal = self.journal
                start_id = 0 if journal is None else journal.started(self._stmt, started, event.text, event.kind, event.params)
                self.pending.append((event, started, _clock(), start_id))
            elif kind is StatementFinished:
                if self.pending:
                    self._statement("ok", event.tag, None, None)
            elif kind is StatementFailed:
                if self.pending:
                    self._statement("error", None, event.code, event.message)
            elif kind is StatementBlocked:
                self._blocked(event)
            elif kind is SessionStarted:
                self.db_user, self.database = event.db_user, event.database
                self.forget_session()
                self._stmt = self._statement_base()
            elif kind is ProtocolError:
                # Recorded once, in the session_end written when the connection closes.
                self.error = f"protocol error from {event.direction}: {event.reason}"

    def _statement(self, outcome: str, tag, code, message) -> None:
        """The record of the oldest pending statement (the caller checked there is one)."""
        event, started, t0, start_id = self.pending.popleft()
        duration = (_clock() - t0) * 1000  # rounded to the microsecond off the event loop (normalize)
        self.statements += 1
        details = _KIND_DETAILS[event.kind] if event.params is None else {"kind": event.kind, "params": list(event.params)}
        self.enqueue((self._stmt, started, event.text, duration, outcome, tag, code, message, details), start_id)

    def forget_session(self) -> None:
        """The journal no longer needs this session's fields for segments to come."""
        if self.journal is not None:
            self.journal.forget(self._stmt)

    def _finish(self, outcome: str, tag=None, code=None, message=None) -> None:
        if self.pending:
            self._statement(outcome, tag, code, message)

    def _blocked(self, event: StatementBlocked) -> None:
        """A held or denied statement never ran: a long one is recorded as its prefix and the
        SHA-256 and length of the whole (as its approval request keeps it), not up to 64 MiB."""
        verdict: Verdict = event.verdict
        details = {"request_id": verdict.request_id, "rule": verdict.rule}
        digest = digest_statement(event.text)
        if digest.truncated:
            details.update(
                statement_sha256=digest.sha256,
                statement_chars=digest.chars,
                statement_bytes=digest.size,
                truncated=True,
            )
        self.record(
            "statement",
            statement=digest.prefix,
            outcome="held" if verdict.action == "hold" else "denied",
            message=verdict.message,
            details=details,
        )

    def record(self, kind: str, **fields) -> None:
        rec = dict(self.base)
        rec["kind"] = kind
        rec["db_user"] = self.db_user
        rec["database"] = self.database
        rec["ts"] = time.time()
        rec.update(fields)
        self.submit(rec)


_wall = time.time
_clock = time.perf_counter


class _KindDetails(dict):
    """One shared `{"kind": kind}` per statement kind: never mutated (the writer normalizes
    details into new dicts), so a statement's record needs no dict of its own."""

    def __missing__(self, kind: str) -> dict:
        self[kind] = details = {"kind": kind}
        return details


_KIND_DETAILS = _KindDetails()


class TargetSide(asyncio.Protocol):
    """The gateway's connection to the registered target; hands bytes to the client side."""

    __slots__ = ("client", "transport")

    def __init__(self, client: "ClientSide"):
        self.client = client
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.client.from_server(data)

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.client.target_lost(exc)


class ClientSide(asyncio.Protocol):
    def __init__(self, gateway):
        self.gw = gateway
        self.transport = None
        self.buffer = bytearray()
        self.server_early = bytearray()
        self.mode = "head"  # head → handling → relay → closed
        self.target: TargetSide | None = None
        self.engine = None
        self.recorder: SessionRecorder | None = None
        self.journal = None  # audit/journal.py when the durability level keeps one
        self.held_upstream: list[bytes] | None = None  # ("power") bytes waiting for a journal sync
        self.held_until = 0  # the journal frames that sync must cover
        self.peer = ""
        self.started = 0.0
        self.bytes_up = 0
        self.bytes_down = 0

    # ---- transport callbacks ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        set_nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self.gw.clients.add(self)
        self.head_timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._head_timed_out)

    def _head_timed_out(self) -> None:
        if self.mode == "head":
            self.refuse(408, "no complete request head in time")

    def data_received(self, data: bytes) -> None:
        if self.mode == "relay":
            self.from_client(data)
            return
        self.buffer += data
        if self.mode != "head":
            return
        try:
            end = find_head_end(self.buffer)
        except BadRequest as exc:
            self.refuse(exc.status, exc.reason)
            return
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        del self.buffer[:end]
        self.head_timer.cancel()
        self.mode = "handling"
        self.transport.pause_reading()
        asyncio.ensure_future(self._handle(head))

    def pause_writing(self) -> None:
        if self.target is not None and self.target.transport is not None:
            self.target.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.target is not None and self.target.transport is not None:
            self.target.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.head_timer.cancel()
        self.gw.clients.discard(self)
        if self.target is not None and self.target.transport is not None:
            self.target.transport.close()
        self._end_session()
        self.mode = "closed"

    # ---- the relay (hot path) ---------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        out = self.engine.from_client(data)
        if out.events:  # first: a statement's start is journaled before its bytes go upstream
            self.recorder.handle(out.events)
        if out.to_server:
            self.upstream(out.to_server)
        if out.to_client:
            self.transport.write(out.to_client)
        if out.close:
            self.close()

    def from_server(self, data: bytes) -> None:
        if self.mode != "relay":
            self.server_early += data
            return
        self.bytes_down += len(data)
        out = self.engine.from_server(data)
        if out.events:  # a fence opening here may release statements: journaled first
            self.recorder.handle(out.events)
        if out.to_client:
            self.transport.write(out.to_client)
        if out.to_server:
            self.upstream(out.to_server)
        if out.close:
            self.close()

    def upstream(self, data: bytes) -> None:
        """Forward to the target once the journal holds every start so far at the gateway's
        durability level: at once for "process" (commit() writes), after the next group
        fsync for "power" (later bytes queue behind, in order)."""
        journal = self.journal
        need = 0 if journal is None else journal.commit()
        if self.held_upstream is not None:
            self.held_upstream.append(data)
            self.held_until = max(self.held_until, need)
        elif not need:
            self.target.transport.write(data)
        else:
            self.held_upstream, self.held_until = [data], need
            journal.when_durable(self._release_upstream)

    def _release_upstream(self) -> None:
        if self.held_upstream is None:
            return
        if self.journal.synced < self.held_until:  # bytes that arrived meanwhile need the next sync
            self.journal.when_durable(self._release_upstream)
            return
        held, self.held_upstream = self.held_upstream, None
        if self.target is not None and self.target.transport is not None and not self.target.transport.is_closing():
            self.target.transport.write(b"".join(held))

    def target_lost(self, exc) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.target is not None and self.target.transport is not None:
            self.target.transport.close()

    # ---- the request head -------------------------------------------------------------
    async def _handle(self, head: bytes) -> None:
        request = None
        try:
            request = parse_head(head)
            if request.method == "CONNECT":
                await self._connect(request)
            else:
                from hoopcli.gateway.api import handle_api

                body = await self._read_body(request)
                status, payload = await handle_api(self.gw, request, body)
                self._respond(status, payload)
        except BadRequest as exc:  # `who`: the verified identity an API refusal was for (api.py)
            who = getattr(exc, "who", None) or {}
            api_call = request is not None and request.method != "CONNECT"
            details = {"client": self.peer, **({"method": request.method, "path": request.target[:200]} if api_call else {})}
            base = {"session_id": new_session_id(), "details": details, **who} if who or api_call else None
            self.refuse(exc.status, exc.reason, base, kind="api" if api_call else "connect")
        except Exception:  # never let one bad request take anything else down
            log.exception("request handling failed")
            self.refuse(500, "internal error")

    async def _read_body(self, request) -> bytes:
        length = request.content_length
        deadline = time.monotonic() + 10
        self.transport.resume_reading()
        while len(self.buffer) < length and self.mode != "closed":
            if time.monotonic() > deadline:
                raise BadRequest(400, "request body timed out")
            await asyncio.sleep(0.005)
        return bytes(self.buffer[:length])

    async def _connect(self, request) -> None:
        gw = self.gw
        name, port = parse_connect_authority(request.target)
        base = {"session_id": new_session_id(), "connection": name, "details": {"client": self.peer, "port": port}}
        token = request.bearer("proxy-authorization")
        if not token:
            return self.refuse(407, "missing bearer token in Proxy-Authorization", base)
        try:
            identity = await asyncio.get_running_loop().run_in_executor(None, gw.verifier.verify, token)
        except TokenRejected as exc:
            return self.refuse(407, str(exc), base)
        base.update(sub=identity.sub, email=identity.email, issuer=identity.issuer)
        conn = gw.registry.get(name)
        if conn is None or conn.port != port:
            return self.refuse(404, f"no registered connection {name}:{port}", base)
        if not conn.allows(identity):
            return self.refuse(403, f"{identity.label} may not use {name}", base)
        if not gw.audit_healthy():
            return self.refuse(503, "the audit store is unavailable; sessions are refused until it is back", base)
        if self.mode == "closed":
            return
        # Engine, recorder and target protocol exist before the dial: a server that speaks
        # first (MySQL's greeting) may send bytes the moment the connection is up. They are
        # held in `server_early` until the client has its 200.
        self.engine = gw.engine_for(conn, identity)
        self.journal = gw.writer.journal
        self.recorder = SessionRecorder(
            gw.submit, {k: v for k, v in base.items() if k != "details"}, gw.writer.enqueue, self.journal
        )
        self.target = TargetSide(self)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self.target, conn.host, conn.port), DIAL_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            self.target = self.engine = self.recorder = None
            return self.refuse(502, f"target of {name} is unreachable ({type(exc).__name__})", base)
        if self.mode == "closed":
            self.target.transport.close()
            return
        self.started = time.time()
        self.recorder.record("connect", outcome="ok", code="200", details=base["details"])
        self.transport.write(CONNECT_OK)
        self.mode = "relay"
        if self.server_early:
            early, self.server_early = bytes(self.server_early), bytearray()
            self.from_server(early)
        if self.buffer:
            early = bytes(self.buffer)
            self.buffer.clear()
            self.from_client(early)
        self.transport.resume_reading()

    def refuse(self, status: int, reason: str, base: dict | None = None, kind: str = "connect") -> None:
        """Answer with a status and a JSON reason, record the attempt, close."""
        record = dict(base or {"session_id": new_session_id(), "details": {"client": self.peer}})
        record.update(kind=kind, ts=time.time(), outcome="refused", code=str(status), message=reason)
        self.gw.submit(record)
        self._respond(status, {"error": reason, "status": status})

    def _respond(self, status: int, payload) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response(status, payload))
            self.transport.close()
        self.mode = "closed"

    def _end_session(self) -> None:
        if self.recorder is None or not self.started:
            return
        recorder, self.recorder = self.recorder, None
        for _ in range(len(recorder.pending)):
            recorder._finish("error", code="08006", message="session ended before the statement completed")
        recorder.record(
            "session_end",
            outcome="error" if recorder.error else "ok",
            message=recorder.error,
            started_at=self.started,
            duration_ms=round((time.time() - self.started) * 1000, 3),
            details={"bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "statements": recorder.statements},
        )
        recorder.forget_session()
