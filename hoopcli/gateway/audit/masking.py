"""Passwords written inside SQL are masked before a statement becomes an audit record, an export
line or what an approver sees: the trail says who changed a password, never what it was.

The masking works on tokens (audit/sqllex.py), not on one spelling of a literal, so a password
is masked however it is quoted: PostgreSQL '…', E'…', U&'…' (UESCAPE), $tag$…$tag$, B'…'/X'…',
N'…', literals continued on the next line; MySQL/MariaDB '…' and "…" with backslash escapes,
_charset'…' introducers, N'…', X'…'/0x…, B'…'/0b…, adjacent literals, `/*!…*/` bodies. The
dialect and the session's quoting settings are unknown here, so the text is read every way that
could end a literal somewhere else, and whatever any reading calls a secret is masked.

Secret positions (the literal's whole extent becomes '[REDACTED]'):
  - after a name holding "PASSW" or AUTHENTICATION_STRING, a keyword or an identifier:
    PostgreSQL [ENCRYPTED] PASSWORD '…', OPTIONS (password '…', sslpassword '…'), MySQL
    SET PASSWORD [FOR u] = '…' | PASSWORD('…') | OLD_PASSWORD('…'), MASTER_PASSWORD = '…',
    SOURCE_PASSWORD = '…', START REPLICA … PASSWORD = '…', CREATE SERVER … OPTIONS (PASSWORD '…'),
    and `password = '…'` in ordinary SQL: the value expression up to the next clause;
  - everything quoted after IDENTIFIED up to the next user (BY, WITH plugin BY|AS, VIA plugin
    USING … OR …, USING PASSWORD(…), REPLACE '…') and REPLACE '…' after SET PASSWORD;
  - every literal argument of a function whose name holds CRYPT (ENCRYPT, AES_ENCRYPT, crypt,
    pgp_sym_encrypt, …): its arguments are a password, a key or what they protect;
  - a whole literal that holds a connection string with a password (`password=` in a libpq
    conninfo for CREATE SUBSCRIPTION, dblink, primary_conninfo; `scheme://user:pass@` for
    FEDERATED/CONNECT tables and URIs).
A cheap substring test keeps ordinary statements off the lexer.
"""

from __future__ import annotations

import re

from .sqllex import LITERAL, NUMBER, PUNCT, QUOTED, WORD, modes, tokenize

MASK = "'[REDACTED]'"

# Any statement that can hold a secret contains one of these (lower case), whatever its spelling:
# the keywords are never escaped; U&"…" can spell a password option name with escapes.
_TRIGGERS = ("passw", "identified", "crypt", "://", 'u&"', "authentication_string")

# Clauses of CREATE/ALTER USER that follow the authentication part and hold no secret.
_IDENTIFIED_ENDS = frozenset({"REQUIRE", "ACCOUNT", "COMMENT", "ATTRIBUTE"})

_CONNINFO_SECRET = re.compile(r"password\s*=|://[^@]*:[^@]*@", re.IGNORECASE)


def mask_sql_secrets(text: str) -> str:
    lowered = text.lower()
    if not (  # _TRIGGERS, spelled out: this runs for every statement
        "passw" in lowered or "identified" in lowered or "crypt" in lowered
        or "://" in lowered or 'u&"' in lowered or "authentication_string" in lowered
    ):
        return text
    spans: set[tuple[int, int]] = set()
    for mode in modes(text):
        spans.update(secret_spans(tokenize(text, mode), text))
    return _replace(text, spans) if spans else text


def secret_spans(tokens: list[tuple], text: str) -> list[tuple[int, int]]:
    """(start, end) of every literal in a secret position in one reading of the text."""
    spans: list[tuple[int, int]] = []
    n = len(tokens)
    for i, (kind, start, _, value) in enumerate(tokens):
        if kind == LITERAL:
            if i == 0 or tokens[i - 1][0] != LITERAL:
                _mask_conninfo_run(tokens, i, text, spans)
        elif kind == WORD or kind == QUOTED:
            nxt = tokens[i + 1] if i + 1 < n else None
            if "PASSW" in value or value == "AUTHENTICATION_STRING":
                _mask_value(tokens, _after_assignment(tokens, i + 1), spans)
            elif kind == QUOTED:
                continue
            elif value == "IDENTIFIED":
                _mask_identified(tokens, i + 1, spans)
            elif value == "REPLACE" and nxt is not None and nxt[0] == LITERAL:
                _mask_value(tokens, i + 1, spans)
            elif "CRYPT" in value and nxt is not None and nxt[3] == "(":
                _mask_group(tokens, i + 1, spans, numbers=True)
    return spans


def _names_secret(token: tuple) -> bool:
    return token[0] == WORD and ("PASSW" in token[3] or "CRYPT" in token[3])


def _is(token: tuple | None, punct: str) -> bool:
    return token is not None and token[0] == PUNCT and token[3] == punct


def _after_assignment(tokens: list[tuple], j: int) -> int:
    """Past `FOR user` (SET PASSWORD FOR u = …) and one `=`, `:=` or `=>`."""
    n = len(tokens)
    if j < n and tokens[j][0] == WORD and tokens[j][3] == "FOR":
        k = j
        while k < n and not _is(tokens[k], "=") and not _is(tokens[k], ";"):
            k += 1
        if k < n and _is(tokens[k], "="):
            j = k
    if j < n and tokens[j][0] == PUNCT and tokens[j][3] in ("=", ":=", "=>"):
        j += 1
    return j


def _mask_value(tokens: list[tuple], j: int, spans: list) -> None:
    """Mask a value expression: literals and numbers, calls and parentheses, operators between
    them, a word that introduces a literal (_utf8mb4'…', TO '…', E '…'); it ends at `,` `;` `)`
    or at a word that starts the next clause (VALID UNTIL, DEFAULT_AUTH=…)."""
    n, first = len(tokens), j
    while j < n:
        kind, start, end, value = tokens[j]
        if kind == LITERAL or kind == NUMBER:
            spans.append((start, end))
        elif kind == PUNCT:
            if value == "(":  # numbers too in PASSWORD(…) and the like, not in varchar(255)
                j = _mask_group(tokens, j, spans, numbers=j == first or _names_secret(tokens[j - 1]))
                continue
            if value in (",", ";", ")"):
                return
        else:  # a word or a quoted name: part of the value only before a literal or a call
            nxt = tokens[j + 1] if j + 1 < n else None
            if nxt is None or not (nxt[0] == LITERAL or _is(nxt, "(")):
                return
        j += 1


def _mask_group(tokens: list[tuple], j: int, spans: list, numbers: bool) -> int:
    """Mask the literals inside the parentheses opening at tokens[j]; return the index after."""
    depth, n = 0, len(tokens)
    while j < n:
        kind, start, end, value = tokens[j]
        j += 1
        if kind == LITERAL or (numbers and kind == NUMBER):
            spans.append((start, end))
        elif kind == PUNCT:
            if value == "(":
                depth += 1
            elif value == ")":
                depth -= 1
                if depth <= 0:
                    return j
            elif value == ";":
                return j
    return j


def _mask_identified(tokens: list[tuple], j: int, spans: list) -> None:
    """IDENTIFIED …: every quoted value up to the next user (`,`), the statement's end, or a
    clause that holds no secret (REQUIRE, ACCOUNT, COMMENT, ATTRIBUTE)."""
    depth, n = 0, len(tokens)
    while j < n:
        kind, start, end, value = tokens[j]
        if kind == LITERAL:
            spans.append((start, end))
        elif kind == PUNCT:
            if value == "(":
                depth += 1
            elif value == ")":
                if depth == 0:
                    return
                depth -= 1
            elif value == ";" or (value == "," and depth == 0):
                return
        elif kind == WORD and depth == 0 and value in _IDENTIFIED_ENDS:
            return
        j += 1


def _mask_conninfo_run(tokens: list[tuple], i: int, text: str, spans: list) -> None:
    """A run of adjacent literals (one value: 'a'\\n'b', 'a' 'b') holding a connection string with
    a password is masked whole."""
    j = i
    while j + 1 < len(tokens) and tokens[j + 1][0] == LITERAL:
        j += 1
    start, end = tokens[i][1], tokens[j][2]
    if _CONNINFO_SECRET.search(text, start, end):
        spans.append((start, end))


def _replace(text: str, spans: set[tuple[int, int]]) -> str:
    """`text` with each span (merged where readings overlap) replaced by MASK."""
    out, pos = [], 0
    for start, end in sorted(spans):
        if end <= pos:
            continue
        if start < pos:  # overlaps what is already masked: extend it
            pos = end
            continue
        out.append(text[pos:start])
        out.append(MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)
