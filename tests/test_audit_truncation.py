"""Records deleted from the end of a store are found with the head the exports published.

The gateway's own writer process (AuditWriter.in_subprocess) stores records and writes the
JSONL export with its chain-head lines; the tail of the store is then deleted as the store's
owner can (SQLite: the file's owner drops the triggers; PostgreSQL: the table's owner disables
them), and `hoop audit verify` runs as a real subprocess: without a head it cannot tell, with
`--head-from` the export (or `--head SEQ:HASH`) it exits 1 naming the missing range.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3

import pytest

from hoopcli.gateway.audit import AuditWriter
from hoopcli.gateway.audit.export import newest_head
from tests.support.cli import REPO, run_subprocess

RECORDS = 300
KEEP = 250  # records left after the cut

_names = itertools.count()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOP_", "PG"))}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _record_through_the_writer_process(store_url: str, export, n: int = RECORDS) -> None:
    writer = AuditWriter.in_subprocess(store_url, [("jsonl", str(export))], interval=0.01)
    for i in range(n):
        writer.submit({"kind": "statement", "sub": "alice", "statement": f"select {i}"})
    assert writer.close(30), writer.last_error


def _verify(store: str, *args: str, **env) -> tuple[int, dict]:
    result = run_subprocess(["audit", "verify", "--store", store, *args, "--json"], _env(**env))
    assert result.out, result.err
    return result.code, json.loads(result.out)


def _assert_cut_is_named(code: int, report: dict) -> None:
    assert code == 1 and report["ok"] is False, report
    assert report["problems"] == [
        f"seq {KEEP + 1}..{RECORDS} missing: the published head is seq {RECORDS} but the store ends at seq {KEEP} "
        "(records deleted from the end of the trail)"
    ]


def test_sqlite_tail_deleted_by_the_files_owner_is_found_with_the_published_head(tmp_path):
    db, export = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    _record_through_the_writer_process(str(db), export)
    head = newest_head(export)
    assert head.seq == RECORDS  # the writer published the head at close

    code, report = _verify(str(db), "--head-from", str(export))
    assert code == 0 and report["ok"] and report["checked"] == RECORDS and report["heads"] == [str(head)]

    with sqlite3.connect(db) as conn:  # as the file's owner can: the triggers go first
        for (name,) in conn.execute("select name from sqlite_master where type = 'trigger'").fetchall():
            conn.execute(f'drop trigger "{name}"')
        conn.execute("delete from audit where seq > ?", (KEEP,))

    code, report = _verify(str(db))
    assert code == 0 and report["ok"] and report["checked"] == KEEP  # the chain alone cannot tell
    _assert_cut_is_named(*_verify(str(db), "--head-from", str(export)))
    _assert_cut_is_named(*_verify(str(db), "--head", f"{head.seq}:{head.hash}"))
    human = run_subprocess(["audit", "verify", "--store", str(db), "--head-from", str(export)], _env())
    assert human.code == 1 and f"seq {KEEP + 1}..{RECORDS} missing" in human.err


def test_sqlite_cut_then_regrown_is_found_from_the_same_export(tmp_path):
    """After the cut the gateway goes on appending: seqs 251… come back with other hashes, and
    the export's newest head matches them. The head it published before its seq went back does not."""
    db, export = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    _record_through_the_writer_process(str(db), export)
    with sqlite3.connect(db) as conn:
        for (name,) in conn.execute("select name from sqlite_master where type = 'trigger'").fetchall():
            conn.execute(f'drop trigger "{name}"')
        conn.execute("delete from audit where seq > ?", (KEEP,))
    _record_through_the_writer_process(str(db), export, n=100)  # the store now ends at seq 350
    code, report = _verify(str(db), "--head-from", str(export))
    assert code == 1 and report["last_seq"] == KEEP + 100
    assert [p for p in report["problems"] if p.startswith(f"seq {RECORDS}: hash differs from the published head {RECORDS}:")], report


@pytest.fixture
def pg_trail(pg_server):
    """An audit database owned by `trail_owner`, who created the table (via the store)."""
    name = f"trunc_{os.getpid()}_{next(_names)}"
    owner = f"trail_owner_{name}"
    pg_server.sql(f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-pw-{name}'")
    pg_server.sql(f"CREATE DATABASE {name} OWNER {owner}")
    dsn = pg_server.dsn(user=owner, password=f"owner-pw-{name}", dbname=name)
    yield dsn, pg_server.dsn(user=owner, dbname=name), f"owner-pw-{name}"  # the second without a password
    pg_server.sql(f"DROP DATABASE {name} WITH (FORCE)")
    pg_server.sql(f"DROP ROLE {owner}")


def test_postgres_tail_deleted_by_the_table_owner_is_found_with_the_published_head(pg_trail, tmp_path):
    import psycopg

    dsn, dsn_without_password, password = pg_trail
    export = tmp_path / "audit.jsonl"
    _record_through_the_writer_process(dsn, export)
    head = newest_head(export)
    assert head.seq == RECORDS

    # The password reaches `hoop audit verify` through PGPASSWORD, never argv.
    code, report = _verify(dsn_without_password, "--head-from", str(export), PGPASSWORD=password)
    assert code == 0 and report["ok"] and report["checked"] == RECORDS

    with psycopg.connect(dsn, autocommit=True) as conn:  # the owner can switch the triggers off
        conn.execute("ALTER TABLE hoop_audit DISABLE TRIGGER USER")
        assert conn.execute("DELETE FROM hoop_audit WHERE seq > %s", (KEEP,)).rowcount == RECORDS - KEEP

    code, report = _verify(dsn_without_password, PGPASSWORD=password)
    assert code == 0 and report["checked"] == KEEP  # the chain alone cannot tell
    _assert_cut_is_named(*_verify(dsn_without_password, "--head-from", str(export), PGPASSWORD=password))
    _assert_cut_is_named(*_verify(dsn_without_password, "--head", str(head), PGPASSWORD=password))


def test_head_options_need_a_store_and_a_well_formed_head(tmp_path):
    no_store = run_subprocess(["audit", "verify", "--head", "3:" + "a" * 64], _env(HOOP_GATEWAY="https://127.0.0.1:9"))
    assert no_store.code == 2 and "--store" in no_store.err
    db = tmp_path / "a.db"
    sqlite3.connect(db).close()
    bad = run_subprocess(["audit", "verify", "--store", str(db), "--head", "three:abc"], _env())
    assert bad.code == 2 and "SEQ:HASH" in bad.err
