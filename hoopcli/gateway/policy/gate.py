"""`make_gate`: a policy and an approval book as the `gate(text) -> Verdict` the wire engines call."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

from hoopcli.gateway.protocols.base import ALLOW, Gate, Verdict

from .categories import Dialect
from .classifier import _classify
from .rules import Policy

if TYPE_CHECKING:  # pragma: no cover
    from hoopcli.gateway.approvals import ApprovalBook

log = logging.getLogger(__name__)


def make_gate(
    policy: Policy,
    book: ApprovalBook | None,
    identity: tuple[str, Iterable[str]],
    connection: str,
    dialect: Dialect,
) -> Gate:
    """The `gate(text) -> Verdict` a wire engine calls for each statement of one session.

    A statement that needs approval is let through once when an approver has granted exactly
    this text to this identity on this connection (the verdict carries the request id for the
    audit record); otherwise a request is filed (or the pending one reused) and it is held.
    Without an approval book, statements that need approval are denied."""
    sub, groups = identity
    groups = frozenset(groups)
    identity = (sub, groups)
    _classify("", dialect)  # reject an unknown dialect now, not on the first statement

    def gate(text: str) -> Verdict:
        try:
            decision = policy.decide(text, identity, dialect)
        except Exception:  # a bug here must not forward an unjudged statement
            log.exception("policy failed on a statement for %s on %s", sub, connection)
            return Verdict("deny", "hoop: statement refused: the policy could not judge it (see gateway log)")
        if decision.action == "allow":
            return ALLOW
        if decision.action == "deny":
            return Verdict("deny", f"hoop: statement denied by policy ({decision.reason})", rule=decision.reason)
        if book is None:
            return Verdict(
                "deny",
                f"hoop: statement needs approval ({decision.reason}) but approvals are not enabled",
                rule=decision.reason,
            )
        grant = book.consume(sub, connection, text)
        if grant is not None:
            return Verdict("allow", request_id=grant.id, rule=decision.reason)
        try:
            request = book.request(sub, connection, text, decision.categories)
        except PermissionError as exc:  # too many pending requests
            return Verdict("deny", f"hoop: {exc}", rule=decision.reason)
        return Verdict(
            "hold",
            f"hoop: statement held for approval (request {request.id}). "
            f"An approver runs: hoop approvals approve {request.id}",
            request_id=request.id,
            rule=decision.reason,
        )

    return gate

