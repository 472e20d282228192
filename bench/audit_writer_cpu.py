"""CPU per statement record in the audit writer, step by step (issue 10).

    .venv/bin/python bench/audit_writer_cpu.py [CHECKOUT ...]

Builds pgbench-like statement tuples as the session recorder does (8 sessions, one shared
details dict), pickles them as the gateway sends them, and times what the writer process does
with each batch of 500: unpickle, prepare (normalize), link (hash chain), row building, the
SQLite insert and the commit, into a throw-away WAL store. With several checkouts (e.g. a
`git worktree` of an older commit) the runs alternate between them, twice each, so the
steps compare side by side on a noisy machine.
"""
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time

ROUNDS, N = 200, 500


def measure(checkout: str) -> str:
    sys.path.insert(0, checkout)
    from hoopcli.gateway.audit.chain import link
    from hoopcli.gateway.audit.masking import mask_sql_secrets
    from hoopcli.gateway.audit.sqlite import _COLUMNS, _PLACEHOLDERS, TABLE, SQLiteStore
    from hoopcli.gateway.audit.store import to_row
    from hoopcli.gateway.audit.writer import prepare

    try:
        from hoopcli.gateway.audit.statements import StatementNormalizer
    except ImportError:  # before the statement fast path had its own module
        from hoopcli.gateway.audit.record import StatementNormalizer

    query = {"kind": "query"}
    sessions = [{"session_id": f"{i:016x}", "sub": "bench", "email": "bench@example.com", "issuer": "http://127.0.0.1:41949",
                 "connection": "bench-rec", "kind": "statement", "db_user": "postgres", "database": "bench"} for i in range(8)]

    def batch() -> bytes:
        return pickle.dumps([(sessions[i % 8], time.time(), f"SELECT abalance FROM pgbench_accounts WHERE aid = {random.randint(1, 10**6)};",
                              random.random(), "ok", "SELECT 1", None, None, query) for i in range(N)], protocol=5)

    store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "audit.db"))
    conn, insert = store._conn, f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"
    steps = dict.fromkeys(("unpickle", "prepare", "link", "row", "insert", "commit"), 0.0)
    seq, head, clock = 0, "0" * 64, time.process_time
    for k in range(ROUNDS + 20):
        blob = batch()
        t0 = clock(); items = pickle.loads(blob)
        t1 = clock(); normalizer = StatementNormalizer(mask_sql_secrets); records = [prepare(r, normalizer) for r in items]
        t2 = clock(); conn.execute("BEGIN IMMEDIATE"); stored = link(records, seq, head)
        t3 = clock(); rows = [to_row(r) for r in stored]
        t4 = clock(); store._insert(rows) if hasattr(store, "_insert") else conn.executemany(insert, rows)
        t5 = clock(); conn.execute("COMMIT")
        t6 = clock()
        seq, head = seq + N, stored[-1]["hash"]
        if k >= 20:  # after a warm-up
            for name, a, b in zip(steps, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
                steps[name] += b - a
    assert store.verify().ok
    n = ROUNDS * N
    return "  ".join(f"{k} {v / n * 1e6:5.2f}" for k, v in steps.items()) + f"  | total {sum(steps.values()) / n * 1e6:5.2f} µs/record"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(measure(sys.argv[2]))
        sys.exit(0)
    checkouts = sys.argv[1:] or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    for _ in range(2):
        for checkout in checkouts:
            out = subprocess.run([sys.executable, __file__, "--one", checkout], capture_output=True, text=True, check=True).stdout
            print(f"{checkout}: {out.strip()}")
