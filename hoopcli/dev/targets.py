"""The throw-away targets behind `hoop dev`: a PostgreSQL cluster from the local server
binaries, or a TCP echo server when there are none. DEVELOPMENT ONLY.

How the demo database is reached without a password anyone can see: the connection uses the
`none` broker (hoop issues no secret), and the cluster's pg_hba.conf trusts exactly one
thing — the role `demo_user` connecting to the database `demo` from 127.0.0.1 — while every
other TCP login needs scram-sha-256 and the cluster superuser has no password at all (it is
reachable only through peer authentication on a private Unix socket, which `hoop dev` itself
uses to create the schema). `demo_user` does get a random password, but only its SCRAM
verifier is computed here and sent to the server: the plain text never leaves this process
and is dropped at once, so nothing secret is printed, logged or written anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from hoopcli.errors import ConfigError, Unreachable

DEMO_DB = "demo"
DEMO_ROLE = "demo_user"
DEMO_TABLE = "customers"

DEMO_SCHEMA = f"""
CREATE TABLE {DEMO_TABLE} (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {DEMO_TABLE} (name, email) VALUES
    ('Ada Lovelace', 'ada@example.com'),
    ('Alan Turing', 'alan@example.com'),
    ('Grace Hopper', 'grace@example.com');
-- demo_user owns the table, so a DROP it sends would succeed: only the gateway's policy
-- (hold for approval) stands between it and the table.
ALTER TABLE {DEMO_TABLE} OWNER TO {DEMO_ROLE};
"""

# Development only. The gateway is the way in: demo_user may log in to `demo` from
# 127.0.0.1 without a password (hoop's `none` broker issues none), everything else over TCP
# needs scram-sha-256, and the superuser has no password at all (peer, over a Unix socket in
# a private folder). Other programs on this machine could also use the trust line while the
# cluster runs; that is why it only ever exists inside `hoop dev`, on a random port.
PG_HBA = f"""# hoop dev: a throw-away, DEVELOPMENT-ONLY cluster (see hoopcli/dev/targets.py).
# TYPE  DATABASE  USER          ADDRESS        METHOD
local   all       all                          peer
host    {DEMO_DB:<9} {DEMO_ROLE:<13} 127.0.0.1/32   trust
host    all       all           127.0.0.1/32   scram-sha-256
host    all       all           all            reject
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677): the server can check the
    password with it but never learns the password itself."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# ---- PostgreSQL ---------------------------------------------------------------------------


def find_pg_bindir() -> Path | None:
    """The folder with initdb and pg_ctl: PATH first, then /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _version_key(path: str) -> tuple:
    part = Path(path).parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit()) or (0,)


def postgres_usable() -> tuple[Path | None, str]:
    """(server bindir, "") when a demo cluster can run here, else (None, the reason)."""
    bindir = find_pg_bindir()
    if bindir is None:
        return None, "no PostgreSQL server binaries (initdb, pg_ctl) found"
    if find_psql(bindir) is None:
        return None, "no psql client found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root, and there is no `postgres` user to run PostgreSQL as"
        if find_runuser() is None:
            return None, "running as root, and `runuser` (util-linux) was not found to run PostgreSQL as `postgres`"
    return bindir, ""


def find_runuser() -> str | None:
    """runuser lives in /usr/sbin, which a user's PATH may not include."""
    return shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")


def find_psql(bindir: Path | None) -> str | None:
    if bindir is not None and (bindir / "psql").exists():
        return str(bindir / "psql")
    return shutil.which("psql")


class DemoPostgres:
    """A throw-away cluster: started, given the demo schema, stopped and removed."""

    def __init__(self, bindir: Path, root: Path):
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        self.uid = self.gid = None
        if self.as_postgres:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ConfigError("running as root, and there is no `postgres` user to run PostgreSQL as", "Run `hoop dev` as a normal user.") from None
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._own_root: Path | None = None
        self.root = self._prepare_root(root)
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        # Unix socket paths are limited to ~107 bytes; a long work dir gets a short socket dir.
        self.sockdir = self.root / "sock"
        self._own_sockdir = len(str(self.sockdir)) > 80
        if self._own_sockdir:
            self.sockdir = Path(tempfile.mkdtemp(prefix="hoop-pgs-"))
        else:
            self.sockdir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.sockdir)
        self.port = 0
        self.started = False
        self.version = ""

    def _prepare_root(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.as_postgres:
            return root
        self._chown(root)
        # The postgres user must be able to reach the folder; a given work dir under /root
        # cannot be, so the cluster then lives in a temp dir of its own.
        if self._run_plain(["test", "-w", str(root), "-a", "-x", str(root)]).returncode == 0:
            return root
        other = Path(tempfile.mkdtemp(prefix="hoop-dev-pg-"))
        self._chown(other)
        self._own_root = other
        return other

    def _chown(self, path: Path) -> None:
        if self.as_postgres:
            os.chown(path, self.uid, self.gid)

    def _run_plain(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        if self.as_postgres:
            argv = [find_runuser() or "runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, stdin=kw.pop("stdin", subprocess.DEVNULL), capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)

    def run(self, *argv: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]) if (self.bindir / argv[0]).exists() else argv[0], *argv[1:]]
        if self.as_postgres:
            cmd = [find_runuser() or "runuser", "-u", "postgres", "--", *cmd]
        # A session of its own: a Ctrl-C in hoop's terminal must not reach the postmaster
        # before hoop stops it in order.
        return subprocess.run(
            cmd, cwd=self.root, input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout, start_new_session=True,
        )

    def start(self) -> None:
        if self.datadir.exists():  # a kept --workdir: the cluster is throw-away, every run starts fresh
            shutil.rmtree(self.datadir)
        done = self.run("initdb", "-D", str(self.datadir), "--auth-local=peer", "--auth-host=scram-sha-256",
                        "-E", "UTF8", "--no-locale", "--no-sync")
        if done.returncode != 0:
            raise Unreachable(f"initdb failed: {done.stderr.strip()[-300:]}", "Check the PostgreSQL installation, or use --workdir on a local disk.")
        (self.datadir / "pg_hba.conf").write_text(PG_HBA)
        for _ in range(3):
            self.port = free_port()
            options = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            done = self.run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", options, "-w", "-t", "30", "start")
            if done.returncode == 0:
                self.started = True
                break
        else:
            raise Unreachable(f"PostgreSQL did not start: {self.log_tail()}", "See the server log in the work dir (--workdir keeps it).")
        self._load_schema()

    def _load_schema(self) -> None:
        # The plain-text password exists only in this function; only its verifier is sent.
        verifier = scram_verifier(secrets.token_urlsafe(24))
        script = (
            f"CREATE ROLE {DEMO_ROLE} LOGIN PASSWORD '{verifier}';\n"
            f"CREATE DATABASE {DEMO_DB};\n"
            f"REVOKE ALL ON DATABASE {DEMO_DB} FROM PUBLIC;\n"
            f"GRANT CONNECT ON DATABASE {DEMO_DB} TO {DEMO_ROLE};\n"
            f"\\connect {DEMO_DB}\n{DEMO_SCHEMA}"
        )
        done = self.psql("postgres", script)
        if done.returncode != 0:
            raise Unreachable(f"could not create the demo database: {done.stderr.strip()[-300:]}")
        version = self.psql("postgres", "SHOW server_version;", tuples=True)
        self.version = version.stdout.strip().split(" ")[0] if version.returncode == 0 else ""

    def psql(self, dbname: str, script: str, tuples: bool = False) -> subprocess.CompletedProcess:
        """Run SQL as the cluster owner over the private Unix socket (peer authentication)."""
        args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.sockdir), "-p", str(self.port), "-d", dbname]
        if tuples:
            args += ["-t", "-A"]
        return self.run(*args, "-f", "-", input=script, timeout=30)

    def table_exists(self, table: str = DEMO_TABLE) -> bool:
        done = self.psql(DEMO_DB, f"SELECT to_regclass('public.{table}') IS NOT NULL;", tuples=True)
        return done.returncode == 0 and done.stdout.strip() == "t"

    def log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.datadir.exists():
            try:
                self.run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "20", "stop", timeout=30)
            except subprocess.TimeoutExpired:
                pass
            pidfile = self.datadir / "postmaster.pid"
            if pidfile.exists():  # still up: stop the postmaster this cluster started, by its pid
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
                    time.sleep(0.3)
        if self._own_sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
        if self._own_root is not None:
            shutil.rmtree(self._own_root, ignore_errors=True)


# ---- a TCP echo target --------------------------------------------------------------------


class EchoServer:
    """What `hoop dev` offers when no PostgreSQL server binaries are installed."""

    def __init__(self):
        class Echo(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(300)
                with contextlib.suppress(OSError):
                    while data := self.request.recv(65536):
                        self.request.sendall(data)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, name="hoop-dev-echo", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
