"""Two or more builds side by side: each checkout's stack up at once, the runs interleaved.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/ab.py /tmp/before .                                  # pgbench -S -c 8
    .venv/bin/python bench/ab.py --clients 1 --paths hoop-rec,hoop-norec /tmp/before .
    .venv/bin/python bench/ab.py --copy --paths hoop-rec,ssh /tmp/before .      # COPY MB/s

On a shared machine a full run of `bench/run.py` moves by ±5–15 % from one hour to the next,
more than most single changes are worth. Here every checkout starts its own stack (its own
`bench/run.py --serve`, so its own gateway, tunnels and PostgreSQL, running that checkout's
code), and the rounds alternate between them (A B A B …), so that both builds meet the same
weather. It prints each round, then the medians per checkout and path, and the ratio of the
first path to the second within each checkout (e.g. recording on ÷ off, or hoop ÷ ssh -L),
which is the figure to compare between checkouts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as full_run  # noqa: E402  (the same pgbench and COPY as the full run)

PGBIN = Path(full_run.PG_BINDIRS[0])
COPY_ROWS = int(300 * 1_000_000 / (len(full_run.COPY_ROW) + 9))  # ~300 MB, as run.py counts it


def start_stack(checkout: Path, paths: list[str]) -> tuple[subprocess.Popen, dict]:
    """`run.py --serve` from that checkout, with its code first on the path; (process, info)."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    proc = subprocess.Popen(
        [sys.executable, str(checkout / "bench" / "run.py"), "--serve", "--no-startup", "--paths", ",".join(["direct", *paths])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=checkout,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            return proc, json.loads(line)
    proc.kill()
    raise SystemExit(f"{checkout}: bench/run.py --serve did not come up (run it alone to see why)")


def client(port: int) -> full_run.Postgres:
    """run.py's client calls need only the binaries and the port of the server to reach."""
    return full_run.Postgres(bindir=PGBIN, root=HERE, port=port)


def pgbench_tps(port: int, clients: int, seconds: int) -> float:
    return full_run.pgbench(client(port), port, clients, seconds).tps


def copy_mb_per_s(port: int) -> float:
    start = time.perf_counter()
    size = full_run.copy_bytes(client(port), COPY_ROWS)
    if size < 100_000_000:
        raise RuntimeError(f"COPY on port {port} failed after {size} bytes")
    return size / (time.perf_counter() - start) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", type=Path, help="repository checkouts (git worktrees) to compare")
    ap.add_argument("--paths", default="hoop-rec,hoop-norec", help="bench paths, the first two give the ratio")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=8, help="per pgbench run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copy", action="store_true", help="measure a ~300 MB COPY TO STDOUT instead of pgbench")
    args = ap.parse_args()
    paths = args.paths.split(",")
    checkouts = [checkout.resolve() for checkout in args.checkouts]
    if len(set(checkouts)) != len(checkouts):
        raise SystemExit("give each checkout once (a `git worktree add` of the same commit compares a build with itself)")
    measure = (lambda port: copy_mb_per_s(port)) if args.copy else (lambda port: pgbench_tps(port, args.clients, args.seconds))
    unit = "MB/s" if args.copy else "tps"

    stacks = []
    try:
        for checkout in checkouts:
            stacks.append((checkout, *start_stack(checkout, paths)))
        if not args.copy:  # warm-up: connections, caches, JWKS
            for _, _, info in stacks:
                for path in paths:
                    pgbench_tps(info["ports"][path], args.clients, 2)
        results = {(checkout, path): [] for checkout, _, _ in stacks for path in paths}
        for number in range(1, args.rounds + 1):
            for checkout, _, info in stacks:
                for path in paths:
                    results[(checkout, path)].append(measure(info["ports"][path]))
            print(f"round {number}: " + "  ".join(f"{c.name}:{p} {v[-1]:,.0f}" for (c, p), v in results.items()), flush=True)
    finally:
        for _, proc, _ in stacks:
            proc.send_signal(signal.SIGINT)
        for _, proc, _ in stacks:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"medians of {args.rounds} round(s), {unit}" + ("" if args.copy else f", pgbench -S -c {args.clients}, {args.seconds} s"))
    for checkout, _, _ in stacks:
        med = {path: statistics.median(results[(checkout, path)]) for path in paths}
        line = "  ".join(f"{path} {value:,.0f}" for path, value in med.items())
        if len(paths) > 1:
            line += f"   {paths[0]} ÷ {paths[1]} = {med[paths[0]] / med[paths[1]]:.3f}"
        print(f"{checkout}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
