"""MySQL / MariaDB statements whose first word does not tell what they do.

- `CREATE OR REPLACE x` drops x first (MariaDB): `drop`, whatever x is.
- `CREATE [DEFINER=…] FUNCTION|PROCEDURE|TRIGGER|EVENT|PACKAGE|AGGREGATE FUNCTION`, and their
  ALTER forms, create or change code the server runs later: `routine` (a UDF from a shared
  library, `… SONAME 'lib.so'`, also `load_library`).
- `SET` statements that may switch the client character set (`SET NAMES`, `SET CHARACTER SET`,
  `CHARSET`, `character_set_client`/`_connection`, `collation_connection`, in any scope or
  spelling): `encoding` unless the value is one literal, ASCII-safe character set. A user
  variable, a number (collation id), a hex or introduced literal, an expression: `encoding`.
- `SET` of the binary, general or slow log or of the audit plugin's settings: `safety_off`;
  any `SET GLOBAL` / `PERSIST` (a setting for every session of the server): `admin`.
- `SET STATEMENT var = value [, …] FOR statement` (MariaDB) runs its statement: that statement
  is classified too.

These read the statement's canonical text (comments gone, strings re-quoted by the lexer in
mysql.py), so executable comments and quoting tricks are already resolved.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

__all__ = ["SAFE_CHARSETS", "create_categories", "set_statement", "use_target"]

# Character sets in which no byte of a multibyte character is an ASCII quote, backslash or
# backtick (single-byte sets, UTF-8, and the EUC family whose trail bytes are >= 0xA1).
SAFE_CHARSETS = frozenset(
    {
        "utf8", "utf8mb3", "utf8mb4", "ascii", "binary", "latin1", "latin2", "latin5", "latin7",
        "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866", "dec8", "greek", "hebrew", "hp8",
        "keybcs2", "koi8r", "koi8u", "macce", "macroman", "swe7", "armscii8", "geostd8", "tis620",
        "ujis", "eucjpms", "euckr", "gb2312",
    }
)
_ROUTINE_KINDS = frozenset({"FUNCTION", "PROCEDURE", "TRIGGER", "EVENT", "PACKAGE", "AGGREGATE"})
_OBJECT_KINDS = _ROUTINE_KINDS | frozenset(
    {"TABLE", "DATABASE", "SCHEMA", "VIEW", "INDEX", "UNIQUE", "FULLTEXT", "SPATIAL", "USER", "ROLE",
     "SEQUENCE", "SERVER", "TABLESPACE", "LOGFILE", "RESOURCE", "TEMPORARY", "SYNONYM"}
)


def create_categories(words: list[str]) -> set[str]:
    """Categories of a CREATE or ALTER statement beyond its first word's."""
    cats: set[str] = set()
    rest = words[1:]
    if rest[:2] == ["OR", "REPLACE"]:
        cats.add("drop")  # MariaDB drops the old object first: replacing is dropping
        rest = rest[2:]
    kind = next((w for w in rest[:12] if w in _OBJECT_KINDS), "")
    if words[0] == "CREATE" and kind in ("USER", "ROLE"):
        cats.add("grant")  # a login outside the IdP, or a bundle of privileges
    if kind in _ROUTINE_KINDS:
        cats.add("routine")
        if "SONAME" in words:
            cats.add("load_library")  # a user-defined function from a shared library
    return cats


# Tokens of a canonical text: strings as the lexer re-quoted them, backquoted names, words,
# `@`, `:=`, and any other single character.
_TOKEN = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`]|``)*`|[0-9A-Za-z_$\x80-\U0010ffff]+|:=|\S")
_SCOPES = frozenset({"GLOBAL", "SESSION", "LOCAL", "PERSIST", "PERSIST_ONLY"})
_CHARSET_VARIABLES = frozenset({"CHARACTER_SET_CLIENT", "CHARACTER_SET_CONNECTION", "COLLATION_CONNECTION"})
_SERVER_SCOPES = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY"})
# Settings that switch off the server's own record or safety for a session or for everyone:
# the binary log (replicas and point-in-time recovery miss what follows), the general and
# slow logs, MariaDB's audit plugin, MySQL Enterprise Audit.
_SAFETY_VARIABLES = frozenset({"SQL_LOG_BIN", "SQL_LOG_OFF", "GENERAL_LOG", "SLOW_QUERY_LOG", "LOG_SLOW_QUERY",
                               "LOG_BIN_TRUST_FUNCTION_CREATORS", "SQL_SAFE_UPDATES", "SKIP_REPLICATION", "WSREP_ON",
                               "SERVER_ID", "BINLOG_FORMAT", "LONG_QUERY_TIME", "LOG_SLOW_FILTER",
                               "LOG_SLOW_DISABLED_STATEMENTS", "MIN_EXAMINED_ROW_LIMIT", "TIMESTAMP",
                               "TRANSACTION_READ_ONLY", "TX_READ_ONLY"})
_SAFETY_PREFIXES = ("SERVER_AUDIT", "AUDIT_LOG")


def _name(token: str) -> str:
    """A word or a backquoted name, upper-cased (system variables may be backquoted)."""
    if token.startswith("`"):
        return token[1:-1].replace("``", "`").upper()
    return token.upper()


def _safe_value(tokens: list[str], *, collation: bool = False) -> bool:
    """One literal name of a safe character set (or collation of one), or DEFAULT."""
    if len(tokens) != 1:
        return False
    token = tokens[0]
    if token.startswith("'"):
        value = re.sub(r"\\(.)", r"\1", token[1:-1])
    elif token.startswith("`"):
        value = token[1:-1].replace("``", "`")
    elif re.fullmatch(r"[A-Za-z_][0-9A-Za-z_]*", token):
        value = token
    else:
        return False  # a number (a collation id), a hex literal, `@`, punctuation
    value = value.lower()
    # DEFAULT is the server's global character set, which may be GBK or SJIS (red team): unknown.
    if collation:
        value = value if value == "binary" else value.split("_", 1)[0]
    return value in SAFE_CHARSETS


def _split_top_level(tokens: list[str], separator: str) -> list[list[str]]:
    pieces: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        if token == separator and depth == 0:
            pieces.append([])
        else:
            pieces[-1].append(token)
    return pieces


def _assignment_categories(tokens: list[str]) -> set[str]:
    """Categories one `SET` list element adds: `encoding`, `safety_off`, `admin`."""
    i = 0
    while i < len(tokens) and tokens[i] == "@":  # @@var (one @ is a user variable: harmless)
        i += 1
    if i == 1:
        return set()
    names = [_name(t) for t in tokens[i:]]
    scopes = set()
    while names and (names[0] in _SCOPES or (len(names) > 1 and names[1] == ".")):  # GLOBAL x, @@session.x
        scopes.add(names[0])
        names = names[2:] if len(names) > 1 and names[1] == "." else names[1:]
    if not names:
        return set()
    cats = {"admin"} if scopes & _SERVER_SCOPES else set()  # server-wide settings, for every session
    raw = tokens[len(tokens) - len(names) :]
    head = names[0]
    if head in _SAFETY_VARIABLES or head.startswith(_SAFETY_PREFIXES):
        cats.add("safety_off")
    if _switches_charset(head, names, raw):
        cats.add("encoding")
    if head == "SQL_MODE" and not _safe_sql_mode(raw[1:]):
        cats.add("sql_mode")
    return cats


# sql_mode flags that leave how a statement is read alone. ANSI_QUOTES (a "string" becomes a
# column: `WHERE v = "v"` matches every row), PIPES_AS_CONCAT (`||` is no longer OR),
# NO_BACKSLASH_ESCAPES, IGNORE_SPACE, HIGH_NOT_PRECEDENCE and the combination modes that
# include them (ANSI, ORACLE, MSSQL, DB2, POSTGRESQL, MAXDB) change it: the classifier would
# read later statements differently from the server.
_SAFE_SQL_MODES = frozenset({
    "", "NO_AUTO_VALUE_ON_ZERO", "STRICT_TRANS_TABLES", "STRICT_ALL_TABLES", "NO_ZERO_DATE", "NO_ZERO_IN_DATE",
    "ERROR_FOR_DIVISION_BY_ZERO", "NO_ENGINE_SUBSTITUTION", "ONLY_FULL_GROUP_BY", "TRADITIONAL",
    "NO_AUTO_CREATE_USER", "NO_DIR_IN_CREATE", "ALLOW_INVALID_DATES", "NO_UNSIGNED_SUBTRACTION",
    "PAD_CHAR_TO_FULL_LENGTH", "REAL_AS_FLOAT", "SIMULTANEOUS_ASSIGNMENT", "TIME_ROUND_FRACTIONAL",
    "NO_KEY_OPTIONS", "NO_TABLE_OPTIONS", "NO_FIELD_OPTIONS", "EMPTY_STRING_IS_NULL", "STRICT_MODE",
})


def _safe_sql_mode(value: list[str]) -> bool:
    """`= 'A,B'` (one literal of safe flags) or DEFAULT (the mode the session started with)."""
    if value[:1] in (["="], [":="]):
        value = value[1:]
    if len(value) != 1:
        return False
    token = value[0]
    if _name(token) == "DEFAULT":
        return True
    if not token.startswith("'"):
        return False
    flags = re.sub(r"\\(.)", r"\1", token[1:-1]).upper().split(",")
    return all(flag.strip() in _SAFE_SQL_MODES for flag in flags)


def _switches_charset(head: str, names: list[str], raw: list[str]) -> bool:
    """True when the element may set the client character set to an unsafe one."""
    if head == "NAMES":
        value = raw[1:]
        if len(value) >= 2 and _name(value[1]) == "COLLATE":
            return not (_safe_value(value[:1]) and _safe_value(value[2:], collation=True))
        return not _safe_value(value)
    if head == "CHARSET" or (head == "CHARACTER" and names[1:2] == ["SET"]):
        return not _safe_value(raw[2:] if head == "CHARACTER" else raw[1:])
    if head in _CHARSET_VARIABLES:
        value = raw[1:]
        if value[:1] in (["="], [":="]):
            value = value[1:]
        return not _safe_value(value, collation=head == "COLLATION_CONNECTION")
    return False


def set_statement(canonical: str, classify_text: Callable[[str], Iterable[tuple[Iterable[str], str]]]) -> tuple[set[str], str]:
    """Categories of a `SET …` statement: (categories, note). `classify_text` classifies the
    statement of a `SET STATEMENT … FOR statement`."""
    found = list(_TOKEN.finditer(canonical))
    tokens = [m.group() for m in found]
    cats: set[str] = {"set"}
    note = ""
    body = tokens[1:]
    words = [_name(t) for t in body]
    if "TRANSACTION" in words[:3] and "WRITE" in words:
        cats.add("safety_off")  # SET [SESSION] TRANSACTION READ WRITE: past a read-only default
    if [_name(t) for t in body[:2]] == ["DEFAULT", "ROLE"] or [_name(t) for t in body[:1]] == ["ROLE"]:
        cats.add("grant")  # SET ROLE r: this session's privileges; SET DEFAULT ROLE r FOR u: u's next sessions
    if body and _name(body[0]) == "STATEMENT":  # SET STATEMENT a = 1 [, …] FOR <statement>
        depth, cut = 0, None
        for k in range(2, len(tokens)):
            depth += (tokens[k] == "(") - (tokens[k] == ")")
            if depth == 0 and _name(tokens[k]) == "FOR":
                cut = k
                break
        if cut is None or cut + 1 >= len(tokens):
            return {"unparseable"}, "SET STATEMENT without a statement after FOR"
        for inner_cats, inner_note in classify_text(canonical[found[cut + 1].start() :]):
            cats.update(inner_cats)
            note = note or inner_note
        body = tokens[2:cut]
    for piece in _split_top_level(body, ","):
        cats |= _assignment_categories(piece)
    return cats, note


_NAME = r"(?:`(?:[^`]|``)*`|[0-9A-Za-z_$\x80-\U0010ffff]+)"
_KEYS_ONLY = re.compile(rf"\s*ALTER\s+TABLE\s+{_NAME}(?:\s*\.\s*{_NAME})?\s+(?:DISABLE|ENABLE)\s+KEYS\s*", re.IGNORECASE)


def keys_only(canonical: str) -> bool:
    """`ALTER TABLE t DISABLE KEYS` / `ENABLE KEYS` and nothing else (mysqldump writes them
    around every table's rows): index upkeep, not a change of what exists."""
    return _KEYS_ONLY.fullmatch(canonical) is not None


_USE = re.compile(r"\s*USE\s+(`(?:[^`]|``)*`|[0-9A-Za-z_$\x80-\U0010ffff]+)\s*", re.IGNORECASE)


def use_target(canonical: str) -> str | None:
    """The database a `USE` statement names; None when it cannot be told for sure."""
    m = _USE.fullmatch(canonical)
    if m is None:
        return None
    name = m.group(1)
    return name[1:-1].replace("``", "`") if name.startswith("`") else name
