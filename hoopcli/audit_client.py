"""`hoop audit`: read the trail over the gateway API (auditors) or straight from the store."""

from __future__ import annotations


def list_records(store: str | None, api_factory, **filters) -> list[dict]:
    if store:
        from hoopcli.gateway.audit import open_store

        with open_store(store) as s:
            return s.query(**filters)
    return api_factory().audit(**filters)


def verify(store: str | None, api_factory) -> dict:
    if store:
        from hoopcli.gateway.audit import open_store

        with open_store(store) as s:
            report = s.verify()
        return {"ok": report.ok, "checked": report.checked, "problems": list(report.problems)}
    return api_factory().verify()
