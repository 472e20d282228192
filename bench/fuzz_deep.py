"""The long fuzz run: tests/test_security_fuzz.py's properties with many more examples.

    .venv/bin/python bench/fuzz_deep.py                       # 20 000 examples per property
    .venv/bin/python bench/fuzz_deep.py --examples 200000     # a nightly run (hours on 2 cores)
    .venv/bin/python bench/fuzz_deep.py --seed 1234 -k postgres

Runs the pure properties only (the HTTP/CONNECT head parser, the PostgreSQL and MySQL engines
fed random and malformed streams on both sides at random splits); the live check against a
real gateway is left to the normal test run. CI runs the same properties with 200 examples
each (`HOOP_FUZZ_EXAMPLES`, which this script sets). Hypothesis keeps every failing example
in .hypothesis/ and replays it first on the next run, also in the normal test run; a failure
prints the minimal input and `@reproduce_failure` blob to paste into a regression test.

Exit status: pytest's (0 when every property held).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20_000, help="max_examples per property (default 20000)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed, to repeat a run exactly")
    parser.add_argument("-k", dest="keyword", default="", help="only properties whose name matches (pytest -k)")
    args = parser.parse_args(argv)

    os.environ["HOOP_FUZZ_EXAMPLES"] = str(args.examples)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    import pytest

    keyword = "not live" + (f" and ({args.keyword})" if args.keyword else "")
    pytest_args = [
        "tests/test_security_fuzz.py",
        "-q",
        "-p", "no:cacheprovider",
        "-o", "timeout=0",  # no per-test limit: a deep property may run for hours
        "-k", keyword,
        "--hypothesis-show-statistics",
    ]
    if args.seed is not None:
        pytest_args += ["--hypothesis-seed", str(args.seed)]
    started = time.monotonic()
    code = pytest.main(pytest_args)
    print(f"fuzz_deep: {args.examples} examples per property, {time.monotonic() - started:.0f} s, exit {int(code)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
