"""Where the CPU of one pgbench transaction goes, per process and per thread, path by path.

    .venv/bin/python bench/cpu_per_txn.py                       # hoop-rec, hoop-norec, ssh; -c 8 and -c 1
    .venv/bin/python bench/cpu_per_txn.py --paths hoop-rec,hoop-norec --clients 8 --rounds 3

Starts `bench/run.py --serve` (the same stack as the benchmark), then runs `pgbench -S` on
each path in turn (interleaved, `--rounds` times) and reads every thread's CPU time from
/proc before and after. It prints, per run, TPS, the machine's idle share, and the CPU
microseconds per transaction of each process: the gateway's event loop (`gateway:main`) and
its audit sender thread (`gateway:thr`), the audit writer process (`writer`), the tunnel,
sshd/ssh, pgbench itself (from the children's rusage). PostgreSQL backends exit with their
pgbench connection and take their counters along, so PostgreSQL is left out (its figure
would be whatever the backends still alive held); the idle share shows the headroom left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def thread_cpu() -> dict[tuple[int, int], tuple[str, int]]:
    """(pid, tid) -> (command name, user + system clock ticks) for every thread on the machine."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2 :].split()
                out[(int(pid), int(tid))] = (comm, int(fields[11]) + int(fields[12]))
        except OSError:  # gone while we looked
            continue
    return out


def idle_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[3] + values[4], sum(values)


class Labeller:
    def __init__(self, info: dict):
        self.gateway = info["gateway_pid"]
        self.tunnels = set(info["tunnel_pids"].values())
        self.cache: dict[int, str] = {}

    def __call__(self, pid: int, tid: int, comm: str) -> str | None:
        if pid not in self.cache:
            self.cache[pid] = self._process(pid, comm)
        name = self.cache[pid]
        if name in ("gateway", "tunnel", "writer"):
            return f"{name}:{'main' if pid == tid else 'thr'}"
        return name

    def _process(self, pid: int, comm: str) -> str | None:
        if pid == self.gateway:
            return "gateway"
        if pid in self.tunnels:
            return "tunnel"
        if comm.startswith(("postgres", "postmaster")):
            return None  # see the module docstring
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return comm
        if b"hoopcli.gateway.audit.process" in argv:
            return "writer"
        return comm


def run_once(info: dict, label: Labeller, path: str, clients: int, seconds: float) -> str:
    port = info["ports"][path]
    before, idle0 = thread_cpu(), idle_ticks()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([PGBENCH, "-n", "-S", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(int(seconds)),
                           "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "bench"], capture_output=True, text=True)
    after, idle1 = thread_cpu(), idle_ticks()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        return f"{path}: pgbench failed: {done.stderr.strip()[-300:]}"
    txns = int(re.search(r"actually processed: (\d+)", done.stdout).group(1))
    tps = float(re.search(r"tps = ([\d.]+)", done.stdout).group(1))
    per_txn: dict[str, float] = defaultdict(float)
    for key, (comm, ticks) in after.items():
        spent = ticks - before.get(key, (comm, 0))[1]
        name = label(key[0], key[1], comm) if spent > 0 else None
        if name:
            per_txn[name] += spent / TICK * 1e6 / txns
    pgbench_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    per_txn["pgbench"] = pgbench_cpu * 1e6 / txns
    idle = (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
    parts = ", ".join(f"{name} {us:.1f}" for name, us in sorted(per_txn.items(), key=lambda kv: -kv[1]) if us >= 0.5)
    return f"{path:11s} -c {clients}  {tps:8,.0f} tps  idle {idle:4.0%}  µs/txn: {parts}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="hoop-rec,hoop-norec,ssh", help="paths of bench/run.py, interleaved")
    parser.add_argument("--clients", default="8,1")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    paths = args.paths.split(",")
    serve = subprocess.Popen([sys.executable, str(HERE / "run.py"), "--serve", "--no-startup", "--paths", ",".join(["direct", *paths])],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        if not line:
            print("bench/run.py --serve did not start (see its output above)", file=sys.stderr)
            return 1
        info = json.loads(line)
        label = Labeller(info)
        time.sleep(2)
        for clients in (int(c) for c in args.clients.split(",")):
            for _ in range(args.rounds):
                for path in paths:
                    print(run_once(info, label, path, clients, args.seconds), flush=True)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
