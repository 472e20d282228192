"""MySQL / MariaDB statements: a lexer that follows the server's rules for comments, quotes and
executable comments, then sqlglot for the structure of queries and DML."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from .categories import StatementClass, _extra_readings, _part
from .narrowing import my_narrows
from .mysql_gates import ServerProfile, skip_profiles
from .mysql_risks import create_categories, keys_only, set_statement, use_target

_MY_WS = "[ \t\n\r\f\v]"
_MY_WORD = r"[0-9A-Za-z_$\x80-\U0010ffff]+"


def _my_token_re(backslash: bool) -> re.Pattern[str]:
    if backslash:
        single, double = r"'(?:[^'\\]|\\.|'')*'", r'"(?:[^"\\]|\\.|"")*"'
    else:
        single, double = r"'(?:[^']|'')*'", r'"(?:[^"]|"")*"'
    return re.compile(
        rf"""
        (?P<ws>{_MY_WS}+)
      | (?P<line>(?:--(?=[\x00-\x20\x7f]|$)|\#)[^\n]*)
      | (?P<exec>/\*M?!\d*)
      | (?P<block>/\*.*?\*/)
      | (?P<open>/\*)
      | (?P<close>\*/)
      | (?P<sq>{single})
      | (?P<dq>{double})
      | (?P<bq>`(?:[^`]|``)*`)
      | (?P<word>{_MY_WORD})
      | (?P<semi>;)
      | (?P<other>.)
        """,
        re.VERBOSE | re.DOTALL,
    )


_MY_RE = {True: _my_token_re(True), False: _my_token_re(False)}
_MY_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


@dataclass(slots=True)
class _MyStatement:
    start: int
    end: int
    canonical: list[str]  # the text as sqlglot should read it (comments out, strings normalised)
    words: list[str]  # upper-cased top-level words, in order ("@" and "'" stand for those tokens)
    strings: list[str]  # decoded string literals, in order
    broken: str = ""  # why the lexer gave up on this statement


def _my_decode(body: str, quote: str, backslash: bool) -> str:
    body = body.replace(quote * 2, quote)
    if not backslash or "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _MY_ESCAPES.get(m.group(1), m.group(1)), body, flags=re.DOTALL)


def _my_lex(sql: str, backslash: bool, ansi_quotes: bool, profile: ServerProfile | None = None) -> list[_MyStatement]:
    """Split the text into statements the way the MySQL server lexes it.

    `--` starts a comment only before whitespace or a control character, `#` comments run to
    the end of the line, `/* */` does not nest, and the body of `/*! ... */` and `/*M! ... */`
    is executed, so it is read as ordinary text — unless `profile` is a server that skips that
    gated body (mysql_gates.py): then it is a comment up to the first `*/`."""
    token_re = _MY_RE[backslash]
    statements: list[_MyStatement] = []
    cur = _MyStatement(0, 0, [], [], [])
    in_exec = False
    pos, end = 0, len(sql)
    while pos < end:
        m = token_re.match(sql, pos)
        assert m is not None  # `other` matches any character
        kind, token = m.lastgroup, m.group()
        pos = m.end()
        if kind == "ws" or kind == "line" or kind == "block":
            if kind == "block" and in_exec:
                cur.broken = "a comment inside an executable comment"
            cur.canonical.append(" ")
            continue
        if kind == "exec" and profile is not None and not profile.runs(token):
            close = sql.find("*/", pos)
            if close < 0:
                cur.broken = "an unterminated comment"
                break
            pos = close + 2
            cur.canonical.append(" ")
            continue
        if kind == "exec":
            if in_exec:
                cur.broken = "a comment inside an executable comment"
            in_exec = True
            cur.canonical.append(" ")
            continue
        if kind == "close" and in_exec:
            in_exec = False
            cur.canonical.append(" ")
            continue
        if kind == "open":
            cur.broken = "an unterminated comment"
            break
        if kind == "other" and token in "'\"`":
            cur.broken = "an unterminated quoted string"
            break
        if kind == "semi":
            cur.end = m.start()
            statements.append(cur)
            cur = _MyStatement(pos, pos, [], [], [])
            continue
        if kind == "sq" or (kind == "dq" and not ansi_quotes):
            value = _my_decode(token[1:-1], token[0], backslash)
            cur.strings.append(value)
            cur.words.append("'")
            cur.canonical.append("'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'")
            continue
        if kind == "dq":  # an identifier under ANSI_QUOTES
            name = token[1:-1].replace('""', '"')
            cur.words.append("`")
            cur.canonical.append("`" + name.replace("`", "``") + "`")
            continue
        if kind == "word":
            cur.words.append(token.upper())
        elif kind == "bq":
            cur.words.append("`")
        elif token == "@":
            cur.words.append("@")
        cur.canonical.append(token)
    else:
        if in_exec:
            cur.broken = "an unterminated executable comment"
    cur.end = end
    if cur.broken or cur.words:
        statements.append(cur)
    return [s for s in statements if s.words or s.broken]


# First word -> categories for statements whose kind the first word settles.
_MY_FIRST: dict[str, tuple[str, ...]] = {
    "DROP": ("drop",),
    "TRUNCATE": ("truncate",),
    "ALTER": ("alter",),
    "RENAME": ("alter",),
    "GRANT": ("grant",),
    "REVOKE": ("revoke",),
    "CREATE": ("create",),
    "CALL": ("call",),
    "EXECUTE": ("execute_prepared",),
    "DEALLOCATE": ("prepare",),
    "SET": ("set",),
    "USE": ("set",),
    "BEGIN": ("transaction",),
    "COMMIT": ("transaction",),
    "ROLLBACK": ("transaction",),
    "SAVEPOINT": ("transaction",),
    "RELEASE": ("transaction",),
    "XA": ("transaction",),
    "SHOW": ("show",),
    "HELP": ("show",),
    "HANDLER": ("select",),
    "DO": ("select",),  # MySQL DO evaluates expressions, like a SELECT without a result
    "LOCK": ("lock",),
    "UNLOCK": ("lock",),
    "OPTIMIZE": ("maintenance",),
    "REPAIR": ("maintenance",),
    "CHECK": ("maintenance",),
    "CHECKSUM": ("maintenance",),
    "CACHE": ("maintenance",),
    "FLUSH": ("admin",),
    "RESET": ("admin",),
    "PURGE": ("admin",),
    "KILL": ("admin",),
    "SHUTDOWN": ("admin",),
    "RESTART": ("admin",),
    "INSTALL": ("admin",),
    "UNINSTALL": ("admin",),
    "CHANGE": ("admin",),
    "STOP": ("admin",),
    "CLONE": ("admin",),
    "IMPORT": ("admin",),
    "BINLOG": ("admin", "dynamic_sql"),  # replays base64 binlog events: anything at all
    "INSERT": ("insert",),
    "REPLACE": ("insert", "delete"),  # deletes the rows a new one collides with
    # MariaDB runs compound statements outside stored programs too: procedural code
    "IF": ("do",),
    "WHILE": ("do",),
    "REPEAT": ("do",),
    "LOOP": ("do",),
    "CASE": ("do",),
}
_MY_QUERY = frozenset({"SELECT", "WITH", "(", "TABLE", "VALUES", "UPDATE", "DELETE"})


def _my_sqlglot(canonical: str) -> tuple[set[str], str]:
    """Structure of a query or DML statement via sqlglot: (categories, problem)."""
    import sqlglot
    from sqlglot import exp

    try:
        trees = [t for t in sqlglot.parse(canonical, read="mysql") if t is not None]
    except Exception as exc:  # sqlglot raises several types; any of them means "cannot read"
        return {"unparseable"}, f"sqlglot: {str(exc).splitlines()[0][:200]}"
    if len(trees) != 1:
        return {"unparseable"}, "sqlglot split the statement differently"
    tree = trees[0]
    cats: set[str] = set()
    if isinstance(tree, (exp.Query, exp.Values)):
        cats.add("select")
    elif not isinstance(tree, (exp.Delete, exp.Update, exp.Insert)):
        return {"unparseable"}, f"sqlglot read it as {type(tree).__name__}"
    for node in tree.find_all(exp.Delete, exp.Update, exp.Insert):
        if isinstance(node, exp.Insert):
            cats.add("insert")
            continue
        verb = "delete" if isinstance(node, exp.Delete) else "update"
        cats.add(verb)
        if _small_limit(node.args.get("limit")):
            continue  # DELETE/UPDATE … LIMIT n with a modest n: bounded
        targets = _my_targets(node)
        if not all(my_narrows(node.args.get("where"), target) for target in targets):
            cats.add(f"{verb}_without_where")
    return cats, ""


MAX_NARROW_LIMIT = 10_000  # `LIMIT 18446744073709551615` is every row (red team)


def _small_limit(limit) -> bool:
    from sqlglot import exp

    value = limit.args.get("expression") if limit is not None else None
    return isinstance(value, exp.Literal) and value.is_int and int(value.this) <= MAX_NARROW_LIMIT


def _my_targets(node) -> list[frozenset[str] | None]:
    """The tables a DELETE/UPDATE writes, as the names their columns may be qualified with;
    [None] when it reads no other table (every column is the target's)."""
    from sqlglot import exp

    table = node.this if isinstance(node.this, exp.Table) else None
    joined = bool(node.args.get("using") or node.args.get("tables") or node.args.get("from_") or node.args.get("from")
                  or (table is not None and table.args.get("joins")))
    if not joined:
        return [None]
    tables = list(node.args.get("tables") or [])
    if isinstance(node, exp.Update):  # UPDATE t, u SET t.a = …, u.b = …: every table written to
        written = {(c.table or "").lower() for e in node.expressions for c in e.find_all(exp.Column) if c is e.this}
        tables = [t for t in node.this.find_all(exp.Table) if {t.name.lower(), t.alias_or_name.lower()} & written]
        if "" in written or not tables:
            tables.append(table)
    elif not tables and table is not None:
        tables = [table]
    return [frozenset({t.name.lower(), t.alias_or_name.lower()}) for t in tables if t is not None] or [frozenset()]


def _my_statement(st: _MyStatement, depth: int) -> tuple[set[str], str]:
    words = st.words
    first = words[0] if words else ""
    second = words[1] if len(words) > 1 else ""
    cats: set[str] = set()
    note = st.broken
    if st.broken:
        cats.add("unparseable")
    if first in _MY_QUERY:
        more, problem = _my_sqlglot("".join(st.canonical))
        cats |= more
        note = note or problem
        if "OUTFILE" in words or "DUMPFILE" in words:
            cats.add("copy_file")
    elif first in ("EXPLAIN", "DESCRIBE", "DESC", "ANALYZE"):
        if second in ("TABLE", "NO_WRITE_TO_BINLOG", "LOCAL") and first == "ANALYZE":
            cats.add("maintenance")
        elif second == "ANALYZE" or first == "ANALYZE":  # these execute the statement
            cats.add("explain")
            rest = "".join(st.canonical).lstrip()
            rest = re.sub(r"^(?:\w+\s+)?ANALYZE\b", "", rest, count=1, flags=re.IGNORECASE)
            rest = re.sub(r"^\s*FORMAT\s*=\s*\w+", "", rest, flags=re.IGNORECASE)
            for sub in _classify_mysql_text(rest, depth + 1):
                cats.update(sub.categories)
                note = note or sub.note
        else:
            cats.add("explain")
    elif first == "PREPARE":
        cats.add("prepare")
        # PREPARE name FROM 'text' | FROM @variable
        at = words.index("FROM") + 1 if "FROM" in words[:4] else len(words)
        literals = 0
        while at + literals < len(words) and words[at + literals] == "'":
            literals += 1  # adjacent literals are one string: 'DELETE … WHERE id = 1' ' OR 1=1'
        if literals and at + literals == len(words) and len(st.strings) >= literals:
            for sub in _classify_mysql_text("".join(st.strings[-literals:]), depth + 1):
                cats.update(sub.categories)
                note = note or sub.note
        else:
            cats.add("dynamic_sql")
    elif first == "LOAD":
        if second in ("DATA", "XML"):
            cats.add("load_data")
            if "LOCAL" not in words[:5]:
                cats.add("copy_file")  # reads a file on the database server
        else:
            cats.add("maintenance")  # LOAD INDEX INTO CACHE
    elif first == "DROP" and second == "PREPARE":
        cats.add("prepare")
    elif first in ("START", "SET") and second == "TRANSACTION":
        cats.add("transaction")
        if "WRITE" in words:
            cats.add("safety_off")  # READ WRITE: past a read-only session default
    elif first == "SET" and second == "PASSWORD":
        cats.add("alter")
    elif first == "START":
        cats.add("admin")  # START SLAVE / REPLICA / GROUP_REPLICATION
    elif first == "BEGIN" and second not in ("", "WORK"):
        cats.add("do")  # MariaDB's anonymous block, BEGIN NOT ATOMIC ... END
    elif first == "SET":
        more, problem = set_statement("".join(st.canonical), lambda text: _nested(text, depth))
        cats |= more
        note = note or problem
    elif first in _MY_FIRST:
        cats.update(_MY_FIRST[first])
        if first == "INSERT" and "DUPLICATE" in words:
            cats.add("update")  # ON DUPLICATE KEY UPDATE
        elif first == "ALTER" and keys_only("".join(st.canonical)):
            cats.discard("alter")
            cats.add("maintenance")
        elif first == "CREATE" or first == "ALTER":
            cats |= create_categories(words)
        elif first == "REPLACE" and ("SELECT" in words or "TABLE" in words[2:]):
            cats.add("delete_without_where")  # REPLACE … SELECT / TABLE u: every row it reads
        if first == "INSERT" and "DUPLICATE" in words and ("SELECT" in words or "TABLE" in words[2:]):
            cats.add("update_without_where")  # INSERT … SELECT … ON DUPLICATE KEY UPDATE: every row it reads
    else:
        cats.add("unparseable")
        note = note or f"unknown statement {first[:40]!r}"
    if "LOAD_FILE" in words or "load_file" in "".join(st.canonical).lower():
        cats.add("copy_file")  # reads a file on the database server (also as `load_file`)
    if first == "CALL" and re.match(r"(?is)\s*CALL\s+`?(sys|mysql)`?\s*\.", "".join(st.canonical)):
        cats.add("dynamic_sql")  # sys.execute_prepared_stmt('…'), mysql.* procedures run SQL text
    return cats, note


def _nested(text: str, depth: int) -> list[tuple[tuple[str, ...], str]]:
    return [(part.categories, part.note) for part in _classify_mysql_text(text, depth + 1)]


def use_targets(sql: str) -> list[str | None]:
    """The databases the `USE` statements in `sql` name, under every string-lexing reading
    (None: a USE whose database cannot be told for sure). COM_INIT_DB reaches the gate as the
    text ``USE `db` `` too."""
    if "use" not in sql.lower():
        return []
    targets: list[str | None] = []
    readings = [(b, a, None) for b, a in ((True, False), (False, False), (True, True), (False, True))]
    readings += [(True, False, profile) for profile in skip_profiles(sql)]
    for backslash, ansi, profile in readings:
        for st in _my_lex(sql, backslash, ansi, profile):
            if st.words and st.words[0] == "USE":
                targets.append(use_target("".join(st.canonical)))
            elif st.words[:2] == ["SET", "STATEMENT"] and "USE" in st.words:
                targets.append(None)  # SET STATEMENT … FOR USE other: the database cannot be pinned there
            elif st.broken:
                targets.append(None)
    return targets


def _classify_mysql_text(sql: str, depth: int = 0, backslash: bool = True, ansi: bool = False,
                         profile: ServerProfile | None = None) -> list[StatementClass]:
    if depth > 4:
        return [_part(sql, ("unparseable",), "statements nested too deeply")]
    parts = []
    for st in _my_lex(sql, backslash, ansi, profile):
        cats, note = _my_statement(st, depth)
        parts.append(_part(sql[st.start : st.end], cats, note))
    return parts


def _classify_mysql(sql: str) -> tuple[StatementClass, ...]:
    parts = _classify_mysql_text(sql)
    if "\\'" in sql or '\\"' in sql:  # a backslash before a quote reads differently by sql_mode
        for backslash, ansi, setting in (
            (False, False, "sql_mode has NO_BACKSLASH_ESCAPES"),
            (True, True, "sql_mode has ANSI_QUOTES"),
            (False, True, "sql_mode has NO_BACKSLASH_ESCAPES and ANSI_QUOTES"),
        ):
            other = _classify_mysql_text(sql, 0, backslash, ansi)
            parts += _extra_readings(parts, other, setting)
    for profile in skip_profiles(sql):  # /*!NNNNN */ bodies some server skips (mysql_gates.py)
        other = _classify_mysql_text(sql, 0, True, False, profile)
        parts += _extra_readings(parts, other, f"read by {profile}, which skips some /*!…*/ bodies")
    return tuple(parts)


class _QuietCommandFallback(logging.Filter):
    """sqlglot logs a warning for every statement it reads as a generic Command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_QuietCommandFallback())

