"""PostgreSQL audit store: one chain shared by every gateway replica behind a load balancer.

Each append is one transaction: `pg_advisory_xact_lock(key)` (a constant derived from the table
name) serialises appenders across all replicas; the head (highest seq, via the primary key) is
read, the batch is linked onto it and INSERTed, and COMMIT releases the lock, so the next appender
on any replica continues a committed head: one chain, no gaps, no forks. The primary key on seq is
the backstop; triggers refuse UPDATE, DELETE and TRUNCATE. A batch commits whole or not at all
and the writer retries a failed one.

Least privilege: the triggers only bind a role that does not own the table (an owner can
ALTER TABLE … DISABLE TRIGGER). An admin creates the trail with `admin_schema()` (`hoop gateway
audit-schema` prints it, `hoop gateway init --admin-dsn` runs it): the admin owns it and the
gateway's role gets INSERT and SELECT only. `trail_findings()` says what a role could still do
to the trail; the gateway reports it at start. A missing table is still created by the store
itself (development), and is then the gateway's own.
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
    """The table, its indexes and its append-only triggers; each statement safe to run again."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {table} (
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
        f'CREATE INDEX IF NOT EXISTS {table}_sub ON {table} ("sub", "seq")',
        f'CREATE INDEX IF NOT EXISTS {table}_connection ON {table} ("connection", "seq")',
        f'CREATE INDEX IF NOT EXISTS {table}_session ON {table} ("session_id", "seq")',
        f'CREATE INDEX IF NOT EXISTS {table}_ts ON {table} ("ts")',
        f"""CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
        f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
        f"""CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_append_only()""",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
        f"""CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()""",
    ]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def admin_schema(table: str, gateway_role: str) -> list[str]:
    """What an admin runs (as a role that is not the gateway's) so that the admin owns the
    trail and the gateway's role may only INSERT and SELECT: it can then neither disable the
    triggers nor UPDATE, DELETE or TRUNCATE. Safe to run again; takes over a table the gateway
    created itself (as a superuser or a member of the gateway's role)."""
    role = quote_ident(gateway_role)
    return [
        *_schema(table),
        f"ALTER TABLE {table} OWNER TO CURRENT_USER",
        f"ALTER FUNCTION {table}_append_only() OWNER TO CURRENT_USER",
        f"REVOKE ALL ON {table} FROM PUBLIC",
        f"REVOKE ALL ON {table} FROM {role}",
        f"GRANT SELECT, INSERT ON {table} TO {role}",
    ]


def admin_schema_script(table: str, gateway_role: str) -> str:
    """admin_schema() as one psql script, in a transaction."""
    body = ";\n".join(" ".join(line.strip() for line in statement.splitlines()) for statement in admin_schema(table, gateway_role))
    return f"-- hoop audit trail: run as the admin role that owns it, not as {quote_ident(gateway_role)}\nBEGIN;\n{body};\nCOMMIT;\n"


_NEEDED_TRIGGERS = ("no_change", "no_truncate")
_EXTRA_PRIVILEGES = ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES")


def trail_findings(conn, table: str, role: str | None = None) -> tuple[bool, list[str]]:
    """(the table exists, what lets `role` (default: the connected one) rewrite or escape the
    trail, or keeps it from appending). Empty findings: an admin owns the table, its triggers
    are on, and the role may only INSERT and SELECT."""
    who = conn.execute("SELECT coalesce(%s, current_user::text)", (role,)).fetchone()[0]
    found = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (who,)).fetchone()
    findings = []
    if found is not None and found[0]:
        findings.append(f"role {who} is a superuser: it can disable the triggers and rewrite any table")
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]:
        return False, findings
    owner, member = conn.execute(
        "SELECT pg_get_userbyid(relowner), pg_has_role(%s, relowner, 'MEMBER') FROM pg_class WHERE oid = to_regclass(%s)",
        (who, table),
    ).fetchone()
    if member:
        findings.append(f"role {who} owns table {table} (owner: {owner}): it can ALTER TABLE … DISABLE TRIGGER and delete records")
    extra = [p for p in _EXTRA_PRIVILEGES if conn.execute("SELECT has_table_privilege(%s, %s, %s)", (who, table, p)).fetchone()[0]]
    if extra and not member:
        findings.append(f"role {who} has {', '.join(extra)} on {table}: it needs INSERT and SELECT only")
    missing = [p for p in ("INSERT", "SELECT") if not conn.execute("SELECT has_table_privilege(%s, %s, %s)", (who, table, p)).fetchone()[0]]
    if missing:
        findings.append(f"role {who} lacks {' and '.join(missing)} on {table}: the gateway cannot append")
    findings += _trigger_findings(conn, table)
    if _can_set_replication_role(conn, who):
        findings.append(f"role {who} may SET session_replication_role, which turns the triggers off for its session")
    return True, findings


def _trigger_findings(conn, table: str) -> list[str]:
    states = dict(conn.execute(
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal", (table,)
    ).fetchall())
    findings = []
    for suffix in _NEEDED_TRIGGERS:
        state = states.get(f"{table}_{suffix}")
        if state is None:
            findings.append(f"trigger {table}_{suffix} is missing: records can be changed or deleted")
        elif state not in ("O", "A"):
            findings.append(f"trigger {table}_{suffix} is disabled: records can be changed or deleted")
    return findings


def _can_set_replication_role(conn, who: str) -> bool:
    if int(conn.execute("SHOW server_version_num").fetchone()[0]) < 150000:
        return False  # superuser-only before 15 (reported above)
    row = conn.execute(
        "SELECT NOT r.rolsuper AND has_parameter_privilege(%s, 'session_replication_role', 'SET') FROM pg_roles r WHERE rolname = %s",
        (who, who),
    ).fetchone()
    return bool(row and row[0])


def scrub(text: str, dsn: str) -> str:
    """An error message with the DSN's password taken out: libpq quotes parts of a bad URI
    (a bad percent-encoding, an unclosed IPv6 bracket) and so may quote the password."""
    from .store import public_url

    text = text.replace(dsn, public_url(dsn))
    for secret in _password_spellings(dsn):
        text = text.replace(secret, "***")
    return text


def _password_spellings(dsn: str) -> set[str]:
    """The password of a URL's userinfo and of any *password query parameter, as written and
    percent-decoded (at least 4 characters: a shorter one would garble every message)."""
    from urllib.parse import unquote

    rest = dsn.partition("://")[2]
    authority = rest
    for stop in "/?#":
        authority = authority.split(stop, 1)[0]
    userinfo = authority.rpartition("@")[0]
    found = [userinfo.partition(":")[2]] if ":" in userinfo else []
    for part in rest.partition("?")[2].split("&"):
        name, _, value = part.partition("=")
        if "password" in name.lower():
            found.append(value)
    spellings = set(found) | {unquote(value) for value in found}
    return {s for s in spellings if len(s) >= 4}


def connect(dsn: str, **options):
    """psycopg.connect, with the password scrubbed from any error it raises."""
    import psycopg

    try:
        return psycopg.connect(dsn, **options)
    except psycopg.Error as exc:
        raise type(exc)(scrub(str(exc), dsn)) from None


def check_trail(dsn: str, table: str = DEFAULT_TABLE) -> tuple[bool, list[str]]:
    """trail_findings() as the role of `dsn` (the gateway's) sees itself; creates nothing."""
    with connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return trail_findings(conn, table)


def dsn_user(dsn: str) -> str | None:
    """The role a store URL logs in as, or None when libpq would pick it (PGUSER, the OS user)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn).get("user") or None
    except Exception:
        return None


def init_trail(admin_dsn: str, gateway_role: str, table: str = DEFAULT_TABLE) -> list[str]:
    """Run admin_schema() as the admin of `admin_dsn`, in one transaction; return what the
    gateway's role could still do to the trail (empty when least privilege holds)."""
    with connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        admin = conn.execute("SELECT current_user").fetchone()[0]
        if admin == gateway_role:
            raise ValueError(f"the admin role ({admin}) is the gateway's role: the gateway would own its own trail")
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (gateway_role,)).fetchone() is None:
            raise ValueError(f"role {gateway_role} does not exist: create the gateway's login role first")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(table),))
            for statement in admin_schema(table, gateway_role):
                conn.execute(statement)
        return trail_findings(conn, table, gateway_role)[1]


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
        return connect(
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

    def verify(self, heads=()) -> VerifyReport:
        # Its own connection and one snapshot: appends from any replica go on meanwhile.
        with connect(self._dsn, connect_timeout=self._connect_timeout) as conn:
            conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            return verify_records(self._iter_all(conn), heads=heads)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
