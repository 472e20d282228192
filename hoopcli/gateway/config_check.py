"""`hoop gateway check`: the lint an admin runs on gateway.toml before deploying.

Each finding is an error or a warning with the TOML line and a hint. Everything the gateway
itself would refuse at start comes from settings.settings_from_dict and Policy.from_config
(the same code, not a second validator); on top of that, mistakes the gateway accepts but
that are almost certainly not meant: unknown keys (typos, which the gateway ignores), inline
secrets, approver groups nobody or a machine issuer can grant, connections nobody can reach,
connections without a policy, a SQLite store. tomllib gives no positions, so lines are found
by reading the file's table headers and keys (`_Lines`).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hoopcli.gateway.policy.rules import _POLICY_KEYS, _RULE_KEYS
from hoopcli.netutil import LOOPBACK_HOSTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Finding", "SECRET_KEY", "check_config", "check_text", "url_has_password"]

# Key names that hold a secret: a credentials hint, or any table, must not carry one inline.
SECRET_KEY = re.compile(r"(?i)passw(or)?d|secret|token|private_?key|api_?key|access_?key")

# Every key gateway.toml may hold ("*": a name the admin picks; "[]": an array of tables).
# tests/test_gateway_check.py holds this to the keys settings.py and registry.py read.
_POLICY_SCHEMA = {**dict.fromkeys(_POLICY_KEYS), "rules": {"[]": dict.fromkeys(_RULE_KEYS)}}
SCHEMA: dict = {
    "gateway": {
        **{k: None for k in ("listen", "tls_cert", "tls_key", "audit_store", "durability", "journal_dir",
                             "record_params", "auditor_groups")},
        "approvals": {k: None for k in ("approver_groups", "window_seconds", "webhook", "max_pending",
                                        "max_pending_bytes", "pending_ttl_seconds", "require_reason")},
        "export": {"jsonl": None, "webhook": None},
    },
    "issuers": {"[]": {k: None for k in ("issuer", "audiences", "audience", "groups_claim", "ca_file", "jwks_uri", "grants")}},
    "connections": {"*": {
        **{k: None for k in ("protocol", "target", "subjects", "groups", "approver_groups", "description", "database",
                             "record", "pin_database")},
        "credentials": "free",  # broker-specific hints: only checked for secrets
        "policy": _POLICY_SCHEMA,
    }},
}


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    code: str  # a stable name for CI filters, e.g. "unknown-key"
    message: str
    line: int | None
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Lines:
    """Where each table and key is in the file text: dotted path -> 1-based line."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')\s*=")

    def __init__(self, text: str):
        self.at: dict[str, int] = {}
        arrays: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                table = ".".join(_unquote(p) for p in _split_dotted(header.group(2)))
                if header.group(1) == "[[":
                    arrays[table] = arrays.get(table, -1) + 1
                    table = f"{table}[{arrays[table]}]"
                table = self._with_indexes(table, arrays)
                self.at.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                self.at.setdefault(f"{table}.{_unquote(key.group(1))}".lstrip("."), number)

    @staticmethod
    def _with_indexes(table: str, arrays: dict[str, int]) -> str:
        """[[connections.x.policy.rules]] belongs to the newest [[...]] of every array above it."""
        parts = table.split(".")
        for i in range(1, len(parts)):
            head = ".".join(parts[:i])
            if head in arrays and not parts[i - 1].endswith("]"):
                parts[i - 1] = f"{parts[i - 1]}[{arrays[head]}]"
        return ".".join(parts)

    def of(self, path: str) -> int | None:
        """The line of `path`, or of the nearest table or key that holds it."""
        while path:
            if path in self.at:
                return self.at[path]
            path = re.sub(r"\[\d+\]$", "", path) if path.endswith("]") else path.rpartition(".")[0]
        return None


def _split_dotted(text: str) -> list[str]:
    return [p.strip() for p in re.findall(r'"[^"]*"|\'[^\']*\'|[^.]+', text)]


def _unquote(part: str) -> str:
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'" else part


def _where(message: str) -> str:
    """The dotted field a settings/registry ValueError names first, e.g. `connections.app-db`."""
    match = re.match(r"([A-Za-z_][\w\-]*(\[\d+\])?(\.[\w\-]+(\[\d+\])?)*)", message)
    return match.group(1) if match else ""


class _Checker:
    def __init__(self, text: str):
        self.lines = _Lines(text)
        self.findings: list[Finding] = []

    def add(self, level: str, code: str, path: str, message: str, hint: str = "") -> None:
        self.findings.append(Finding(level, code, message, self.lines.of(path), hint))

    # ---- the file as written -------------------------------------------------------------

    def unknown_keys(self, table: dict, schema: dict, path: str = "") -> None:
        for key, value in table.items():
            where = f"{path}.{key}" if path else key
            sub = schema.get(key, schema.get("*", _MISSING))
            if sub is _MISSING:
                known = sorted(k for k in schema if k not in ("*", "[]"))
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known here: {', '.join(known)}"
                self.add("error", "unknown-key", where, f"unknown key {where!r}: the gateway ignores it", hint)
            elif isinstance(sub, dict) and isinstance(value, dict):
                self.unknown_keys(value, sub, where)
            elif isinstance(sub, dict) and "[]" in sub and isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        self.unknown_keys(item, sub["[]"], f"{where}[{i}]")

    def inline_secrets(self, value, path: str = "") -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if SECRET_KEY.search(key) and isinstance(item, str) and item:
                    self.add("error", "inline-secret", where, f"{where} holds a secret written inline",
                             "keep secrets out of gateway.toml: the broker fetches them at run time "
                             "(credentials hold only hints such as broker, addr, role)")
                else:
                    self.inline_secrets(item, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.inline_secrets(item, f"{path}[{i}]")
        elif isinstance(value, str) and "://" in value and url_has_password(value):
            self.add("error", "inline-secret", path, f"{path} is a URL with a password in it",
                     "drop the password from the URL: for PostgreSQL use ~/.pgpass or PGPASSFILE of the gateway's user")

    def plain_http(self, raw: dict) -> dict:
        """Flag every plain http:// URL the gateway would refuse; return a copy of `raw` with them
        made https://, so that one such URL does not hide the checks that need the loaded settings."""
        import copy

        raw = copy.deepcopy(raw)
        gw = _dict(raw.get("gateway"))
        holders = [(f"issuers[{n}]", e, ("issuer", "jwks_uri")) for n, e in enumerate(_list(raw.get("issuers")))]
        holders += [("gateway.approvals", _dict(gw.get("approvals")), ("webhook",)), ("gateway.export", _dict(gw.get("export")), ("webhook",))]
        for table, holder, keys in holders:
            for key in keys if isinstance(holder, dict) else ():
                url = holder.get(key)
                parts = urlsplit(url) if isinstance(url, str) else None
                if parts and parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
                    self.add("error", "plain-http", f"{table}.{key}",
                             f"{table}.{key} is plain http:// ({url}): tokens, keys and statements would travel in clear",
                             "use https:// (http:// is accepted only for 127.0.0.1)")
                    holder[key] = "https" + url[4:]
        return raw


_MISSING = object()


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def url_has_password(text: str) -> bool:
    try:
        return bool(urlsplit(text).password)
    except ValueError:
        return False


def check_text(text: str) -> list[Finding]:
    """Every finding for a gateway.toml given as text, in line order."""
    from hoopcli.gateway.config_semantics import check_settings

    checker = _Checker(text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        return [Finding("error", "toml", f"not valid TOML: {exc}", int(line.group(1)) if line else None,
                        "fix the syntax; the gateway cannot start on this file")]
    checker.unknown_keys(raw, SCHEMA)
    checker.inline_secrets(raw)
    check_settings(checker, checker.plain_http(raw))
    return sorted(checker.findings, key=lambda f: (f.line or 0, f.level != "error", f.message))


def check_config(path: str | Path) -> list[Finding]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return check_text(text)
