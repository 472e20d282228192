"""PostgreSQL: a cache keyed on the text with its literals masked (see the comment below)."""

from __future__ import annotations

import re
from typing import Any

from .categories import CACHE_SIZE, StatementClass, _part
from .postgres import _pg_parse
from .postgres_risks import LITERAL_DEPENDENT

# pgbench, ORMs and hand-written code put values into the statement text (`... WHERE aid =
# 12345`), so the exact-text cache misses on every call and each statement pays for the
# parser. `Policy.decide` therefore also looks PostgreSQL text up under a key in which plain
# integer and string literals are masked. What is stored under a key is the classification of
# the first text with that key, and only when `_pg_literals_are_constants` holds for it:
#
# 1. Every masked literal became an A_Const node at its own position (for `- 5`, at the minus
#    sign right before it, where the parser folds the sign in) holding exactly its value. So
#    PostgreSQL's own lexer read it as one ICONST/SCONST token starting there, and its grammar
#    made an expression constant of it.
# 2. The classifier never looks into A_Const nodes: _pg_node_categories, _pg_walk_dml and
#    narrowing.pg_narrows read node types, keyword flags, ColumnRefs and option arguments
#    (EXPLAIN (ANALYZE 0), COPY ... 'file'), none of which is an A_Const. So its result cannot
#    depend on those literals' values. The one exception, the encoding check of
#    postgres_risks.py, marks its texts so that they are never stored (see below).
#
# Another text with the same key differs only inside masked literals, and each of its masked
# literals is of the same kind: a decimal integer of at most 9 digits (always an ICONST, never
# a float, whatever its value) with no digit, letter, `_`, `.`, `$` or non-ASCII character on
# either side (nothing a PostgreSQL number or identifier could extend over, in any version), or
# a '...' string with only doubled quotes inside and no backslash anywhere in the text (so
# standard_conforming_strings and escapes do not matter). The text around them is identical, so
# PostgreSQL's lexer produces the same tokens, of the same kinds, at the same places; the
# grammar, which branches on token kinds, takes the same path, and the productions that turn
# a literal into an A_Const do not look at its value. The two trees differ only in A_Const
# values, which (2) ignores: the classification is the same. A first text that fails (1) (a
# literal in a DO body or a COPY file name, EXPLAIN (ANALYZE 0), E'' or U&'' strings, a string
# continued on the next line, `float(10)`, `+5` in SET, ...) marks its key "exact text only".
# Unparseable text is never stored, nor is text whose categories read a literal's value
# (`SET client_encoding = 'SJIS'`, `set_config('client_encoding', …)`: postgres_risks.py marks
# it LITERAL_DEPENDENT). tests/test_policy_masked.py checks all of this against the
# uncached path, and the masking against PostgreSQL's own scanner (pglast.parser.scan).

_PG_NOT_BESIDE_NUMBER = r"A-Za-z0-9_$.\x80-\U0010ffff"
# One character from a small set starts every match, so the regex engine skips the rest of
# the text fast; what follows it is checked with lookbehinds:
#   '...'   a string literal, '' inside                        (group s: masked)
#   "..."   a quoted identifier                                 (skipped)
#   --...   /* ... */   comments                                (skipped; not nested here)
#   1..9 digits with no digit, letter, _, ., $ or non-ASCII character on either side  (group i)
_PG_MASK = re.compile(
    r"""
    ['"\-/0-9]
    (?:
        (?<=')(?P<s>[^']*(?:''[^']*)*'(?!'))
      | (?<=")[^"]*(?:""[^"]*)*"
      | (?<=-)-[^\n\r]*
      | (?<=/)\*.*?\*/
      | (?<=[0-9])(?<![{x}][0-9])(?P<i>[0-9]{{0,8}})(?![{x}])
    )
    """.format(x=_PG_NOT_BESIDE_NUMBER),
    re.VERBOSE | re.DOTALL,
)
_PG_MASKS = {"s": "\0s", "i": "\0i"}  # no statement text holds NUL, so keys split one way
_PG_SPACE = " \t\n\r\f\v"


def _pg_mask(sql: str) -> tuple[str, list[tuple[int, int, str]]] | None:
    """(key, [(start, end, kind), ...]) for text with maskable literals, else None.

    Quoted identifiers and comments are skipped (for more hits, not for safety: a literal
    masked where PostgreSQL sees none fails `_pg_literals_are_constants`)."""
    if "\\" in sql or "\0" in sql:
        return None
    spans = []
    out = []
    pos = 0
    for m in _PG_MASK.finditer(sql):
        kind = m.lastgroup
        if kind is None:
            continue
        start, end = m.span()
        out.append(sql[pos:start])
        out.append(_PG_MASKS[kind])
        spans.append((start, end, kind))
        pos = end
    if not spans:
        return None
    out.append(sql[pos:])
    return "".join(out), spans


def _pg_literals_are_constants(sql: str, spans: list[tuple[int, int, str]], consts: dict[int, list[tuple[str, Any]]]) -> bool:
    """Condition (1) above, for a text the parser read: every masked literal is an A_Const."""
    ascii_text = sql.isascii()

    def offset(i: int) -> int:  # parser locations are byte offsets
        return i if ascii_text else len(sql[:i].encode("utf-8"))

    used = set()
    try:
        for start, end, kind in spans:
            token = sql[start:end]
            at = offset(start)
            if kind == "i":
                want: tuple[str, Any] = ("i", int(token))
            else:
                want = ("s", token[1:-1].replace("''", "'"))
            if want not in consts.get(at, ()):
                if kind != "i":
                    return False
                j = start
                while j > 0 and sql[j - 1] in _PG_SPACE:
                    j -= 1
                if j == 0 or sql[j - 1] != "-":
                    return False
                at = offset(j - 1)
                if ("i", -want[1]) not in consts.get(at, ()):
                    return False
            if at in used:
                return False
            used.add(at)
    except (UnicodeError, ValueError):  # a lone surrogate; cannot happen for decoded wire text
        return False
    return True



_MASKED: dict[str, tuple[StatementClass, ...] | None] = {}



def _pg_masked_miss(sql: str, key: str, spans: list[tuple[int, int, str]]) -> tuple[StatementClass, ...]:
    consts: dict[int, list[tuple[str, Any]]] = {}
    parts = _pg_parse(sql, consts)
    if parts is None:  # as _classify_postgres; the text has no backslash, so no other reading
        return (_part(sql, ("unparseable",), "PostgreSQL's parser refused the text"),)
    if len(_MASKED) >= CACHE_SIZE:
        del _MASKED[next(iter(_MASKED))]  # the oldest
    if LITERAL_DEPENDENT not in consts and _pg_literals_are_constants(sql, spans, consts):
        entry = _MASKED[key] = tuple(StatementClass("", part.categories) for part in parts)
        return entry
    _MASKED[key] = None
    return tuple(parts)

