"""The SQLite store: append/query, verification, and what tampering with the file looks like."""

from __future__ import annotations

import json
import os
import sqlite3
import threading

import pytest

from hoopcli.gateway.audit import FIELDS, GENESIS, new_record, open_store, record_hash
from hoopcli.gateway.audit.sqlite import SQLiteStore


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "audit.db")


@pytest.fixture
def store(db_path):
    with open_store(db_path) as s:
        yield s


def _fill(store, n=6):
    people = ["alice", "bob"]
    return store.append(
        [
            new_record(
                "statement",
                ts=f"2024-05-01T12:00:{i:02d}Z",
                sub=people[i % 2],
                connection="app-db" if i < 4 else "billing",
                session_id=f"s{i // 3}",
                statement=f"select {i}",
                outcome="ok",
                duration_ms=1.5 * i,
                details={"bytes_in": i},
            )
            for i in range(n)
        ]
    )


def _raw(db_path):
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    return conn


def test_open_store_urls(tmp_path):
    for target in (f"sqlite://{tmp_path}/a.db", str(tmp_path / "b.db")):
        with open_store(target) as s:
            assert isinstance(s, SQLiteStore)
    assert (tmp_path / "a.db").exists()
    with pytest.raises(ValueError, match="scheme"):
        open_store("mysql://x/y")


def test_wal_mode_and_append_only_triggers(store, db_path):
    _fill(store, 2)
    assert os.stat(db_path).st_mode & 0o777 == 0o600
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET sub = 'mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit")


def test_append_assigns_seq_and_returns_what_query_reads(store):
    stored = _fill(store)
    assert [r["seq"] for r in stored] == list(range(1, 7))
    assert stored[0]["prev_hash"] == GENESIS
    assert store.query() == stored
    more = store.append([new_record("session_end", sub="alice")])
    assert more[0]["seq"] == 7 and more[0]["prev_hash"] == stored[-1]["hash"]
    assert store.append([]) == []


def test_query_filters(store):
    _fill(store)
    assert [r["seq"] for r in store.query(sub="alice")] == [1, 3, 5]
    assert [r["seq"] for r in store.query(connection="billing")] == [5, 6]
    assert [r["seq"] for r in store.query(sub="bob", connection="app-db")] == [2, 4]
    assert [r["seq"] for r in store.query(since="2024-05-01T12:00:03Z")] == [4, 5, 6]
    assert [r["seq"] for r in store.query(limit=2)] == [5, 6]  # the newest, in seq order
    assert [r["seq"] for r in store.query(session_id="s0")] == [1, 2, 3]
    assert store.query(kind="connect") == []
    assert store.query(kind="statement", limit=1)[0]["details"] == {"bytes_in": 5}


def test_verify_passes_and_survives_reopen(db_path):
    with open_store(db_path) as s:
        _fill(s)
    with open_store(db_path) as s:
        s.append([new_record("connect", sub="carol", outcome="refused", code=403)])
        report = s.verify()
    assert report.ok and report.checked == 7 and report.problems == []


def test_edited_field_is_found(store, db_path):
    _fill(store)
    _raw(db_path).execute("UPDATE audit SET statement = 'select 42' WHERE seq = 3")
    report = store.verify()
    assert not report.ok
    assert report.problems == ["seq 3: hash mismatch, the record was changed after it was written"]


def test_edited_and_rehashed_record_is_found_at_the_next(store, db_path):
    stored = _fill(store)
    forged = dict(stored[2], sub="mallory")
    forged["hash"] = record_hash(forged)
    _raw(db_path).execute("UPDATE audit SET sub = ?, hash = ? WHERE seq = 3", ("mallory", forged["hash"]))
    problems = store.verify().problems
    assert len(problems) == 1 and problems[0].startswith("seq 4: prev_hash does not match the hash of seq 3")


def test_deleted_row_is_found(store, db_path):
    _fill(store)
    _raw(db_path).execute("DELETE FROM audit WHERE seq = 4")
    report = store.verify()
    assert report.problems == ["seq 4 missing before seq 5 (deleted, or moved elsewhere)"]
    assert report.checked == 5


def test_inserted_row_is_found(store, db_path):
    stored = _fill(store)
    conn = _raw(db_path)
    # make room after seq 2 and slip a well-formed record in
    for seq in range(6, 2, -1):
        conn.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
    forged = dict(stored[2], seq=3, sub="mallory", statement="grant all to mallory", prev_hash=stored[1]["hash"])
    forged["hash"] = record_hash(forged)
    row = {**forged, "details": json.dumps(forged["details"])}
    conn.execute(f"INSERT INTO audit ({', '.join(f'{chr(34)}{k}{chr(34)}' for k in FIELDS)}) "
                 f"VALUES ({', '.join('?' for _ in FIELDS)})", [row[k] for k in FIELDS])
    assert store.query(sub="mallory")[0]["hash"] == record_hash(store.query(sub="mallory")[0])  # well-formed
    problems = store.verify().problems
    # the forged seq 3 is well-formed; the records pushed down no longer match their seq
    assert problems[:2] == [
        "seq 4: hash mismatch, the record was changed after it was written",
        "seq 4: prev_hash does not match the hash of seq 3, a record was replaced, inserted or moved",
    ]
    assert [p.split(":")[0] for p in problems[2:]] == ["seq 5", "seq 6", "seq 7"]


def test_forged_row_at_the_end_is_found(store, db_path):
    stored = _fill(store)
    _raw(db_path).execute(
        "INSERT INTO audit (seq, ts, kind, sub, prev_hash, hash) VALUES (9, ?, 'connect', 'mallory', ?, ?)",
        (stored[-1]["ts"], stored[-1]["hash"], "f" * 64),
    )
    problems = store.verify().problems
    assert "seq 9: hash mismatch, the record was changed after it was written" in problems
    assert "seq 7..8 missing before seq 9 (deleted, or moved elsewhere)" in problems


def test_swapped_rows_are_found(store, db_path):
    _fill(store)
    conn = _raw(db_path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(audit)") if r[1] != "seq"]
    rows = {seq: conn.execute(f"SELECT {', '.join(columns)} FROM audit WHERE seq = ?", (seq,)).fetchone() for seq in (2, 5)}
    assign = ", ".join(f'"{c}" = ?' for c in columns)
    conn.execute(f"UPDATE audit SET {assign} WHERE seq = 2", rows[5])
    conn.execute(f"UPDATE audit SET {assign} WHERE seq = 5", rows[2])
    problems = store.verify().problems
    assert "seq 2: hash mismatch, the record was changed after it was written" in problems
    assert "seq 5: hash mismatch, the record was changed after it was written" in problems
    assert any(p.startswith("seq 3: prev_hash") for p in problems)


def test_details_that_are_no_longer_json_are_reported(store, db_path):
    _fill(store, 2)
    _raw(db_path).execute("UPDATE audit SET details = '{broken' WHERE seq = 2")
    assert store.verify().problems == ["seq 2: hash mismatch, the record was changed after it was written"]


def test_two_stores_on_one_file_extend_one_chain(db_path):
    stores = [open_store(db_path), open_store(db_path)]

    def work(s, who):
        for i in range(40):
            s.append([new_record("statement", sub=who, statement=str(i)) for _ in range(3)])

    threads = [threading.Thread(target=work, args=(s, f"replica{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = stores[0].verify()
    assert report.ok and report.checked == 240 and report.last_seq == 240
    for s in stores:
        s.close()
