"""Load through ONE gateway: 50 concurrent PostgreSQL sessions × 200 statements each.

The clients are psycopg (async) connections through `hoop connect`'s local tunnel, so every
statement crosses the real path: tunnel → TLS CONNECT → gateway relay and engine → PostgreSQL.
Afterwards every statement is in the trail exactly once (found by a marker unique to this
run), the hash chain verifies (`hoop audit verify --store`), and the gateway process holds no
more file descriptors than before and has not grown much (VmRSS).

The figures (statements/s, fds and RSS before and after) are printed; run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import HOOP, run_subprocess, subprocess_env
from tests.support.gateway import single_db_config, start_gateway

SESSIONS = 50
STATEMENTS = 200
FD_SLACK = 4
RSS_SLACK_MB = 30


@pytest.fixture(scope="module")
def load_gateway(oidc_provider, pg_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("load-gateway")
    config = single_db_config(oidc_provider.issuer, pg_server.port)
    with start_gateway(config, workdir) as gw:
        yield gw


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def settle(read, timeout: float = 10.0, quiet: float = 0.5):
    """Poll read() until its value stops changing for `quiet` seconds; return that value."""
    value, since = read(), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return value


async def run_sessions(port: int, password: str, marker: str, sessions: int, statements: int) -> list[BaseException]:
    import psycopg

    errors: list[BaseException] = []

    async def one(s: int) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=port, user="app_user", password=password, dbname="app",
                sslmode="disable", connect_timeout=30, autocommit=True,
            )
            async with conn:
                for i in range(statements):
                    cur = await conn.execute(f"select '{marker}-{s}-{i}'")
                    row = await cur.fetchone()
                    assert row[0] == f"{marker}-{s}-{i}"
        except BaseException as exc:  # gathered and asserted by the caller
            errors.append(exc)

    await asyncio.gather(*(one(s) for s in range(sessions)))
    return errors


def count_marked(store_path: str, marker: str) -> list[dict]:
    from hoopcli.gateway.audit import open_store

    with open_store(store_path) as store:
        return [r for r in store.query(kind="statement") if (r["statement"] or "").startswith(f"select '{marker}-")]


def test_fifty_sessions_of_two_hundred_statements(load_gateway, oidc_provider, pg_server, tmp_path):
    token = oidc_provider.device_login("alice")["id_token"]
    env = subprocess_env(tmp_path, HOOP_TOKEN=token, HOOP_GATEWAY=load_gateway.url, HOOP_CA_FILE=load_gateway.ca_file)
    tunnel = subprocess.Popen(HOOP + ["connect", "app-db", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(tunnel.stdout.readline())
        assert ready["event"] == "ready", ready
        port = ready["port"]
        pid = load_gateway.proc.pid

        # Warm-up: the engine and policy modules are imported on first use; not a leak.
        assert asyncio.run(run_sessions(port, pg_server.app_password, "warmup", 5, 5)) == []
        fds_before = settle(lambda: fd_count(pid))
        rss_before = rss_mb(pid)

        marker = "load-" + secrets.token_hex(4)
        started = time.perf_counter()
        errors = asyncio.run(run_sessions(port, pg_server.app_password, marker, SESSIONS, STATEMENTS))
        elapsed = time.perf_counter() - started
        assert errors == [], errors[:3]

        total = SESSIONS * STATEMENTS
        deadline = time.monotonic() + 20
        while len(recs := count_marked(load_gateway.audit_store, marker)) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        fds_after = settle(lambda: fd_count(pid))
        rss_after = rss_mb(pid)
    finally:
        tunnel.send_signal(signal.SIGINT)
        try:
            tunnel.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            tunnel.kill()

    print(
        f"\nload: {total} statements in {elapsed:.2f} s = {total / elapsed:.0f} statements/s "
        f"({SESSIONS} sessions); gateway fds {fds_before} -> {fds_after}; VmRSS {rss_before:.1f} -> {rss_after:.1f} MB"
    )
    texts = [r["statement"] for r in recs]
    assert len(texts) == total, f"{len(texts)} of {total} statements recorded"
    assert len(set(texts)) == total  # each exactly once
    assert {f"select '{marker}-{s}-{i}'" for s in range(SESSIONS) for i in range(STATEMENTS)} == set(texts)
    assert all(r["outcome"] == "ok" and r["tag"] == "SELECT 1" and r["sub"] == "alice" for r in recs)
    assert len({r["session_id"] for r in recs}) == SESSIONS

    verify = run_subprocess(["audit", "verify", "--store", load_gateway.audit_store, "--json"], env)
    assert verify.code == 0, verify.err
    report = json.loads(verify.out)
    assert report["ok"] is True and report["checked"] >= total + 2 * SESSIONS

    assert fds_after <= fds_before + FD_SLACK, (fds_before, fds_after)
    assert rss_after - rss_before < RSS_SLACK_MB, (rss_before, rss_after)
    assert load_gateway.alive()
    assert_every_session_ended_and_was_recorded(load_gateway.audit_store)


def assert_every_session_ended_and_was_recorded(store_path: str) -> None:
    """Every session of the load (and of its warm-up) has its connect and its session_end,
    which counts the session's statements."""
    from hoopcli.gateway.audit import open_store

    def read():
        with open_store(store_path) as store:
            ends = store.query(kind="session_end")
            connects = [r for r in store.query(kind="connect") if r["outcome"] == "ok"]
        return connects, ends

    connects, ends = read()
    deadline = time.monotonic() + 10
    while len(ends) < len(connects) and time.monotonic() < deadline:  # the last ends may still be on their way
        time.sleep(0.2)
        connects, ends = read()
    assert len(connects) == SESSIONS + 5  # the load and the warm-up
    assert len(ends) == len(connects)
    assert sum(1 for r in ends if (r["details"] or {}).get("statements") == STATEMENTS) == SESSIONS
    assert all(r["outcome"] == "ok" for r in ends)
