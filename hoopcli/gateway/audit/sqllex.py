"""A small SQL lexer that knows every literal spelling of PostgreSQL and MySQL/MariaDB, for
masking secrets (audit/masking.py). It only has to find where tokens begin and end; it never
decides what a statement does.

The audit writer does not know a statement's dialect or its session settings, and those change
where a literal ends: a backslash escapes a quote in MySQL and under PostgreSQL's
standard_conforming_strings = off, not otherwise; "…" is a string in MySQL, an identifier under
ANSI_QUOTES and in PostgreSQL; `$tag$` quotes only in PostgreSQL; `#`, `/*!…*/` only in MySQL.
So `modes(text)` lists every reading that could differ for this text, and the caller masks what
any of them calls a secret: masking too much is harmless, missing one reading leaks.

Tokens are tuples (kind, start, end, value):
  "w" word (keyword or identifier; value upper-cased)   "q" quoted identifier (value decoded)
  "s" literal: every string, hex, bit or national form   "n" number
  "p" punctuation (value: the operator text)
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import NamedTuple

WORD, QUOTED, LITERAL, NUMBER, PUNCT = "w", "q", "s", "n", "p"


class Mode(NamedTuple):
    family: str  # "pg" or "my"
    backslash: bool  # a backslash escapes the next character in plain '…' strings
    dquote_string: bool = False  # MySQL without ANSI_QUOTES: "…" is a string


def modes(text: str, dialect: str | None = None) -> list[Mode]:
    """The readings of `text` that can place token boundaries differently (only those of one
    dialect, "postgres" or "mysql", when it is known): without a backslash or a double quote in
    the text, the modes that differ only in those are the same reading."""
    backslash = (False, True) if "\\" in text else (False,)
    dquote = (False, True) if '"' in text else (True,)
    pg = [Mode("pg", b) for b in backslash] if dialect != "mysql" else []
    return pg + ([Mode("my", b, d) for b in backslash for d in dquote] if dialect != "postgres" else [])


# Each pattern below ends with `(?P<end>\Z)`: space at the end of the text is then one match.
# Without it finditer, which searches, would try again at every position of that space:
# quadratic ('password' and 64 KiB of spaces took 13 s).

# Bodies of quoted text, possessive (`*+`) so that an unterminated literal never backtracks.
def _quoted(q: str, backslash: bool) -> str:
    body = rf"(?:[^{q}\\]++|\\[\s\S]|{q}{q})*+" if backslash else rf"(?:[^{q}]++|{q}{q})*+"
    return rf"{q}{body}(?:{q}|\Z)"


# Between the parts of a string continued on the next line: space holding a newline, comments
# allowed. An E'…' string's continuation keeps its escapes, so it is read as one token.
_PG_CONTINUATION = r"[ \t\f]*+(?:--[^\n\r]*+)?[\r\n](?:\s++|--[^\n\r]*+)*+"
_PG_IDENT = r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*"


def _pg_pattern(backslash: bool) -> str:
    plain = _quoted("'", backslash)
    return rf"""\s*+(?:
        (?P<w>(?![EeNnBbXx]')(?![Uu]&['"]){_PG_IDENT})
      | (?P<c>--[^\n\r]*+)
      | (?P<cb>/\*)
      | (?P<s>[Ee]{_quoted("'", True)}(?:{_PG_CONTINUATION}{_quoted("'", True)})*+ | [Uu]&{_quoted("'", False)} | [BbXx]'[^']*+(?:'|\Z) | [Nn]?{plain})
      | (?P<q>(?:[Uu]&)?{_quoted('"', False)})
      | (?P<d>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*+)?\$)
      | (?P<n>\.?[0-9][0-9A-Za-z_.]*+)
      | (?P<p>\$[0-9]++|::|:=|=>|\|\||\S)
      | (?P<end>\Z)
    )"""


def _my_pattern(backslash: bool, dquote_string: bool) -> str:
    dquoted = _quoted('"', backslash) if dquote_string else None
    return rf"""\s*+(?:
        (?P<w>(?![XxBbNn]')[A-Za-z_$\x80-\U0010ffff][\w$\x80-\U0010ffff]*+)
      | (?P<c>\#[^\n]*+ | --(?=[\s\x00-\x1f]|\Z)[^\n]*+ | /\*(?!M?!)[\s\S]*?(?:\*/|\Z))
      | (?P<x>/\*M?![0-9]*+)
      | (?P<xe>\*/)
      | (?P<s>[XxBb]'[^']*+(?:'|\Z) | 0x[0-9A-Fa-f]++(?![\w$]) | 0b[01]++(?![\w$])
              | [Nn]?{_quoted("'", backslash)} {"| " + dquoted if dquoted else ""})
      | (?P<q>`(?:[^`]++|``)*+(?:`|\Z) {"" if dquoted else "| " + _quoted('"', False)})
      | (?P<n>(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?(?![\w$]))
      | (?P<w2>[\w$\x80-\U0010ffff]++)
      | (?P<p>:=|\|\||\S)
      | (?P<end>\Z)
    )"""


@lru_cache(maxsize=None)
def _master(mode: Mode) -> re.Pattern:
    text = _pg_pattern(mode.backslash) if mode.family == "pg" else _my_pattern(mode.backslash, mode.dquote_string)
    return re.compile(text, re.VERBOSE)


_PG_COMMENT_EDGE = re.compile(r"/\*|\*/")


def _pg_comment_end(text: str, pos: int, limit: int) -> tuple[int, int]:
    """End of a PostgreSQL block comment opened just before `pos` (they nest), and how many
    `/*` and `*/` it read: each costs the caller as much as a token, and it stops after `limit`."""
    depth, edges = 1, 0
    for edges, m in enumerate(_PG_COMMENT_EDGE.finditer(text, pos), 1):
        depth += 1 if m.group() == "/*" else -1
        if depth == 0 or edges > limit:
            return m.end(), edges
    return len(text), edges


def tokenize(text: str, mode: Mode, limit: int = sys.maxsize) -> list[tuple] | None:
    """Every token of `text` read in `mode`; comments dropped, MySQL `/*!…*/` bodies read as SQL
    (whatever the version number: the server may run them). Unterminated quotes run to the end.
    None past `limit` tokens' worth of work (a quoted name counts four, each `/*` or `*/` of a
    nested PostgreSQL comment one): the caller has a cheaper way for such a text."""
    finditer = _master(mode).finditer
    tokens: list[tuple] = []
    append = tokens.append
    pos, size, executable = 0, len(text), False
    watch = 2 * size > limit  # a token's worth of work takes at least half a character
    while pos < size:
        for m in finditer(text, pos):  # tokens are contiguous: `\s*+` takes the space between
            if watch and len(tokens) > limit:
                return None
            kind = m.lastgroup
            start, end = m.span(kind)
            if kind == "w" or kind == "w2":
                append((WORD, start, end, m.group(kind).upper()))
            elif kind == "p":
                append((PUNCT, start, end, m.group(kind)))
            elif kind == "s":
                append((LITERAL, start, end, None))
            elif kind == "n":
                append((NUMBER, start, end, None))
            elif kind == "q":  # decoding the name costs about as much as three more tokens
                append((QUOTED, start, end, quoted_identifier(text, start, end)))
                limit -= 3
            elif kind == "c":
                continue
            elif kind == "end":
                return tokens
            elif kind == "x":
                executable = True
            elif kind == "xe":
                if not executable:
                    append((PUNCT, start, start + 1, "*"))
                    append((PUNCT, start + 1, end, "/"))
                executable = False
            elif kind == "d":  # PostgreSQL's $tag$…$tag$ ends where a regex cannot tell
                pos = _dollar_end(text, m.group(kind), end)
                append((LITERAL, start, pos, None))
                break
            else:  # "cb": a PostgreSQL comment, which nests
                pos, edges = _pg_comment_end(text, end, limit - len(tokens))
                limit -= edges
                if len(tokens) > limit:
                    return None
                break
        else:
            break
    return tokens


def _dollar_end(text: str, tag: str, pos: int) -> int:
    close = text.find(tag, pos)
    return len(text) if close < 0 else close + len(tag)


_UNICODE_ESCAPE = re.compile(r"\s*UESCAPE\s*'([^'])'", re.IGNORECASE)


def quoted_identifier(text: str, start: int, end: int) -> str:
    """The name a quoted identifier spells, upper-cased: "…" and `…` with doubled quotes, and
    PostgreSQL's U&"…" with its escapes (and UESCAPE), so that U&"p\\0061ssword" reads PASSWORD."""
    raw = text[start:end]
    if raw[:1] in "Uu":
        escape = _UNICODE_ESCAPE.match(text, end)
        body = raw[3:-1] if raw.endswith('"') and len(raw) > 3 else raw[3:]
        body = body.replace('""', '"')
        escape = escape.group(1) if escape else "\\"
        return (_unicode_unescape(body, escape) if escape in body else body).upper()
    quote = raw[0]
    body = raw[1:-1] if len(raw) > 1 and raw.endswith(quote) else raw[1:]
    return body.replace(quote * 2, quote).upper()


@lru_cache(maxsize=64)
def _unicode_escapes(escape: str) -> re.Pattern:
    e = re.escape(escape)
    return re.compile(rf"{e}(?:{e}|\+([0-9A-Fa-f]{{6}})|([0-9A-Fa-f]{{4}}))")


def _unicode_unescape(body: str, escape: str) -> str:
    pattern = _unicode_escapes(escape)

    def one(m: re.Match) -> str:
        code = m.group(1) or m.group(2)
        if code is None:
            return escape
        try:
            return chr(int(code, 16))
        except ValueError:  # beyond U+10FFFF: PostgreSQL refuses it; keep the text as written
            return m.group()

    return pattern.sub(one, body)
