"""`hoop audit`: read the trail over the gateway API (auditors) or straight from the store."""

from __future__ import annotations


from pathlib import Path

from hoopcli.errors import NotFound


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


def verify(store: str | None, api_factory) -> dict:
    if store:
        with _open(store) as s:
            report = s.verify()
        return {"ok": report.ok, "checked": report.checked, "problems": list(report.problems)}
    return api_factory().verify()
