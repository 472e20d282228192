"""gateway.toml: listener, TLS, trusted issuers, audit store, exporters and the registry.

Issuers are ordered: the first is the human IdP. It grants every group its tokens claim unless
`grants = [...]` narrows it; every other issuer (a CI platform, a machine identity) grants no
group unless its `grants` lists it, so a token it signs can never claim approver or auditor
rights. A bare subject in `subjects = [...]` means a subject of the first issuer; a subject of
another one is written `"<issuer URL>|<sub>"`.

Every problem is reported as a ValueError naming the field, turned into a ConfigError by
the CLI before the gateway listens.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from hoopcli.gateway.identity import TrustedIssuer
from hoopcli.gateway.registry import Registry
from hoopcli.netutil import LOOPBACK_HOSTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class GatewaySettings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    tls_cert: str = ""
    tls_key: str = ""
    audit_store: str = "hoop-audit.db"
    durability: str = "process"  # "process" | "power" | "async": see audit/journal.py
    journal_dir: str = ""  # "": beside a SQLite store, else audit-journal beside gateway.toml (audit/durability.py)
    record_params: bool = False
    approver_groups: tuple[str, ...] = ("approvers",)
    auditor_groups: tuple[str, ...] = ("auditors",)
    approval_window_seconds: int = 900  # counts from the approval
    approval_pending_ttl_seconds: int = 3600  # an undecided request expires after this
    # True: every held statement needs its requester's reason before approval; or the
    # connections whose do ([gateway.approvals] require_reason = true | ["conn", ...]).
    approval_require_reason: bool | tuple[str, ...] = False
    approval_webhook: str = ""
    approval_max_pending: int = 100  # per requester: requests waiting for a decision
    approval_max_pending_bytes: int = 64 * 1024 * 1024  # per requester: bytes of statement they hold
    export_jsonl: str = ""
    export_webhook: str = ""
    issuers: list[TrustedIssuer] = field(default_factory=list)
    registry: Registry = field(default_factory=lambda: Registry({}))
    base_dir: Path = field(default_factory=Path.cwd)


def read_toml(path: str | Path) -> dict:
    """A TOML file's tables; ValueError names the file (missing, unreadable or malformed)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_settings(path: str | Path) -> GatewaySettings:
    return settings_from_dict(read_toml(path), base_dir=Path(path).parent)


def settings_from_dict(raw: dict, base_dir: Path | None = None) -> GatewaySettings:
    gw = raw.get("gateway", {})
    base_dir = base_dir or Path.cwd()
    for name, table in (("gateway", gw), ("gateway.approvals", gw.get("approvals", {})), ("gateway.export", gw.get("export", {}))):
        if not isinstance(table, dict):
            raise ValueError(f"{name} must be a table ([{name}])")
    listen = str(gw.get("listen", "127.0.0.1:8443"))
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"gateway.listen must be host:port, not {listen!r}")
    approval = gw.get("approvals", {})
    export = gw.get("export", {})
    issuers = _issuers(raw.get("issuers", []))
    issuer_urls = [i.issuer for i in issuers]
    settings = GatewaySettings(
        listen_host=host.strip("[]"),
        listen_port=int(port),
        tls_cert=_path(gw.get("tls_cert", ""), base_dir),
        tls_key=_path(gw.get("tls_key", ""), base_dir),
        audit_store=_store_url(gw.get("audit_store", "hoop-audit.db"), base_dir),
        durability=_durability(gw.get("durability", "process")),
        journal_dir=_path(gw.get("journal_dir", ""), base_dir),
        record_params=_bool(gw.get("record_params", False), "gateway.record_params"),
        approver_groups=_strings(approval.get("approver_groups", ["approvers"]), "gateway.approvals.approver_groups"),
        auditor_groups=_strings(gw.get("auditor_groups", ["auditors"]), "gateway.auditor_groups"),
        approval_window_seconds=int(approval.get("window_seconds", 900)),
        approval_pending_ttl_seconds=_positive(approval.get("pending_ttl_seconds", 3600), "gateway.approvals.pending_ttl_seconds"),
        approval_require_reason=_require_reason(approval.get("require_reason", False), raw.get("connections") or {}),
        approval_webhook=_safe_url(approval["webhook"], "gateway.approvals.webhook") if approval.get("webhook") else "",
        approval_max_pending=_positive(approval.get("max_pending", 100), "gateway.approvals.max_pending"),
        approval_max_pending_bytes=_positive(
            approval.get("max_pending_bytes", 64 * 1024 * 1024), "gateway.approvals.max_pending_bytes"
        ),
        export_jsonl=str(export.get("jsonl", "")),
        export_webhook=_safe_url(export["webhook"], "gateway.export.webhook") if export.get("webhook") else "",
        issuers=issuers,
        registry=Registry.from_config(raw.get("connections", {}), issuer_urls),
        base_dir=base_dir,
    )
    return settings


def _issuers(entries) -> list[TrustedIssuer]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("issuers must be a list of [[issuers]] tables")
    issuers = [_issuer(entry, n) for n, entry in enumerate(entries)]
    if not issuers:
        raise ValueError("at least one [[issuers]] entry is required (issuer, audiences)")
    seen = set()
    for n, trusted in enumerate(issuers):
        if trusted.issuer in seen:
            raise ValueError(f"issuers[{n}].issuer {trusted.issuer!r} is listed twice")
        seen.add(trusted.issuer)
    return issuers


def _issuer(entry: dict, n: int) -> TrustedIssuer:
    if not entry.get("issuer"):
        raise ValueError(f"issuers[{n}].issuer is required")
    _safe_url(entry["issuer"], f"issuers[{n}].issuer")
    if "|" in entry["issuer"]:
        raise ValueError(f"issuers[{n}].issuer may not contain \"|\" (it separates issuer and subject)")
    if entry.get("jwks_uri"):
        _safe_url(entry["jwks_uri"], f"issuers[{n}].jwks_uri")
    audiences = entry.get("audiences") or ([entry["audience"]] if entry.get("audience") else [])
    if not audiences:
        raise ValueError(f"issuers[{n}].audiences is required (e.g. [\"hoop-cli\"])")
    _strings(audiences, f"issuers[{n}].audiences")
    return TrustedIssuer(
        issuer=entry["issuer"].rstrip("/"),
        audiences=tuple(audiences),
        groups_claim=entry.get("groups_claim", "groups"),
        ca_file=entry.get("ca_file", ""),
        jwks_uri=entry.get("jwks_uri", ""),
        grants=_grants(entry, n),
    )


def _grants(entry: dict, n: int) -> frozenset[str] | None:
    """The first issuer (the human IdP) grants all it claims by default; the others nothing."""
    if "grants" not in entry:
        return None if n == 0 else frozenset()
    return frozenset(_strings(entry["grants"], f"issuers[{n}].grants"))


def _require_reason(value, connections: dict) -> bool | tuple[str, ...]:
    where = "gateway.approvals.require_reason"
    if isinstance(value, bool):
        return value
    names = _strings(value, where)
    unknown = [n for n in names if n not in connections]
    if unknown:
        raise ValueError(f"{where} names {unknown[0]!r}, which is not a [connections.…] table")
    return names


def _safe_url(url, where: str) -> str:
    """https, or http to a loopback address only: keys and statements never travel in clear."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(url))
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return str(url)
    raise ValueError(f"{where} must be an https:// URL (http only to 127.0.0.1), not {url!r}")


def _strings(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings, e.g. [\"a\", \"b\"]")
    return tuple(value)


def _positive(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive whole number, not {value!r}")
    return value


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false")
    return value


def _path(value: str, base: Path) -> str:
    return str((base / value).resolve()) if value else ""


def _durability(value) -> str:
    from hoopcli.gateway.audit.durability import check_level

    return check_level(str(value))


def _store_url(value: str, base: Path) -> str:
    if "://" in value:
        return value
    return str((base / value).resolve())
