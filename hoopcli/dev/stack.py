"""`hoop dev`: the dev issuer, a throw-away target and the gateway, all on 127.0.0.1, in one
process, until Ctrl-C. DEVELOPMENT ONLY.

The pieces:

* the dev issuer (`issuer.py`) on a free port;
* a demo target: a throw-away PostgreSQL cluster from the local server binaries when
  `initdb`/`pg_ctl` exist (run as the `postgres` user when hoop runs as root, as
  `tests/support/pg.py` does), otherwise a TCP echo server;
* the gateway in-process, on its own thread and event loop, with a development CA, a SQLite
  audit store in the work dir and one connection, `demo-db` (or `demo-echo`), under the
  default statement policy;
* a profile `dev` in hoop's config pointing at all of it.

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

import asyncio
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
from dataclasses import dataclass, field
from pathlib import Path

from hoopcli.errors import ConfigError, Interrupted, Unreachable, UsageError

PROFILE = "dev"
CLIENT_ID = "hoop-cli"
PG_CONNECTION = "demo-db"
TCP_CONNECTION = "demo-echo"
DEMO_DB = "demo"
DEMO_ROLE = "demo_user"
DEMO_TABLE = "customers"
PEOPLE = ("dba", "developers", "agents")
STARTUP_TIMEOUT = 30.0
BANNER = "DEVELOPMENT ONLY: a throw-away identity provider, target and gateway on this machine."

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
PG_HBA = f"""# hoop dev: a throw-away, DEVELOPMENT-ONLY cluster (see hoopcli/dev/stack.py).
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


# ---- the gateway on its own thread --------------------------------------------------------


class GatewayThread:
    """`serve()` on a private event loop; `stop()` cancels it, which closes every session and
    flushes the audit trail (serve's own `finally`), then closes the gateway."""

    def __init__(self, gateway, ssl_ctx):
        self.gateway = gateway
        self.ssl_ctx = ssl_ctx
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._served = False
        self.thread = threading.Thread(target=self._run, name="hoop-dev-gateway", daemon=True)

    def start(self, timeout: float = STARTUP_TIMEOUT) -> int:
        self.thread.start()
        if not self._ready.wait(timeout) or not self._served:
            self.stop()
            why = f"{type(self.error).__name__}: {self.error}" if self.error else "it did not start in time"
            raise Unreachable(f"the gateway could not listen ({why})", "Pick another --port, or leave it at 0 for a free one.")
        return self.port

    def _on_ready(self, port: int) -> None:
        self.port = port
        self._served = True
        self._ready.set()

    def _run(self) -> None:
        from hoopcli.gateway.app import serve

        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            # serve() tries to install SIGINT/SIGTERM handlers, which only the main thread
            # may do; it skips them here, and this thread stops it by cancelling the task.
            self.task = loop.create_task(serve(self.gateway, self.ssl_ctx, self._on_ready))
            loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 — reported by start()
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            if not self._served:  # serve() never reached its `finally`: close here
                with contextlib.suppress(Exception):
                    self.gateway.close()
            self._ready.set()

    def flush(self, timeout: float = 5.0) -> bool:
        return self.gateway.writer.flush(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        loop, task = self.loop, self.task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(task.cancel)
        if self.thread.is_alive():
            self.thread.join(timeout)


# ---- the stack ----------------------------------------------------------------------------


@dataclass
class DevStack:
    workdir: Path
    issuer: object
    gateway: GatewayThread
    gateway_url: str
    ca_file: str
    audit_store: str
    connection: str
    protocol: str
    config_dir: Path | None  # None: the user's own hoop config
    config_file: str
    postgres: DemoPostgres | None = None
    echo: EchoServer | None = None
    psql: str | None = None
    kept: bool = False  # a --workdir stays; a temp work dir is removed at exit
    no_postgres_because: str = ""  # why the target is the TCP echo server
    started_at: float = field(default_factory=time.time)

    @property
    def target_port(self) -> int:
        return self.postgres.port if self.postgres else self.echo.port

    def describe(self) -> dict:
        return {
            "issuer": self.issuer.url,
            "device_page": f"{self.issuer.url}/device",
            "auto_approve": self.issuer.auto_identity,
            "gateway": self.gateway_url,
            "ca_file": self.ca_file,
            "audit_store": self.audit_store,
            "connection": self.connection,
            "protocol": self.protocol,
            "target": f"127.0.0.1:{self.target_port}",
            "postgres_version": self.postgres.version if self.postgres else None,
            "no_postgres_because": self.no_postgres_because or None,
            "database": DEMO_DB if self.postgres else None,
            "table": DEMO_TABLE if self.postgres else None,
            "profile": PROFILE,
            "config_file": self.config_file,
            "workdir": str(self.workdir),
        }

    def next_commands(self) -> list[str]:
        p = f"hoop --profile {PROFILE}"
        if self.postgres:
            run = [
                f"{p} exec {self.connection} -- psql -c 'select * from {DEMO_TABLE}'",
                f"{p} exec {self.connection} -- psql -c 'drop table {DEMO_TABLE}'   # held for approval",
            ]
        else:
            run = [f"{p} connect {self.connection}   # then talk to the printed 127.0.0.1 port"]
        return [f"{p} login", *run, f"{p} audit list --store {self.audit_store}", f"{p} audit verify --store {self.audit_store}"]


def bypass_proxy_for_loopback() -> None:
    """Everything `hoop dev` talks to is on 127.0.0.1: never send it to an HTTP proxy."""
    for name in ("NO_PROXY", "no_proxy"):
        current = [p for p in os.environ.get(name, "").split(",") if p.strip()]
        for host in ("127.0.0.1", "localhost", "::1"):
            if host not in current:
                current.append(host)
        os.environ[name] = ",".join(current)


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_profile(issuer_url: str, gateway_url: str, ca_file: str, config_dir: Path | None) -> str:
    from hoopcli.config import config_path, set_value

    overrides = {"HOOP_CONFIG_DIR": str(config_dir)} if config_dir is not None else {}
    with _env(**overrides):
        for key, value in (("issuer", issuer_url), ("client_id", CLIENT_ID), ("gateway", gateway_url), ("ca_file", ca_file)):
            set_value(PROFILE, key, value)
        return str(config_path())


@contextlib.contextmanager
def start_stack(workdir: str | None, auto_approve: bool | str, port: int = 0, *, own_config: bool = False, target: str = "auto"):
    """Start everything; yield a DevStack; stop everything (in reverse) however the block ends.

    own_config: write the `dev` profile into a config dir inside the work dir instead of the
    user's (what `--demo` does). target: "auto", "postgres" or "tcp"."""
    from hoopcli.dev.issuer import DevIssuer, resolve_auto_approve
    from hoopcli.gateway.app import Gateway
    from hoopcli.gateway.settings import settings_from_dict
    from hoopcli.gateway.tls import make_dev_tls, server_context

    try:
        resolve_auto_approve(auto_approve)
    except ValueError as exc:
        raise UsageError(str(exc), "Use dev-admin, dev-user or dev-agent.") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port", "Use 0 for a free one.")
    bypass_proxy_for_loopback()
    keep = workdir is not None
    root = Path(workdir).resolve() if keep else Path(tempfile.mkdtemp(prefix="hoop-dev-"))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    cleanups: list = []
    try:
        issuer = DevIssuer(auto_approve=auto_approve, client_id=CLIENT_ID).start()
        cleanups.append(issuer.stop)

        pg = echo = None
        bindir, why_not = postgres_usable() if target in ("auto", "postgres") else (None, "a TCP target was asked for")
        if bindir is None and target == "postgres":
            raise ConfigError(f"no demo PostgreSQL: {why_not}", "Install PostgreSQL (server and psql), or run without it for a TCP echo target.")
        if bindir is not None:
            pg = DemoPostgres(bindir, root / "pg")
            cleanups.append(pg.stop)
            pg.start()
        else:
            echo = EchoServer()
            echo.start()
            cleanups.append(echo.stop)

        tls = make_dev_tls(root / "tls")
        if pg is not None:
            conn = {
                "protocol": "postgres",
                "target": f"127.0.0.1:{pg.port}",
                "groups": list(PEOPLE),
                "database": DEMO_DB,
                "description": "hoop dev: throw-away PostgreSQL (development only)",
                "credentials": {"broker": "none", "user": DEMO_ROLE},
                "policy": "default",
            }
            name = PG_CONNECTION
        else:
            conn = {
                "protocol": "tcp",
                "target": f"127.0.0.1:{echo.port}",
                "groups": list(PEOPLE),
                "description": "hoop dev: TCP echo server (development only)",
            }
            name = TCP_CONNECTION
        raw = {
            "gateway": {
                "listen": f"127.0.0.1:{port}",
                "audit_store": str(root / "audit.db"),
                "approvals": {"approver_groups": ["approvers"], "window_seconds": 900},
                "auditor_groups": ["auditors"],
            },
            "issuers": [{"issuer": issuer.url, "audiences": [CLIENT_ID]}],
            "connections": {name: conn},
        }
        try:
            settings = settings_from_dict(raw, base_dir=root)
            gateway = Gateway(settings)
        except ValueError as exc:
            raise ConfigError(f"hoop dev built a bad gateway config: {exc}") from None
        gw = GatewayThread(gateway, server_context(tls["cert"], tls["key"]))
        cleanups.append(gw.stop)
        gw.start()
        gateway_url = f"https://127.0.0.1:{gw.port}"

        config_dir = (root / "config") if own_config else None
        config_file = write_profile(issuer.url, gateway_url, tls["ca"], config_dir)
        yield DevStack(
            workdir=root,
            issuer=issuer,
            gateway=gw,
            gateway_url=gateway_url,
            ca_file=tls["ca"],
            audit_store=settings.audit_store,
            connection=name,
            protocol=conn["protocol"],
            config_dir=config_dir,
            config_file=config_file,
            postgres=pg,
            echo=echo,
            psql=find_psql(bindir) if pg is not None else None,
            kept=keep,
            no_postgres_because=why_not if pg is None else "",
        )
    finally:
        with _signals_ignored():  # a second Ctrl-C must not leave a postmaster behind
            for cleanup in reversed(cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)


# ---- `hoop dev` ---------------------------------------------------------------------------


def run_dev(workdir: str | None, auto_approve: bool | str, demo: bool, json_out: bool, port: int) -> int:
    """Start the stack; with `demo`, run the unattended loop and return its verdict, otherwise
    print the next commands and wait for Ctrl-C (or SIGTERM/SIGHUP)."""
    try:
        with _signals_interrupt():
            return _run(workdir, auto_approve, demo, json_out, port)
    except KeyboardInterrupt:
        raise Interrupted("hoop dev was stopped before it finished", "Everything it had started was stopped and removed.") from None


def _run(workdir: str | None, auto_approve: bool | str, demo: bool, json_out: bool, port: int) -> int:
    from hoopcli.output import emit_json, info

    if demo:
        from hoopcli.dev.demo import DEMO_IDENTITY, run_demo

        if not json_out:
            info(f"hoop dev --demo — {BANNER}")
        with start_stack(workdir, auto_approve or DEMO_IDENTITY, port, own_config=True) as stack:
            return run_demo(stack, json_out)

    if not json_out:
        info(f"hoop dev — {BANNER}")
        info("Starting the issuer, the demo target and the gateway ...")
    with start_stack(workdir, auto_approve, port) as stack:
        if json_out:
            emit_json({"event": "ready", **stack.describe(), "commands": stack.next_commands()})
        else:
            _announce(stack, info)
        _wait_for_stop()
        if not json_out:
            info("Stopping: gateway (flushing the audit trail), database, issuer ...")
    if json_out:
        emit_json({"event": "stopped"})
    else:
        info("Stopped." + ("" if workdir else " The work dir was removed."))
    return 0


def _announce(stack: DevStack, info) -> None:
    d = stack.describe()
    who = f"every sign-in is approved as {d['auto_approve']}" if d["auto_approve"] else "approve sign-ins on that page"
    if stack.postgres:
        target = f"PostgreSQL {d['postgres_version']} on {d['target']}, database {DEMO_DB}, table {DEMO_TABLE}, role {DEMO_ROLE}"
    else:
        target = f"TCP echo server on {d['target']} ({stack.no_postgres_because})"
    lines = [
        "",
        f"  issuer      {d['issuer']}   (sign-in page {d['device_page']}; {who})",
        f"  gateway     {d['gateway']}   (development CA {d['ca_file']})",
        f"  connection  {d['connection']} → {target}",
        "  policy      default: DROP, TRUNCATE, ALTER, GRANT, unqualified DELETE/UPDATE are held for approval",
        f"  audit       {d['audit_store']}",
        f"  profile     '{PROFILE}' in {d['config_file']}",
        "",
        "Identities on the sign-in page: dev-admin (dba, approvers, auditors), dev-user (developers), dev-agent (agents).",
        "Next, in another terminal:",
        *(f"  {c}" for c in stack.next_commands()),
        "",
        f"Press Ctrl-C to stop; the work dir {d['workdir']} is then " + ("kept." if stack.kept else "removed."),
    ]
    for line in lines:
        info(line)


def _wait_for_stop() -> None:
    """Until Ctrl-C (or SIGTERM/SIGHUP, turned into the same by `_signals_interrupt`)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C does, so that however `hoop dev`
    is stopped (short of SIGKILL) the `finally` blocks stop the database and the gateway."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_ignored():
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
