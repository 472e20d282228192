"""Cost of `Policy.decide` on the relay's hot path, in µs per call.

    .venv/bin/python bench/policy_cost.py [--seconds 0.5]

"cached" is the same statement text again (a pool, an ORM with bind parameters), served from
the LRU classification cache. "new literal" is the routine case of pgbench's simple protocol
and of most hand-written SQL: the same statement with another value in it every time
(`... WHERE aid = 12345`); PostgreSQL text is served from the cache keyed on the text with its
literals masked, MySQL text pays for the parser. "uncached" clears the caches before every
call, so it pays for the parser too (PostgreSQL: pglast; MySQL: hoop's lexer + sqlglot).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hoopcli.gateway.policy import Policy, classify  # noqa: E402

ROUTINE = "SELECT abalance FROM pgbench_accounts WHERE aid = {}"
RISKY = "WITH d AS (DELETE FROM pgbench_history WHERE tid = {} RETURNING *) SELECT count(*) FROM d"
IDENTITY = ("alice@example.com", ("dev",))


def per_call(fn, seconds: float) -> float:
    """Median µs per call over five rounds of about seconds/5 each."""
    n = 1
    while True:  # calibrate a batch size worth ~10 ms
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start > 0.01:
            break
        n *= 2
    rounds = []
    for _ in range(5):
        batches = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            for _ in range(n):
                fn()
            batches += 1
        rounds.append((time.perf_counter() - start) / (batches * n))
    return sorted(rounds)[2] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    policy = Policy.from_config("default")

    print(f"{'dialect':8} {'statement':9} {'cached µs':>10} {'new literal µs':>15} {'uncached µs':>12}")
    for dialect in ("postgres", "mysql"):
        for label, template in (("routine", ROUTINE), ("risky", RISKY)):
            sql = template.format(42)
            policy.decide(sql, IDENTITY, dialect)
            cached = per_call(lambda: policy.decide(sql, IDENTITY, dialect), args.seconds)
            texts = itertools.cycle([template.format(n) for n in range(1_000_000, 1_100_000)])

            def new_literal() -> None:
                policy.decide(next(texts), IDENTITY, dialect)

            fresh = per_call(new_literal, args.seconds)

            def uncached() -> None:
                classify.cache_clear()
                policy.decide(sql, IDENTITY, dialect)

            cold = per_call(uncached, args.seconds)
            print(f"{dialect:8} {label:9} {cached:10.2f} {fresh:15.2f} {cold:12.2f}")
    print(f"\nroutine: {ROUTINE.format(42)!r}\nrisky:   {RISKY.format(42)!r}")


if __name__ == "__main__":
    main()
