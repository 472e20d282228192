"""The part of `hoop gateway check` that reads the config as the gateway does: it loads it with
settings.settings_from_dict and the gateway's Policy objects, then asks who can reach, hold and
approve what (access_matrix's rules for which issuer grants a group: the same code)."""

from __future__ import annotations

from hoopcli.gateway.access_matrix import granting_issuers, policy_of
from hoopcli.gateway.settings import GatewaySettings, settings_from_dict

__all__ = ["check_settings"]


def check_settings(checker, raw: dict) -> None:
    """Add to `checker` (config_check._Checker) what the loaded settings reveal."""
    try:
        settings = settings_from_dict(raw)
    except ValueError as exc:
        if "must be an https:// URL" not in str(exc):  # plain_http has named it already
            from hoopcli.gateway.config_check import _where

            checker.add("error", "invalid", _where(str(exc)), f"the gateway would refuse to start: {exc}",
                        "fix this field; README: Admin guide, gateway.toml")
        return
    _store(checker, settings)
    _issuer_grants(checker, settings)
    for conn in settings.registry.connections.values():
        where = f"connections.{conn.name}"
        try:
            policy = policy_of(conn, settings)
        except ValueError as exc:
            checker.add("error", "invalid", f"{where}.policy", f"the gateway would refuse to start: {exc}",
                        "README: Policies lists the categories, actions and rule fields")
            continue
        _reachable(checker, settings, conn, where)
        if policy is None:
            _no_policy(checker, conn, where)
        else:
            _approvers(checker, settings, conn, where)


def _store(checker, settings: GatewaySettings) -> None:
    if "://" not in settings.audit_store:
        checker.add("warning", "sqlite-store", "gateway.audit_store",
                    f"the audit store is SQLite ({settings.audit_store}): one gateway only, and its file owner can "
                    "cut the trail's tail unseen without a published head",
                    "for a team, use a PostgreSQL store set up by `hoop gateway init` (README: Audit store)")


def _issuer_grants(checker, settings: GatewaySettings) -> None:
    machine = settings.issuers[1:]
    for group in settings.auditor_groups:
        granted_by = [i.issuer for i in machine if i.grants is not None and group in i.grants]
        if granted_by:
            n = [i.issuer for i in settings.issuers].index(granted_by[0])
            checker.add("warning", "machine-auditor", f"issuers[{n}].grants",
                        f"{granted_by[0]} (not the first issuer: a machine identity) grants auditor group {group!r}",
                        "a CI token could then read the whole audit trail; grant it only to people")


def _reachable(checker, settings: GatewaySettings, conn, where: str) -> None:
    if conn.subjects or any(granting_issuers(g, settings.issuers) for g in conn.groups):
        return
    checker.add("error", "unreachable", f"{where}.groups",
                f"nobody can open {conn.name}: no subjects, and no issuer grants any of {', '.join(conn.groups)}",
                "add the group to an issuer's grants = [...], or name subjects = [...]")


def _no_policy(checker, conn, where: str) -> None:
    if conn.protocol == "tcp":
        return  # nothing to judge: the gateway does not read tcp bytes
    if conn.record:
        what, hint = "no policy: every statement runs (record only)", 'add policy = "default" to hold DROP, TRUNCATE, DELETE without WHERE … for approval'
    else:
        what, hint = "record = false: statements are neither judged nor recorded", "remove record = false unless this database is truly harmless"
    checker.add("warning", "no-policy", where, f"{conn.name}: {what}", hint)


def _approvers(checker, settings: GatewaySettings, conn, where: str) -> None:
    own = conn.approver_groups is not None
    groups = conn.approver_groups if own else settings.approver_groups
    path = f"{where}.approver_groups" if own else "gateway.approvals.approver_groups"
    first, machine = settings.issuers[0], settings.issuers[1:]
    if not any(granting_issuers(g, settings.issuers) for g in groups):
        checker.add("error", "no-approver", path,
                    f"nobody can approve {conn.name}'s held statements: no issuer grants "
                    f"{', '.join(groups) or '(no approver groups)'}; they wait until they expire",
                    f"add the group to {first.issuer}'s grants = [...] (the human IdP)")
    for group in groups:
        for issuer in machine:
            if issuer.grants is not None and group in issuer.grants:
                n = settings.issuers.index(issuer)
                checker.add("error", "machine-approver", f"issuers[{n}].grants",
                            f"{issuer.issuer} (not the first issuer: a machine identity) grants {group!r}, "
                            f"which approves {conn.name}'s held statements",
                            "a CI token could then approve held statements; grant approver groups only through the human IdP")
