"""Held statements cost the gateway a bounded prefix, not their size (issue 17 item 6).

Through the real gateway (`gated-db`, policy "default") with psycopg over `hoop connect`:
16 MiB statements are held (over the 256 KiB parse limit: `unparseable` -> approval) while
the gateway's memory and its audit store grow by far less than what was sent; one requester
cannot have more than 64 MiB of statements waiting (a clear refusal, the session goes on);
`hoop approvals list` is one bounded page; a grant runs exactly the approved text once,
matched by its SHA-256, never a text that shares its prefix.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from hoopcli.gateway.approvals import DEFAULT_MAX_PENDING_BYTES, PREFIX_BYTES
from hoopcli.gateway_api import GatewayAPI
from tests.support.cli import HOOP, run_subprocess

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
STATEMENT_BYTES = 16 * MiB
HELD = 50
# Held at once before carol denies them: 48 MiB, with room under the 64 MiB one requester may
# have waiting for whatever small requests of alice's earlier tests still wait.
PER_ROUND = DEFAULT_MAX_PENDING_BYTES // STATEMENT_BYTES - 1
ONE_TOO_MANY = DEFAULT_MAX_PENDING_BYTES - PER_ROUND * STATEMENT_BYTES + MiB
TABLE = "bounded_scratch"


@pytest.fixture(scope="module")
def scratch(pg_server):
    pg_server.sql(f"DROP TABLE IF EXISTS {TABLE}", dbname="app")
    pg_server.sql(f"CREATE TABLE {TABLE} (id int)", dbname="app")
    pg_server.sql(f"ALTER TABLE {TABLE} OWNER TO app_user", dbname="app")
    pg_server.sql(f"INSERT INTO {TABLE} VALUES (1), (2), (3)", dbname="app")
    return TABLE


@contextmanager
def tunnel(env: dict, connection: str):
    """`hoop connect CONNECTION` for the length of the block: yields the local port."""
    command = HOOP + ["connect", connection, "--json"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready", ready
        yield ready["port"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


def _connect(port: int, pg_server) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=port, user="app_user", password=pg_server.app_password, dbname="app",
        sslmode="disable", connect_timeout=10, autocommit=True,
    )


def _big(head: str, size: int = STATEMENT_BYTES, fill: str = "x") -> str:
    """`head` and a comment padding it to exactly `size` bytes (ASCII)."""
    return head + " /* " + fill * (size - len(head) - 7) + " */"


def _refusal(conn: psycopg.Connection, sql: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as excinfo:
        conn.execute(sql)
    return excinfo.value


def _held(conn: psycopg.Connection, sql: str) -> str:
    error = _refusal(conn, sql)
    assert error.sqlstate == "57W01", error
    return re.search(r"request ([0-9a-f]{8})", str(error)).group(1)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _store_bytes(gateway) -> int:
    """The audit store with its WAL, and the JSONL export: everything the trail takes on disk."""
    paths = list(Path(gateway.audit_store).parent.glob(Path(gateway.audit_store).name + "*")) + [Path(gateway.jsonl)]
    return sum(p.stat().st_size for p in paths if p.exists())


def _rows(pg_server) -> list[int]:
    return [r[0] for r in pg_server.sql(f"select id from {TABLE} order by id", dbname="app")]


def test_fifty_held_16_mib_statements_keep_gateway_memory_growth_under_50_mib(gateway, as_user, tokens, pg_server, scratch):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    carol = GatewayAPI(gateway.url, tokens("carol"), gateway.ca_file)
    statements: dict[str, str] = {}  # request id -> sha256 of what was sent
    disk_before = _store_bytes(gateway)
    with tunnel(alice, "gated-db") as port, _connect(port, pg_server) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        rss_before = _rss_kib(gateway.proc.pid)
        waiting: list[str] = []
        for n in range(HELD):
            sql = _big(f"DELETE FROM {TABLE} -- held {n:03d}\n")
            waiting.append(_held(conn, sql))
            statements[waiting[-1]] = hashlib.sha256(sql.encode()).hexdigest()
            if len(waiting) < PER_ROUND and n < HELD - 1:
                continue
            if n == PER_ROUND - 1:  # once, with 48 MiB waiting: 17 MiB more is over the cap
                refused = _refusal(conn, _big(f"DELETE FROM {TABLE} -- one too many\n", ONE_TOO_MANY))
                assert refused.sqlstate == "42501" and "too many pending approval bytes for alice" in str(refused)
            for request_id in waiting:
                assert carol.decide(request_id, "deny", "too big to review")["status"] == "denied"
            waiting.clear()
        rss_after = _rss_kib(gateway.proc.pid)
        assert conn.execute(f"select count(*) from {TABLE}").fetchone() == (3,)  # the session goes on
    assert len(statements) == HELD and _rows(pg_server) == [1, 2, 3]
    grown_mib = (rss_after - rss_before) / 1024
    print(f"\ngateway RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB (+{grown_mib:.1f}) for {HELD} held")
    assert grown_mib < 50, f"the gateway grew by {grown_mib:.1f} MiB holding {HELD} statements of 16 MiB"

    records = [r for r in gateway.records(sub="alice") if (r.get("details") or {}).get("request_id") in statements]
    held = {r["details"]["request_id"]: r for r in records if r["kind"] == "statement" and r["outcome"] == "held"}
    assert set(held) == set(statements)
    for request_id, record in held.items():
        assert len(record["statement"].encode()) <= PREFIX_BYTES and record["statement"].startswith(f"DELETE FROM {TABLE}")
        details = record["details"]
        assert details["statement_sha256"] == statements[request_id] and details["statement_bytes"] == STATEMENT_BYTES
        assert details["truncated"] is True
    filed = [r for r in records if r["kind"] == "approval_request"]
    assert len(filed) == HELD and all(len(r["statement"].encode()) <= PREFIX_BYTES for r in filed)
    disk_grown = _store_bytes(gateway) - disk_before
    print(f"audit store and export +{disk_grown / MiB:.2f} MiB for {HELD * STATEMENT_BYTES / MiB:.0f} MiB held")
    assert disk_grown < STATEMENT_BYTES, f"the audit trail grew by {disk_grown} bytes"


def test_the_approvals_endpoint_bounds_its_own_page(gateway, tokens):
    from hoopcli.errors import UsageError

    carol = GatewayAPI(gateway.url, tokens("carol"), gateway.ca_file)
    for limit in ("0", "501", "\u00b2", "-1", "1e3"):  # the gateway checks, whatever the client sends
        with pytest.raises(UsageError, match="limit must be a whole number from 1 to 500"):
            carol.approvals_page(limit=limit)
    with pytest.raises(UsageError, match="bad cursor"):
        carol.approvals_page(cursor="1e999_abc")


def test_approvals_list_is_one_bounded_page(gateway, as_user, tokens, pg_server):
    carol = as_user("carol")
    bob = as_user("bob", PGPASSWORD=pg_server.app_password)
    for n in range(PER_ROUND + 1):  # more requests than the page below holds, whatever ran before
        held = run_subprocess(["exec", "gated-db", "--", "psql", "-X", "-c", f"DROP TABLE page_{n}"], bob)
        assert "held for approval" in held.err, held.err
    mine = GatewayAPI(gateway.url, tokens("bob"), gateway.ca_file).approvals_page(limit=500)
    assert len(mine["approvals"]) >= PER_ROUND + 1 and {a["sub"] for a in mine["approvals"]} == {"bob"}
    listing = run_subprocess(["approvals", "list", "--json", "--limit", str(PER_ROUND)], carol)
    assert listing.code == 0, listing.err
    page = json.loads(listing.out)
    assert len(page["approvals"]) == PER_ROUND and page["next"]
    assert all(len(a["statement"].encode()) <= PREFIX_BYTES for a in page["approvals"])
    after = run_subprocess(["approvals", "list", "--json", "--limit", "500", "--cursor", page["next"]], carol)
    following = json.loads(after.out)
    first_ids = {a["id"] for a in page["approvals"]}
    assert following["approvals"] and not first_ids & {a["id"] for a in following["approvals"]}

    default = run_subprocess(["approvals", "list", "--json"], carol)
    assert len(json.loads(default.out)["approvals"]) <= 50
    assert len(default.out) < 50 * (PREFIX_BYTES * 6 + 2048), "a default page is at most 50 bounded requests"
    table = run_subprocess(["approvals", "list", "--limit", str(PER_ROUND)], carol)
    assert table.code == 0 and len(table.out.splitlines()) == PER_ROUND
    assert all(len(line) < 400 for line in table.out.splitlines()), "one short line per request"
    assert f"more: hoop approvals list --limit {PER_ROUND} --cursor {page['next']}" in table.err

    for bad in (["--limit", "0"], ["--limit", "501"]):
        assert run_subprocess(["approvals", "list", *bad], carol).code != 0
    garbage = run_subprocess(["approvals", "list", "--cursor", "not-a-cursor"], carol)
    assert garbage.code != 0 and "bad cursor" in garbage.err and "Traceback" not in garbage.err


def test_a_long_grant_runs_its_exact_text_once_and_never_a_twin(gateway, as_user, tokens, pg_server, scratch):
    alice = as_user("alice", PGPASSWORD=pg_server.app_password)
    carol = as_user("carol")
    exact = _big(f"UPDATE {TABLE} SET id = id + 100 -- approved\n")
    twin = exact[:-4] + "y */"  # the same prefix and length; another text
    sha = hashlib.sha256(exact.encode()).hexdigest()
    rows = _rows(pg_server)
    with tunnel(alice, "gated-db") as port, _connect(port, pg_server) as conn:
        request_id = _held(conn, exact)
        blind = run_subprocess(["approvals", "approve", request_id], carol)
        assert blind.code != 0 and f"approve with the SHA-256 of that text (--sha256); this one's is {sha}" in blind.err
        twin_sha = hashlib.sha256(twin.encode()).hexdigest()
        wrong = run_subprocess(["approvals", "approve", request_id, "--sha256", twin_sha], carol)
        assert wrong.code != 0 and "nothing was approved" in wrong.err
        approved = run_subprocess(["approvals", "approve", request_id, "--sha256", sha, "--json"], carol)
        assert approved.code == 0, approved.err
        granted = json.loads(approved.out)
        assert (granted["status"], granted["statement_sha256"], granted["truncated"]) == ("approved", sha, True)

        twin_id = _held(conn, twin)  # the grant is not for it
        assert twin_id != request_id and _rows(pg_server) == rows
        conn.execute(exact)  # the approved text runs, once
        assert _rows(pg_server) == [r + 100 for r in rows]
        again_id = _held(conn, exact)
        assert _rows(pg_server) == [r + 100 for r in rows]
    for leftover in (twin_id, again_id):  # free alice's pending budget for the tests after this one
        assert run_subprocess(["approvals", "deny", leftover], carol).code == 0
    ran = [
        r
        for r in gateway.records(kind="statement", sub="alice")
        if r["outcome"] == "ok" and (r.get("statement") or "").startswith(f"UPDATE {TABLE}")
    ]
    assert [len(r["statement"]) for r in ran] == [STATEMENT_BYTES], "a statement that ran keeps its whole text"
