"""Masking is no denial of service on the audit writer: its cost is linear in the text, with a
small constant, for any input a user can send; where precise masking would cost more, the text
is masked from its first trigger word on — over-masked, never leaked.

The worst cases run in a child process (`python tests/test_audit_masking_cost.py SIZE`) so that
a regression back to quadratic time fails the test at a deadline instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script by the tests below
    sys.path.insert(0, ROOT)

from hoopcli.gateway.audit.masking import (
    MASK_TOO_LARGE,
    MAX_PRECISE_CHARS,
    first_secret_keyword,
    mask_from_first_secret_keyword,
    mask_sql_secrets,
)

SECRET = "Qz7canaryWx4"
MIB = 1024 * 1024


def _fill(unit: str, size: int, head: str = "", tail: str = "") -> str:
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


# Texts built to make each part of masking work hardest; each holds SECRET in a secret position.
WORST = {
    "trigger words": lambda n: _fill("password ", n, tail=f"password '{SECRET}'"),
    "quotes read six ways": lambda n: _fill("SET PASSWORD = 'a\\' \"b\" ", n, tail=f"; SET PASSWORD = '{SECRET}'"),
    "dollar tags": lambda n: _fill("$a$ x $a$ ", n, head="ALTER ROLE r PASSWORD ", tail=f"$b${SECRET}$b$"),
    "comment nesting": lambda n: _fill("/*", n // 2, head=f"ALTER ROLE r PASSWORD '{SECRET}' ") + "*/" * (n // 4),
    "nested crypt(": lambda n: _fill("crypt(", n, head="SELECT ", tail=f"'{SECRET}'"),
    "IDENTIFIED repeated": lambda n: _fill("IDENTIFIED ", n, tail=f"BY '{SECRET}'"),
    "PASSWORD FOR repeated": lambda n: _fill("PASSWORD FOR ", n, tail=f"= '{SECRET}'"),
    "CONNECTION || chain": lambda n: _fill("CONNECTION || ", n, tail=f"'host=a password={SECRET}'"),
    "URL colons without @": lambda n: _fill("://:", n, head="SELECT '", tail=f"mysql://u:{SECRET}@h'"),
    'U&"…" names': lambda n: _fill('U&"p\\0061ssword" ', n, tail=f"'{SECRET}'"),
    "trailing space": lambda n: f"ALTER ROLE r PASSWORD '{SECRET}'" + " " * (n - 40),
    "bulk INSERT of crypt()": lambda n: "INSERT INTO u VALUES " + ",".join(
        f"({i}, 'user{i}', crypt('{SECRET}', gen_salt('bf')))" for i in range(max(1, n // 50))),
}


def _measure_all(size: int) -> None:
    """The child: one JSON line per case, as each finishes."""
    mask_sql_secrets("ALTER ROLE r PASSWORD 'x' \\ \"")  # compile every reading's pattern first
    for name, build in WORST.items():
        text = build(size)
        start = time.process_time()
        masked = mask_sql_secrets(text)
        cpu = time.process_time() - start
        print(json.dumps({"case": name, "cpu": cpu, "leaked": SECRET in masked, "marked": "'[REDACTED" in masked}), flush=True)


def _run_worst_cases(size: int, deadline: float) -> dict[str, dict]:
    child = subprocess.Popen([sys.executable, __file__, str(size)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, _ = child.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        child.kill()
        out, _ = child.communicate()
    results = {r["case"]: r for r in map(json.loads, out.splitlines())}
    unfinished = [name for name in WORST if name not in results]
    assert not unfinished, f"masking {size} chars did not finish within {deadline} s: {unfinished[0]}"
    return results


@pytest.mark.parametrize("size, bound", [(16 * MIB, 2.0), (MAX_PRECISE_CHARS - 64, 0.25), (8 * 1024, 0.25)],
                         ids=["16MiB", "size-limit", "8KiB"])
def test_worst_cases_mask_within_a_cpu_bound_and_are_still_masked(size, bound):
    """16 MiB (the size fallback), just under the precise path's size limit (its token budget
    runs out) and 8 KiB (within the token budget: the step budget stops nested rules): each
    crafted case stays within a generous CPU bound (measured under load: ≤ 0.16 s, ≤ 25 ms,
    ≤ 10 ms; quadratic or worse before), and its secret is still masked."""
    results = _run_worst_cases(size, deadline=60.0)
    for name, result in results.items():
        assert not result["leaked"] and result["marked"], name
        assert result["cpu"] < bound, (name, result["cpu"])


# ---- the fallback never leaks what follows a trigger ------------------------------------------

TRIGGERS = ["password", "identified", "crypt(", "connection", "dblink", "mysql://", 'u&"', "authentication_string"]
# What may come before the trigger: quotes, comments, escapes, and İ (lower() makes it two
# characters, so a position found in the lowered text lies past the same place in the text).
BEFORE = st.text(st.sampled_from(list("abc019 '\"\\$#-*/;,()=@:_`&\n") + ["İ", "é", "日"]), max_size=40)
ANYTHING = st.text(max_size=40)


def _any_case(draw, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c for c, flip in zip(word, flips))


@st.composite
def texts_with_a_secret_after_a_trigger(draw, where: list | None = None) -> str:
    """`where`, when given, receives the trigger's place."""
    before = draw(BEFORE | st.integers(1, 40).map(lambda k: "İ" * k))
    trigger = _any_case(draw, draw(st.sampled_from(TRIGGERS)))
    secret = "Qz7" + draw(ANYTHING) + "Wx4"
    if where is not None:
        where.append(len(before) + max(trigger.find("://"), 0))  # mysql:// triggers at its ://
    return before + trigger + draw(ANYTHING) + secret + draw(ANYTHING)


def _assert_over_masked(text: str, masked: str) -> None:
    assert "Qz7" not in masked and "Wx4" not in masked, (text, masked)
    assert masked.endswith(MASK_TOO_LARGE) and text.startswith(masked[: -len(MASK_TOO_LARGE)]), (text, masked)


FALLBACK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FALLBACK
@given(data=st.data())
def test_the_fallback_never_keeps_anything_after_a_trigger(data):
    where: list[int] = []
    text = data.draw(texts_with_a_secret_after_a_trigger(where))
    _assert_over_masked(text, mask_from_first_secret_keyword(text))
    assert 0 <= first_secret_keyword(text) <= where[-1]  # the journal cuts there too


def test_the_fallback_counts_characters_that_lower_case_into_two():
    """İ lower-cases to two characters: the trigger's place in the lowered text lies one further
    per İ before it, which would keep the start of what follows the trigger."""
    text = "İ" * 50 + 'U&"' + SECRET
    assert first_secret_keyword(text) <= 50
    _assert_over_masked(text, mask_from_first_secret_keyword(text))


@FALLBACK
@given(text=texts_with_a_secret_after_a_trigger(), where=st.sampled_from(["start", "secret", "end"]))
def test_a_text_too_large_to_mask_precisely_never_leaks(text, where):
    """Space past the size limit, before the trigger, between it and the secret, or at the end:
    mask_sql_secrets takes the fallback and leaks nothing."""
    at = {"start": 0, "secret": text.index("Qz7"), "end": len(text)}[where]
    padded = text[:at] + " " * MAX_PRECISE_CHARS + text[at:]
    _assert_over_masked(padded, mask_sql_secrets(padded))


@FALLBACK
@given(text=texts_with_a_secret_after_a_trigger())
def test_a_text_with_too_many_tokens_to_mask_precisely_never_leaks(text):
    """Under the size limit but past the token budget (a dense `x,x,…` first, so every reading
    counts it): the fallback again."""
    padded = "SELECT " + "x," * 20_000 + text
    assert len(padded) < MAX_PRECISE_CHARS
    _assert_over_masked(padded, mask_sql_secrets(padded))


def test_the_fallback_keeps_what_comes_before_the_first_trigger():
    """A bulk statement too large to mask precisely keeps its text up to the trigger word, and
    the mark says that the rest is gone."""
    rows = ",".join(f"({i}, 'name{i}')" for i in range(20_000))
    text = f"INSERT INTO users VALUES {rows}; ALTER ROLE app PASSWORD '{SECRET}'"
    masked = mask_sql_secrets(text)
    assert masked == text[: text.index("PASSWORD")] + MASK_TOO_LARGE
    assert "too large to mask precisely" in MASK_TOO_LARGE


def test_a_small_statement_is_still_masked_precisely():
    """The bounds leave ordinary password statements to the precise rules: only the secret goes."""
    masked = mask_sql_secrets(f"ALTER ROLE app PASSWORD '{SECRET}' VALID UNTIL 'infinity'")
    assert masked == "ALTER ROLE app PASSWORD '[REDACTED]' VALID UNTIL 'infinity'"


if __name__ == "__main__":
    _measure_all(int(sys.argv[1]))
