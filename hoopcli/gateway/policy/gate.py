"""`make_gate`: a policy and an approval book as the `gate(text) -> Verdict` the wire engines call."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Hashable, Iterable

from hoopcli.gateway.identity import Principal
from hoopcli.gateway.protocols.base import ALLOW, Gate, Verdict

from .categories import Dialect
from .charset_memory import SavedCharsets
from .classifier import _classify
from .mysql import use_targets
from .rules import Policy

if TYPE_CHECKING:  # pragma: no cover
    from hoopcli.gateway.approvals import ApprovalBook

log = logging.getLogger(__name__)


class SessionDatabase:
    """The database a session is in, as far as the gateway knows: set from the engine's
    SessionStarted (start-up packet, handshake, COM_CHANGE_USER); None while unknown: before
    the login, and on an unpinned MySQL connection after a USE (which may or may not have
    worked on the server). A grant is bound to it, so an unknown one holds nothing approvable."""

    __slots__ = ("database",)

    def __init__(self, database: str | None = None) -> None:
        self.database = database


def make_gate(
    policy: Policy,
    book: ApprovalBook | None,
    identity: tuple[Hashable, Iterable[str]],
    connection: str,
    dialect: Dialect,
    *,
    database: str | None = None,
    session: SessionDatabase | None = None,
) -> Gate:
    """The `gate(text) -> Verdict` a wire engine calls for each statement of one session.

    identity: (who, groups); `who` is the Principal (issuer, sub) (a bare name, in unit use,
    counts as a subject of no issuer).
    A statement that needs approval is let through once when an approver has granted exactly
    this text to this identity on this connection and database (the verdict carries the
    request id for the audit record); otherwise a request is filed (or the pending one reused)
    and it is held. Without an approval book, statements that need approval are denied. With
    `database` (pinned), a statement that would leave that database (MySQL `USE`) is denied
    whatever the policy says, and grants are bound to it; without, to `session.database` (the
    gateway passes one or the other; with neither, as in unit use, to no database: "")."""
    sub, groups = identity
    groups = frozenset(groups)
    identity = (sub, groups)
    _classify("", dialect)  # reject an unknown dialect now, not on the first statement
    pinned = database_pin(database, dialect)
    requester = sub if isinstance(sub, tuple) else Principal("", str(sub))
    if database:
        session = SessionDatabase(database)
    elif session is None:
        session = SessionDatabase("")
    moves = None if database or dialect not in ("mysql", "mariadb") else use_targets
    charsets = SavedCharsets() if dialect in ("mysql", "mariadb") else None  # mysqldump's restores

    def gate(text: str) -> Verdict:
        try:
            if pinned is not None:
                refusal = pinned(text)
                if refusal is not None:
                    return refusal
            if moves is not None and any(target != session.database for target in moves(text)):
                session.database = None  # the server may or may not have switched
            judged = text if charsets is None else charsets.judged_text(text)
            decision = policy.decide(judged, identity, dialect)
        except Exception:  # a bug here must not forward an unjudged statement
            log.exception("policy failed on a statement for %s on %s", sub, connection)
            return Verdict("deny", "hoop: statement refused: the policy could not judge it (see gateway log)")
        if decision.action == "allow":
            if charsets is not None:
                charsets.forwarded(text)
            return ALLOW
        if decision.action == "deny":
            return Verdict("deny", f"hoop: statement denied by policy ({decision.reason})", rule=decision.reason)
        if book is None:
            return Verdict(
                "deny",
                f"hoop: statement needs approval ({decision.reason}) but approvals are not enabled",
                rule=decision.reason,
            )
        where = session.database
        if where is None:
            return Verdict(
                "deny",
                f"hoop: statement needs approval ({decision.reason}), and an approval is bound to the "
                "session's database, which the gateway does not know here (before the login, or after "
                "USE on a connection whose database is not pinned); reconnect naming the database "
                "(e.g. mysql -D name) instead of switching",
                rule=decision.reason,
            )
        grant = book.consume(requester, connection, text, database=where)
        if grant is not None:
            if charsets is not None:
                charsets.forwarded(text)
            return Verdict("allow", request_id=grant.id, rule=decision.reason)
        try:
            request = book.request(requester, connection, text, decision.categories, database=where,
                                   reason_required=decision.require_reason)
        except PermissionError as exc:  # too many pending requests
            return Verdict("deny", f"hoop: {exc}", rule=decision.reason)
        # Text the parsers cannot read is held, not forwarded: the server must not run what the
        # classifier could not see (a typo is the common case; say so).
        unread = "The gateway could not read it (a typo? fix it and run it again). " if decision.reason == "unparseable" else ""
        return Verdict(
            "hold",
            f"hoop: statement held for approval (request {request.id}). {unread}"
            f"An approver runs: hoop approvals approve {request.id}",
            request_id=request.id,
            rule=decision.reason,
        )

    return gate


def database_pin(database: str | None, dialect: str) -> Callable[[str], Verdict | None] | None:
    """For a connection pinned to `database`: text -> a refusal when a statement would switch
    to another database, else None. PostgreSQL cannot switch inside a session (the engine
    checks the start-up packet), so only MySQL's `USE` (and COM_INIT_DB, gated as `USE`) is
    read here. None when there is nothing to check."""
    if not database or dialect not in ("mysql", "mariadb"):
        return None
    refusal = Verdict(
        "deny",
        f"hoop: this connection is pinned to database `{database}`; it cannot switch to another one",
        rule="database-pinned",
    )

    def check(text: str) -> Verdict | None:
        for target in use_targets(text):
            if target != database:
                return refusal
        return None

    return check
