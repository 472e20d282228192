"""The Policy of one registered connection, built the one way the gateway builds it (app.py),
so `hoop policy explain|test` and `hoop access matrix` judge with the same rules as live traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from hoopcli.gateway.identity import parse_principal

from .rules import Policy

if TYPE_CHECKING:  # pragma: no cover
    from hoopcli.gateway.registry import Connection

__all__ = ["connection_policy"]


def connection_policy(conn: Connection, issuers: Iterable[str]) -> Policy | None:
    """`conn`'s Policy, its rules' `subjects` read as the gateway reads them (a bare subject is
    the first issuer's); None for a record-only connection. ValueError names the bad field."""
    if not conn.policy:
        return None
    issuers = list(issuers)
    try:
        return Policy.from_config(conn.policy, subject=lambda s: parse_principal(s, issuers))
    except ValueError as exc:
        raise ValueError(f"connections.{conn.name}.policy: {exc}") from None
