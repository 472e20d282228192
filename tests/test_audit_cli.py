"""The audit trail as people read it: `hoop audit list|verify|export` over the API (auditors
only) and straight from the store; exact records in order for one psql session; tampering
with the SQLite file caught by `hoop audit verify`; a clean stop loses nothing."""

from __future__ import annotations

import json
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.cli import run_subprocess


def test_one_psql_session_gives_exact_records_in_order(gateway, as_user, pg_server):
    env = as_user("alice", PGPASSWORD=pg_server.app_password)
    result = run_subprocess(
        ["exec", "app-db", "--", "psql", "-X", "-q", "-c", "select 'order-1'", "-c", "select id from customers order by id", "-c", "select missing_order_3", "-c", "create temp table order_t(a int)", "-c", "insert into order_t values (1)"],
        env,
    )
    assert result.code == 0, result.err  # psql carries on past the failing third statement
    first = [r for r in gateway.records(kind="statement", sub="alice") if r["statement"] == "select 'order-1'"][-1]
    session = gateway.records(session_id=first["session_id"], ended=True)
    assert [r["kind"] for r in session] == ["connect"] + ["statement"] * 5 + ["session_end"]
    statements = [(r["statement"], r["outcome"], r["tag"], r["code"]) for r in session if r["kind"] == "statement"]
    assert statements == [
        ("select 'order-1'", "ok", "SELECT 1", None),
        ("select id from customers order by id", "ok", "SELECT 3", None),
        ("select missing_order_3", "error", None, "42703"),
        ("create temp table order_t(a int)", "ok", "CREATE TABLE", None),
        ("insert into order_t values (1)", "ok", "INSERT 0 1", None),
    ]
    assert all(r["sub"] == "alice" and r["email"] == "alice@example.com" and r["db_user"] == "app_user" for r in session[1:-1])
    assert session[-1]["details"]["statements"] == 5


def test_auditor_reads_the_trail_over_the_api(gateway, as_user, pg_server):
    run_subprocess(["exec", "app-db", "--", "psql", "-X", "-c", "select 'for-the-auditor'"], as_user("alice", PGPASSWORD=pg_server.app_password))
    listing = run_subprocess(["audit", "list", "--identity", "alice", "--kind", "statement", "--json"], as_user("carol"))
    assert listing.code == 0, listing.err
    rows = [json.loads(line) for line in listing.out.splitlines()]
    assert any(r["statement"] == "select 'for-the-auditor'" for r in rows)
    assert {r["sub"] for r in rows} == {"alice"}
    verify = run_subprocess(["audit", "verify", "--json"], as_user("carol"))
    assert verify.code == 0 and json.loads(verify.out)["ok"] is True


def test_non_auditor_cannot_read_the_trail(gateway, as_user):
    result = run_subprocess(["audit", "list"], as_user("alice"))
    assert result.code == 4 and "audit trail" in result.err


def _snapshot(gateway) -> Path:
    """A consistent copy of the live SQLite store (the backup API, as an admin would)."""
    target = Path(tempfile.mkdtemp()) / "copy.db"
    with sqlite3.connect(gateway.audit_store) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def _tamper(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as db:
        for (name,) in db.execute("select name from sqlite_master where type='trigger'").fetchall():
            db.execute(f'drop trigger "{name}"')
        db.execute(sql)


@pytest.mark.parametrize(
    "attack, expected",
    [
        ("update audit set statement = 'select harmless' where seq = 3", "seq 3"),
        ("delete from audit where seq = 4", "seq 4"),
        ("update audit set seq = -1 where seq = 5", "seq"),
    ],
)
def test_tampering_with_the_store_is_caught(gateway, tokens, attack, expected):
    gateway.connect_status("x:1", None)  # make sure there are a few records
    copy = _snapshot(gateway)
    clean = run_subprocess(["audit", "verify", "--store", str(copy), "--json"], {"PATH": "/usr/bin:/bin", **_py_env()})
    assert clean.code == 0 and json.loads(clean.out)["ok"] is True
    _tamper(copy, attack)
    result = run_subprocess(["audit", "verify", "--store", str(copy), "--json"], _py_env())
    report = json.loads(result.out)
    assert result.code == 1 and report["ok"] is False
    assert any(expected in p for p in report["problems"]), report


def test_swapped_rows_are_caught(gateway):
    copy = _snapshot(gateway)
    with sqlite3.connect(copy) as db:
        cols = [c[1] for c in db.execute("pragma table_info(audit)")]
    others = [c for c in cols if c != "seq"]
    _tamper(copy, "create table t as select * from audit where seq in (6, 7)")
    with sqlite3.connect(copy) as db:
        row6 = db.execute("select * from t where seq = 6").fetchone()
        row7 = db.execute("select * from t where seq = 7").fetchone()
        assign = lambda row: ", ".join(f"{c} = ?" for c in others)  # noqa: E731
        db.execute(f"update audit set {assign(row7)} where seq = 6", [row7[cols.index(c)] for c in others])
        db.execute(f"update audit set {assign(row6)} where seq = 7", [row6[cols.index(c)] for c in others])
    result = run_subprocess(["audit", "verify", "--store", str(copy), "--json"], _py_env())
    assert result.code == 1 and any("seq 6" in p or "seq 7" in p for p in json.loads(result.out)["problems"])


def test_export_is_jsonl_that_verifies(gateway):
    from hoopcli.gateway.audit import verify_records

    copy = _snapshot(gateway)
    result = run_subprocess(["audit", "export", "--format", "jsonl", "--store", str(copy)], _py_env())
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert rows and rows[0]["seq"] == 1
    assert verify_records(rows).ok


def test_exporter_jsonl_mirrors_the_store(gateway):
    from hoopcli.gateway.audit import read_jsonl

    for _ in range(6):  # records of its own, so the test does not depend on the ones before it
        assert gateway.connect_status("app-db:5432", None)[0] == 407
    stored = gateway.records()
    assert len(stored) > 5
    deadline = time.monotonic() + 10
    exported = list(read_jsonl(gateway.jsonl))
    while len(exported) < len(stored) and time.monotonic() < deadline:  # the exporter may trail the store
        time.sleep(0.1)
        exported = list(read_jsonl(gateway.jsonl))
    # Every stored record, the newest included, is in the export in the same order.
    assert [r["hash"] for r in exported][: len(stored)] == [r["hash"] for r in stored]


def test_clean_stop_flushes_every_record(oidc_provider, pg_server, tokens, tmp_path):
    from tests.support.cli import subprocess_env
    from tests.support.gateway import gateway_config, start_gateway

    with start_gateway(gateway_config(oidc_provider.issuer, pg_server.port, None, tmp_path), tmp_path) as gw:
        env = subprocess_env(tmp_path / "home", HOOP_TOKEN=tokens("alice"), HOOP_GATEWAY=gw.url, HOOP_CA_FILE=gw.ca_file, PGPASSWORD=pg_server.app_password)
        (tmp_path / "home").mkdir()
        args = ["exec", "app-db", "--", "psql", "-X", "-q"]
        for n in range(60):
            args += ["-c", f"select {n} as flush_check"]
        assert run_subprocess(args, env).code == 0
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(timeout=20)
        from hoopcli.gateway.audit import open_store

        with open_store(gw.audit_store) as store:
            statements = [r for r in store.query(kind="statement") if "flush_check" in r["statement"]]
            assert len(statements) == 60
            assert store.verify().ok


def _py_env() -> dict:
    import os

    from tests.support.cli import REPO

    return {**{k: v for k, v in os.environ.items() if not k.startswith("HOOP_")}, "PYTHONPATH": str(REPO)}
