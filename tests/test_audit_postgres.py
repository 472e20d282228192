"""The PostgreSQL store against a real server: one chain for many replicas, tamper checks,
least privilege, reconnects; and the fixture's password checks."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading

import psycopg
import pytest

from hoopcli.gateway.audit import AuditWriter, new_record, open_store, record_hash
from hoopcli.gateway.audit.postgres import PostgresStore

_names = itertools.count()


@pytest.fixture
def audit_db(pg_server):
    name = f"audit_{os.getpid()}_{next(_names)}"
    pg_server.sql(f"CREATE DATABASE {name}")
    return name


@pytest.fixture
def store(pg_server, audit_db):
    with open_store(pg_server.dsn(dbname=audit_db)) as s:
        yield s


def _fill(store, n=6):
    return store.append(
        [
            new_record(
                "statement",
                ts=f"2024-05-01T12:00:{i:02d}Z",
                sub=["alice", "bob"][i % 2],
                connection="app-db" if i < 4 else "billing",
                statement=f"select {i}",
                outcome="ok",
                duration_ms=0.1 * i,
                code="00000",
                details={"bytes_out": i, "params": ["ä", None]},
            )
            for i in range(n)
        ]
    )


def _tamper(pg_server, audit_db, *statements):
    with pg_server.connect(audit_db) as conn:
        conn.execute("ALTER TABLE hoop_audit DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)


def test_wrong_password_is_refused(pg_server):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn(user="app_user", password="not-the-password", dbname="app"), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.dsn(password="nope"), connect_timeout=5)
    with psycopg.connect(pg_server.dsn(user="app_user", dbname="app")) as conn:
        assert conn.execute("SELECT current_user, count(*) FROM customers").fetchone() == ("app_user", 3)
    assert pg_server.role_exists("app_user") and not pg_server.role_exists("nobody")


def test_open_store_picks_postgres_and_round_trips(store):
    assert isinstance(store, PostgresStore)
    stored = _fill(store)
    assert [r["seq"] for r in stored] == [1, 2, 3, 4, 5, 6]
    assert store.query() == stored
    assert [r["seq"] for r in store.query(sub="alice")] == [1, 3, 5]
    assert [r["seq"] for r in store.query(connection="billing", sub="bob")] == [6]
    assert [r["seq"] for r in store.query(since="2024-05-01T12:00:04Z")] == [5, 6]
    assert [r["seq"] for r in store.query(kind="statement", limit=2)] == [5, 6]
    assert store.query(kind="connect") == []
    report = store.verify()
    assert report.ok and report.checked == 6


def test_triggers_refuse_update_delete_truncate(store, pg_server, audit_db):
    _fill(store, 2)
    with pg_server.connect(audit_db) as conn:
        for statement in ("UPDATE hoop_audit SET sub = 'x'", "DELETE FROM hoop_audit", "TRUNCATE hoop_audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)


def test_tampering_is_found(store, pg_server, audit_db):
    _fill(store, 8)
    _tamper(
        pg_server,
        audit_db,
        "UPDATE hoop_audit SET statement = 'select 42' WHERE seq = 2",  # edit
        "DELETE FROM hoop_audit WHERE seq = 5",  # delete
    )
    # swap the contents of seq 7 and 8
    with pg_server.connect(audit_db) as conn:
        conn.execute("ALTER TABLE hoop_audit DISABLE TRIGGER USER")
        conn.execute(
            "UPDATE hoop_audit a SET statement = b.statement, hash = b.hash, prev_hash = b.prev_hash, "
            "duration_ms = b.duration_ms, ts = b.ts, sub = b.sub, connection = b.connection, details = b.details "
            "FROM hoop_audit b WHERE (a.seq, b.seq) IN ((7, 8), (8, 7))"
        )
    assert store.verify().problems == [
        "seq 2: hash mismatch, the record was changed after it was written",
        "seq 5 missing before seq 6 (deleted, or moved elsewhere)",
        "seq 7: hash mismatch, the record was changed after it was written",
        "seq 7: prev_hash does not match the hash of seq 6, a record was replaced, inserted or moved",
        "seq 8: hash mismatch, the record was changed after it was written",
        "seq 8: prev_hash does not match the hash of seq 7, a record was replaced, inserted or moved",
    ]


def test_forged_insert_is_found(store, pg_server, audit_db):
    stored = _fill(store, 3)
    forged = dict(stored[1], sub="mallory")
    forged["hash"] = record_hash(forged)
    with pg_server.connect(audit_db) as conn:
        conn.execute(
            "INSERT INTO hoop_audit (seq, ts, kind, sub, prev_hash, hash) VALUES (4, %s, 'connect', 'mallory', %s, %s)",
            (stored[-1]["ts"], stored[0]["hash"], forged["hash"]),
        )
    assert store.verify().problems == [
        "seq 4: hash mismatch, the record was changed after it was written",
        "seq 4: prev_hash does not match the hash of seq 3, a record was replaced, inserted or moved",
    ]


REPLICA = textwrap.dedent(
    """
    import os, sys
    from hoopcli.gateway.audit import AuditWriter, new_record, open_store
    store = open_store(os.environ["HOOP_TEST_AUDIT_DSN"])
    writer = AuditWriter(store, batch_size=7, interval=0.001)
    for i in range(300):
        writer.submit(new_record("statement", sub=sys.argv[1], statement=f"select {i}"))
    assert writer.close(timeout=60)
    store.close()
    """
)


def test_replicas_appending_concurrently_build_one_chain(pg_server, audit_db):
    dsn = pg_server.dsn(dbname=audit_db)
    env = dict(os.environ, HOOP_TEST_AUDIT_DSN=dsn)  # the password stays out of argv
    procs = [
        subprocess.Popen([sys.executable, "-c", REPLICA, f"replica{n}"], env=env, cwd=os.getcwd()) for n in range(2)
    ]
    stores = [PostgresStore(dsn) for _ in range(2)]

    def local(s, who):
        for i in range(30):
            s.append([new_record("statement", sub=who, statement=str(i)) for _ in range(5)])

    threads = [threading.Thread(target=local, args=(s, f"thread{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=60) == 0
    report = stores[0].verify()
    assert report.ok, report.problems
    assert report.checked == report.last_seq == 2 * 300 + 2 * 150
    assert len(stores[0].query(sub="replica1")) == 300
    assert [r["statement"] for r in stores[1].query(sub="replica0")] == [f"select {i}" for i in range(300)]
    for s in stores:
        s.close()


def test_a_role_with_only_insert_and_select_can_append(store, pg_server, audit_db):
    _fill(store, 1)
    pg_server.sql("CREATE ROLE audit_writer LOGIN PASSWORD 'audit-writer-pw'")
    with pg_server.connect(audit_db) as conn:
        conn.execute("GRANT INSERT, SELECT ON hoop_audit TO audit_writer")
    dsn = pg_server.dsn(user="audit_writer", password="audit-writer-pw", dbname=audit_db)
    with PostgresStore(dsn) as limited:
        limited.append([new_record("connect", sub="carol", outcome="ok")])
        assert limited.verify().ok
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM hoop_audit")
    pg_server.sql("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM audit_writer", dbname=audit_db)
    pg_server.sql("DROP ROLE audit_writer")


def test_writer_reconnects_after_the_backend_is_killed(store, pg_server, audit_db):
    writer = AuditWriter(store, interval=0.01, initial_backoff=0.01)
    writer.submit(new_record("connect", sub="alice"))
    assert writer.flush(10)
    pg_server.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hoop-audit' AND datname = %s",
        params=(audit_db,),
    )
    for i in range(5):
        writer.submit(new_record("statement", sub="alice", statement=str(i)))
    assert writer.flush(10)
    assert writer.healthy
    assert writer.close(5)
    report = store.verify()
    assert report.ok and report.checked == 6
