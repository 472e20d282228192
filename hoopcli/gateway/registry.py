"""Registered connections and who may use them. The gateway only ever dials these targets.

Who: `subjects` are principals (issuer, sub), written in gateway.toml as a bare sub of the
first issuer or `"<issuer URL>|<sub>"` (see identity.parse_principal); `groups` are matched
against the groups the identity's issuer granted. Approving for a connection
(`approver_groups`) is a separate right: it never lets anyone open the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import Iterable

from hoopcli.gateway.identity import Identity, Principal, parse_principal

PROTOCOLS = ("postgres", "mysql", "tcp")
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}


@dataclass(frozen=True)
class Connection:
    name: str
    protocol: str
    host: str
    port: int
    subjects: tuple[Principal, ...] = ()
    groups: tuple[str, ...] = ()
    # Who may approve its held statements; None: the gateway's [gateway.approvals] groups.
    approver_groups: tuple[str, ...] | None = None
    description: str = ""
    database: str = ""
    # What the client needs to get credentials (broker kind, role, ...): never a secret.
    credentials: dict = field(default_factory=dict)
    # The statement policy table or "default" (see gateway/policy/); None: record only.
    policy: dict | str | None = None
    # False: bytes pass untouched (the tcp engine); the trail keeps connect/session_end only.
    record: bool = True
    # With a `database`: sessions may use only that one (start-up packet, handshake, USE,
    # COM_INIT_DB, COM_CHANGE_USER). False makes `database` a default the client may change.
    pin_database: bool = True

    @property
    def pinned_database(self) -> str | None:
        return self.database if self.database and self.pin_database else None

    def allows(self, identity: Identity) -> bool:
        return identity.principal in self.subjects or not set(self.groups).isdisjoint(identity.groups)

    def public(self) -> dict:
        """What `GET /api/connections` shows a caller who may use it (the target stays private)."""
        return {
            "name": self.name,
            "protocol": self.protocol,
            "description": self.description,
            "database": self.database,
            "credentials": self.credentials or {"broker": "none"},
            "gated": bool(self.policy),
            "database_pinned": self.pinned_database is not None,
        }


class Registry:
    def __init__(self, connections: dict[str, Connection]):
        self.connections = connections

    def get(self, name: str) -> Connection | None:
        return self.connections.get(name)

    def visible_to(self, identity: Identity) -> list[Connection]:
        return [c for c in self.connections.values() if c.allows(identity)]

    @classmethod
    def from_config(cls, table: dict, issuers: Iterable[str] = ()) -> "Registry":
        """`issuers`: the configured issuer URLs, first the human IdP (bare subjects are its)."""
        issuers = tuple(issuers)
        return cls({name: connection_from_config(name, entry, issuers) for name, entry in (table or {}).items()})


def connection_from_config(name: str, entry: dict, issuers: Iterable[str] = ()) -> Connection:
    def fail(msg: str):
        raise ValueError(f"connections.{name}: {msg}")

    if not isinstance(entry, dict):
        fail("must be a table")
    protocol = entry.get("protocol")
    if protocol is None:
        fail(f"protocol is required: one of {', '.join(PROTOCOLS)}")
    if protocol not in PROTOCOLS:
        fail(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    target = entry.get("target")
    if not target or not isinstance(target, str):
        fail("target = \"host:port\" is required")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        fail(f"target must be host:port, not {target!r}")
    subjects, groups = entry.get("subjects", []), entry.get("groups", [])
    for key, value in (("subjects", subjects), ("groups", groups)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            fail(f"{key} must be a list of strings, e.g. [\"dba\"]")
    if not subjects and not groups:
        fail("name at least one of subjects = [...] or groups = [...]: nobody may use it otherwise")
    principals = []
    for subject in subjects:
        try:
            principals.append(parse_principal(subject, issuers))
        except ValueError as exc:
            fail(f"subjects: {exc}")
    approver_groups = entry.get("approver_groups")
    if approver_groups is not None and (
        not isinstance(approver_groups, list) or not all(isinstance(v, str) for v in approver_groups)
    ):
        fail("approver_groups must be a list of strings, e.g. [\"dba-leads\"]")
    policy = entry.get("policy")
    if policy and protocol == "tcp":
        fail("a policy needs a database protocol (postgres or mysql): tcp connections carry bytes the gateway does not read")
    record = entry.get("record", True)
    if not isinstance(record, bool):
        fail("record must be true or false")
    pin_database = entry.get("pin_database", True)
    if not isinstance(pin_database, bool):
        fail("pin_database must be true or false")
    if policy and not record:
        fail("record = false cannot be combined with a policy: the policy judges the statements it would not see")
    return Connection(
        name=name,
        protocol=protocol,
        host=host.strip("[]"),
        port=int(port),
        subjects=tuple(principals),
        groups=tuple(groups),
        approver_groups=None if approver_groups is None else tuple(approver_groups),
        description=entry.get("description", ""),
        database=entry.get("database", ""),
        credentials=dict(entry.get("credentials", {})),
        policy=policy,
        record=record,
        pin_database=pin_database,
    )
