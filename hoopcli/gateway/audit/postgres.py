"""PostgreSQL audit store: one chain shared by every gateway replica behind a load balancer.

Each append is one transaction: `pg_advisory_xact_lock(key)` (a constant derived from the table
name) serialises appenders across all replicas; the head (highest seq, via the primary key) is
read, the batch is linked onto it and INSERTed, and COMMIT releases the lock, so the next appender
on any replica continues a committed head: one chain, no gaps, no forks. The primary key on seq is
the backstop; triggers refuse UPDATE, DELETE and TRUNCATE; the gateway role needs only INSERT and
SELECT. A batch commits whole or not at all and the writer retries a failed one.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Iterator

from .chain import GENESIS, VerifyReport, link, verify_records
from .record import FIELDS
from .store import AuditStore, filters, from_row, select_sql, to_row

DEFAULT_TABLE = "hoop_audit"


def lock_key(table: str) -> int:
    """The advisory-lock key (a signed 64-bit constant) every replica uses for `table`."""
    return int.from_bytes(hashlib.sha256(f"hoop audit chain:{table}".encode()).digest()[:8], "big", signed=True)


def _schema(table: str) -> list[str]:
    return [
        f"""CREATE TABLE {table} (
            "seq"         bigint PRIMARY KEY,
            "ts"          text NOT NULL,
            "kind"        text NOT NULL,
            "session_id"  text,
            "sub"         text,
            "email"       text,
            "issuer"      text,
            "connection"  text,
            "db_user"     text,
            "database"    text,
            "statement"   text,
            "started_at"  text,
            "duration_ms" double precision,
            "outcome"     text,
            "tag"         text,
            "code"        text,
            "message"     text,
            "details"     text,
            "prev_hash"   text NOT NULL,
            "hash"        text NOT NULL
        )""",
        f'CREATE INDEX {table}_sub ON {table} ("sub", "seq")',
        f'CREATE INDEX {table}_connection ON {table} ("connection", "seq")',
        f'CREATE INDEX {table}_session ON {table} ("session_id", "seq")',
        f'CREATE INDEX {table}_ts ON {table} ("ts")',
        f"""CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
        f"""CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_append_only()""",
        f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()""",
    ]


class PostgresStore(AuditStore):
    def __init__(
        self,
        dsn: str,
        *,
        table: str = DEFAULT_TABLE,
        connect_timeout: int = 10,
        lock_timeout_ms: int = 15_000,
    ):
        import psycopg  # optional dependency: hoopcli[postgres-store]

        if not table.replace("_", "").isalnum() or not table[0].isalpha():
            raise ValueError(f"bad audit table name: {table!r}")
        self._psycopg = psycopg
        self._dsn = dsn  # holds the password: never logged, never in an error message
        self.table = table
        self._key = lock_key(table)
        self._connect_timeout = connect_timeout
        self._lock_timeout_ms = int(lock_timeout_ms)
        self._lock = threading.Lock()
        self._conn = None
        self._columns = ", ".join(f'"{name}"' for name in FIELDS)
        with self._lock:
            self._ensure_schema(self._connection())

    def _connect(self):
        # A store that stops answering must fail the call (and so make the writer unhealthy),
        # not hang it: statements time out, and dead peers are found by TCP keepalives.
        return self._psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name="hoop-audit",
            options="-c statement_timeout=30000",
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )

    def _connection(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _ensure_schema(self, conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()[0]
            if not exists:
                for statement in _schema(self.table):
                    conn.execute(statement)

    def _append_normalized(self, records: list[dict]) -> list[dict]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {self._lock_timeout_ms}")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._key,))
                    row = conn.execute(f'SELECT "seq", "hash" FROM {self.table} ORDER BY "seq" DESC LIMIT 1').fetchone()
                    head_seq, head_hash = row if row else (0, GENESIS)
                    stored = link(records, head_seq, head_hash)
                    placeholders = ", ".join(["%s"] * len(FIELDS))
                    with conn.cursor() as cur:
                        cur.executemany(
                            f"INSERT INTO {self.table} ({self._columns}) VALUES ({placeholders})",
                            [to_row(r) for r in stored],
                        )
            except self._psycopg.OperationalError:
                conn.close()  # reconnect on the next attempt
                raise
        return stored

    def query(self, sub=None, connection=None, since=None, kind=None, limit=None, *, session_id=None) -> list[dict]:
        sql, params = select_sql(self.table, self._columns, filters(sub, connection, since, kind, session_id), limit, "%s")
        with self._lock:
            conn = self._connection()
            try:
                return [from_row(row) for row in conn.execute(sql, params).fetchall()]
            except self._psycopg.OperationalError:
                conn.close()
                raise

    def _iter_all(self, conn) -> Iterator[dict]:
        with conn.cursor(name="hoop_audit_verify") as cur:
            cur.itersize = 5000
            cur.execute(f'SELECT {self._columns} FROM {self.table} ORDER BY "seq"')
            for row in cur:
                yield from_row(row)

    def verify(self) -> VerifyReport:
        # Its own connection and one snapshot: appends from any replica go on meanwhile.
        with self._psycopg.connect(self._dsn, connect_timeout=self._connect_timeout) as conn:
            conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            return verify_records(self._iter_all(conn))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
