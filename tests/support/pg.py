"""Session fixture `pg_server`: a throw-away PostgreSQL 15 cluster with real password checks.

The cluster runs as the `postgres` user when the tests run as root (initdb refuses root),
listens on a free 127.0.0.1 port with scram-sha-256 for every connection, and is stopped and
removed at the end of the session. It holds a database `app` (tables `customers`, `orders`)
and a login role `app_user` with a random password. No password ever appears in argv: the
superuser's reaches initdb through a 0600 file that is deleted right after.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

PG_BINDIRS = ("/usr/lib/postgresql/15/bin",)
APP_SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE NOT NULL
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    amount numeric(10, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO customers (name, email) VALUES
    ('Ada Lovelace', 'ada@example.com'), ('Alan Turing', 'alan@example.com'), ('Grace Hopper', 'grace@example.com');
INSERT INTO orders (customer_id, amount) VALUES (1, 10.50), (1, 99.00), (2, 5.25), (3, 42.00);
"""


def _bindir() -> Path | None:
    for candidate in PG_BINDIRS:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    host: str
    port: int
    superuser: str
    superpassword: str = field(repr=False)
    app_user: str = "app_user"
    app_password: str = field(default="", repr=False)
    app_db: str = "app"
    datadir: Path | None = None
    sockdir: Path | None = None

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
        """postgresql://user:password@127.0.0.1:port/dbname (superuser and `postgres` by default;
        the known password is filled in for the superuser and app_user)."""
        user = user or self.superuser
        if password is None:
            password = {self.superuser: self.superpassword, self.app_user: self.app_password}.get(user)
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname or 'postgres', safe='')}"

    def connect(self, dbname: str = "postgres", **kwargs):
        import psycopg

        return psycopg.connect(self.dsn(dbname=dbname), autocommit=True, connect_timeout=10, **kwargs)

    def sql(self, statement, dbname: str = "postgres", params=None):
        """Run one statement as the superuser (autocommit); the rows if it returns any, else None."""
        with self.connect(dbname) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description is not None else None

    def role_exists(self, name: str) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(name,)))

    def database_exists(self, name: str) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_database WHERE datname = %s", params=(name,)))


class _Cluster:
    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="hoop-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.sockdir.mkdir()
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            for path in (self.root, self.sockdir):
                os.chown(path, self.uid, self.gid)

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )

    def initdb(self, superuser: str, password: str) -> None:
        fd, pwfile = tempfile.mkstemp(prefix="pw-", dir=self.root)
        try:
            os.fchmod(fd, 0o600)
            if self.as_postgres:
                os.fchown(fd, self.uid, self.gid)
            os.write(fd, password.encode() + b"\n")
            os.close(fd)
            done = self.run(
                "initdb", "-D", str(self.datadir), "-U", superuser, "--auth=scram-sha-256",
                f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync",
            )
        finally:
            os.unlink(pwfile)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def start(self, port: int) -> bool:
        options = (
            f"-p {port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        done = self.run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", options,
                        "-w", "-t", "30", "start")
        return done.returncode == 0

    def log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "20", "stop", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        pidfile = self.datadir / "postmaster.pid"
        if pidfile.exists():  # still up: stop the postmaster we started, by its pid
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
                time.sleep(0.5)
            except (OSError, ValueError, IndexError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    cluster = _Cluster(bindir)
    superuser, superpassword = "postgres", secrets.token_urlsafe(24)
    try:
        cluster.initdb(superuser, superpassword)
        for _ in range(3):
            port = _free_port()
            if cluster.start(port):
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start:\n{cluster.log_tail()}")
        server = PgServer("127.0.0.1", port, superuser, superpassword,
                          app_password=secrets.token_urlsafe(18),
                          datadir=cluster.datadir, sockdir=cluster.sockdir)
        from psycopg import sql

        server.sql(sql.SQL("CREATE ROLE app_user LOGIN PASSWORD {}").format(sql.Literal(server.app_password)))
        server.sql("CREATE DATABASE app")
        with server.connect("app") as conn:
            conn.execute(APP_SCHEMA)
            conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user")
            conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app_user")
        yield server
    finally:
        cluster.stop()
