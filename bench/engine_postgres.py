"""Micro-benchmark of the PostgreSQL wire engine alone (no sockets).

Feeds what pgbench's built-in select-only script puts on the wire —
`SELECT abalance FROM pgbench_accounts WHERE aid = :aid` — in its three query modes,
one read per direction per transaction (as with -c 1: every round trip is a read), plus
pipelined reads and COPY bulk streams both ways, and prints messages/s and transactions/s.
"non-ASCII" pipelines carry a comment (/* 中 */) whose text a client_encoding switch could
change: the encoding fence holds each such Query until the one before it is answered.

    .venv/bin/python bench/engine_postgres.py [--seconds 2]

Rates are per second of this process's CPU time (time.process_time), so that other work on
a shared machine does not count against the engine.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hoopcli.gateway.protocols.base import Verdict  # noqa: E402
from hoopcli.gateway.protocols.postgres import PostgresEngine  # noqa: E402

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def startup() -> bytes:
    body = struct.pack("!I", 196608) + b"user\0bench\0database\0bench\0\0"
    return struct.pack("!I", len(body) + 4) + body


LOGIN = msg(b"R", b"\0\0\0\0") + msg(b"S", b"server_version\x0016\0") + msg(b"K", b"\0" * 8) + msg(b"Z", b"I")
ROW_DESC = msg(b"T", struct.pack("!h", 1) + b"abalance\0" + struct.pack("!IhIhih", 16400, 2, 23, 4, -1, 0))
RESULT = ROW_DESC + msg(b"D", struct.pack("!hi", 1, 4) + b"2871") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")


def bind(aid: int, stmt: bytes = b"") -> bytes:
    value = str(aid).encode()
    body = b"\0" + stmt + b"\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", len(value)) + value + struct.pack("!h", 0)
    return msg(b"B", body)


DESCRIBE = msg(b"D", b"P\0")
EXECUTE = msg(b"E", b"\0\0\0\0\0")
SYNC = msg(b"S")


def parse(stmt: bytes = b"") -> bytes:
    return msg(b"P", stmt + b"\0" + SQL.encode() + b"\0" + struct.pack("!hI", 1, 23))


def transactions(mode: str, count: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(1)
    out = []
    for _ in range(count):
        aid = rng.randint(1, 100_000)
        if mode == "simple" or mode == "non-ASCII":
            sql = SQL.replace("$1", str(aid)) + (" /* 中 */" if mode == "non-ASCII" else "")
            client = msg(b"Q", sql.encode() + b"\0")
            server = RESULT
        elif mode == "extended":
            client = parse() + bind(aid) + DESCRIBE + EXECUTE + SYNC
            server = msg(b"1") + msg(b"2") + RESULT
        else:  # prepared
            client = bind(aid, b"P0_1") + DESCRIBE + EXECUTE + SYNC
            server = msg(b"2") + RESULT
        out.append((client, server))
    return out


def count_messages(stream: bytes) -> int:
    n = i = 0
    while i < len(stream):
        i += 1 + struct.unpack_from("!I", stream, i + 1)[0]
        n += 1
    return n


def fresh_engine(mode: str, gate) -> PostgresEngine:
    engine = PostgresEngine(gate)
    engine.from_client(startup())
    engine.from_server(LOGIN)
    if mode == "prepared":
        engine.from_client(parse(b"P0_1") + SYNC)
        engine.from_server(msg(b"1") + msg(b"Z", b"I"))
    return engine


def bench(mode: str, seconds: float, batch: int, gate=None) -> tuple[float, float]:
    txs = transactions(mode, 2000)
    if batch > 1:
        txs = [
            (b"".join(c for c, _ in txs[k : k + batch]), b"".join(s for _, s in txs[k : k + batch]))
            for k in range(0, len(txs), batch)
        ]
    per_round = sum(count_messages(c) + count_messages(s) for c, s in txs)
    tx_per_round = 2000
    engine = fresh_engine(mode, gate)
    from_client, from_server = engine.from_client, engine.from_server
    rounds = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for c, s in txs:
            from_client(c)
            from_server(s)
        rounds += 1
        now = time.process_time()
        if now >= deadline:
            break
    elapsed = now - start
    return rounds * per_round / elapsed, rounds * tx_per_round / elapsed


def bench_copy(seconds: float) -> float:
    row = b"1\t2871\t0\t" + b" " * 84 + b"\n"
    rows_per_msg = 64
    chunk = msg(b"d", row * rows_per_msg) * (65536 // (len(row) * rows_per_msg + 5))
    engine = fresh_engine("simple", None)
    engine.from_client(msg(b"Q", b"COPY pgbench_accounts FROM STDIN\0"))
    engine.from_server(msg(b"G", struct.pack("!bhh", 0, 1, 0)))
    total = 0
    start = time.process_time()
    deadline = start + seconds
    while time.process_time() < deadline:
        for _ in range(200):
            engine.from_client(chunk)
        total += 200 * len(chunk)
    return total / (time.process_time() - start) / 1e6


def bench_copy_out(seconds: float) -> float:
    """COPY TO STDOUT as the bench's COPY sends it: one CopyData message per ~100-byte row
    (row widths vary with the number's digits), 64 KiB reads split anywhere."""
    rows = b"".join(msg(b"d", b"%d\t%s\n" % (k, b"x" * 90)) for k in range(99_990, 100_990))
    stream = rows * 4
    chunks = [stream[k : k + 65536] for k in range(0, len(stream), 65536)]  # the last ends a row
    engine = fresh_engine("simple", None)
    engine.from_client(msg(b"Q", b"COPY (SELECT 1) TO STDOUT\0"))
    engine.from_server(msg(b"H", struct.pack("!bh", 0, 0)))
    total = 0
    start = time.process_time()
    deadline = start + seconds
    while time.process_time() < deadline:
        for chunk in chunks:
            engine.from_server(chunk)
        total += len(stream)
    elapsed = time.process_time() - start
    if engine.from_server(b"").close or engine.from_server(msg(b"c")).close:
        raise SystemExit("the engine lost the COPY stream: the measurement is void")
    return total / elapsed / 1e6


def bench_held_release(count: int) -> float:
    """CPU seconds to let go `count` pipelined non-ASCII Queries held behind the encoding
    fence, one per ReadyForQuery (quadratic before the held bytes were kept with an offset)."""
    engine = fresh_engine("simple", None)
    pipeline = b"".join(msg(b"Q", "select '中%d'".encode() % k + b"\0") for k in range(count))
    answer = msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    start = time.process_time()
    engine.from_client(pipeline)
    for _ in range(count):
        engine.from_server(answer)
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = ap.parse_args()
    allow = lambda text: Verdict("allow")  # noqa: E731
    print(f"python {sys.version.split()[0]}; {args.seconds:g} s of CPU time per line")
    print(f"{'stream':44} {'messages/s':>12} {'tx/s':>10} {'us/tx':>7}")
    for mode in ("prepared", "simple", "extended"):
        for batch, gate, label in ((1, None, "1 tx per read"), (1, allow, "1 tx per read, gated"), (50, None, "50 tx per read")):
            if gate is not None and mode == "prepared":
                label = "1 tx per read, gated (unused)"
            msgs, txs = bench(mode, args.seconds, batch, gate)
            print(f"select-only -M {mode:9} {label:29} {msgs:12,.0f} {txs:10,.0f} {1e6 / txs:7.2f}")
    msgs, txs = bench("non-ASCII", args.seconds, 50)
    print(f"select-only -M simple    {'50 tx per read, non-ASCII':29} {msgs:12,.0f} {txs:10,.0f} {1e6 / txs:7.2f}")
    print(f"16,000 held non-ASCII Queries let go one by one: {bench_held_release(16_000):.3f} s CPU")
    print(f"COPY FROM STDIN, 64 KiB reads: {bench_copy(args.seconds):,.0f} MB/s")
    print(f"COPY TO STDOUT, ~100-byte rows, 64 KiB reads: {bench_copy_out(args.seconds):,.0f} MB/s")


if __name__ == "__main__":
    main()
