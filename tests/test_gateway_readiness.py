"""/healthz and /readyz: a load balancer stops sending sessions while the audit store is down.

A real gateway (in-process, its API called as the front door calls it) with a PostgreSQL audit
store in a database of its own on the shared test server. The store goes down for real: the
database stops taking connections and the gateway's are ended. /readyz answers 503 until it is
back; /healthz (liveness) stays 200 throughout, so the process is not restarted for it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from hoopcli.gateway.api import handle_api
from hoopcli.gateway.http import Request

DB = "readyz_audit"


def _get(gw, path: str) -> tuple[int, dict]:
    return asyncio.run(handle_api(gw, Request("GET", path, {}), b""))


def _until(gw, path: str, status: int, timeout: float = 20) -> tuple[int, dict]:
    """Ask `path` until it answers `status`, sending a record each time (a store fails on use)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = _get(gw, path)
        if answer[0] == status or time.monotonic() > deadline:
            return answer
        gw.submit({"kind": "connect", "ts": time.time(), "outcome": "refused", "code": "400", "session_id": "readyz"})
        time.sleep(0.2)


@pytest.fixture
def gateway_with_pg_store(pg_server, tmp_path):
    from hoopcli.gateway.app import Gateway
    from hoopcli.gateway.settings import settings_from_dict

    pg_server.sql(f"DROP DATABASE IF EXISTS {DB}")
    pg_server.sql(f"CREATE DATABASE {DB}")
    raw = {
        "gateway": {"listen": "127.0.0.1:0", "audit_store": pg_server.dsn(dbname=DB)},
        "issuers": [{"issuer": "https://issuer.invalid", "audiences": ["hoop-cli"]}],
        "connections": {},
    }
    gw = Gateway(settings_from_dict(raw, base_dir=tmp_path))
    try:
        yield gw
    finally:
        pg_server.sql(f"ALTER DATABASE {DB} ALLOW_CONNECTIONS true")
        gw.close()
        pg_server.sql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def test_readyz_is_503_while_the_audit_store_is_down_and_healthz_stays_200(gateway_with_pg_store, pg_server):
    gw = gateway_with_pg_store
    assert _get(gw, "/readyz") == (200, {"ok": True, "audit": "ok"})
    assert _get(gw, "/healthz")[0] == 200

    pg_server.sql(f"ALTER DATABASE {DB} ALLOW_CONNECTIONS false")
    pg_server.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DB}'")
    assert _until(gw, "/readyz", 503) == (503, {"ok": False, "audit": "unavailable"})
    assert _get(gw, "/healthz") == (200, {"ok": False, "audit": "unavailable"})

    pg_server.sql(f"ALTER DATABASE {DB} ALLOW_CONNECTIONS true")
    assert _until(gw, "/readyz", 200, timeout=40) == (200, {"ok": True, "audit": "ok"})
