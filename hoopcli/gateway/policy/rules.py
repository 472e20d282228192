"""Rules and the per-connection `Policy` that turns a statement's categories into one action."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping

from .categories import ACTIONS, CACHE_MAX_SQL, CATEGORIES, Dialect, PolicyAction, StatementClass, _SEVERITY, _part
from .classifier import _decide_parts


@dataclass(frozen=True, slots=True)
class Rule:
    match: frozenset[str]
    action: PolicyAction
    groups: frozenset[str] = frozenset()
    # Who, as the gateway passes identities: (issuer, sub) principals; plain names in unit use.
    subjects: frozenset[Hashable] = frozenset()
    # A statement this rule holds may be approved only after its requester says why
    # (`hoop approvals justify`); approvers read the reason.
    require_reason: bool = False

    def applies_to(self, who: Hashable, groups: Iterable[str]) -> bool:
        """A rule without groups or subjects applies to everyone; otherwise to either list.
        `who` is compared whole: alice of one issuer is not alice of another."""
        if not self.groups and not self.subjects:
            return True
        return who in self.subjects or not self.groups.isdisjoint(groups)


MAX_JUDGED_CHARS = 256 * 1024  # ~0.1 s of pglast; larger statements are not parsed on the relay

# Categories no rule can allow: they would let the server read what follows differently from
# the gateway, so every later decision on the session would be worthless.
ALWAYS_DENIED = {
    "encoding": "encoding: this character set is not supported through the gateway (its multibyte characters "
    "can hide quotes); use UTF8 / utf8mb4",
    "sql_mode": "sql_mode: this mode changes how the server reads later statements (ANSI_QUOTES, "
    "PIPES_AS_CONCAT, NO_BACKSLASH_ESCAPES, IGNORE_SPACE, HIGH_NOT_PRECEDENCE, ANSI, ORACLE, …); keep the others",
}

_MEMO_SIZE = 1024  # decisions remembered per policy (per parts object and subject)

# Used for a connection configured with `policy = "default"`. Besides the DDL and privilege
# statements, `do` and `dynamic_sql` are held too: a DO block or a PREPARE from a variable can
# run any of the others out of sight.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        frozenset({"drop", "truncate", "alter", "grant", "revoke", "delete_without_where",
                   "update_without_where", "do", "dynamic_sql",
                   # SQL-level EXECUTE of something prepared earlier: what it runs cannot be
                   # seen here, and an approval for the PREPARE must not let it run twice.
                   "execute_prepared",
                   # Code the server runs later (a trigger fires on an ordinary INSERT), files
                   # on the database server, server administration and shared libraries.
                   "routine", "copy_file", "admin", "load_library",
                   # Switching off the server's own audit or safety (triggers, logs).
                   "safety_off"}),
        "require_approval",
    ),
    Rule(frozenset({"copy_program"}), "deny"),
)


@dataclass(frozen=True, slots=True)
class Decision:
    action: PolicyAction
    categories: tuple[str, ...]  # every category of every part, sorted
    rule_index: int | None  # the rule that set the action; None for a default
    reason: str  # e.g. "rule 0: drop", "default: select", "unparseable", "empty statement"
    require_reason: bool = False  # the deciding rule wants the requester's justification


_RULE_KEYS = {"match", "action", "groups", "subjects", "name", "description", "require_reason"}
_POLICY_KEYS = {"default", "unparseable", "rules"}


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    return value


def _str_list(value: Any, where: str, *, known: frozenset[str] | None = None) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings, got {value!r}")
    if known is not None:
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return frozenset(value)


def _subjects(value: Any, where: str, subject: Callable[[str], Hashable] | None) -> frozenset[Hashable]:
    names = _str_list(value, where)
    if subject is None:
        return names
    try:
        return frozenset(subject(name) for name in names)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _action(value: Any, where: str) -> PolicyAction:
    if value not in ACTIONS:
        raise ValueError(f"{where}: expected one of {', '.join(ACTIONS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Policy:
    """Rules for one connection.

    For every category of every statement part, the first rule (in order) that names the
    category and applies to the identity gives its action; a category no rule names gets
    `default`, except `unparseable`, which gets `unparseable`. The statement's decision is the
    riskiest of these (deny > require_approval > allow). So an allow-list (`default = "deny"`)
    cannot be slipped past by hiding a DELETE inside an allowed SELECT, and an earlier rule for
    a group can exempt it from a later, general one.

    `unparseable` defaults to "require_approval": fail closed on text the parser cannot read,
    yet recoverable, since an approver can let a statement through that the parser (or this
    parser's PostgreSQL/MySQL version) does not know.
    """

    rules: tuple[Rule, ...] = ()
    default: PolicyAction = "allow"
    unparseable: PolicyAction = "require_approval"

    def __post_init__(self) -> None:
        by_category: dict[str, list[tuple[int, Rule]]] = {}
        for index, rule in enumerate(self.rules):
            for category in rule.match:
                by_category.setdefault(category, []).append((index, rule))
        object.__setattr__(self, "_by_category", {k: tuple(v) for k, v in by_category.items()})
        # (id(parts), sub) -> (parts, groups, Decision) for parts served from a cache. The entry
        # holds the parts tuple itself, so its id cannot be reused while the entry exists.
        object.__setattr__(self, "_memo", {})

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | str | None,
        where: str = "policy",
        *,
        subject: Callable[[str], Hashable] | None = None,
    ) -> Policy:
        """Build from a gateway.toml table (or the string "default"); ValueError names the bad field.

        subject: turns a rule's `subjects` entry into what `decide` is given as the identity
        (the gateway: identity.parse_principal, so a bare name is the first issuer's)."""
        if config is None or config == "default":
            return cls(DEFAULT_RULES)
        if isinstance(config, str):
            raise ValueError(f'{where}: expected a table or "default", got {config!r}')
        if not isinstance(config, Mapping):
            raise ValueError(f"{where}: expected a table, got {type(config).__name__}")
        unknown = sorted(set(config) - _POLICY_KEYS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown field; expected one of {', '.join(sorted(_POLICY_KEYS))}")
        default = _action(config.get("default", "allow"), f"{where}.default")
        unparseable = _action(config.get("unparseable", "require_approval"), f"{where}.unparseable")
        raw_rules = config.get("rules", [])
        if raw_rules == "default":
            raw_rules = None
        elif not isinstance(raw_rules, (list, tuple)):
            raise ValueError(f'{where}.rules: expected a list of tables or "default", got {raw_rules!r}')
        rules: list[Rule] = []
        for i, raw in enumerate(raw_rules if raw_rules is not None else ()):
            at = f"{where}.rules[{i}]"
            if not isinstance(raw, Mapping):
                raise ValueError(f"{at}: expected a table, got {raw!r}")
            unknown = sorted(set(raw) - _RULE_KEYS)
            if unknown:
                raise ValueError(f"{at}.{unknown[0]}: unknown field; expected one of {', '.join(sorted(_RULE_KEYS))}")
            if "match" not in raw:
                raise ValueError(f"{at}.match: missing (a list of categories)")
            if "action" not in raw:
                raise ValueError(f"{at}.action: missing (one of {', '.join(ACTIONS)})")
            match = _str_list(raw["match"], f"{at}.match", known=CATEGORIES)
            if not match:
                raise ValueError(f"{at}.match: empty; name at least one category")
            rules.append(
                Rule(
                    match,
                    _action(raw["action"], f"{at}.action"),
                    _str_list(raw.get("groups", []), f"{at}.groups"),
                    _subjects(raw.get("subjects", []), f"{at}.subjects", subject),
                    _flag(raw.get("require_reason", False), f"{at}.require_reason"),
                )
            )
        return cls(DEFAULT_RULES if raw_rules is None else tuple(rules), default, unparseable)

    def _category_action(self, category: str, sub: str, groups: Iterable[str]) -> tuple[PolicyAction, int | None]:
        if category in ALWAYS_DENIED:
            return "deny", None
        for index, rule in self._by_category.get(category, ()):  # type: ignore[attr-defined]
            if rule.applies_to(sub, groups):
                return rule.action, index
        return (self.unparseable if category == "unparseable" else self.default), None

    def decide(self, sql: str, identity: tuple[str, Iterable[str]], dialect: Dialect) -> Decision:
        """The action for a statement string run by `identity` = (sub, groups)."""
        sub, groups = identity
        if len(sql) > MAX_JUDGED_CHARS:
            # Parsing runs on the relay's event loop: a statement this large would stall every
            # session for a noticeable time, so it is not parsed but treated as unparseable.
            parts = (_part(sql[:200], ("unparseable",), f"longer than {MAX_JUDGED_CHARS} characters"),)
        else:
            parts = _decide_parts(sql, dialect)
        memo = None
        if "\ufffd" in sql:
            # The wire engine could not decode some bytes: what the server will make of them
            # is unknown, so the statement also counts as unparseable.
            parts = (*parts, _part(sql, ("unparseable",), "bytes that are not valid UTF-8"))
        elif len(sql) <= CACHE_MAX_SQL:  # parts from a cache: the same object every time
            memo = self._memo  # type: ignore[attr-defined]
            known = memo.get((id(parts), sub))
            if known is not None and known[0] is parts and known[1] == groups:
                return known[2]
        decision = self._judge(parts, sub, groups)
        if memo is not None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[(id(parts), sub)] = (parts, groups, decision)
        return decision

    def _judge(self, parts: tuple[StatementClass, ...], sub: str, groups: Iterable[str]) -> Decision:
        if not parts:
            return Decision("allow", (), None, "empty statement")
        best: tuple[int, PolicyAction, int | None, str] | None = None
        all_categories: set[str] = set()
        for part in parts:
            all_categories.update(part.categories)
            for category in part.categories:
                action, index = self._category_action(category, sub, groups)
                severity = _SEVERITY[action]
                if best is None or severity > best[0]:
                    best = (severity, action, index, category)
        assert best is not None
        _, action, index, category = best
        if index is not None:
            reason = f"rule {index}: {category}"
        elif category == "unparseable":
            reason = "unparseable"
        elif category in ALWAYS_DENIED:
            reason = ALWAYS_DENIED[category]
        else:
            reason = f"default: {category}"
        wants_reason = index is not None and self.rules[index].require_reason
        return Decision(action, tuple(sorted(all_categories)), index, reason, wants_reason)

