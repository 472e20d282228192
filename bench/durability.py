"""What each audit durability level costs: pgbench -S through one gateway per level.

    .venv/bin/python bench/durability.py                 # 3 interleaved rounds × 15 s, -c 8 and -c 1
    .venv/bin/python bench/durability.py --quick         # 1 round × 5 s
    .venv/bin/python bench/durability.py --loop-cost     # the journal's CPU per statement on the loop

Four gateways run side by side on the same throw-away PostgreSQL (bench/run.py's stack):
`durability = "async"` (records queued in memory: the old behaviour), "process" (the
default: each statement's start written to the local journal before it is forwarded) and
"power" (the journal fsync()ed, one sync shared by the sessions waiting for it), each with
a recorded connection, plus `record = false` on the async gateway as the no-recording floor.
Paths run in turn (A B C … then B C … A), medians of the rounds, ratios to async recording.
The journal lives on the work folder's disk (`mktemp`), as a gateway's would beside its store.

Beside TPS, the gateway process's CPU per transaction (all its threads, from /proc, before
and after each run): on a shared, loaded machine TPS swings by tens of percent from run to
run, while what the gateway spends per transaction moves much less, so the durability cost
is read best as µs of gateway CPU per transaction over async's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PG_BINDIRS, PY, REPO, Issuer, Postgres, Stack, _read_line, _ready_port, pgbench, say  # noqa: E402

LEVELS = ("async", "process", "power")


def start_level(stack: Stack, issuer: Issuer, pg_port: int, level: str) -> tuple[dict[str, int], int]:
    """A gateway with `durability = level` and its tunnels: {path: local port}, its pid."""
    work = stack.root / f"gateway-{level}"
    work.mkdir()
    conn = (f'protocol = "postgres"\ntarget = "127.0.0.1:{pg_port}"\nsubjects = ["bench"]\ndatabase = "bench"\n'
            f'credentials = {{ broker = "none", user = "postgres" }}\n')
    norec = f"[connections.bench-norec]\n{conn}record = false\n" if level == "async" else ""
    (work / "gateway.toml").write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\naudit_store = "audit.db"\ndurability = "{level}"\n\n'
        f'[[issuers]]\nissuer = "{issuer.url}"\naudiences = ["hoop-cli"]\njwks_uri = "{issuer.url}/jwks"\n\n'
        f"[connections.bench-rec]\n{conn}\n{norec}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOP_")}
    env["PYTHONPATH"] = str(REPO)
    gw = stack.spawn(f"gateway-{level}", [PY, "-m", "hoopcli", "gateway", "--config", str(work / "gateway.toml"),
                                          "--dev-tls", str(work / "tls"), "--json"], cwd=work, env=env, stdout=subprocess.PIPE)
    line = _read_line(gw, 30)
    if not line:
        raise RuntimeError(f"hoop gateway ({level}) did not start:\n" + stack.log_tail(f"gateway-{level}"))
    ready = json.loads(line)
    home = work / "home"
    (home / ".config" / "hoop").mkdir(parents=True)
    client_env = {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
                  "HOOP_CONFIG_DIR": str(home / ".config" / "hoop"), "HOOP_TOKEN": issuer.token(),
                  "HOOP_GATEWAY": ready["url"], "HOOP_CA_FILE": ready["ca_file"], "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    ports = {}
    for name, path in (("bench-rec", f"rec-{level}"), ("bench-norec", "norec")):
        if name == "bench-norec" and not norec:
            continue
        out = stack.root / f"connect-{level}-{name}.out"
        proc = stack.spawn(f"connect-{level}-{name}", [PY, "-m", "hoopcli", "connect", name, "--json"], env=client_env, stdout=open(out, "wb"))
        ports[path] = _ready_port(proc, out, stack, f"connect-{level}-{name}")
    return ports, gw.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, every thread included (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round × 5 s")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--clients", default="8,1")
    parser.add_argument("--loop-cost", action="store_true", help="only the journal's CPU per statement on the loop")
    args = parser.parse_args()
    if args.loop_cost:
        print(f"{loop_cost():.2f} µs CPU per statement (start, commit with its write(), outcome)")
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (5 if args.quick else 15)
    clients = [int(c) for c in args.clients.split(",") if c]
    bindir = next(Path(d) for d in PG_BINDIRS if (Path(d) / "initdb").exists())
    stack = Stack()
    try:
        pg = Postgres(bindir, stack.root / "pg")
        pg.root.mkdir()
        pg.start(stack)
        issuer = Issuer()
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for level in LEVELS:
            level_ports, pid = start_level(stack, issuer, pg.port, level)
            ports.update(level_ports)
            pids.update({path: pid for path in level_ports})
        paths = ["norec", *(f"rec-{level}" for level in LEVELS)]
        for p in paths:
            pgbench(pg, ports[p], max(clients), 3)  # warm-up
        results = {c: {p: [] for p in paths} for c in clients}
        cpu = {c: {p: [] for p in paths} for c in clients}  # gateway CPU µs per transaction
        for rnd in range(rounds):
            order = paths[rnd % len(paths):] + paths[: rnd % len(paths)]
            for c in clients:
                for p in order:
                    before = cpu_seconds(pids[p])
                    r = pgbench(pg, ports[p], c, seconds)
                    cpu[c][p].append((cpu_seconds(pids[p]) - before) * 1e6 / max(r.transactions, 1))
                    results[c][p].append(r.tps)
                    say(f"round {rnd + 1}/{rounds} -c {c} {p:12s} {r.tps:9.0f} tps  gateway {cpu[c][p][-1]:6.1f} µs CPU/txn")
        print(render(paths, clients, results, cpu))
    finally:
        stack.close()
    return 0


def loop_cost(statements: int = 20_000) -> float:
    """The default level's work on the event loop for one statement, in thread CPU µs (best of
    5): what the relay calls (started, commit with a real write() to a journal on the work
    folder's disk, completed), without the rest of the gateway around it."""
    import tempfile
    import time
    import timeit

    sys.path.insert(0, str(REPO))
    from hoopcli.gateway.audit.journal import Journal

    session = {"kind": "statement", "session_id": "s1", "sub": "alice", "email": None, "issuer": "https://idp",
               "connection": "bench", "db_user": "postgres", "database": "bench"}
    text = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
    outcome = (session, 1.0, text, 0.1, "ok", "SELECT 1", None, None, {"kind": "query"})
    with tempfile.TemporaryDirectory() as work:
        journal = Journal(Path(work) / "journal")
        tickets = iter(range(1, 10**9))

        def one() -> None:
            start = journal.started(session, 1.0, text, "query", None)
            journal.commit()
            journal.completed(next(tickets), outcome, start)

        best = min(timeit.Timer(one, timer=time.thread_time).repeat(number=statements, repeat=5))
        journal.close(everything_stored=True)
    return best / statements * 1e6


def render(paths, clients, results, cpu) -> str:
    lines = ["| path | " + " | ".join(f"-c {c} TPS (÷ async) | -c {c} gateway µs CPU/txn (− async)" for c in clients) + " |",
             "|---|" + "---|---|" * len(clients)]
    for p in paths:
        cells = []
        for c in clients:
            tps = statistics.median(results[c][p])
            base = statistics.median(results[c]["rec-async"])
            us, base_us = statistics.median(cpu[c][p]), statistics.median(cpu[c]["rec-async"])
            cells.append(f"{tps:.0f} ({tps / base:.3f}) | {us:.1f} ({us - base_us:+.1f})")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
