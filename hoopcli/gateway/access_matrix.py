"""`hoop access matrix`: who can open each connection, what its policy holds or denies, who
approves, and how it is recorded — built from the objects the gateway itself loads
(settings.load_settings: Registry, TrustedIssuer, Policy), never from a copy of their logic.

Two views of one answer: `matrix` (nested, per connection) for people and `rows` (flat
tuples) for diffs, so `--against OLD` shows exactly which rows a change adds or removes.

Per category, the action shown is the one `Policy._category_action` gives (the call that judges
live traffic) for someone in no group, and again for a member of each group (or each subject)
a rule names, where that differs: a member of several groups gets the first rule that applies
to any of them, as on live traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from hoopcli.gateway.config_check import SECRET_KEY, url_has_password
from hoopcli.gateway.identity import Principal, TrustedIssuer
from hoopcli.gateway.policy.connection import connection_policy
from hoopcli.gateway.policy import CATEGORIES, Policy
from hoopcli.gateway.registry import Connection
from hoopcli.gateway.settings import GatewaySettings

__all__ = ["MatrixRow", "diff_rows", "granting_issuers", "matrix", "matrix_rows", "policy_of"]

NOBODY = "(no one)"
# Category ordering for people: the riskiest actions first, then by name.
_ACTION_ORDER = ("deny", "require_approval", "allow")


@dataclass(frozen=True, order=True)
class MatrixRow:
    """One fact of the matrix: (connection, aspect, who or what, value)."""

    connection: str
    aspect: str  # access | approve | policy | record | database | broker
    subject: str
    value: str

    def to_dict(self) -> dict:
        return {"connection": self.connection, "aspect": self.aspect, "subject": self.subject, "value": self.value}

    def __str__(self) -> str:
        return f"{self.connection}  {self.aspect:<8} {self.subject}  {self.value}".rstrip()


def granting_issuers(group: str, issuers: Iterable[TrustedIssuer]) -> list[str]:
    """The issuers whose tokens can carry `group` (identity.granted_groups' rule)."""
    return [i.issuer for i in issuers if i.grants is None or group in i.grants]


def policy_of(conn: Connection, settings: GatewaySettings) -> Policy | None:
    """The Policy the gateway builds for `conn` (app.Gateway._policies), or None: record only."""
    return connection_policy(conn, [i.issuer for i in settings.issuers])


def _who_rules_name(policy: Policy) -> list[tuple[str, object, frozenset[str]]]:
    """(label, subject, groups) for each group and subject any rule singles out."""
    groups = sorted({g for rule in policy.rules for g in rule.groups})
    subjects = sorted({s for rule in policy.rules for s in rule.subjects}, key=str)
    return [(f"group {g}", None, frozenset({g})) for g in groups] + [(f"subject {s}", s, frozenset()) for s in subjects]


def _policy_view(policy: Policy | None, conn: Connection) -> dict:
    if policy is None:
        note = "record only: every statement runs" if conn.record else "not read: bytes relayed, no statement recorded"
        return {"kind": "none", "note": note, "everyone": {}, "exceptions": []}
    everyone: dict[str, list[str]] = {a: [] for a in _ACTION_ORDER}
    exceptions = []
    singled_out = _who_rules_name(policy)
    for category in sorted(CATEGORIES):
        base, index = policy._category_action(category, Principal("", ""), frozenset())
        everyone[base].append(category)
        for label, subject, groups in singled_out:
            action, rule = policy._category_action(category, subject, groups)
            if action != base:
                exceptions.append({"who": label, "category": category, "action": action, "rule": rule})
    kind = "default" if conn.policy == "default" else "table"
    return {"kind": kind, "default": policy.default, "unparseable": policy.unparseable, "everyone": everyone,
            "exceptions": exceptions}


def _broker(conn: Connection) -> dict:
    """The credential hints without anything that looks secret (gateway check flags those)."""
    creds = conn.credentials or {"broker": "none"}
    return {k: ("(inline secret)" if SECRET_KEY.search(k) or (isinstance(v, str) and url_has_password(v)) else v)
            for k, v in sorted(creds.items())}


def _connection_view(conn: Connection, settings: GatewaySettings) -> dict:
    issuers = settings.issuers
    policy = _policy_view(policy_of(conn, settings), conn)
    approvers = conn.approver_groups if conn.approver_groups is not None else settings.approver_groups
    # Approvers matter only where someone's statement can be held.
    holds = bool(policy["everyone"].get("require_approval")) or any(
        x["action"] == "require_approval" for x in policy["exceptions"])
    return {
        "name": conn.name,
        "protocol": conn.protocol,
        "description": conn.description,
        "groups": {g: granting_issuers(g, issuers) for g in conn.groups},
        "subjects": [{"sub": p.sub, "issuer": p.issuer} for p in conn.subjects],
        "policy": policy,
        "approvers": {
            "source": "connection" if conn.approver_groups is not None else "gateway",
            "groups": {g: granting_issuers(g, issuers) for g in approvers},
            "needed": holds,
        },
        "record": conn.record,
        "database": conn.database,
        "database_pinned": conn.pinned_database is not None,
        "credentials": _broker(conn),
    }


def matrix(settings: GatewaySettings) -> dict:
    """The whole "who can do what where", per connection, in name order."""
    return {
        "issuers": [{"issuer": i.issuer, "grants": "all claimed groups" if i.grants is None else sorted(i.grants)}
                    for i in settings.issuers],
        "connections": [_connection_view(c, settings) for _, c in sorted(settings.registry.connections.items())],
    }


def _via(issuers: list[str]) -> str:
    return "via " + ", ".join(issuers) if issuers else "granted by no issuer"


def _rows_of(view: dict) -> Iterable[MatrixRow]:
    name = view["name"]
    for group, issuers in view["groups"].items():
        yield MatrixRow(name, "access", f"group {group}", _via(issuers))
    for who in view["subjects"]:
        yield MatrixRow(name, "access", f"subject {who['sub']}", f"of {who['issuer']}")
    policy = view["policy"]
    if policy["kind"] == "none":
        yield MatrixRow(name, "policy", "everyone", policy["note"])
    else:
        for action in _ACTION_ORDER:
            for category in policy["everyone"][action]:
                yield MatrixRow(name, "policy", "everyone", f"{category}: {action}")
        for x in policy["exceptions"]:
            yield MatrixRow(name, "policy", x["who"], f"{x['category']}: {x['action']}")
    approvers = view["approvers"]
    for group, issuers in approvers["groups"].items():
        if approvers["needed"]:
            yield MatrixRow(name, "approve", f"group {group}", f"{_via(issuers)} ({approvers['source']} approvers)")
    yield MatrixRow(name, "record", "", "on" if view["record"] else "off")
    if view["database"]:
        yield MatrixRow(name, "database", view["database"], "pinned" if view["database_pinned"] else "default only")
    creds = view["credentials"]
    yield MatrixRow(name, "broker", str(creds.get("broker", "none")),
                    " ".join(f"{k}={v}" for k, v in creds.items() if k != "broker"))


def matrix_rows(report: dict) -> list[MatrixRow]:
    return [row for view in report["connections"] for row in _rows_of(view)]


def diff_rows(old: list[MatrixRow], new: list[MatrixRow]) -> dict[str, list[MatrixRow]]:
    """What the new config grants or takes away: rows only it has, rows only the old had."""
    before, after = set(old), set(new)
    return {"added": sorted(after - before), "removed": sorted(before - after)}


def markdown(rows: list[MatrixRow]) -> str:
    lines = ["| connection | aspect | who / what | value |", "|---|---|---|---|"]
    lines += [f"| {r.connection} | {r.aspect} | {r.subject} | {r.value} |".replace("\n", " ") for r in rows]
    return "\n".join(lines) + "\n"
