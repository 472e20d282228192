"""CPU cost of masking secrets in SQL (audit/masking.py), ordinary to crafted worst cases.

    .venv/bin/python bench/masking_cost.py [--checkout DIR] [--sizes 4K,64K,1M,16M] [--cap S]

The audit writer (and the journal, on the relay's loop) masks every statement; a statement
that holds a trigger word goes through the lexer. This times, with time.process_time:
  - ordinary statements (no trigger word) and small password statements: µs per call;
  - the bulk INSERT of 10,000 crypt() calls (~500 KB) its author measured;
  - crafted worst cases at each size: many trigger words, many quotes read six ways, dollar
    tags, deep comment nesting, nested crypt(, repeated IDENTIFIED / PASSWORD FOR, URLs without
    an `@`, U&"…" names, trailing space.
Each worst case runs in a child process with a time cap (`--cap`, default 20 s): an older
checkout is quadratic or worse on several of them, and a larger size is skipped once a smaller
one passed the cap. `--checkout DIR` measures another tree, e.g. `git worktree add /tmp/before
HEAD~1`. The last column says which way the text was masked (precise / fallback to the first
trigger word / unchanged) and that the canary placed after the trigger did not survive.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANARY = "Qz7canaryWx4"


def _repeat(unit: str, size: int, head: str = "", tail: str = "") -> str:
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


# name -> builder(size) of a text holding a trigger word and the canary in a secret position
WORST = {
    "trigger words": lambda n: _repeat("password ", n, tail=f"password '{CANARY}'"),
    "password = '…', …": lambda n: _repeat("password = 'x', ", n, tail=f"password = '{CANARY}'"),
    "quotes, six readings": lambda n: _repeat("SET PASSWORD = 'a\\' \"b\" ", n, tail=f"; SET PASSWORD = '{CANARY}'"),
    "dollar tags": lambda n: _repeat("$a$ x $a$ ", n, head="ALTER ROLE r PASSWORD ", tail=f"$b${CANARY}$b$"),
    "comment nesting": lambda n: _repeat("/*", n // 2, head=f"ALTER ROLE r PASSWORD '{CANARY}' ") + "*/" * (n // 4),
    "nested crypt(": lambda n: _repeat("crypt(", n, head="SELECT ", tail=f"'{CANARY}'"),
    "IDENTIFIED repeated": lambda n: _repeat("IDENTIFIED ", n, tail=f"BY '{CANARY}'"),
    "PASSWORD FOR repeated": lambda n: _repeat("PASSWORD FOR ", n, tail=f"= '{CANARY}'"),
    "CONNECTION || chain": lambda n: _repeat("CONNECTION || ", n, tail=f"'host=a password={CANARY}'"),
    "URL colons, no @": lambda n: _repeat("://:", n, head="SELECT '", tail=f"mysql://u:{CANARY}@h'"),
    'U&"…" names': lambda n: _repeat('U&"p\\0061ssword" ', n, tail=f"'{CANARY}'"),
    "trailing space": lambda n: f"ALTER ROLE r PASSWORD '{CANARY}'" + " " * n,
    "bulk INSERT, crypt()": lambda n: "INSERT INTO u VALUES " + ",".join(
        f"({i}, 'user{i}', crypt('{CANARY}', gen_salt('bf')))" for i in range(max(1, n // 50))),
}

ORDINARY = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4161 WHERE aid = 73921;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 73921, -4161, CURRENT_TIMESTAMP);",
]
SMALL = [
    f"ALTER ROLE app PASSWORD '{CANARY}'",
    f"CREATE USER 'u'@'%' IDENTIFIED BY '{CANARY}'",
    f"SET PASSWORD FOR 'u'@'%' = PASSWORD('{CANARY}')",
]


def _load(checkout: str):
    sys.path.insert(0, checkout)
    from hoopcli.gateway.audit import masking

    return masking


def _per_call_us(mask, text: str, calls: int) -> float:
    mask(text)
    t0 = time.process_time()
    for _ in range(calls):
        mask(text)
    return (time.process_time() - t0) / calls * 1e6


def _how(masking, text: str, masked: str) -> str:
    if CANARY in masked:
        return "LEAK"
    if masked == text:
        return "unchanged"
    return "fallback" if "too large to mask" in masked else "precise"


def measure_one(checkout: str, name: str, size: int) -> dict:
    masking = _load(checkout)
    for warm in SMALL:  # compile every reading's pattern first
        masking.mask_sql_secrets(warm + ' \\ "')
    text = WORST[name](size)
    t0 = time.process_time()
    masked = masking.mask_sql_secrets(text)
    return {"seconds": time.process_time() - t0, "chars": len(text), "how": _how(masking, text, masked)}


def _child(checkout: str, name: str, size: int, cap: float) -> dict | None:
    argv = [sys.executable, __file__, "--one", name, str(size), "--checkout", checkout]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=cap, check=True).stdout
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out)


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024 * 1024}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _label(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 1024 * 1024 else f"{size // 1024} KiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkout", default=HERE)
    parser.add_argument("--sizes", default="4K,16K,64K,1M,16M")
    parser.add_argument("--cap", type=float, default=20.0, help="seconds a child may take")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.checkout, args.one[0], int(args.one[1]))))
        return
    masking = _load(args.checkout)
    print(f"checkout {args.checkout}")
    for label, texts, calls in (("ordinary", ORDINARY, 20000), ("small password statement", SMALL, 2000)):
        for text in texts:
            print(f"{label:26} {_per_call_us(masking.mask_sql_secrets, text, calls):8.2f} us  {text[:60]}")
    sizes = [_size(s) for s in args.sizes.split(",")]
    print(f"\n{'worst case':24}" + "".join(f"{_label(s):>22}" for s in sizes))
    for name in WORST:
        row, over = f"{name:24}", False
        for size in sizes:
            result = None if over else _child(args.checkout, name, size, args.cap)
            if result is None:
                row += f"{'> ' + str(args.cap) + ' s' if not over else 'skipped':>22}"
                over = True
                continue
            row += f"{result['seconds']:>10.4f} s {result['how']:>9}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
