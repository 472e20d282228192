"""The gateway's small JSON API, on the same TLS port as the tunnel.

GET  /healthz                              no auth; liveness: 200 while the process serves
GET  /readyz                               no auth; readiness: 200 when the audit store takes
                                           records, 503 while it does not (sessions are refused)
GET  /api/connections                      connections the caller may use
GET  /api/connections/{name}               one of them (404 unknown, 403 not allowed)
GET  /api/audit?sub=&connection=&since=&kind=&limit=   auditors only
GET  /api/audit/verify                     auditors only
GET  /api/approvals?status=&limit=&cursor= your own requests, and those of the connections you
                                           approve for; a page of at most `limit` (50, up to
                                           500), oldest first, and `next`: the cursor of the
                                           next page or null
POST /api/approvals/{id}/approve|deny      the connection's approvers only, never the requester
                                           (same issuer and sub); the body may carry "sha256":
                                           approve only that exact statement
POST /api/policy/explain                   body {"connection", "sql", "as"?, "groups"?}: what the
                                           gateway's own policy for that connection would do and
                                           why (policy/explain.py); auditors for anyone, everyone
                                           else for themselves on connections they may use
POST /api/approvals/{id}/justify           the requester only, once, while pending: body
                                           {"reason": "..."}; approvers read it, and on a
                                           connection that requires a reason nobody approves
                                           before it

Every call but /healthz needs `Authorization: Bearer <token>`, verified like a CONNECT. A
refusal after the token was verified is recorded with who asked (sub, email, issuer).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

from hoopcli.gateway.app import public_request
from hoopcli.gateway.http import BadRequest, Request
from hoopcli.gateway.identity import Identity, TokenRejected


async def handle_api(gw, request: Request, body: bytes) -> tuple[int, object]:
    url = urlsplit(request.target)
    path, query = url.path.rstrip("/") or "/", {k: v[-1] for k, v in parse_qs(url.query).items()}
    if path in ("/healthz", "/readyz") and request.method == "GET":
        healthy = gw.audit_healthy()
        status = 503 if path == "/readyz" and not healthy else 200
        return status, {"ok": healthy, "audit": "ok" if healthy else "unavailable"}
    if not path.startswith("/api/"):
        raise BadRequest(404, f"no such endpoint {path}")
    identity = await _identity(gw, request)
    try:
        return await _answer(gw, identity, request, path, query, body)
    except BadRequest as exc:
        exc.who = {"sub": identity.sub, "email": identity.email, "issuer": identity.issuer}
        raise


async def _answer(gw, identity: Identity, request: Request, path: str, query: dict, body: bytes) -> tuple[int, object]:
    loop = asyncio.get_running_loop()
    if path == "/api/connections" and request.method == "GET":
        return 200, {"connections": [c.public() | {"port": c.port} for c in gw.registry.visible_to(identity)]}
    if path.startswith("/api/connections/") and request.method == "GET":
        conn = gw.registry.get(path.rsplit("/", 1)[1])
        if conn is None:
            raise BadRequest(404, f"no connection named {path.rsplit('/', 1)[1]}")
        if not conn.allows(identity):
            raise BadRequest(403, f"{identity.label} may not use {conn.name}")
        return 200, conn.public() | {"port": conn.port}
    if path == "/api/whoami" and request.method == "GET":
        return 200, identity.public()
    if path.startswith("/api/audit") and request.method == "GET":
        _require_group(identity, gw.settings.auditor_groups, "read the audit trail")
        if path == "/api/audit/verify":
            report = await loop.run_in_executor(None, gw.store.verify)
            return 200, {"ok": report.ok, "checked": report.checked, "problems": list(report.problems)}
        if path == "/api/audit":
            records = await loop.run_in_executor(None, lambda: _query(gw, query))
            # Truncated only at the gateway's own cap: a caller's smaller --limit got what it asked for.
            return 200, {"records": records, "truncated": len(records) >= MAX_AUDIT_RECORDS}
    if path == "/api/policy/explain" and request.method == "POST":
        return 200, await loop.run_in_executor(None, lambda: _explain(gw, identity, body))
    if path == "/api/approvals" and request.method == "GET":
        return 200, _approvals_page(gw, identity, query)
    if path.startswith("/api/approvals/") and path.endswith("/justify") and request.method == "POST":
        return _justify(gw, identity, path, body)
    if path.startswith("/api/approvals/") and request.method == "POST":
        return _decide(gw, identity, path, body)
    raise BadRequest(404, f"no such endpoint {request.method} {path}")


async def _identity(gw, request: Request) -> Identity:
    token = request.bearer("authorization")
    if not token:
        raise BadRequest(401, "missing bearer token in Authorization")
    try:
        return await asyncio.get_running_loop().run_in_executor(None, gw.verifier.verify, token)
    except TokenRejected as exc:
        raise BadRequest(401, str(exc)) from None


def _require_group(identity: Identity, groups, what: str) -> None:
    if not set(identity.groups) & set(groups):
        raise BadRequest(403, f"{identity.label} may not {what} (needs one of the groups: {', '.join(groups)})")


MAX_AUDIT_RECORDS = 10_000  # per API call; the whole trail is read on the gateway host (--store)


def _limit(query: dict) -> int:
    value = query.get("limit") or str(MAX_AUDIT_RECORDS)
    if not value.isdigit() or int(value) < 1:
        raise BadRequest(400, "limit must be a positive whole number")
    return min(int(value), MAX_AUDIT_RECORDS)


def _query(gw, query: dict) -> list[dict]:
    try:
        return gw.store.query(
            sub=query.get("sub") or None,
            connection=query.get("connection") or None,
            since=query.get("since") or None,
            kind=query.get("kind") or None,
            limit=_limit(query),
        )
    except ValueError as exc:
        raise BadRequest(400, str(exc)) from None


def _approvals_page(gw, identity: Identity, query: dict) -> dict:
    """One bounded page: `limit` requests of at most PREFIX_BYTES of statement each."""
    from hoopcli.gateway.approvals import DEFAULT_PAGE, MAX_PAGE

    limit = query.get("limit") or str(DEFAULT_PAGE)
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_PAGE:
        raise BadRequest(400, f"limit must be a whole number from 1 to {MAX_PAGE}")
    try:
        rows, cursor = gw.approvals.page(
            query.get("status") or None,
            viewer=(identity.principal, identity.groups),
            limit=int(limit),
            after=query.get("cursor") or None,
        )
    except ValueError as exc:
        raise BadRequest(400, str(exc)) from None
    return {"approvals": [public_request(r) for r in rows], "next": cursor}


def _explain(gw, identity: Identity, body: bytes) -> dict:
    """The live policy of a connection, explained (in a worker thread: it parses)."""
    from hoopcli.gateway.identity import parse_principal
    from hoopcli.gateway.policy import Policy
    from hoopcli.gateway.policy.explain import explain

    try:
        ask = json.loads(body or b"{}")
    except ValueError:
        ask = None
    if not isinstance(ask, dict) or not isinstance(ask.get("connection"), str) or not isinstance(ask.get("sql"), str):
        raise BadRequest(400, 'body must be JSON: {"connection": "name", "sql": "…", "as": "sub"?, "groups": [..]?}')
    conn = gw.registry.get(ask["connection"])
    auditor = bool(set(identity.groups) & set(gw.settings.auditor_groups))
    if conn is None or not (auditor or conn.allows(identity)):
        raise BadRequest(404, f"no connection named {ask['connection']} that {identity.label} may use or audit")
    if conn.protocol not in ("postgres", "mysql"):
        raise BadRequest(400, f"connection {conn.name} is {conn.protocol}: only postgres and mysql statements have a policy")
    if auditor and ("as" in ask or "groups" in ask):  # an auditor may ask for anyone
        groups = ask.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise BadRequest(400, "groups must be a list of strings")
        try:
            who = parse_principal(str(ask.get("as", "someone")), [i.issuer for i in gw.settings.issuers])
        except ValueError as exc:
            raise BadRequest(400, f"as: {exc}") from None
    else:  # everyone else: for themselves
        who, groups = identity.principal, list(identity.groups)
    policy = gw.policies.get(conn.name) or Policy((), default="allow")  # record only: everything passes
    dialect = "mysql" if conn.protocol == "mysql" else "postgres"
    result = explain(policy, ask["sql"], dialect, (who, groups)).to_dict()
    result.update(connection=conn.name, subject=f"{getattr(who, 'issuer', '')}|{getattr(who, 'sub', who)}")
    return result


def _justify(gw, identity: Identity, path: str, body: bytes):
    parts = path.split("/")
    if len(parts) != 5:
        raise BadRequest(404, "use POST /api/approvals/{id}/justify")
    try:
        reason = json.loads(body or b"{}").get("reason")
    except (ValueError, AttributeError):
        reason = None
    if not isinstance(reason, str):
        raise BadRequest(400, "body must be JSON: {\"reason\": \"why this statement should run\"}")
    try:
        request = gw.approvals.justify(parts[3], identity.principal, reason)
    except KeyError:
        raise BadRequest(404, f"no approval request {parts[3]}") from None
    except PermissionError as exc:
        raise BadRequest(403, str(exc)) from None
    except ValueError as exc:  # ApprovalStateError too: not pending, already justified
        raise BadRequest(409 if type(exc) is not ValueError else 400, str(exc)) from None
    return 200, public_request(request)


def _decide(gw, identity: Identity, path: str, body: bytes):
    parts = path.split("/")
    if len(parts) != 5 or parts[4] not in ("approve", "deny"):
        raise BadRequest(404, "use POST /api/approvals/{id}/approve or /deny")
    request_id, decision = parts[3], parts[4]
    try:
        fields = json.loads(body or b"{}")
        reason = str(fields.get("reason", ""))
        sha256 = fields.get("sha256")
    except (ValueError, AttributeError):
        raise BadRequest(400, "body must be JSON: {\"reason\": \"...\", \"sha256\": \"...\"}") from None
    if sha256 is not None and (decision != "approve" or not isinstance(sha256, str)):
        raise BadRequest(400, "sha256 is a hex string, and only for approve")
    try:
        if decision == "approve":
            request = gw.approvals.approve(request_id, identity.principal, set(identity.groups), reason, sha256=sha256)
        else:
            request = gw.approvals.deny(request_id, identity.principal, set(identity.groups), reason)
    except KeyError:
        raise BadRequest(404, f"no approval request {request_id}") from None
    except PermissionError as exc:
        raise BadRequest(403, str(exc)) from None
    except ValueError as exc:
        raise BadRequest(409, str(exc)) from None
    return 200, public_request(request)
