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

Masking must not let one user stall the audit writer (or the relay loop that masks before
journaling), so its cost is linear in the text with a small constant: precise masking runs only
on texts of at most MAX_PRECISE_CHARS, while the readings together hold at most
MAX_PRECISE_TOKENS tokens and the rules' scans stay within a few steps per token. Past any of
these bounds the text is kept up to its first trigger word and the rest is replaced by
MASK_TOO_LARGE: every rule masks only what follows a trigger, so this over-masks, never leaks.
"""

from __future__ import annotations

import re
from bisect import bisect_left

from .sqllex import LITERAL, NUMBER, PUNCT, QUOTED, WORD, modes, tokenize

MASK = "'[REDACTED]'"
# Where one reading masks text that another reads as SQL (a backslash before a quote, say),
# the longest extent is masked, and the mark says that what is hidden may have run as SQL.
MASK_AMBIGUOUS = "'[REDACTED: the SQL dialect decides where this ends]'"
# Where precise masking would cost too much: the rest of the text, whatever it was (SQL too).
MASK_TOO_LARGE = "'[REDACTED: the rest of this statement, too large to mask precisely]'"

# Precise masking costs about a microsecond per token per reading (up to six readings), in
# Python; these keep its worst case near 10 ms (bench/masking_cost.py) where a 500-record batch
# of them still stores well within the writer's 10 s stall limit.
MAX_PRECISE_CHARS = 64 * 1024
MAX_PRECISE_TOKENS = 6_000  # over every reading of one text together
# The rules may read a token more than once (crypt(crypt(…, IDENTIFIED IDENTIFIED …): quadratic
# on a crafted text without a bound on the steps their scans take, per token of a reading.
STEPS_PER_TOKEN = 8

# Any statement that can hold a secret contains one of these (lower case), whatever its spelling:
# the keywords are never escaped; U&"…" can spell a password option name with escapes.
_TRIGGERS = ("passw", "identified", "crypt", "conn", "dblink", "://", 'u&"', "authentication_string")

# Clauses of CREATE/ALTER USER that follow the authentication part and hold no secret.
_IDENTIFIED_ENDS = frozenset({"REQUIRE", "ACCOUNT", "COMMENT", "ATTRIBUTE"})

_PASSWORD_SETTING = re.compile(r"password\s*+=", re.IGNORECASE)


class TooCostly(Exception):
    """Precise masking of this text would pass its cost bounds."""


def first_secret_keyword(text: str, lowered: str | None = None) -> int:
    """Where the first word that can introduce a secret starts, or a little before (-1: none):
    every secret the rules find follows it, so text before it never needs masking."""
    if lowered is None:
        lowered = text.lower()
    found = [i for i in (lowered.find(t) for t in _TRIGGERS) if i >= 0]
    if not found:
        return -1
    # str.lower() turns İ into two characters, so a place in `lowered` can lie past the same
    # place in `text`, by at most that growth: step back by all of it.
    return max(0, min(found) - (len(lowered) - len(text)))


def mask_from_first_secret_keyword(text: str, lowered: str | None = None) -> str:
    """The linear fallback: `text` up to its first trigger word, then MASK_TOO_LARGE."""
    first = first_secret_keyword(text, lowered)
    return text if first < 0 else text[:first] + MASK_TOO_LARGE


def mask_sql_secrets(text: str, dialect: str | None = None) -> str:
    """`text` with every secret literal replaced by MASK. `dialect` ("postgres", "mysql") narrows
    the readings to that dialect's quoting settings; without it every dialect's are tried."""
    lowered = text.lower()
    if not (  # _TRIGGERS, spelled out: this runs for every statement
        "passw" in lowered or "identified" in lowered or "crypt" in lowered or "conn" in lowered
        or "dblink" in lowered or "://" in lowered or 'u&"' in lowered or "authentication_string" in lowered
    ):
        return text
    if len(text) > MAX_PRECISE_CHARS:
        return mask_from_first_secret_keyword(text, lowered)
    try:
        return _mask_precisely(text, dialect)
    except TooCostly:
        return mask_from_first_secret_keyword(text, lowered)


def _mask_precisely(text: str, dialect: str | None) -> str:
    """Every reading's secret literals masked; TooCostly past the token or step bounds."""
    readings, budget = [], MAX_PRECISE_TOKENS
    for mode in modes(text, dialect):
        tokens = tokenize(text, mode, limit=budget)
        if tokens is None:
            raise TooCostly
        budget -= len(tokens)
        readings.append((mode, tokens))
    found = [(mode.family, span) for mode, tokens in readings for span in secret_spans(tokens, text)]
    if not found:
        return text
    readings = [(mode, tokens, [t[1] for t in tokens]) for mode, tokens in readings]  # starts, to bisect
    out, pos = [], 0
    for start, end, families in _regions(found):
        out += [text[pos:start], MASK_AMBIGUOUS if _hides_code(start, end, families, readings) else MASK]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def secret_spans(tokens: list[tuple], text: str) -> list[tuple[int, int]]:
    """(start, end) of every literal in a secret position in one reading of the text. Each rule
    scans on from its keyword and says where it stopped; TooCostly when the scans together pass
    STEPS_PER_TOKEN tokens per token of the reading."""
    spans: list[int] = []  # token indices; the helpers below add to it
    n = len(tokens)
    steps = STEPS_PER_TOKEN * n + 64
    for i, (kind, start, _, value) in enumerate(tokens):
        if kind == LITERAL:
            if i and tokens[i - 1][0] == LITERAL:
                continue
            stop = _mask_conninfo_run(tokens, i, text, spans)
        elif kind == WORD or kind == QUOTED:
            nxt = tokens[i + 1] if i + 1 < n else None
            if "PASSW" in value or value == "AUTHENTICATION_STRING":
                j, seen = _after_assignment(tokens, i + 1)
                stop = max(seen, _mask_value(tokens, j, spans))
            elif kind == QUOTED:
                continue
            elif value == "IDENTIFIED":
                stop = _mask_identified(tokens, i + 1, spans)
            elif value == "REPLACE" and _literal_at(tokens, i + 1):  # … REPLACE 'old password'
                stop = _mask_value(tokens, i + 1, spans)
            elif "CRYPT" in value and _is(nxt, "("):
                stop = _mask_group(tokens, i + 1, spans, numbers=True)
            elif value == "CONNECTION" or "CONNINFO" in value:  # CREATE SUBSCRIPTION, FEDERATED, primary_conninfo
                j, seen = _after_assignment(tokens, i + 1)
                stop = max(seen, _mask_connection_string(tokens, j, text, spans, in_call=False))
            elif value.startswith("DBLINK") and _is(nxt, "("):
                stop = _mask_connection_string(tokens, i + 1, text, spans, in_call=True)
            else:
                continue
        else:
            continue
        steps -= stop - i
        if steps < 0:
            raise TooCostly
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


def _after_assignment(tokens: list[tuple], j: int) -> tuple[int, int]:
    """Past `FOR user` (SET PASSWORD FOR u = …) and one `=`, `:=` or `=>`; and how far it looked."""
    n, k = len(tokens), j
    if j < n and tokens[j][0] == WORD and tokens[j][3] == "FOR":
        while k < n and not _is(tokens[k], "=") and not _is(tokens[k], ";"):
            k += 1
        if k < n and _is(tokens[k], "="):
            j = k
    if j < n and tokens[j][0] == PUNCT and tokens[j][3] in ("=", ":=", "=>"):
        j += 1
    return j, k


def _mask_value(tokens: list[tuple], j: int, spans: list) -> int:
    """Mask a value expression: literals and numbers, calls and parentheses, operators and
    words between them (_utf8mb4'…', TO '…', E '…', a || 'b'); it ends at `,` `;` `)` or at a
    word followed by a word, which starts the next clause (VALID UNTIL …, LOGIN;). Returns
    where it ended, as every rule below does."""
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
                return j
        else:  # a word or a quoted name: part of the value before a literal, a call or an
            # operator (U&'…' read as MySQL is U & '…'); a word before a word starts a clause
            nxt = tokens[j + 1] if j + 1 < n else None
            if nxt is None or not (nxt[0] == LITERAL or nxt[0] == PUNCT and nxt[3] not in (",", ";", ")")):
                return j
        j += 1
    return j


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


def _mask_identified(tokens: list[tuple], j: int, spans: list) -> int:
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
                    return j
                depth -= 1
            elif value == ";" or (value == "," and depth == 0):
                return j
        elif kind == WORD and depth == 0 and value in _IDENTIFIED_ENDS:
            return j
        j += 1
    return j


def _mask_connection_string(tokens: list[tuple], j: int, text: str, spans: list, in_call: bool) -> int:
    """Where a connection string goes, mask it when it is spelled so that its text cannot be
    read without decoding (escapes, hex, bits, U&). One that holds a password is masked wherever
    it is (_mask_conninfo_run), so it is not searched again here, once per keyword before it."""
    found: list[int] = []
    stop = _mask_group(tokens, j, found, numbers=False) if in_call else _mask_value(tokens, j, found)
    for run in _runs(tokens, found):
        if len(run) > 1 or not _readable(text, tokens[run[0]][1], tokens[run[-1]][2]):
            spans.extend(run)
    return stop


def _runs(tokens: list[tuple], found: list[int]) -> list[list[int]]:
    """`found` split into runs of adjacent literals (one value: 'a'\n'b'); other tokens alone."""
    runs: list[list[int]] = []
    for k in found:
        if runs and runs[-1][-1] == k - 1 and tokens[k][0] == LITERAL == tokens[k - 1][0]:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _readable(text: str, start: int, end: int) -> bool:
    """A literal whose text is what it says: quoted as is, no escape, no hex or bits."""
    plain = text[start] in "'\"$" or text[start : start + 2] in ("E'", "e'", "N'", "n'")
    return plain and text.find("\\", start, end) < 0


def _mask_conninfo_run(tokens: list[tuple], i: int, text: str, spans: list) -> int:
    """A run of adjacent literals (one value: 'a'\\n'b', 'a' 'b') holding a connection string with
    a password is masked whole."""
    j = i
    while j + 1 < len(tokens) and tokens[j + 1][0] == LITERAL:
        j += 1
    start, end = tokens[i][1], tokens[j][2]
    url = text.find("://", start, end) >= 0 and _has_url_credentials(text, start, end)
    if url or _PASSWORD_SETTING.search(text, start, end):
        spans.extend(range(i, j + 1))
    return j


def _has_url_credentials(text: str, start: int, end: int) -> bool:
    """`scheme://user:password@` in text[start:end]: a `:` between some `://` and the next `@`
    (the pattern ://[^@]*:[^@]*@, found in linear time: a regex retries it from every `://`)."""
    pos = start
    while (scheme := text.find("://", pos, end)) >= 0:
        at = text.find("@", scheme + 3, end)
        if at < 0:
            return False
        if text.find(":", scheme + 3, at) >= 0:
            return True
        pos = at + 1  # no `:` up to this `@`, so no other `://` before it either
    return False


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
