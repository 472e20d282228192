"""SQLiteStore inserts a batch many rows to a statement (ROWS_PER_INSERT) and the rest one by
one: every batch size must come out as the same gap-free, verifiable chain in submit order."""

from __future__ import annotations

import sqlite3

import pytest

from hoopcli.gateway.audit.record import new_record
from hoopcli.gateway.audit.sqlite import ROWS_PER_INSERT, SQLiteStore, _insert_sql


@pytest.mark.parametrize("limit", [None, 999])  # this SQLite's own limit, and the pre-3.32 default
def test_every_batch_size_is_stored_whole_and_in_order(tmp_path, limit):
    store = SQLiteStore(tmp_path / "audit.db")
    assert store._rows_per_insert == ROWS_PER_INSERT  # SQLite 3.40 here takes 32,766 values
    if limit is not None:  # as an old SQLite would: 2,000 values to a statement are refused
        store._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        store._rows_per_insert = limit // 20
        store._insert_many = _insert_sql(store._rows_per_insert)
    sizes = [1, ROWS_PER_INSERT - 1, ROWS_PER_INSERT, ROWS_PER_INSERT + 1, 2 * ROWS_PER_INSERT + 3, 49, 50, 7]
    sent = []
    for size in sizes:
        batch = [new_record("statement", statement=f"select {len(sent) + k}", session_id="s1") for k in range(size)]
        sent += [r["statement"] for r in batch]
        store.append(batch)
    rows = store.query()
    assert [r["statement"] for r in rows] == sent
    assert [r["seq"] for r in rows] == list(range(1, len(sent) + 1))
    report = store.verify()
    assert report.ok and report.checked == len(sent)
    store.close()
