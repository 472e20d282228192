"""Policy as code: why a statement gets its decision, and policy test files an admin runs in CI.

Both read the same `Policy` objects and classifier the gateway uses on live traffic
(`Policy.decide`, `Policy._category_action`): there is no second classifier to drift.

A policy test file (TOML):

    config = "gateway.toml"          # optional: the gateway config the cases refer to (relative)

    [[case]]
    name = "agents cannot drop tables unseen"   # optional
    sql = "DROP TABLE customers"
    connection = "app-db"            # a connection of `config`; or `dialect` + `policy` below
    as = "bot@example.com"           # the subject (optional)
    groups = ["agents"]              # (optional)
    expect = "require_approval"      # allow | require_approval | deny

    [[case]]
    sql = "SET NAMES sjis"
    dialect = "mysql"
    policy = "default"               # "default" or an inline policy table
    expect = "deny"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .categories import ACTIONS
from .classifier import _classify
from .connection import connection_policy
from .rules import MAX_JUDGED_CHARS, Policy

__all__ = ["CaseResult", "Explanation", "PolicySource", "explain", "run_policy_tests"]

_DIALECT_OF = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


@dataclass
class Explanation:
    statement: str
    dialect: str
    subject: str
    groups: list[str]
    action: str  # what the gateway does: allow / require_approval / deny
    reason: str  # the deciding rule, e.g. "rule 0: drop"
    parts: list[dict] = field(default_factory=list)  # each part: text, categories, note, per-category action

    def to_dict(self) -> dict:
        return asdict(self)


def explain(policy: Policy, sql: str, dialect: str, identity: tuple[str, Iterable[str]]) -> Explanation:
    """The decision `policy.decide` gives, with the categories of every part and the action
    and rule each category gets."""
    sub, groups = identity[0], frozenset(identity[1])
    decision = policy.decide(sql, (sub, groups), dialect)
    parts = []
    if len(sql) <= MAX_JUDGED_CHARS:
        for part in _classify(sql, dialect):
            verdicts = {}
            for category in part.categories:
                action, index = policy._category_action(category, sub, groups)
                verdicts[category] = {"action": action, "rule": index}
            parts.append({"text": part.text, "categories": list(part.categories), "note": part.note, "verdicts": verdicts})
    return Explanation(sql, dialect, sub, sorted(groups), decision.action, decision.reason, parts)


# ---- where a policy comes from ---------------------------------------------------------------


@dataclass
class PolicySource:
    """A connection's policy and dialect, from a gateway config file or given inline, and how a
    subject given on the command line reads there (as gateway.toml's `subjects` read)."""

    policy: Policy
    dialect: str
    connection: str = ""
    subject: Any = str  # text -> the subject Policy.decide compares rules' subjects with


def source_from_config(config_path: str | Path, connection: str) -> PolicySource:
    from hoopcli.gateway.identity import parse_principal
    from hoopcli.gateway.settings import load_settings

    settings = load_settings(config_path)
    conn = settings.registry.get(connection)
    if conn is None:
        names = ", ".join(sorted(settings.registry.connections)) or "none"
        raise ValueError(f"{config_path}: no connection {connection!r} (connections: {names})")
    if conn.protocol not in _DIALECT_OF:
        raise ValueError(f"connection {connection!r} is {conn.protocol}: only postgres and mysql statements have a policy")
    issuers = [i.issuer for i in settings.issuers]
    policy = connection_policy(conn, issuers) or Policy((), default="allow")  # record only: all pass
    return PolicySource(policy, _DIALECT_OF[conn.protocol], connection, lambda s: parse_principal(s, issuers))


def source_inline(policy: Any, dialect: str) -> PolicySource:
    if dialect not in _DIALECT_OF:
        raise ValueError(f"dialect must be one of postgres, mysql (or postgresql, mariadb), not {dialect!r}")
    return PolicySource(Policy.from_config(policy if policy is not None else "default"), _DIALECT_OF[dialect])


# ---- policy test files -------------------------------------------------------------------------

_CASE_KEYS = {"name", "sql", "connection", "dialect", "policy", "as", "groups", "expect"}


@dataclass
class CaseResult:
    file: str
    index: int
    name: str
    statement: str
    expected: str
    actual: str
    reason: str
    connection: str

    @property
    def ok(self) -> bool:
        return self.expected == self.actual

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def run_policy_tests(path: str | Path, config: str | Path | None = None) -> list[CaseResult]:
    """Every case of one policy test file; ValueError names the file and case of a mistake."""
    from hoopcli.gateway.settings import read_toml

    path = Path(path)
    raw = read_toml(path)
    cases = raw.get("case")
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{path}: no [[case]] tables (a test file with no cases proves nothing)")
    config_path = Path(config) if config else (path.parent / raw["config"] if raw.get("config") else None)
    sources: dict[str, PolicySource] = {}
    results = []
    for index, case in enumerate(cases):
        where = f"{path}: case {index + 1}"
        if not isinstance(case, dict):
            raise ValueError(f"{where}: expected a table")
        unknown = sorted(set(case) - _CASE_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(_CASE_KEYS))}")
        sql, expect = case.get("sql"), case.get("expect")
        if not isinstance(sql, str) or not sql.strip():
            raise ValueError(f"{where}: sql is required")
        if expect not in ACTIONS:
            raise ValueError(f"{where}: expect must be one of {', '.join(ACTIONS)}, not {expect!r}")
        source = _case_source(case, config_path, sources, where)
        groups = case.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError(f"{where}: groups must be a list of strings")
        try:
            who = source.subject(str(case.get("as", "someone")))
        except ValueError as exc:
            raise ValueError(f"{where}: as: {exc}") from None
        decision = source.policy.decide(sql, (who, frozenset(groups)), source.dialect)
        results.append(CaseResult(str(path), index + 1, str(case.get("name", "")), sql, expect, decision.action,
                                  decision.reason, source.connection or source.dialect))
    return results


def _case_source(case: dict, config_path: Path | None, cache: dict, where: str) -> PolicySource:
    if case.get("connection"):
        if config_path is None:
            raise ValueError(f"{where}: names connection {case['connection']!r} but the file has no config = \"…\" (or pass --config)")
        key = f"conn:{case['connection']}"
        if key not in cache:
            cache[key] = source_from_config(config_path, case["connection"])
        return cache[key]
    if not case.get("dialect"):
        raise ValueError(f"{where}: give connection = \"…\" or dialect = \"postgres\" | \"mysql\"")
    try:
        return source_inline(case.get("policy", "default"), case["dialect"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
