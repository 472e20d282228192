"""`hoop audit`: read the trail over the gateway API (auditors) or straight from the store;
`hoop gateway audit-schema|init`: the admin step that makes the trail the admin's, not the gateway's."""

from __future__ import annotations


from pathlib import Path

from hoopcli.errors import ConfigError, NotFound, Unreachable, UsageError


def _open(store: str):
    """The store at a path or URL; a SQLite path must exist (opening would create an empty one,
    which would then 'verify')."""
    from hoopcli.gateway.audit import open_store

    if "://" not in store or store.startswith("sqlite://"):
        path = store.split("sqlite://", 1)[-1] if store.startswith("sqlite://") else store
        if not Path(path).is_file():
            raise NotFound(f"no audit store at {path}", "Give the path of the gateway's audit_store (see gateway.toml).")
    return open_store(store)


def list_records(store: str | None, api_factory, **filters) -> list[dict]:
    if store:
        with _open(store) as s:
            return s.query(**filters)
    return api_factory().audit(**filters)


def published_heads(heads: list[str] = (), head_files: list[str] = ()) -> list:
    """ChainHeads from `--head SEQ:HASH` values and each `--head-from` export (its newest,
    and any it vouched for before its seq went back)."""
    from hoopcli.gateway.audit.chain import ChainHead
    from hoopcli.gateway.audit.export import export_heads

    found = []
    for text in heads:
        try:
            found.append(ChainHead.parse(text))
        except ValueError as exc:
            raise UsageError(f"--head: {exc}", "Give the seq and hash of a published head: --head 1042:3fa9….") from None
    for path in head_files:
        try:
            heads_of_file = export_heads(path)
        except OSError as exc:
            raise NotFound(f"cannot read the export {path}: {exc.strerror}", "Give the JSONL export the gateway writes (gateway.export.jsonl).") from None
        if not heads_of_file:
            raise UsageError(f"{path} holds no chain head and no record", "Give the JSONL export the gateway writes (gateway.export.jsonl).")
        found += heads_of_file
    return found


def verify(store: str | None, api_factory, heads: list = ()) -> dict:
    if heads and not store:
        raise UsageError(
            "--head/--head-from check a store read directly", "Add --store with the gateway's audit_store (on the gateway host)."
        )
    if store:
        with _open(store) as s:
            report = s.verify(heads=heads)
        return {
            "ok": report.ok,
            "checked": report.checked,
            "problems": list(report.problems),
            "last_seq": report.last_seq,
            "heads": [str(h) for h in report.heads],
        }
    return api_factory().verify()


# ---- the admin step ---------------------------------------------------------------------------


def _postgres_target(store: str | None, config: str | None) -> str:
    """The gateway's PostgreSQL store URL: --store, else gateway.toml's audit_store."""
    if not store and config:
        from hoopcli.gateway.settings import load_settings

        try:
            store = load_settings(config).audit_store
        except ValueError as exc:
            raise ConfigError(f"gateway config: {exc}", "Fix gateway.toml, or give --store.") from None
    if not store:
        raise UsageError("no store given", "Give --store postgresql://GATEWAY_ROLE@host/db, or --config gateway.toml.")
    if not store.startswith(("postgresql://", "postgres://")):
        raise UsageError(
            "the admin step is for a PostgreSQL store",
            "A SQLite store is a file the gateway writes: it can always rewrite it; publish the head (gateway.export) to catch truncation.",
        )
    return store


def _gateway_role(store: str, role: str | None) -> str:
    from hoopcli.gateway.audit.postgres import dsn_user

    role = role or dsn_user(store)
    if not role:
        raise UsageError("the store URL names no role", "Give the gateway's role with --role, or put it in the URL (postgresql://ROLE@host/db).")
    return role


def audit_schema(store: str | None, config: str | None, role: str | None) -> str:
    """The SQL an admin runs so that the admin owns the trail and the gateway may only append."""
    from hoopcli.gateway.audit.postgres import DEFAULT_TABLE, admin_schema_script

    target = _postgres_target(store, config)
    return admin_schema_script(DEFAULT_TABLE, _gateway_role(target, role))


def init_schema(admin_dsn: str, store: str | None, config: str | None, role: str | None) -> dict:
    """Apply audit_schema() as the admin of `admin_dsn`; what the gateway's role could still do."""
    from hoopcli.gateway.audit.postgres import DEFAULT_TABLE, init_trail
    from hoopcli.gateway.audit.store import public_url

    target = _postgres_target(store, config)
    gateway_role = _gateway_role(target, role)
    try:
        findings = init_trail(admin_dsn, gateway_role, DEFAULT_TABLE)
    except ValueError as exc:
        raise UsageError(str(exc), "Give --admin-dsn a role that is not the gateway's (the database owner, or a dedicated audit admin).") from None
    except Exception as exc:  # psycopg's errors, their passwords scrubbed by postgres.connect
        raise Unreachable(
            f"cannot set up the audit trail at {public_url(admin_dsn)}: {type(exc).__name__}: {exc}".strip(),
            "Check --admin-dsn (an admin role of the audit database), and that the server is up.",
        ) from None
    return {"table": DEFAULT_TABLE, "gateway_role": gateway_role, "findings": findings, "ok": not findings}
