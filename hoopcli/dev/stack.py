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
* two profiles in hoop's config pointing at all of it: `dev` (the requester) and
  `dev-approver` (a second identity, to approve what `dev` runs; see `profiles.py`).

The targets live in `targets.py`; the `hoop dev` command in `command.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hoopcli.dev.profiles import APPROVER_CLIENT_ID, APPROVER_PROFILE, CLIENT_ID, PROFILE, ProfilesLock, write_profiles
from hoopcli.dev.targets import DEMO_DB, DEMO_ROLE, DEMO_TABLE, DemoPostgres, EchoServer, find_psql, postgres_usable
from hoopcli.errors import ConfigError, Unreachable, UsageError

PG_CONNECTION = "demo-db"
TCP_CONNECTION = "demo-echo"
PEOPLE = ("dba", "developers", "agents")
STARTUP_TIMEOUT = 30.0
BANNER = "DEVELOPMENT ONLY: a throw-away identity provider, target and gateway on this machine."


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
            "approver_profile": APPROVER_PROFILE,
            "config_file": self.config_file,
            "workdir": str(self.workdir),
        }

    def next_commands(self) -> list[str]:
        """The loop by hand: sign in, run, get held, approve as someone else, re-run, audit."""
        p, a = f"hoop --profile {PROFILE}", f"hoop --profile {APPROVER_PROFILE}"
        if not self.postgres:
            run = [f"{p} connect {self.connection}   # then talk to the printed 127.0.0.1 port"]
            return [f"{p} login", *run, f"{p} audit list --store {self.audit_store}", f"{p} audit verify --store {self.audit_store}"]
        drop = f"{p} exec {self.connection} -c 'drop table {DEMO_TABLE}'"
        return [
            f"{p} login   # sign in as dev-user",
            f"{p} exec {self.connection} -- psql -c 'select * from {DEMO_TABLE}'",
            f"{drop}   # held for approval: exit 5 and a request ID",
            f"{a} login   # a second identity: sign in as dev-admin, an approver",
            f"{a} approvals list --status pending",
            f"{a} approvals approve ID",
            f"{drop}   # the same text again: it runs, once",
            f"{p} audit list --store {self.audit_store}",
            f"{p} audit verify --store {self.audit_store}",
        ]


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
    overrides = {"HOOP_CONFIG_DIR": str(config_dir)} if config_dir is not None else {}
    with _env(**overrides):
        return write_profiles(issuer_url, gateway_url, ca_file)


@contextlib.contextmanager
def start_stack(workdir: str | None, auto_approve: bool | str, port: int = 0, *, own_config: bool = False, target: str = "auto"):
    """Start everything; yield a DevStack; stop everything (in reverse) however the block ends.

    own_config: write the `dev` profiles into a config dir inside the work dir instead of the
    user's (what `--demo` does); otherwise they are locked for as long as the stack runs.
    target: "auto", "postgres" or "tcp"."""
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
        if not own_config:  # before anything starts: a second `hoop dev` stops here
            cleanups.append(ProfilesLock().acquire().release)
        issuer = DevIssuer(auto_approve=auto_approve, client_id=CLIENT_ID, approver_client_id=APPROVER_CLIENT_ID).start()
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
            "issuers": [{"issuer": issuer.url, "audiences": [CLIENT_ID, APPROVER_CLIENT_ID]}],
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


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
