"""Approval requests for held statements, and the one-use grants approvers hand out.

The gate files a request when the policy says `require_approval`; an approver (a member of
one of the connection's approver groups, and never the requester) approves or denies it; an
approval lets exactly that statement text through once, for the same identity on the same
connection and database, within a window. Identities are principals, (issuer, sub): the same
`sub` from another issuer is someone else, who neither sees nor uses the request. The book
lives in memory and is thread-safe (approvals shared by several gateways belong in the
store: the fleet work).

A request keeps a bounded prefix of its statement (PREFIX_BYTES of UTF-8, cut on a character
boundary) with the full text's SHA-256 and length, never the whole text: a statement can be
up to 64 MiB, and a held one never ran. The grant is matched by (issuer, sub, connection,
database, SHA-256), so only the exact text that was approved runs, however long its common
prefix with another.
Per requester, the pending requests are capped in number and in bytes of statement.

Lifecycle: a request waits `pending_ttl` seconds for a decision, then expires; an approval's
window (`grant_window`) counts from the approval, not the request. An expiry is reported like
a decision (on_decision, status "expired": the audit trail's approval_decision record) when the
book notices it — on any call, or the gateway's periodic `sweep()` — and the request stays
listed as expired until `retention` passes. On connections that require a reason, the
requester attaches one with `justify` (once, while pending) and nobody may approve before it;
approvers read it on the request (denying needs none).
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterable, Literal, Mapping

from hoopcli.gateway.identity import Principal
from hoopcli.gateway.statement_digest import PREFIX_BYTES, StatementDigest, digest_statement

__all__ = [
    "DEFAULT_GRANT_WINDOW",
    "DEFAULT_PENDING_TTL",
    "PREFIX_BYTES",
    "ApprovalBook",
    "ApprovalRequest",
    "ApprovalStateError",
    "StatementDigest",
    "digest_statement",
]

log = logging.getLogger(__name__)

Status = Literal["pending", "approved", "denied", "used", "expired"]
STATUSES: tuple[str, ...] = ("pending", "approved", "denied", "used", "expired")

DEFAULT_GRANT_WINDOW = 15 * 60.0  # an approval must be used within this many seconds
DEFAULT_PENDING_TTL = 60 * 60.0  # an undecided request expires after this many seconds
DEFAULT_RETENTION = 24 * 60 * 60.0  # finished requests are forgotten after this many seconds
DEFAULT_MAX_PENDING_PER_SUB = 100
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024  # per requester: the sum of their pending statements' sizes
DEFAULT_MAX_FINISHED = 5_000  # decided, used and expired requests kept for `list` (oldest go first)
DEFAULT_PAGE = 50
MAX_PAGE = 500
MAX_JUSTIFICATION_CHARS = 2000  # a reason is a sentence or a ticket link, not a document


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A snapshot: the book replaces it on every change, so holders never see it move."""

    id: str
    sub: str  # with `issuer`: who asked (the principal); a bare sub alone names nobody
    connection: str
    statement: str  # the whole text when short; else its prefix (truncated=True)
    categories: tuple[str, ...]
    created_at: float
    expires_at: float  # a pending request expires here; an approved grant at grant_expires_at
    status: Status = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    reason: str = ""
    grant_expires_at: float | None = None
    used_at: float | None = None
    statement_sha256: str = ""  # of the whole text: what a grant is matched by
    statement_chars: int = 0
    statement_bytes: int = 0
    truncated: bool = False
    issuer: str = ""  # the requester's; "" in requests saved before issuers were kept: nobody's
    database: str = ""  # the session's database when it was held: the grant runs only there
    decided_by_issuer: str | None = None
    reason_required: bool = False  # the requester must `justify` it before anyone may approve
    justification: str = ""  # the requester's reason, which approvers read
    justified_at: float | None = None

    @property
    def requester(self) -> Principal:
        return Principal(self.issuer, self.sub)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.issuer, self.sub, self.connection, self.database, self.statement_sha256)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["categories"] = list(self.categories)
        return data


def _digest_fields(digest: StatementDigest) -> dict:
    return {
        "statement": digest.prefix,
        "statement_sha256": digest.sha256,
        "statement_chars": digest.chars,
        "statement_bytes": digest.size,
        "truncated": digest.truncated,
    }


def _finished_at(request: ApprovalRequest) -> float:
    return request.used_at or request.decided_at or request.expires_at


def _cursor(request: ApprovalRequest) -> str:
    return f"{request.created_at!r}_{request.id}"


def _parse_cursor(cursor: str) -> tuple[float, str]:
    created, _, request_id = str(cursor).rpartition("_")
    try:
        at = float(created)
    except ValueError:
        at = math.nan
    if not math.isfinite(at) or not request_id:
        raise ValueError(f"bad cursor {cursor!r}: pass the `next` value of the previous page")
    return at, request_id


class ApprovalStateError(ValueError):
    """The request is not pending any more (already decided, used or expired)."""


def _principal(who, role: str) -> Principal:
    """The gateway passes (issuer, sub). A bare name (unit use) is a subject of no issuer,
    "", which no verified identity has: it never matches a gateway requester or approver."""
    if isinstance(who, str):
        return Principal("", who)
    if not (isinstance(who, tuple) and len(who) == 2 and all(isinstance(part, str) for part in who)):
        raise TypeError(f"{role} must be a Principal (issuer, sub), not {who!r}")
    return Principal(*who)


def _new_id() -> str:
    return secrets.token_hex(4)  # 8 hex digits: short to type, unambiguous to read


def _reports_expiry(method):
    """Run `method`, then report every expiry it noticed (also when it raised): hooks run
    outside the lock, and no expiry is left unreported until some later call."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self._report_expired()

    return wrapper


class ApprovalBook:
    """Approval requests in memory (thread-safe), with one-use grants.

    approver_groups: names of the groups whose members may decide; none means nobody can.
    connection_approvers: per connection name, the groups that decide its requests instead.
    grant_window: seconds an approval stays usable (default 15 min).
    pending_ttl: seconds a request waits for a decision before it expires (default 1 h).
    max_pending_per_sub / max_pending_bytes: how many requests, and how many bytes of statement
    in all, one requester may have waiting; past either, `request` refuses.
    retention / max_finished: finished requests are forgotten after `retention` seconds, and
    the oldest first once there are more than `max_finished`.
    on_request(request): called for each new request (not for a reused one), e.g. a webhook.
    require_reason: True for every connection, or the names of those whose requests need the
    requester's justification before approval.
    on_decision(request): called after approve, deny, consume and expiry, e.g. an audit record.
    Callbacks run outside the lock; their exceptions are logged and swallowed.
    """

    def __init__(
        self,
        approver_groups: Iterable[str] = (),
        *,
        connection_approvers: Mapping[str, Iterable[str]] | None = None,
        grant_window: float = DEFAULT_GRANT_WINDOW,
        pending_ttl: float = DEFAULT_PENDING_TTL,
        retention: float = DEFAULT_RETENTION,
        max_pending_per_sub: int = DEFAULT_MAX_PENDING_PER_SUB,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_finished: int = DEFAULT_MAX_FINISHED,
        require_reason: bool | Iterable[str] = False,
        clock: Callable[[], float] = time.time,
        on_request: Callable[[ApprovalRequest], None] | None = None,
        on_decision: Callable[[ApprovalRequest], None] | None = None,
        id_factory: Callable[[], str] = _new_id,
    ) -> None:
        if isinstance(approver_groups, str):
            raise TypeError("approver_groups must be a collection of group names, not one string")
        for name, value in (("grant_window", grant_window), ("pending_ttl", pending_ttl), ("retention", retention)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.approver_groups = frozenset(approver_groups)
        if any(isinstance(groups, str) for groups in (connection_approvers or {}).values()):
            raise TypeError("connection_approvers maps a connection to a collection of group names")
        self.connection_approvers = {name: frozenset(g) for name, g in (connection_approvers or {}).items()}
        self.grant_window = float(grant_window)
        self.pending_ttl = float(pending_ttl)
        self.retention = float(retention)
        caps = {"max_pending_per_sub": max_pending_per_sub, "max_pending_bytes": max_pending_bytes, "max_finished": max_finished}
        for name, count in caps.items():
            if not (isinstance(count, int) and count > 0):
                raise ValueError(f"{name} must be a positive whole number, got {count!r}")
        self.max_pending_per_sub = max_pending_per_sub
        self.max_pending_bytes = max_pending_bytes
        self.max_finished = max_finished
        if isinstance(require_reason, str):
            raise TypeError("require_reason is True, False or a collection of connection names")
        self.require_reason = require_reason if isinstance(require_reason, bool) else frozenset(require_reason)
        self._clock = clock
        self.on_request = on_request
        self.on_decision = on_decision
        self._new_id = id_factory
        self._lock = threading.RLock()
        self._requests: dict[str, ApprovalRequest] = {}
        self._pending_by_key: dict[tuple[str, ...], str] = {}
        self._approved_by_key: dict[tuple[str, ...], list[str]] = {}
        self._newly_expired: list[ApprovalRequest] = []  # reported by _report_expired, outside the lock

    # ---- bookkeeping (lock held) -----------------------------------------------------------

    def _index(self, request: ApprovalRequest) -> None:
        old = self._requests.get(request.id)
        if old is not None:
            if old.status == "pending" and self._pending_by_key.get(old.key) == old.id:
                del self._pending_by_key[old.key]
            elif old.status == "approved":
                ids = self._approved_by_key.get(old.key, [])
                if old.id in ids:
                    ids.remove(old.id)
                if not ids:
                    self._approved_by_key.pop(old.key, None)
        self._requests[request.id] = request
        if request.status == "pending":
            self._pending_by_key[request.key] = request.id
        elif request.status == "approved":
            self._approved_by_key.setdefault(request.key, []).append(request.id)

    def _put(self, request: ApprovalRequest) -> ApprovalRequest:
        self._index(request)
        return request

    def _expire(self, request: ApprovalRequest, now: float) -> ApprovalRequest:
        """The request as it stands at `now`: pending past its TTL or approved past its window expire."""
        pending_over = request.status == "pending" and now >= request.expires_at
        grant_over = request.status == "approved" and request.grant_expires_at is not None and now >= request.grant_expires_at
        if not (pending_over or grant_over):
            return request
        expired = self._put(replace(request, status="expired"))
        self._newly_expired.append(expired)
        return expired

    def _report_expired(self) -> None:
        """Each expiry once to on_decision (outside the lock, like every hook)."""
        with self._lock:
            expired, self._newly_expired = self._newly_expired, []
        for request in expired:
            self._call(self.on_decision, request)

    @_reports_expiry
    def sweep(self) -> None:
        """Expire what is due now and report it: the gateway calls this periodically, so an
        expiry reaches the audit trail even when nobody looks at the book."""
        with self._lock:
            self._sweep(self._clock())

    def _sweep(self, now: float) -> None:
        finished = []
        for request in list(self._requests.values()):
            request = self._expire(request, now)
            if request.status not in ("pending", "approved"):
                if now - _finished_at(request) >= self.retention:
                    del self._requests[request.id]
                else:
                    finished.append(request)
        if len(finished) > self.max_finished:
            finished.sort(key=_finished_at)
            for request in finished[: len(finished) - self.max_finished]:
                del self._requests[request.id]

    def _check_room(self, requester: Principal, digest: StatementDigest) -> None:
        """Raise PermissionError when `requester` may not file one more request of this size."""
        sub = requester.sub
        pending = [r for r in self._requests.values() if r.status == "pending" and r.requester == requester]
        if len(pending) >= self.max_pending_per_sub:
            raise PermissionError(
                f"too many approval requests pending for {sub} ({len(pending)}); wait for an approver to decide"
            )
        waiting = sum(r.statement_bytes for r in pending)
        if waiting + digest.size > self.max_pending_bytes:
            raise PermissionError(
                f"too many pending approval bytes for {sub}: {waiting} bytes of statements already wait "
                f"and this one has {digest.size}, over the limit of {self.max_pending_bytes}; "
                "wait for an approver to decide, or send a smaller statement"
            )

    @staticmethod
    def _call(hook: Callable[[ApprovalRequest], None] | None, request: ApprovalRequest) -> None:
        if hook is None:
            return
        try:
            hook(request)
        except Exception:
            log.exception("approval hook failed for request %s", request.id)

    # ---- the gate's side -------------------------------------------------------------------

    @_reports_expiry
    def request(
        self,
        requester: Principal,
        connection: str,
        statement: str,
        categories: Iterable[str] = (),
        *,
        database: str = "",
        reason_required: bool = False,
    ) -> ApprovalRequest:
        """File a request, or return the pending one for the same (requester, connection,
        database, statement). `database`: the session's, which the grant will be bound to;
        `reason_required`: the policy rule that holds it wants a justification (so does
        `require_reason` for the connection).

        The request keeps the statement's digest (prefix, SHA-256, length), not the statement.
        Raises PermissionError when `sub` already has `max_pending_per_sub` pending requests,
        or this statement would take their pending statements past `max_pending_bytes`."""
        requester = _principal(requester, "requester")
        digest = digest_statement(statement)  # outside the lock: hashing 64 MiB takes a while
        created = None
        with self._lock:
            now = self._clock()
            key = (requester.issuer, requester.sub, connection, database, digest.sha256)
            existing_id = self._pending_by_key.get(key)
            existing = self._expire(self._requests[existing_id], now) if existing_id is not None else None
            if existing is not None and existing.status == "pending":
                return existing
            self._sweep(now)
            self._check_room(requester, digest)
            request_id = self._new_id().lower()
            while request_id in self._requests:
                request_id = self._new_id().lower()
            created = self._put(
                ApprovalRequest(
                    id=request_id,
                    sub=requester.sub,
                    issuer=requester.issuer,
                    connection=connection,
                    database=database,
                    categories=tuple(categories),
                    created_at=now,
                    expires_at=now + self.pending_ttl,
                    reason_required=reason_required or self.reason_required(connection),
                    **_digest_fields(digest),
                ),
            )
        self._call(self.on_request, created)
        return created

    def reason_required(self, connection: str) -> bool:
        return self.require_reason if isinstance(self.require_reason, bool) else connection in self.require_reason

    @_reports_expiry
    def consume(
        self, requester: Principal, connection: str, statement: str, *, database: str = ""
    ) -> ApprovalRequest | None:
        """Use the oldest live approval of exactly this statement for this requester,
        connection and database.

        The statement is matched by its SHA-256: a text that only shares the approved one's
        prefix finds no grant. Returns it marked `used` (its one use is spent), or None."""
        requester = _principal(requester, "requester")
        sha256 = digest_statement(statement, keep=0).sha256
        key = (requester.issuer, requester.sub, connection, database, sha256)
        used = None
        with self._lock:
            now = self._clock()
            for request_id in list(self._approved_by_key.get(key, ())):
                request = self._expire(self._requests[request_id], now)
                if request.status == "approved":
                    used = self._put(replace(request, status="used", used_at=now))
                    break
        if used is not None:
            self._call(self.on_decision, used)
        return used

    # ---- the approver's side ---------------------------------------------------------------

    @_reports_expiry
    def approve(
        self,
        request_id: str,
        approver: Principal,
        approver_groups: Iterable[str],
        reason: str = "",
        *,
        sha256: str | None = None,
    ) -> ApprovalRequest:
        """Grant one use of the request's statement, within `grant_window` seconds from now.

        sha256: approve only if the statement's SHA-256 is this. Required when the request
        keeps only a prefix: nobody approves a statement they could not read by one click.
        PermissionError when the approver is the requester (same issuer and sub) or in none of
        the approver groups of the request's connection;
        ApprovalStateError when the request is no longer pending or the hash differs;
        KeyError for an unknown id."""
        return self._decide(request_id, approver, approver_groups, reason, "approved", sha256)

    @_reports_expiry
    def deny(
        self, request_id: str, approver: Principal, approver_groups: Iterable[str], reason: str = ""
    ) -> ApprovalRequest:
        """Refuse the request; the same rules about who may decide apply as for `approve`."""
        return self._decide(request_id, approver, approver_groups, reason, "denied")

    @_reports_expiry
    def justify(self, request_id: str, requester: Principal, text: str) -> ApprovalRequest:
        """The requester's reason for a pending request, once: approvers decide on what they read,
        so it cannot change under them. PermissionError for anyone but the requester;
        ApprovalStateError when it is not pending or already justified; ValueError for an
        empty or overlong text; KeyError for an unknown id."""
        requester = _principal(requester, "requester")
        text = " ".join(str(text).split())
        if not text:
            raise ValueError("the reason is empty: say why this statement should run (a ticket, a sentence)")
        if len(text) > MAX_JUSTIFICATION_CHARS:
            raise ValueError(f"the reason has {len(text)} characters; at most {MAX_JUSTIFICATION_CHARS}")
        with self._lock:
            request = self._get(request_id)
            if request.requester != requester:
                raise PermissionError(f"{requester.sub} cannot justify request {request.id}: only its requester can")
            request = self._expire(request, self._clock())
            if request.status != "pending":
                raise ApprovalStateError(f"request {request.id} is {request.status}, not pending")
            if request.justification:
                raise ApprovalStateError(f"request {request.id} already has its reason; it cannot change once approvers may have read it")
            justified = self._put(replace(request, justification=text, justified_at=self._clock()))
        return justified

    def approvers_for(self, connection: str) -> frozenset[str]:
        """The groups whose members decide `connection`'s requests."""
        return self.connection_approvers.get(connection, self.approver_groups)

    def may_see(self, request: ApprovalRequest, viewer: Principal, groups: Iterable[str]) -> bool:
        """Requesters see their own requests; approvers those of the connections they decide."""
        return request.requester == viewer or not self.approvers_for(request.connection).isdisjoint(groups)

    def _decide(
        self,
        request_id: str,
        approver: Principal,
        approver_groups: Iterable[str],
        reason: str,
        status: Status,
        sha256: str | None = None,
    ) -> ApprovalRequest:
        verb = "approve" if status == "approved" else "deny"
        approver = _principal(approver, "approver")
        approver_sub = approver.sub
        with self._lock:
            now = self._clock()
            request = self._get(request_id)
            if approver == request.requester:
                raise PermissionError(
                    f"{approver_sub} cannot {verb} request {request.id}: it is their own; "
                    "another approver must decide"
                )
            approvers = self.approvers_for(request.connection)
            if approvers.isdisjoint(approver_groups):
                if not approvers:
                    raise PermissionError(
                        f"cannot {verb} request {request.id}: no approver groups are configured"
                    )
                raise PermissionError(
                    f"{approver_sub} cannot {verb} request {request.id}: "
                    f"approvers must be in one of the groups {', '.join(sorted(approvers))}"
                )
            request = self._expire(request, now)
            if request.status != "pending":
                raise ApprovalStateError(f"request {request.id} is {request.status}, not pending")
            if status == "approved" and request.reason_required and not request.justification:
                raise ApprovalStateError(
                    f"request {request.id} waits for its requester's reason: {request.sub} runs "
                    f"`hoop approvals justify {request.id} \"why\"` first (it may still be denied)"
                )
            if status == "approved" and request.truncated and sha256 is None:
                raise ApprovalStateError(
                    f"request {request.id} is for a statement of {request.statement_bytes} bytes, of which "
                    f"only the first {len(request.statement.encode('utf-8', 'surrogatepass'))} are kept: "
                    "read the whole text where its requester keeps it, then approve with the SHA-256 of "
                    f"that text (--sha256); this one's is {request.statement_sha256}"
                )
            if sha256 is not None and sha256.strip().lower() != request.statement_sha256:
                raise ApprovalStateError(
                    f"request {request.id} is for the statement with SHA-256 {request.statement_sha256}, "
                    f"not {sha256.strip()}; nothing was approved"
                )
            decided = self._put(
                replace(
                    request,
                    status=status,
                    decided_by=approver_sub,
                    decided_by_issuer=approver.issuer,
                    decided_at=now,
                    reason=reason,
                    grant_expires_at=now + self.grant_window if status == "approved" else None,
                ),
            )
        self._call(self.on_decision, decided)
        return decided

    # ---- reading ---------------------------------------------------------------------------

    def _get(self, request_id: str) -> ApprovalRequest:
        request = self._requests.get(str(request_id).strip().lower())
        if request is None:
            raise KeyError(f"no approval request {request_id!r}")
        return request

    @_reports_expiry
    def get(self, request_id: str) -> ApprovalRequest:
        """The request as it stands now; KeyError for an unknown id."""
        with self._lock:
            request = self._expire(self._get(request_id), self._clock())
        return request

    @_reports_expiry
    def list(self, status: str | None = None) -> list[ApprovalRequest]:
        """Requests (all, or those with `status`), oldest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: expected one of {', '.join(STATUSES)}")
        with self._lock:
            self._sweep(self._clock())
            found = [r for r in self._requests.values() if status is None or r.status == status]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    def page(
        self,
        status: str | None = None,
        *,
        viewer: tuple[Principal, Iterable[str]] | None = None,
        limit: int = DEFAULT_PAGE,
        after: str | None = None,
    ) -> tuple[list[ApprovalRequest], str | None]:
        """Up to `limit` requests (of `status`, that `viewer` = (principal, groups) may see, see
        `may_see`; all without a viewer), oldest first, starting after the cursor `after`; and
        the cursor of the next page, or None when this is the last."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
        start = _parse_cursor(after) if after else None
        if viewer is not None:
            who, groups = _principal(viewer[0], "viewer"), frozenset(viewer[1])
        found = [
            r
            for r in self.list(status)
            if (viewer is None or self.may_see(r, who, groups)) and (start is None or (r.created_at, r.id) > start)
        ]
        rows = found[:limit]
        return rows, _cursor(rows[-1]) if len(found) > limit else None
