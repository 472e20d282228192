"""Wires the gateway together: settings → identity, registry, policies, approvals, audit.

`Gateway` is what the protocols in `server.py` and the handlers in `api.py` talk to; it owns
no sockets itself. `run_gateway` runs it until SIGINT/SIGTERM and flushes the audit trail
before returning, so a clean stop loses no record.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
import time

from hoopcli.gateway.identity import Identity, IdentityVerifier
from hoopcli.gateway.protocols.base import SessionStarted, Verdict
from hoopcli.gateway.registry import Connection
from hoopcli.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

AUDIT_DOWN = Verdict("deny", message="hoop: the audit store is unavailable, so no statement is forwarded; try again shortly")


class Gateway:
    def __init__(self, settings: GatewaySettings, store=None):
        from hoopcli.gateway.approvals import ApprovalBook
        from hoopcli.gateway.audit import open_store
        from hoopcli.gateway.audit.durability import default_journal_dir, start_writer

        self.settings = settings
        self.registry = settings.registry
        self.verifier = IdentityVerifier(settings.issuers)
        # Ours (store None): the writer process opens its own connection to it. Either way an
        # earlier run's journal is replayed first (audit/durability.py).
        self.store = open_store(settings.audit_store) if store is None else store  # fails here when misconfigured
        self.writer = start_writer(
            settings.audit_store, self.store, self._exporter_specs(), durability=settings.durability,
            journal_dir=settings.journal_dir or default_journal_dir(self.store, settings.base_dir),
            in_subprocess=store is None,
        )
        self.submit = self.writer.submit
        self.policies = self._policies()
        self.approvals = ApprovalBook(
            settings.approver_groups,
            connection_approvers={
                c.name: c.approver_groups for c in self.registry.connections.values() if c.approver_groups is not None
            },
            grant_window=settings.approval_window_seconds,
            pending_ttl=settings.approval_pending_ttl_seconds,
            require_reason=settings.approval_require_reason,
            max_pending_per_sub=settings.approval_max_pending,
            max_pending_bytes=settings.approval_max_pending_bytes,
            on_request=self._approval_requested,
            on_decision=self._approval_decided,
        )
        self.clients: set = set()
        self.approval_hook = None
        if settings.approval_webhook:
            from hoopcli.gateway.audit import WebhookExporter

            self.approval_hook = WebhookExporter(settings.approval_webhook)

    # ---- wiring ----------------------------------------------------------------------
    def _exporter_specs(self) -> list[tuple[str, str]]:
        specs = []
        if self.settings.export_jsonl:
            specs.append(("jsonl", self.settings.export_jsonl))
        if self.settings.export_webhook:
            specs.append(("webhook", self.settings.export_webhook))
        return specs

    def _policies(self) -> dict:
        from hoopcli.gateway.policy.connection import connection_policy

        issuers = [i.issuer for i in self.settings.issuers]
        policies = {name: connection_policy(conn, issuers) for name, conn in self.registry.connections.items()}
        return {name: policy for name, policy in policies.items() if policy is not None}

    def audit_healthy(self) -> bool:
        return self.writer.healthy

    def engine_for(self, conn: Connection, identity: Identity):
        from hoopcli.gateway.policy.gate import SessionDatabase

        # A gated connection whose database is not pinned learns the session's from the login,
        # to bind approvals to it (see make_gate).
        session = SessionDatabase() if conn.name in self.policies and conn.pinned_database is None else None
        gate = self._gate(conn, identity, session)
        if not conn.record:
            from hoopcli.gateway.protocols.tcp import TcpEngine

            return TcpEngine()
        if conn.protocol == "postgres":
            from hoopcli.gateway.protocols.postgres import PostgresEngine

            engine = PostgresEngine(gate=gate, record_params=self.settings.record_params, database=conn.pinned_database)
        elif conn.protocol == "mysql":
            from hoopcli.gateway.protocols.mysql import MySQLEngine

            engine = MySQLEngine(gate=gate, record_params=self.settings.record_params, database=conn.pinned_database)
        else:
            from hoopcli.gateway.protocols.tcp import TcpEngine

            return TcpEngine()
        return engine if session is None else SessionWatch(engine, session)

    def _gate(self, conn: Connection, identity: Identity, session=None):
        """Every statement passes the audit-health check (no record, no statement); a
        connection with a policy also passes its rules."""
        writer = self.writer
        policy = self.policies.get(conn.name)
        dialect = "mysql" if conn.protocol == "mysql" else "postgres"
        if policy is None:
            from hoopcli.gateway.policy import database_pin

            pinned = database_pin(conn.pinned_database, dialect)
            if pinned is None:
                return lambda text: verdict_allow if writer.healthy else AUDIT_DOWN
            return lambda text: (pinned(text) or verdict_allow) if writer.healthy else AUDIT_DOWN
        from hoopcli.gateway.policy import make_gate

        policy_gate = make_gate(
            policy,
            self.approvals,
            (identity.principal, identity.groups),
            conn.name,
            dialect,
            database=conn.pinned_database,
            session=session,
        )
        return lambda text: policy_gate(text) if writer.healthy else AUDIT_DOWN

    def _approval_requested(self, request) -> None:
        self.submit(
            {
                "kind": "approval_request",
                "ts": time.time(),
                "sub": request.sub,
                "issuer": request.issuer,
                "connection": request.connection,
                "database": request.database,
                "statement": request.statement,
                "outcome": "pending",
                "details": {
                    "request_id": request.id,
                    "categories": list(request.categories),
                    "statement_sha256": request.statement_sha256,
                    "statement_bytes": request.statement_bytes,
                    "truncated": request.truncated,
                },
            }
        )
        if self.approval_hook is not None:
            self.approval_hook.export([{"event": "approval_request", **public_request(request)}])

    def _approval_decided(self, request) -> None:
        """Approve, deny, the one use of a grant and an expiry: each one record, with who (sub and
        issuer: the one who decided, or for `used` and `expired` the requester) and why."""
        used = request.status in ("used", "expired")
        self.submit(
            {
                "kind": "approval_decision",
                "ts": time.time(),
                "sub": request.sub if used else request.decided_by,
                "issuer": request.issuer if used else request.decided_by_issuer,
                "connection": request.connection,
                "database": request.database,
                "statement": request.statement,
                "outcome": request.status,
                "message": request.reason or None,
                "details": {
                    "request_id": request.id,
                    "requester": request.sub,
                    "requester_issuer": request.issuer,
                    "approver": request.decided_by,
                    "approver_issuer": request.decided_by_issuer,
                    "justification": request.justification or None,
                },
            }
        )

    def close(self) -> None:
        self.writer.close()
        self.store.close()
        if self.approval_hook is not None:
            self.approval_hook.close()


verdict_allow = Verdict("allow")


class SessionWatch:
    """An engine whose SessionStarted events (login, COM_CHANGE_USER) also set the database
    its gate binds approvals to. The database is learnt after the feed that carried the login:
    a statement judged in that same feed (pipelined behind it) finds it unknown, and an
    unknown database makes nothing approvable (see make_gate): late, never wrong."""

    __slots__ = ("engine", "session")

    def __init__(self, engine, session) -> None:
        self.engine = engine
        self.session = session

    def from_client(self, data: bytes):
        return self._watch(self.engine.from_client(data))

    def from_server(self, data: bytes):
        return self._watch(self.engine.from_server(data))

    def _watch(self, out):
        for event in out.events:
            if type(event) is SessionStarted:
                self.session.database = event.database or ""
        return out

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def public_request(request) -> dict:
    """An approval request as approvers and webhooks see it: passwords in its SQL masked."""
    from hoopcli.gateway.audit.masking import mask_sql_secrets

    data = request.to_dict()
    data["statement"] = mask_sql_secrets(data["statement"])
    return data


async def serve(gateway: Gateway, ssl_ctx: ssl.SSLContext | None, ready=None, tls_files: tuple[str, str] | None = None) -> None:
    """Listen until cancelled or signalled; then close every session and flush the trail.
    SIGHUP re-reads `tls_files` (certificate, key) into the listening context: new handshakes
    get the new certificate, sessions already open keep theirs."""
    from hoopcli.gateway.server import ClientSide

    loop = asyncio.get_running_loop()
    s = gateway.settings
    server = await loop.create_server(lambda: ClientSide(gateway), s.listen_host, s.listen_port, ssl=ssl_ctx, backlog=512)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ssl_ctx is not None and tls_files is not None:
        try:
            loop.add_signal_handler(signal.SIGHUP, _reload_tls, ssl_ctx, tls_files)
        except (NotImplementedError, RuntimeError):
            pass
    sweeper = loop.create_task(_sweep_approvals(gateway.approvals, gateway.settings.approval_pending_ttl_seconds))
    if ready:
        ready(port)
    try:
        await stop.wait()
    finally:
        sweeper.cancel()
        server.close()
        for client in list(gateway.clients):
            client._end_session()  # recorded now: a TLS peer may take seconds to acknowledge the close
            client.close()
        await asyncio.sleep(0.05)
        await loop.run_in_executor(None, gateway.close)


async def _sweep_approvals(book, pending_ttl: float) -> None:
    """Expire undecided requests on time, so each expiry is recorded when it happens rather
    than when someone next lists the approvals."""
    interval = max(0.5, min(5.0, pending_ttl / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            book.sweep()
        except Exception:  # a failed pass must not end the sweeping
            log.exception("approval sweep failed")


def _reload_tls(ssl_ctx: ssl.SSLContext, tls_files: tuple[str, str]) -> None:
    """A rotated certificate takes effect without dropping sessions; a bad pair keeps the old one."""
    from hoopcli.errors import HoopError
    from hoopcli.gateway.tls import load_pair

    try:
        load_pair(ssl_ctx, *tls_files)
    except HoopError as exc:
        log.error("SIGHUP: TLS certificate not reloaded, the old one stays: %s", exc.message)
        return
    log.warning("SIGHUP: TLS certificate reloaded from %s", tls_files[0])


def run_gateway(gateway: Gateway, ssl_ctx, ready=None, tls_files: tuple[str, str] | None = None) -> None:
    from hoopcli.netutil import new_event_loop

    # Everything made so far (modules, settings, policies) lives as long as the process: keep it
    # out of the collector's full passes, which otherwise walk it all and stall every session.
    gc.freeze()
    loop = new_event_loop()
    try:
        loop.run_until_complete(serve(gateway, ssl_ctx, ready, tls_files))
    finally:
        loop.close()
