"""What a narrower audit row would save the SQLite insert (bench/proposals/README.md).

    .venv/bin/python bench/audit_row_width.py

Inserts pgbench-like statement rows in batches of 500 (WAL, synchronous=NORMAL, as the store
does) into today's 20-column table with its four indexes and into a 14-column table whose
session fields (sub, email, issuer, connection, db_user, database) would live once per session
elsewhere, with two indexes; prints user and system CPU per row, twice each, interleaved.
"""
import sqlite3, tempfile, os, time, random, resource
N = 500; B = 200
def bench(label, schema, row):
    d = tempfile.mkdtemp(); c = sqlite3.connect(os.path.join(d, "a.db"), isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
    c.executescript(schema)
    ncol = len(row(0, 0.0))
    sql = f"INSERT INTO audit VALUES ({','.join('?' * ncol)})"
    seq = 0; ts = time.time()
    def batch():
        nonlocal seq, ts
        rows = []
        for i in range(N):
            seq += 1; ts += 2e-5
            rows.append(row(seq, ts))
        c.execute("BEGIN IMMEDIATE"); c.executemany(sql, rows); c.execute("COMMIT")
    for _ in range(20): batch()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(B): batch()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    n = N * B
    print(f"{label:34s} user {(r1.ru_utime-r0.ru_utime)/n*1e6:5.2f} sys {(r1.ru_stime-r0.ru_stime)/n*1e6:5.2f} µs/row (incl. building the row)")
h = "a" * 64
stmt = "SELECT abalance FROM pgbench_accounts WHERE aid = 123456;"
def wide(seq, ts):
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".123456Z"
    return (seq, t, "statement", "0123456789abcdef", "bench", "bench@example.com", "http://127.0.0.1:41949", "bench-rec", "postgres", "bench", stmt, t, 0.123, "ok", "SELECT 1", None, None, '{"kind": "query"}', h, h)
def narrow(seq, ts):
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".123456Z"
    return (seq, t, "statement", "0123456789abcdef", stmt, t, 0.123, "ok", "SELECT 1", None, None, '{"kind": "query"}', h, h)
cols_w = "seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, session_id TEXT, sub TEXT, email TEXT, issuer TEXT, connection TEXT, db_user TEXT, database TEXT, statement TEXT, started_at TEXT, duration_ms REAL, outcome TEXT, tag TEXT, code TEXT, message TEXT, details TEXT, prev_hash TEXT, hash TEXT"
cols_n = "seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, session_id TEXT, statement TEXT, started_at TEXT, duration_ms REAL, outcome TEXT, tag TEXT, code TEXT, message TEXT, details TEXT, prev_hash TEXT, hash TEXT"
ix4 = "CREATE INDEX a1 ON audit(sub, seq); CREATE INDEX a2 ON audit(connection, seq); CREATE INDEX a3 ON audit(session_id, seq); CREATE INDEX a4 ON audit(ts);"
ix2 = "CREATE INDEX a3 ON audit(session_id, seq); CREATE INDEX a4 ON audit(ts);"
for _ in range(2):
    bench("today: 20 columns, 4 indexes", f"CREATE TABLE audit ({cols_w});" + ix4, wide)
    bench("narrow: 14 columns, 2 indexes", f"CREATE TABLE audit ({cols_n});" + ix2, narrow)
