"""A real `hoop gateway` process for the session: dev TLS, the test OpenID provider as its
trusted issuer, the throw-away PostgreSQL (and MariaDB, when its fixture exists) as targets.

Connections:
  app-db      postgres, groups dba/developers/agents, record only
  gated-db    postgres, same people and carol (an approver), default policy (risky held, COPY PROGRAM denied)
  admin-db    postgres, only the group "nobody" (for 403)
  app-mysql   mysql, same people as app-db, default policy
  dead-db     postgres pointing at a closed port (for 502)
  pg-raw      tcp to the same PostgreSQL (bytes relayed, session records only)
  pg-norec    postgres with record = false (the statements are not read or recorded)

New approval requests are POSTed to the session's `approval_hook` receiver.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.cli import REPO

STARTUP_TIMEOUT = 30
STORE_TIMEOUT = 15  # seconds a record may take to reach the store before a test fails
BARRIER_PREFIX = "hoop-barrier-"  # the connection name of barrier records: leave them out of counts of refusals


@dataclass
class GatewayProcess:
    url: str
    ca_file: str
    audit_store: str
    jsonl: str
    workdir: Path
    proc: subprocess.Popen
    config: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def raw(self, request: bytes, timeout: float = 10) -> bytes:
        """Send bytes over TLS to the gateway and return everything it answers until it closes."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(request)
                chunks = []
                with contextlib.suppress(OSError):
                    while True:
                        data = tls.recv(65536)
                        if not data:
                            break
                        chunks.append(data)
        return b"".join(chunks)

    def connect_status(self, target: str, token: str | None) -> tuple[int, dict]:
        auth = f"Proxy-Authorization: Bearer {token}\r\n" if token else ""
        answer = self.raw(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        return parse_response(answer)

    def records(self, *, ended: bool = False, timeout: float = STORE_TIMEOUT, **filters) -> list[dict]:
        """The stored records that match `filters` (store.query's: sub, connection, since, kind,
        session_id), read once the store holds everything the gateway had submitted when this
        was called: a barrier, not a sleep, so "not recorded" and counts mean what they say.

        A session's session_end (and a statement still pending at the end) is submitted only
        when the gateway sees the connection close, which may come after the client is done:
        with `ended=True` it first waits until every session the filters select (kind aside)
        has its session_end, and all of that session is stored before it."""
        deadline = time.monotonic() + timeout
        self.barrier(deadline)
        if ended:
            self._wait_sessions_ended(deadline, **{k: v for k, v in filters.items() if k != "kind"})
        return self.query(**filters)

    def query(self, **filters) -> list[dict]:
        """The store as it is now (no waiting)."""
        from hoopcli.gateway.audit import open_store

        with open_store(self.audit_store) as store:
            return store.query(**filters)

    def barrier(self, deadline: float) -> None:
        """Returns once every record the gateway submitted before this call is stored.

        A refused CONNECT to a unique name is recorded before the refusal is sent, and the
        writer stores records in the order they were submitted (one queue, batches in order),
        so once that marker is in the store, so is everything submitted before it. Its reason
        (a malformed token) is one no test looks for."""
        name = f"{BARRIER_PREFIX}{uuid.uuid4().hex[:12]}"
        status, _ = self.connect_status(f"{name}:1", "barrier-not-a-jwt")
        assert status == 407, f"the barrier CONNECT got {status}, not 407"
        self._poll(deadline, lambda: self.query(kind="connect", connection=name), f"the barrier record {name}")

    def _wait_sessions_ended(self, deadline: float, **filters) -> None:
        def all_ended() -> bool:
            opened = {r["session_id"] for r in self.query(kind="connect", **filters) if r["outcome"] == "ok"}
            ended = {r["session_id"] for r in self.query(kind="session_end", **filters)}
            return opened <= ended

        self._poll(deadline, all_ended, f"a session_end for every session of {filters}")

    def _poll(self, deadline: float, done, what: str) -> None:
        while not done():
            if time.monotonic() > deadline or not self.alive():
                pytest.fail(f"the gateway's store never showed {what} (gateway alive: {self.alive()})", pytrace=False)
            time.sleep(0.01)

    def alive(self) -> bool:
        return self.proc.poll() is None


def parse_response(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    try:
        return status, json.loads(body or b"{}")
    except ValueError:
        return status, {}


def gateway_config(issuer: str, pg_port: int, mysql_port: int | None, workdir: Path, approval_webhook: str = "") -> str:
    people = '["dba", "developers", "agents"]'
    text = f"""
[gateway]
listen = "127.0.0.1:0"
audit_store = "audit.db"

[gateway.export]
jsonl = "audit.jsonl"

[gateway.approvals]
approver_groups = ["approvers"]
window_seconds = 300
webhook = "{approval_webhook}"

[[issuers]]
issuer = "{issuer}"
audiences = ["hoop-cli"]

[connections.app-db]
protocol = "postgres"
target = "127.0.0.1:{pg_port}"
groups = {people}
database = "app"
description = "application database (record only)"
credentials = {{ broker = "none", user = "app_user" }}

[connections.gated-db]
protocol = "postgres"
target = "127.0.0.1:{pg_port}"
groups = {people}
subjects = ["carol"]
database = "app"
credentials = {{ broker = "none", user = "app_user" }}
policy = "default"

[connections.admin-db]
protocol = "postgres"
target = "127.0.0.1:{pg_port}"
groups = ["nobody"]

[connections.dead-db]
protocol = "postgres"
target = "127.0.0.1:{_closed_port()}"
groups = {people}

[connections.pg-raw]
protocol = "tcp"
target = "127.0.0.1:{pg_port}"
groups = {people}

[connections.pg-norec]
protocol = "postgres"
target = "127.0.0.1:{pg_port}"
groups = {people}
database = "app"
credentials = {{ broker = "none", user = "app_user" }}
record = false
"""
    if mysql_port:
        text += f"""
[connections.app-mysql]
protocol = "mysql"
target = "127.0.0.1:{mysql_port}"
groups = {people}
database = "app"
credentials = {{ broker = "none", user = "app_user" }}
policy = "default"
"""
    return text


def single_db_config(issuer: str, pg_port: int, *, audit_store: str = "audit.db", gateway_extra: str = "") -> str:
    """The smallest gateway.toml for one issuer and the `app-db` connection (record only) to the
    test PostgreSQL; `gateway_extra` adds lines to [gateway] (durability, journal_dir, …)."""
    return f"""
[gateway]
listen = "127.0.0.1:0"
audit_store = "{audit_store}"
{gateway_extra}
[[issuers]]
issuer = "{issuer}"
audiences = ["hoop-cli"]

[connections.app-db]
protocol = "postgres"
target = "127.0.0.1:{pg_port}"
groups = ["dba"]
database = "app"
credentials = {{ broker = "none", user = "app_user" }}
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_gateway(config_text: str, workdir: Path):
    config = workdir / "gateway.toml"
    config.write_text(config_text)
    log = open(workdir / "gateway.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hoopcli", "gateway", "--config", str(config), "--dev-tls", str(workdir / "tls"), "--json"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        line = _read_line(proc, STARTUP_TIMEOUT)
        if not line:
            proc.kill()
            pytest.fail("the gateway did not start:\n" + (workdir / "gateway.log").read_text()[-3000:], pytrace=False)
        event = json.loads(line)
        yield GatewayProcess(event["url"], event["ca_file"], event["audit_store"], str(workdir / "audit.jsonl"), workdir, proc, config)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.2):
            return proc.stdout.readline().decode()
    return ""


class _HookReceiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.extend(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def approval_hook():
    """An HTTP receiver for the gateway's approval webhook; `.received` lists what arrived."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HookReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_port}/hook"
    server.received = _HookReceiver.received
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def gateway(request, oidc_provider, pg_server, approval_hook):
    try:
        mysql = request.getfixturevalue("mariadb_server")
        mysql_port = mysql.port
    except (pytest.FixtureLookupError, pytest.skip.Exception):
        # Without MariaDB the PostgreSQL tests still run (a skip here would skip every test
        # that uses this gateway); the MySQL tests skip, and conftest.py fails the session
        # on a skip that is not on its allow-list.
        mysql_port = None
    workdir = Path(tempfile.mkdtemp(prefix="hoop-gateway-"))
    config = gateway_config(oidc_provider.issuer, pg_server.port, mysql_port, workdir, approval_webhook=approval_hook.url)
    with start_gateway(config, workdir) as gw:
        yield gw


@pytest.fixture(scope="session")
def tokens(oidc_provider):
    """Real id_tokens from the test provider, one per person, made again when the cached one
    has less than two minutes left (they live 300 s; a slow run outlives them)."""
    cache: dict[str, str] = {}

    def get(login: str) -> str:
        token = cache.get(login)
        if token is None or _expires_at(token) - time.time() < 120:
            token = cache[login] = oidc_provider.device_login(login)["id_token"]
        return token

    return get


def _expires_at(token: str) -> float:
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


@pytest.fixture
def as_user(tmp_path, gateway, tokens):
    """as_user(login) -> env for running hoop as a subprocess signed in as that person
    (HOOP_TOKEN, the gateway URL and its development CA; a temp HOME)."""
    from tests.support.cli import subprocess_env

    def env_for(login: str, **extra) -> dict:
        home = tmp_path / f"home-{login}"
        home.mkdir(exist_ok=True)
        return subprocess_env(home, HOOP_TOKEN=tokens(login), HOOP_GATEWAY=gateway.url, HOOP_CA_FILE=gateway.ca_file, **extra)

    return env_for
