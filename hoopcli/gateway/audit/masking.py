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
from bisect import bisect_left

from .sqllex import LITERAL, NUMBER, PUNCT, QUOTED, WORD, modes, tokenize

MASK = "'[REDACTED]'"
# Where one reading masks text that another reads as SQL (a backslash before a quote, say),
# the longest extent is masked, and the mark says that what is hidden may have run as SQL.
MASK_AMBIGUOUS = "'[REDACTED: the SQL dialect decides where this ends]'"

# Any statement that can hold a secret contains one of these (lower case), whatever its spelling:
# the keywords are never escaped; U&"…" can spell a password option name with escapes.
_TRIGGERS = ("passw", "identified", "crypt", "conn", "dblink", "://", 'u&"', "authentication_string")

# Clauses of CREATE/ALTER USER that follow the authentication part and hold no secret.
_IDENTIFIED_ENDS = frozenset({"REQUIRE", "ACCOUNT", "COMMENT", "ATTRIBUTE"})

_CONNINFO_SECRET = re.compile(r"password\s*=|://[^@]*:[^@]*@", re.IGNORECASE)


def first_secret_keyword(text: str) -> int:
    """Where the first word that can introduce a secret starts (-1: none); nothing before it
    is ever masked."""
    lowered = text.lower()
    found = [i for i in (lowered.find(t) for t in _TRIGGERS) if i >= 0]
    return min(found) if found else -1


def mask_sql_secrets(text: str, dialect: str | None = None) -> str:
    """`text` with every secret literal replaced by MASK. `dialect` ("postgres", "mysql") narrows
    the readings to that dialect's quoting settings; without it every dialect's are tried."""
    lowered = text.lower()
    if not (  # _TRIGGERS, spelled out: this runs for every statement
        "passw" in lowered or "identified" in lowered or "crypt" in lowered or "conn" in lowered
        or "dblink" in lowered or "://" in lowered or 'u&"' in lowered or "authentication_string" in lowered
    ):
        return text
    readings = [(mode, tokenize(text, mode)) for mode in modes(text, dialect)]
    found = [(mode.family, span) for mode, tokens in readings for span in secret_spans(tokens, text)]
    readings = [(mode, tokens, [t[1] for t in tokens]) for mode, tokens in readings]  # starts, to bisect
    if not found:
        return text
    out, pos = [], 0
    for start, end, families in _regions(found):
        out += [text[pos:start], MASK_AMBIGUOUS if _hides_code(start, end, families, readings) else MASK]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def secret_spans(tokens: list[tuple], text: str) -> list[tuple[int, int]]:
    """(start, end) of every literal in a secret position in one reading of the text."""
    spans: list[int] = []  # token indices; the helpers below add to it
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
            elif value == "REPLACE" and _literal_at(tokens, i + 1):  # … REPLACE 'old password'
                _mask_value(tokens, i + 1, spans)
            elif "CRYPT" in value and _is(nxt, "("):
                _mask_group(tokens, i + 1, spans, numbers=True)
            elif value == "CONNECTION" or "CONNINFO" in value:  # CREATE SUBSCRIPTION, FEDERATED, primary_conninfo
                _mask_connection_string(tokens, _after_assignment(tokens, i + 1), text, spans, in_call=False)
            elif value.startswith("DBLINK") and _is(nxt, "("):
                _mask_connection_string(tokens, i + 1, text, spans, in_call=True)
    return [(tokens[k][1], tokens[k][2]) for k in spans]


def _literal_at(tokens: list[tuple], j: int) -> bool:
    """A literal starts at tokens[j], alone or after an introducer (_binary X'…')."""
    if j < len(tokens) and tokens[j][0] == WORD and tokens[j][3].startswith("_"):
        j += 1
    return j < len(tokens) and tokens[j][0] == LITERAL


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
    """Mask a value expression: literals and numbers, calls and parentheses, operators and
    words between them (_utf8mb4'…', TO '…', E '…', a || 'b'); it ends at `,` `;` `)` or at a
    word followed by a word, which starts the next clause (VALID UNTIL …, LOGIN;)."""
    n, first = len(tokens), j
    while j < n:
        kind, _, _, value = tokens[j]
        if kind == LITERAL or kind == NUMBER:
            spans.append(j)
        elif kind == PUNCT:
            if value == "(":  # numbers too in PASSWORD(…) and the like, not in varchar(255)
                j = _mask_group(tokens, j, spans, numbers=j == first or _names_secret(tokens[j - 1]))
                continue
            if value in (",", ";", ")"):
                return
        else:  # a word or a quoted name: part of the value before a literal, a call or an
            # operator (U&'…' read as MySQL is U & '…'); a word before a word starts a clause
            nxt = tokens[j + 1] if j + 1 < n else None
            if nxt is None or not (nxt[0] == LITERAL or nxt[0] == PUNCT and nxt[3] not in (",", ";", ")")):
                return
        j += 1


def _mask_group(tokens: list[tuple], j: int, spans: list, numbers: bool) -> int:
    """Mask the literals inside the parentheses opening at tokens[j]; return the index after."""
    depth, n = 0, len(tokens)
    while j < n:
        kind, _, _, value = tokens[j]
        if kind == LITERAL or (numbers and kind == NUMBER):
            spans.append(j)
        j += 1
        if kind == PUNCT:
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
        kind, _, _, value = tokens[j]
        if kind == LITERAL:
            spans.append(j)
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


def _mask_connection_string(tokens: list[tuple], j: int, text: str, spans: list, in_call: bool) -> None:
    """Where a connection string goes, mask it when it holds a password or when it is spelled
    so that its text cannot be read without decoding (escapes, hex, bits, U&)."""
    found: list[int] = []
    if in_call:
        _mask_group(tokens, j, found, numbers=False)
    else:
        _mask_value(tokens, j, found)
    for run in _runs(tokens, found):
        start, end = tokens[run[0]][1], tokens[run[-1]][2]
        if len(run) > 1 or not _readable(text[start:end]) or _CONNINFO_SECRET.search(text, start, end):
            spans.extend(run)


def _runs(tokens: list[tuple], found: list[int]) -> list[list[int]]:
    """`found` split into runs of adjacent literals (one value: 'a'\n'b'); other tokens alone."""
    runs: list[list[int]] = []
    for k in found:
        if runs and runs[-1][-1] == k - 1 and tokens[k][0] == LITERAL == tokens[k - 1][0]:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _readable(raw: str) -> bool:
    """A literal whose text is what it says: quoted as is, no escape, no hex or bits."""
    return "\\" not in raw and (raw[0] in "'\"$" or raw[:2] in ("E'", "e'", "N'", "n'"))


def _mask_conninfo_run(tokens: list[tuple], i: int, text: str, spans: list) -> None:
    """A run of adjacent literals (one value: 'a'\\n'b', 'a' 'b') holding a connection string with
    a password is masked whole."""
    j = i
    while j + 1 < len(tokens) and tokens[j + 1][0] == LITERAL:
        j += 1
    start, end = tokens[i][1], tokens[j][2]
    if _CONNINFO_SECRET.search(text, start, end):
        spans.extend(range(i, j + 1))


def _regions(found: list[tuple[str, tuple[int, int]]]) -> list[tuple[int, int, set[str]]]:
    """The masked spans of every reading merged where they overlap, with the dialect families
    whose readings masked each region."""
    regions: list[tuple[int, int, set[str]]] = []
    for family, (start, end) in sorted(found, key=lambda f: f[1]):
        if regions and start < regions[-1][1]:
            last = regions[-1]
            regions[-1] = (last[0], max(last[1], end), last[2] | {family})
        else:
            regions.append((start, end, {family}))
    return regions


# Inside another reading's literal these are that literal's own prefix (E'…' read by MySQL is
# E then '…'; U&'…' is U & '…'), not SQL that a mask would hide.
_PREFIXES = frozenset({"E", "N", "U", "B", "X", "&"})


def _hides_code(start: int, end: int, families: set[str], readings: list) -> bool:
    """Does some reading see SQL inside the masked region? A reading of a family that masked it
    disagrees on where the literal ends; a reading of the other dialect counts only when it sees
    a `;` there (PostgreSQL's $$…$$ is words to MySQL, and means nothing to a MySQL server)."""
    for mode, tokens, starts in readings:
        for k in range(bisect_left(starts, start), len(tokens)):
            kind, _, e, value = tokens[k]
            if e > end:
                break
            if kind == LITERAL or kind == NUMBER:
                continue
            if value in _PREFIXES or value.startswith("_"):
                continue
            if mode.family in families or value == ";":
                return True
    return False
