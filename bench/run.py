"""What a governed PostgreSQL session costs through hoop, next to the relays people already use.

    .venv/bin/python bench/run.py            # 3 interleaved rounds × 15 s per path (~15 min)
    .venv/bin/python bench/run.py --quick    # smoke: 1 round × 5 s, a 100 MB COPY

Everything runs on loopback and is torn down at the end: a throw-away PostgreSQL 15 (trust
auth, `pgbench -i -s 10`), one and two chained `socat` relays, an `sshd` with a throw-away
host key and `ssh -N -L`, a local JWKS issuer (an RSA key in memory), `hoop gateway` with
dev TLS and three connections (recording on, recording off, the default policy), and one
`hoop connect` tunnel per hoop connection. Paths are measured interleaved (A B C … A B C …)
and each figure is the median of the rounds. One table is printed (and `--out FILE` keeps
the raw numbers as JSON). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.server
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
PG_BINDIRS = ("/usr/lib/postgresql/15/bin",)
PATHS = ("direct", "socat1", "socat2", "ssh", "hoop-rec", "hoop-norec", "hoop-policy")
LABELS = {
    "direct": "direct",
    "socat1": "one socat",
    "socat2": "two socats",
    "ssh": "ssh -L",
    "hoop-rec": "hoop, recording on",
    "hoop-norec": "hoop, recording off",
    "hoop-policy": "hoop + policy",
}
CONNECTIONS = {"hoop-rec": "bench-rec", "hoop-norec": "bench-norec", "hoop-policy": "bench-policy"}
PGBENCH_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = "
COPY_ROW = "x" * 90


class Missing(SystemExit):
    pass


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or proc.args[0]} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout} s")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if not path:
        raise Missing(f"bench: `{tool}` not found; install it with: apt-get install -y {package}")
    return path


# ---- the processes ---------------------------------------------------------------------------


class Stack:
    """Owns every process the bench starts; stops each by its own pid (process group) at exit."""

    def __init__(self, keep: bool = False):
        self.root = Path(tempfile.mkdtemp(prefix="hoop-bench-"))
        os.chmod(self.root, 0o711)  # PostgreSQL runs as `postgres` in a folder below
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.cleanups: list = []
        self.keep = keep

    def spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        kw.setdefault("stdout", log)
        proc = subprocess.Popen(argv, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
        return ""

    def close(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Postgres:
    bindir: Path
    root: Path
    port: int = 0
    as_postgres: bool = field(default_factory=lambda: os.geteuid() == 0)

    def run(self, *argv: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    def start(self, stack: Stack) -> None:
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        (self.root / "sock").mkdir()
        if self.as_postgres:
            os.chown(self.root / "sock", pw.pw_uid, pw.pw_gid)
        for _ in range(3):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB"
            )
            done = self.run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"), "-o", options, "-w", "-t", "30", "start", check=False)
            if done.returncode == 0:
                break
        else:
            raise RuntimeError("PostgreSQL did not start:\n" + (self.root / "server.log").read_text()[-2000:])
        stack.cleanups.append(self.stop)
        self.psql("postgres", "CREATE DATABASE bench")
        say("pgbench -i -s 10 (1M accounts) ...")
        subprocess.run([str(self.bindir / "pgbench"), "-i", "-s", "10", "-q", *self.conn_args(self.port), "bench"],
                       check=True, capture_output=True, timeout=600)

    def conn_args(self, port: int) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]

    def psql(self, db: str, sql: str) -> str:
        return subprocess.run([str(self.bindir / "psql"), "-X", "-q", "-At", *self.conn_args(self.port), "-d", db, "-c", sql],
                              check=True, capture_output=True, text=True, timeout=60).stdout

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "-t", "20", "stop", check=False, timeout=30)


def start_socat(stack: Stack, name: str, target: int) -> int:
    port = free_port()
    proc = stack.spawn(name, [need("socat", "socat"), f"TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=256,nodelay",
                              f"TCP4:127.0.0.1:{target},nodelay"])
    wait_port(port, proc=proc, what=name)
    return port


def start_ssh(stack: Stack, target: int) -> int:
    sshd = need("sshd", "openssh-server")
    ssh = need("ssh", "openssh-client")
    keygen = need("ssh-keygen", "openssh-client")
    d = stack.root / "ssh"
    d.mkdir(mode=0o700)
    for key in ("host", "user"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user.pub", d / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding yes\n"
    )
    proc = stack.spawn("sshd", [sshd, "-D", "-e", "-f", str(d / "sshd_config")])
    wait_port(port, proc=proc, what="sshd")
    local = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    proc = stack.spawn("ssh", [ssh, "-N", "-F", "/dev/null", "-i", str(d / "user"), "-p", str(port), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ExitOnForwardFailure=yes",
                               "-L", f"127.0.0.1:{local}:127.0.0.1:{target}", f"{user}@127.0.0.1"])
    wait_port(local, proc=proc, what="ssh -L")
    return local


class Issuer:
    """A local OpenID issuer in this process: an RSA key in memory, its JWKS on 127.0.0.1."""

    def __init__(self):
        import jwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="bench", use="sig", alg="RS256")
        jwks = json.dumps({"keys": [jwk]}).encode()
        issuer_box = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/jwks":
                    body = jwks
                elif self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": issuer_box["url"], "jwks_uri": issuer_box["url"] + "/jwks"}).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = issuer_box["url"] = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, sub: str = "bench", hours: float = 6) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": self.url, "aud": "hoop-cli", "sub": sub, "email": f"{sub}@example.com", "groups": ["bench"],
                  "iat": now, "exp": now + int(hours * 3600)}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench"})


@dataclass
class Hoop:
    url: str
    ca_file: str
    audit_store: str
    env: dict
    gateway: subprocess.Popen
    tunnels: dict = field(default_factory=dict)  # path -> (port, Popen)

    def command(self) -> list[str]:
        script = Path(PY).parent / "hoop"
        return [str(script)] if script.exists() else [PY, "-m", "hoopcli"]


def start_hoop(stack: Stack, issuer: Issuer, pg_port: int) -> Hoop:
    work = stack.root / "gateway"
    work.mkdir()
    conn = f'protocol = "postgres"\ntarget = "127.0.0.1:{pg_port}"\nsubjects = ["bench"]\ndatabase = "bench"\ncredentials = {{ broker = "none", user = "postgres" }}\n'
    (work / "gateway.toml").write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\naudit_store = "audit.db"\n\n'
        f'[[issuers]]\nissuer = "{issuer.url}"\naudiences = ["hoop-cli"]\njwks_uri = "{issuer.url}/jwks"\n\n'
        f"[connections.bench-rec]\n{conn}\n"
        f"[connections.bench-norec]\n{conn}record = false\n\n"
        f'[connections.bench-policy]\n{conn}policy = "default"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOP_")}
    env["PYTHONPATH"] = str(REPO)
    gw = stack.spawn("gateway", [PY, "-m", "hoopcli", "gateway", "--config", str(work / "gateway.toml"), "--dev-tls", str(work / "tls"), "--json"],
                     cwd=work, env=env, stdout=subprocess.PIPE)
    line = _read_line(gw, 30)
    if not line:
        raise RuntimeError("hoop gateway did not start:\n" + stack.log_tail("gateway"))
    ready = json.loads(line)
    home = stack.root / "home"
    (home / ".config" / "hoop").mkdir(parents=True)
    client_env = {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
                  "HOOP_CONFIG_DIR": str(home / ".config" / "hoop"), "HOOP_TOKEN": issuer.token(),
                  "HOOP_GATEWAY": ready["url"], "HOOP_CA_FILE": ready["ca_file"], "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    hoop = Hoop(ready["url"], ready["ca_file"], ready["audit_store"], client_env, gw)
    for path, name in CONNECTIONS.items():
        out = stack.root / f"connect-{name}.out"
        proc = stack.spawn(f"connect-{name}", [*hoop.command(), "connect", name, "--json"], env=client_env, stdout=open(out, "wb"))
        port = _ready_port(proc, out, stack, f"connect-{name}")
        hoop.tunnels[path] = (port, proc)
    return hoop


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.2):
            return proc.stdout.readline().decode()
    return ""


def _ready_port(proc: subprocess.Popen, out: Path, stack: Stack, name: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "ready":
                    return int(event["port"])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not report ready:\n{stack.log_tail(name)}")


def loop_in(pid: int) -> str:
    """Which event loop a process really runs: uvloop's extension mapped into it, or asyncio."""
    with contextlib.suppress(OSError):
        maps = Path(f"/proc/{pid}/maps").read_text()
        return "uvloop" if "uvloop/loop." in maps else "asyncio"
    return "?"


# ---- measurements ----------------------------------------------------------------------------


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int


def pgbench(pg: Postgres, port: int, clients: int, seconds: float) -> PgbenchResult:
    threads = min(clients, 2)
    done = subprocess.run(
        [str(pg.bindir / "pgbench"), "-n", "-S", "-c", str(clients), "-j", str(threads), "-T", str(int(seconds)), *pg.conn_args(port), "bench"],
        capture_output=True, text=True, timeout=seconds + 120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pgbench on port {port} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    out = done.stdout
    tps = float(re.search(r"^tps = ([\d.]+)", out, re.M).group(1))
    lat = float(re.search(r"^latency average = ([\d.]+) ms", out, re.M).group(1))
    n = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    return PgbenchResult(tps, lat, n)


def copy_sql(rows: int) -> str:
    return f"COPY (SELECT g, '{COPY_ROW}' FROM generate_series(1, {rows}) g) TO STDOUT"


def copy_bytes(pg: Postgres, rows: int) -> int:
    proc = subprocess.Popen([str(pg.bindir / "psql"), "-X", "-q", *pg.conn_args(pg.port), "-d", "bench", "-c", copy_sql(rows)],
                            stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.wait()
    return total


def copy_seconds(pg: Postgres, port: int, rows: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(pg.bindir / "psql"), "-X", "-q", *pg.conn_args(port), "-d", "bench", "-c", copy_sql(rows)],
                   stdout=subprocess.DEVNULL, check=True, timeout=600)
    return time.perf_counter() - t0


def wall_ms(argv: list[str], env: dict | None = None, runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def audit_counts(store: str, connection: str) -> tuple[int, int]:
    """(statements recorded ok that pgbench sent, all statement records) for a connection."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        ok = db.execute(
            "SELECT count(*) FROM audit WHERE connection = ? AND kind = 'statement' AND outcome = 'ok' AND statement LIKE ?",
            (connection, PGBENCH_SQL + "%"),
        ).fetchone()[0]
        every = db.execute("SELECT count(*) FROM audit WHERE connection = ? AND kind = 'statement' AND statement LIKE ?",
                           (connection, PGBENCH_SQL + "%")).fetchone()[0]
        return ok, every
    finally:
        db.close()


# ---- the run ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round × 5 s, 100 MB COPY, fewer start-up runs")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per pgbench run (default 15; --quick 5)")
    parser.add_argument("--copy-mb", type=int, help="COPY size in MB (default 300; --quick 100); 0 skips COPY")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--clients", default="8,1", help="pgbench client counts to run (default 8,1)")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timings")
    parser.add_argument("--py-spy", metavar="DIR", help="record py-spy flame graphs of the gateway and the tunnel during the first hoop-rec -c 8 run")
    parser.add_argument("--out", metavar="FILE", help="also write the raw results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, audit.db)")
    parser.add_argument("--serve", action="store_true",
                        help="set everything up, print the ports and a client env file, and wait for Ctrl-C (for profiling by hand)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (5 if args.quick else 15)
    copy_mb = args.copy_mb if args.copy_mb is not None else (100 if args.quick else 300)
    paths = [p for p in args.paths.split(",") if p]
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    clients = [int(c) for c in args.clients.split(",") if c]

    bindir = next((Path(d) for d in PG_BINDIRS if (Path(d) / "initdb").exists()), None)
    if bindir is None:
        raise Missing("bench: PostgreSQL 15 server binaries not found; install them with: apt-get install -y postgresql-15")
    if "socat1" in paths or "socat2" in paths:
        need("socat", "socat")
    if "ssh" in paths:
        need("sshd", "openssh-server")
        need("ssh", "openssh-client")

    stack = Stack(keep=args.keep)
    try:
        return run(args, stack, bindir, paths, clients, rounds, seconds, copy_mb)
    finally:
        stack.close()
        if args.keep:
            say(f"work folder kept: {stack.root}")


def run(args, stack: Stack, bindir: Path, paths, clients, rounds, seconds, copy_mb) -> int:
    say(f"work folder {stack.root}")
    pg = Postgres(bindir, stack.root / "pg")
    pg.root.mkdir()
    pg.start(stack)
    ports = {"direct": pg.port}
    if "socat1" in paths or "socat2" in paths:
        ports["socat1"] = start_socat(stack, "socat1", pg.port)
        ports["socat2"] = start_socat(stack, "socat2", ports["socat1"])
    if "ssh" in paths:
        ports["ssh"] = start_ssh(stack, pg.port)
    hoop = None
    if any(p.startswith("hoop") for p in paths) or not args.no_startup:
        issuer = Issuer()
        hoop = start_hoop(stack, issuer, pg.port)
        for path, (port, _) in hoop.tunnels.items():
            ports[path] = port
    loops = {}
    if hoop is not None:
        loops = {"gateway": loop_in(hoop.gateway.pid), "tunnel": loop_in(hoop.tunnels["hoop-rec"][1].pid)}
    say(f"ports {ports}; event loops {loops}")
    if args.serve:
        return serve(stack, hoop, ports)

    results: dict = {"pgbench": {c: {p: [] for p in paths} for c in clients}, "copy": {p: [] for p in paths}}
    sent = {p: 0 for p in paths}  # pgbench transactions per path, warm-ups included

    # Warm-up: every path once (connections, caches, the gateway's JWKS and policy caches).
    for p in paths:
        r = pgbench(pg, ports[p], max(clients), 3)
        sent[p] += r.transactions
    say("warm-up done")

    spy = None
    for rnd in range(rounds):
        order = paths[rnd % len(paths):] + paths[: rnd % len(paths)]
        for c in clients:
            for p in order:
                if args.py_spy and spy is None and p == "hoop-rec" and hoop is not None:
                    spy = start_py_spy(stack, hoop, Path(args.py_spy), seconds)
                r = pgbench(pg, ports[p], c, seconds)
                sent[p] += r.transactions
                results["pgbench"][c][p].append(r)
                say(f"round {rnd + 1}/{rounds} -c {c} {p:12s} {r.tps:9.0f} tps  {r.latency_ms:.3f} ms")
    if spy:
        for proc in spy:
            proc.wait(timeout=60)

    if copy_mb:
        rows = int(copy_mb * 1_000_000 / (len(COPY_ROW) + 9))
        size = copy_bytes(pg, rows)
        results["copy_bytes"] = size
        copy_rounds = 3 * rounds  # one COPY takes about a second: more runs cost little and steady the median
        for rnd in range(copy_rounds):
            order = paths[rnd % len(paths):] + paths[: rnd % len(paths)]
            for p in order:
                secs = copy_seconds(pg, ports[p], rows)
                results["copy"][p].append(secs)
                say(f"round {rnd + 1}/{copy_rounds} COPY {p:12s} {size / secs / 1e6:7.0f} MB/s")

    startup = {}
    if not args.no_startup and hoop is not None:
        runs = 5 if args.quick else 15
        hoop_cmd = hoop.command()
        # Byte-code as an installed wheel has it (pip compiles at install): an editable checkout
        # under PYTHONDONTWRITEBYTECODE=1 would otherwise compile hoopcli on every start.
        subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "hoopcli")], check=True)
        startup["python3 -c pass"] = wall_ms([PY, "-c", "pass"], runs=runs)
        startup["hoop --version"] = wall_ms([*hoop_cmd, "--version"], env=hoop.env, runs=runs)
        startup["true"] = wall_ms(["true"], runs=runs)
        wall_ms([*hoop_cmd, "exec", "bench-rec", "--", "true"], env=hoop.env, runs=1)  # warm
        startup["hoop exec NAME -- true"] = wall_ms([*hoop_cmd, "exec", "bench-rec", "--", "true"], env=hoop.env, runs=runs)

    audit = {}
    if hoop is not None:
        time.sleep(1.0)  # the writer's batch interval, with margin
        for p in ("hoop-rec", "hoop-policy"):
            if p in paths:
                ok, every = _settled_counts(hoop.audit_store, CONNECTIONS[p])
                audit[p] = {"pgbench": sent[p], "recorded_ok": ok, "recorded": every}

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "loops": loops,
        "load": os.getloadavg(),
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "rounds": rounds,
        "seconds": seconds,
        "copy_mb": round(results.get("copy_bytes", 0) / 1e6),
    }
    table = render(meta, paths, clients, results, startup, audit)
    print(table)
    if args.out:
        raw = {"meta": meta, "startup": startup, "audit": audit,
               "pgbench": {str(c): {p: [r.__dict__ for r in v] for p, v in d.items()} for c, d in results["pgbench"].items()},
               "copy": results["copy"], "copy_bytes": results.get("copy_bytes"), "table": table}
        Path(args.out).write_text(json.dumps(raw, indent=2))
    return 0


def serve(stack: Stack, hoop: Hoop | None, ports: dict) -> int:
    info = {"ports": ports, "folder": str(stack.root)}
    if hoop is not None:
        env_file = stack.root / "client.env"
        keep = ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "PYTHONPATH", "PYTHON_KEYRING_BACKEND")
        env_file.write_text("".join(f"export {k}='{v}'\n" for k, v in hoop.env.items() if k.startswith("HOOP_") or k in keep))
        info.update(env=str(env_file), gateway_pid=hoop.gateway.pid, tunnel_pids={p: t[1].pid for p, t in hoop.tunnels.items()},
                    audit_store=hoop.audit_store)
    print(json.dumps(info), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    return 0


def _settled_counts(store: str, connection: str) -> tuple[int, int]:
    last = None
    for _ in range(20):
        now = audit_counts(store, connection)
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last


def start_py_spy(stack: Stack, hoop: Hoop, folder: Path, seconds: float) -> list[subprocess.Popen]:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in (("gateway", hoop.gateway.pid), ("tunnel", hoop.tunnels["hoop-rec"][1].pid)):
        procs.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
                                       "--nonblocking", "--threads", "-o", str(folder / f"{name}.svg")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


# ---- the table -------------------------------------------------------------------------------


def _ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}" if value and ref else "–"


def render(meta, paths, clients, results, startup, audit) -> str:
    med = {}
    for c in clients:
        for p in paths:
            runs = results["pgbench"][c][p]
            if runs:
                med[(c, p)] = (statistics.median(r.tps for r in runs), statistics.median(r.latency_ms for r in runs))
    copy = {}
    size = results.get("copy_bytes")
    for p in paths:
        if results["copy"][p]:
            copy[p] = size / statistics.median(results["copy"][p]) / 1e6

    rows = [("measurement", "value", "× direct", "× ssh -L", "target", "met")]

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("yes" if ok else "**no**")

    for c in clients:
        direct = med.get((c, "direct"), (None,))[0]
        ssh = med.get((c, "ssh"), (None,))[0]
        socat2 = med.get((c, "socat2"), (None,))[0]
        norec = med.get((c, "hoop-norec"), (None,))[0]
        rec = med.get((c, "hoop-rec"), (None,))[0]
        for p in paths:
            if (c, p) not in med:
                continue
            tps, lat = med[(c, p)]
            target, ok = "", None
            if p == "hoop-rec":
                target = "≥ 1.0 × ssh -L, ≥ 0.9 × two socats"
                checks = [tps / ssh >= 1.0] if ssh else []
                checks += [tps / socat2 >= 0.9] if socat2 else []
                ok = all(checks) if checks else None
                if socat2:
                    target += f" ({tps / socat2:.2f})"
            elif p == "hoop-norec" and rec:
                target, ok = f"rec on costs ≤ 5 % ({1 - rec / tps:+.1%})", rec >= 0.95 * tps
            elif p == "hoop-policy" and rec:
                target, ok = f"policy costs ≤ 5 % ({1 - tps / rec:+.1%})", tps >= 0.95 * rec
            rows.append((f"pgbench -S -c {c}: {LABELS[p]}", f"{tps:,.0f} tps, {lat:.3f} ms", _ratio(tps, direct), _ratio(tps, ssh), target, verdict(ok)))
    for p in paths:
        if p not in copy:
            continue
        target, ok = "", None
        if p == "hoop-rec" and copy.get("ssh"):
            target, ok = "≥ 1.0 × ssh -L", copy[p] >= copy["ssh"]
        rows.append((f"COPY {meta['copy_mb']} MB: {LABELS[p]}", f"{copy[p]:,.0f} MB/s", _ratio(copy[p], copy.get("direct")), _ratio(copy[p], copy.get("ssh")), target, verdict(ok)))
    if startup:
        base = startup["python3 -c pass"]
        rows.append(("start-up: python3 -c pass", f"{base:.0f} ms", "", "", "", "–"))
        v = startup["hoop --version"]
        rows.append(("start-up: hoop --version", f"{v:.0f} ms", "", "", f"≤ 3 × python3 -c pass ({v / base:.1f} ×)", verdict(v <= 3 * base)))
        rows.append(("start-up: true", f"{startup['true']:.1f} ms", "", "", "", "–"))
        e = startup["hoop exec NAME -- true"] - startup["true"]
        rows.append(("start-up: hoop exec NAME -- true (warm)", f"{startup['hoop exec NAME -- true']:.0f} ms", "", "", f"≤ 150 ms over true (+{e:.0f} ms)", verdict(e <= 150)))
    c1 = min(clients)
    if (c1, "hoop-policy") in med and (c1, "hoop-rec") in med:
        d_us = (med[(c1, "hoop-policy")][1] - med[(c1, "hoop-rec")][1]) * 1000
        rows.append((f"gating: routine statement, -c {c1} latency, policy − none", f"{d_us:+.0f} µs", "", "",
                     f"{med[(c1, 'hoop-policy')][1]:.3f} vs {med[(c1, 'hoop-rec')][1]:.3f} ms", "–"))
    for p, a in audit.items():
        ok = a["recorded_ok"] == a["pgbench"]
        rows.append((f"audit: {LABELS[p]}, statements recorded ok / pgbench transactions", f"{a['recorded_ok']:,} / {a['pgbench']:,}", "", "",
                     f"equal ({a['recorded'] - a['recorded_ok']} more ended with the session)", verdict(ok)))
    head = (f"{meta['date']} · {meta['cores']} cores · Python {meta['python']} · loops {meta['loops'] or '–'} · "
            f"{meta['rounds']} round(s) × {meta['seconds']:g} s, medians · load before/after {meta['load'][0]:.1f}\n"
            f"command: .venv/bin/python {meta['command']}\n\n")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
