"""Risky-statement classification and the per-connection policy that acts on it.

`classify(sql, dialect)` splits a statement string the way the server will and gives every
part a set of categories (`drop`, `delete_without_where`, `copy_program`, ...). PostgreSQL text
is read by PostgreSQL's own parser (pglast); MySQL/MariaDB text by a small lexer that follows
the server's rules for comments, quotes and `/*! executable comments */`, then sqlglot for the
structure of queries and DML. A part the parsers cannot read is `unparseable`.

`Policy.decide(sql, identity, dialect)` turns those categories into one action: `allow`,
`require_approval` or `deny`. `make_gate` wraps a policy and an `ApprovalBook` into the `Gate`
the wire engines call for every statement.

What the classifier guarantees, and what it does not:
- Everything the server would run is seen: multi-statements, comments (nested in PostgreSQL,
  flat and executable in MySQL), data-modifying CTEs, `EXPLAIN ANALYZE`, rule actions,
  `COPY (DELETE ... RETURNING) TO`, `PREPARE ... AS`. Any data-modifying statement anywhere in
  the tree adds its categories (the only exception is plain `EXPLAIN`, which does not run it).
- String-literal lexing depends on server settings a client can change
  (PostgreSQL `standard_conforming_strings`, MySQL `NO_BACKSLASH_ESCAPES` / `ANSI_QUOTES`).
  When the text contains a backslash before a quote, the other readings are classified too;
  parts that only another reading reveals are added with the extra category `ambiguous`.
- A `WHERE` clause that references no column (`WHERE true`, `WHERE 1=1`) counts as absent.
- Bodies of functions (`$$ ... $$`) and `DO` blocks are opaque: they are `create` / `do`.
- Functions called from a SELECT (`pg_terminate_backend`, `dblink_exec`, ...) are not judged.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from hoopcli.gateway.protocols.base import ALLOW, Gate, Verdict

if TYPE_CHECKING:  # pragma: no cover
    from hoopcli.gateway.approvals import ApprovalBook

log = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "DEFAULT_RULES",
    "Decision",
    "Policy",
    "Rule",
    "StatementClass",
    "classify",
    "make_gate",
]

Dialect = Literal["postgres", "mysql"]
PolicyAction = Literal["allow", "require_approval", "deny"]

ACTIONS: tuple[str, ...] = ("allow", "require_approval", "deny")
_SEVERITY = {"allow": 0, "require_approval": 1, "deny": 2}

# Every category `classify` can produce. Policy rules may only name these (typos fail loudly).
CATEGORIES: frozenset[str] = frozenset(
    {
        # destructive or privilege-changing
        "drop", "truncate", "alter", "grant", "revoke",
        "delete_without_where", "update_without_where",
        # runs code or touches the server's filesystem
        "copy_program",  # COPY ... TO/FROM PROGRAM
        "copy_file",  # COPY to/from a server file, SELECT ... INTO OUTFILE, LOAD DATA INFILE
        "load_data",  # MySQL LOAD DATA / LOAD XML
        "load_library",  # PostgreSQL LOAD 'library'
        "do",  # PostgreSQL DO block: arbitrary procedural code
        "dynamic_sql",  # text the server will run that cannot be seen now (PREPARE FROM @v, BINLOG)
        "call",
        "execute_prepared",  # SQL-level EXECUTE of a statement prepared earlier
        "prepare",
        # ordinary work
        "create", "delete", "update", "insert", "merge", "select", "copy", "explain", "cursor",
        "lock", "notify", "set", "show", "transaction", "maintenance", "admin", "other",
        # classifier verdicts
        "ambiguous",  # only revealed under another string-lexing setting (see module doc)
        "unparseable",
    }
)


@dataclass(frozen=True, slots=True)
class StatementClass:
    """One part of a (possibly multi-statement) string and what it does."""

    text: str
    categories: tuple[str, ...]  # sorted, unique
    note: str = ""  # why a part is unparseable or ambiguous

    def __contains__(self, category: str) -> bool:
        return category in self.categories


def _part(text: str, cats: Iterable[str], note: str = "") -> StatementClass:
    return StatementClass(text.strip(), tuple(sorted(set(cats))), note)


# ---- PostgreSQL -------------------------------------------------------------------------------

# Node type -> categories of the statement itself (nested DML is added by the tree walk).
_PG_TOP: dict[str, tuple[str, ...]] = {
    "SelectStmt": ("select",),
    "InsertStmt": (),  # categories come from the DML walk
    "UpdateStmt": (),
    "DeleteStmt": (),
    "MergeStmt": (),
    "GrantStmt": (),  # grant or revoke, by is_grant
    "GrantRoleStmt": (),
    "AlterDefaultPrivilegesStmt": ("alter",),
    "TruncateStmt": ("truncate",),
    "DropStmt": ("drop",),
    "DropdbStmt": ("drop",),
    "DropRoleStmt": ("drop",),
    "DropOwnedStmt": ("drop",),
    "DropSubscriptionStmt": ("drop",),
    "DropTableSpaceStmt": ("drop",),
    "DropUserMappingStmt": ("drop",),
    "RenameStmt": ("alter",),
    "AlterObjectSchemaStmt": ("alter",),
    "AlterOwnerStmt": ("alter",),
    "AlterObjectDependsStmt": ("alter",),
    "ReassignOwnedStmt": ("alter",),
    "CommentStmt": ("alter",),
    "SecLabelStmt": ("alter",),
    "ReplicaIdentityStmt": ("alter",),
    "CreateTableAsStmt": ("create",),
    "IndexStmt": ("create",),
    "ViewStmt": ("create",),
    "RuleStmt": ("create",),
    "DefineStmt": ("create",),
    "CompositeTypeStmt": ("create",),
    "CreatedbStmt": ("create",),
    "ImportForeignSchemaStmt": ("create",),
    "CopyStmt": ("copy",),
    "VariableSetStmt": ("set",),
    "DiscardStmt": ("set",),
    "VariableShowStmt": ("show",),
    "TransactionStmt": ("transaction",),
    "ConstraintsSetStmt": ("transaction",),
    "CallStmt": ("call",),
    "DoStmt": ("do",),
    "ExecuteStmt": ("execute_prepared",),
    "PrepareStmt": ("prepare",),
    "DeallocateStmt": ("prepare",),
    "ExplainStmt": ("explain",),
    "DeclareCursorStmt": ("cursor",),
    "FetchStmt": ("cursor",),
    "ClosePortalStmt": ("cursor",),
    "LockStmt": ("lock",),
    "ListenStmt": ("notify",),
    "UnlistenStmt": ("notify",),
    "NotifyStmt": ("notify",),
    "VacuumStmt": ("maintenance",),
    "ClusterStmt": ("maintenance",),
    "ReindexStmt": ("maintenance",),
    "CheckPointStmt": ("maintenance",),
    "RefreshMatViewStmt": ("maintenance",),
    "LoadStmt": ("load_library",),
}
_PG_DML = frozenset({"DeleteStmt", "UpdateStmt", "InsertStmt", "MergeStmt"})
# The JSON text of a tree holds `"DeleteStmt"` (with both quotes) only where such a node is (a
# string literal's quotes are escaped), so its absence proves there is no nested DML to find.
_PG_DML_MARKERS = tuple(f'"{name}"' for name in sorted(_PG_DML))
_FALSY_OPTION = frozenset({"false", "off", "no", "0"})


def _pg_explain_runs(fields: Mapping[str, Any]) -> bool:
    """EXPLAIN ANALYZE executes its statement; plain EXPLAIN does not."""
    for opt in fields.get("options") or ():
        elem = opt.get("DefElem") if isinstance(opt, dict) else None
        if not elem or str(elem.get("defname", "")).lower() != "analyze":
            continue
        arg = elem.get("arg")
        if arg is None:
            return True
        if "String" in arg and str(arg["String"].get("sval", "")).lower() in _FALSY_OPTION:
            continue
        if "Integer" in arg and not arg["Integer"].get("ival"):
            continue
        if "Boolean" in arg and not arg["Boolean"].get("boolval"):
            continue
        return True  # anything else: assume it runs (fail closed)
    return False


def _pg_refers_to_rows(where: Any) -> bool:
    """True when a WHERE clause mentions a column (or CURRENT OF): it can single rows out."""
    stack = [where]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if "ColumnRef" in obj or "CurrentOfExpr" in obj:
                return True
            stack.extend(v for v in obj.values() if isinstance(v, (dict, list)))
        elif isinstance(obj, list):
            stack.extend(obj)
    return False


def _pg_dml_categories(kind: str, fields: Mapping[str, Any], out: set[str]) -> None:
    if kind == "DeleteStmt" or kind == "UpdateStmt":
        verb = "delete" if kind == "DeleteStmt" else "update"
        out.add(verb)
        where = fields.get("whereClause")
        if where is None or not _pg_refers_to_rows(where):
            out.add(f"{verb}_without_where")
    elif kind == "InsertStmt":
        out.add("insert")
        conflict = fields.get("onConflictClause") or {}
        if conflict.get("action") == "ONCONFLICT_UPDATE":
            out.add("update")
    elif kind == "MergeStmt":
        out.add("merge")
        for clause in fields.get("mergeWhenClauses") or ():
            command = (clause.get("MergeWhenClause") or {}).get("commandType", "")
            verb = {"CMD_DELETE": "delete", "CMD_UPDATE": "update", "CMD_INSERT": "insert"}.get(command)
            if verb:
                out.add(verb)


def _pg_walk_dml(node: Any, out: set[str]) -> None:
    """Add the categories of every data-modifying statement anywhere under `node`."""
    stack = [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in _PG_DML and isinstance(value, dict):
                    _pg_dml_categories(key, value, out)
                elif key == "ExplainStmt" and isinstance(value, dict) and not _pg_explain_runs(value):
                    continue  # plain EXPLAIN only plans its statement
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(obj, list):
            stack.extend(obj)


def _pg_node_categories(node: Mapping[str, Any], out: set[str]) -> None:
    """Categories of one statement node (`{"DropStmt": {...}}`), not counting nested DML."""
    for kind, fields in node.items():
        if not isinstance(fields, dict):
            continue
        top = _PG_TOP.get(kind)
        if top is None:
            if kind.startswith("Create"):
                top = ("create",)
            elif kind.startswith("Alter"):
                top = ("alter",)
            elif kind.startswith("Drop"):
                top = ("drop",)
            else:
                top = ("other",)
        out.update(top)
        if kind == "GrantStmt" or kind == "GrantRoleStmt":
            out.add("grant" if fields.get("is_grant") else "revoke")
        elif kind == "AlterDefaultPrivilegesStmt":
            out.add("grant" if (fields.get("action") or {}).get("is_grant") else "revoke")
        elif kind == "CopyStmt":
            if fields.get("is_program"):
                out.add("copy_program")
            elif fields.get("filename"):
                out.add("copy_file")
            if isinstance(fields.get("query"), dict):
                _pg_node_categories(fields["query"], out)
        elif kind == "SelectStmt" and fields.get("intoClause"):
            out.add("create")  # SELECT ... INTO new_table
        elif kind == "ExplainStmt" and _pg_explain_runs(fields):
            if isinstance(fields.get("query"), dict):
                _pg_node_categories(fields["query"], out)
        elif kind == "PrepareStmt" or kind == "CreateTableAsStmt" or kind == "DeclareCursorStmt":
            if isinstance(fields.get("query"), dict):
                _pg_node_categories(fields["query"], out)


def _pg_parse(sql: str, consts: dict[int, list[tuple[str, Any]]] | None = None) -> list[StatementClass] | None:
    """Classify with PostgreSQL's parser; None when it refuses the text.

    With `consts`, also fill it with every A_Const node of the tree: byte offset -> [(kind,
    value), ...] (see `_pg_literals_are_constants`)."""
    from pglast.parser import ParseError, parse_sql_json

    try:
        text = parse_sql_json(sql)
    except ParseError:
        return None
    except Exception:  # anything else the parser raises also means it cannot read the text
        log.exception("pglast failed on a statement of %d characters", len(sql))
        return None
    tree = json.loads(text)
    if consts is not None:
        _pg_collect_consts(text, consts)
    walk = any(marker in text for marker in _PG_DML_MARKERS)
    raw = None if sql.isascii() else sql.encode("utf-8")  # parser locations are byte offsets
    parts = []
    for entry in tree.get("stmts", ()):
        node = entry.get("stmt")
        if not isinstance(node, dict):
            continue
        start = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0)
        end = start + length if length else None
        part_text = sql[start:end] if raw is None else raw[start:end].decode("utf-8", "replace")
        cats: set[str] = set()
        _pg_node_categories(node, cats)
        if walk:
            _pg_walk_dml(node, cats)
        parts.append(_part(part_text, cats))
    return parts


# A reading of the text as the server lexes it with standard_conforming_strings = off: every
# plain '...' literal behaves exactly as an E'...' literal, so rewriting those and parsing again
# with PostgreSQL's parser gives that reading.
_PG_IDENT = r"[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*"
_PG_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\n\r\f\v]+)
  | (?P<line>--[^\n\r]*)
  | (?P<block>/\*)
  | (?P<param>\$[0-9]+)
  | (?P<dollar>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$)
  | (?P<qident>"(?:[^"]|"")*")
  | (?P<estr>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<bstr>[bBxX]'[^']*')
  | (?P<ustr>[uU]&'(?:[^']|'')*')
  | (?P<nstr>[nN]'(?:[^'\\]|\\.|'')*')
  | (?P<str>'(?:[^'\\]|\\.|'')*')
  | (?P<word>"""
    + _PG_IDENT
    + r""")
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _pg_backslash_reading(sql: str) -> str | None:
    """The text rewritten as a server with standard_conforming_strings=off reads it.

    None when that reading cannot differ or the server would refuse it (unterminated)."""
    out: list[str] = []
    pos, end = 0, len(sql)
    changed = False
    while pos < end:
        m = _PG_TOKEN.match(sql, pos)
        assert m is not None  # `other` matches any character
        kind, token, nxt = m.lastgroup, m.group(), m.end()
        if kind == "block":  # comments nest in PostgreSQL
            depth = 1
            while depth and nxt < end:
                if sql.startswith("/*", nxt):
                    depth, nxt = depth + 1, nxt + 2
                elif sql.startswith("*/", nxt):
                    depth, nxt = depth - 1, nxt + 2
                else:
                    nxt += 1
            if depth:
                return None
            token = sql[pos:nxt]
        elif kind == "dollar":
            close = sql.find(token, nxt)
            if close < 0:
                return None
            nxt = close + len(token)
            token = sql[pos:nxt]
        elif kind == "str" or kind == "nstr":
            changed = changed or "\\" in token
            token = " E" + token[token.index("'") :]
        elif kind == "other" and token in "'\"":
            return None  # an unterminated literal: the server refuses the whole string
        out.append(token)
        pos = nxt
    return "".join(out) if changed else None


def _classify_postgres(sql: str) -> tuple[StatementClass, ...]:
    parts = _pg_parse(sql)
    if parts is None:
        return (_part(sql, ("unparseable",), "PostgreSQL's parser refused the text"),)
    if "\\'" in sql:  # only a backslash before a quote can read differently without scs
        reading = _pg_backslash_reading(sql)
        other = _pg_parse(reading) if reading is not None else None
        if other:
            parts += _extra_readings(parts, other, "standard_conforming_strings = off")
    return tuple(parts)


def _extra_readings(primary: list[StatementClass], other: list[StatementClass], setting: str) -> list[StatementClass]:
    """Parts of another lexical reading that reveal categories the primary reading lacks."""
    seen = {c for part in primary for c in part.categories}
    extra = []
    for part in other:
        if not set(part.categories) - {"unparseable"} <= seen:
            extra.append(_part(part.text, (*part.categories, "ambiguous"), f"read this way when {setting}"))
    return extra


# ---- PostgreSQL: literals masked, for a cache that routine statements hit ------------------
#
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
#    _pg_refers_to_rows read node types, keyword flags, ColumnRefs and option arguments
#    (EXPLAIN (ANALYZE 0), COPY ... 'file'), none of which is an A_Const. So its result cannot
#    depend on those literals' values.
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
# Unparseable text is never stored. tests/test_policy_masked.py checks all of this against the
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


# In the parser's JSON, `"A_Const":` can only be a key: inside a JSON string every quote is
# escaped, and a string value is followed by `,`, `}` or `]`, never by `:`.
_PG_CONST_KEY = re.compile(r'"A_Const":')
_JSON = json.JSONDecoder()


def _pg_collect_consts(text: str, out: dict[int, list[tuple[str, Any]]]) -> None:
    """Every A_Const of the parser's JSON `text` (cheaper than walking the decoded tree)."""
    for m in _PG_CONST_KEY.finditer(text):
        const, _ = _JSON.raw_decode(text, m.end())
        if not isinstance(const, dict):
            continue
        if "ival" in const:
            value: tuple[str, Any] = ("i", (const["ival"] or {}).get("ival", 0))
        elif "sval" in const:
            value = ("s", (const["sval"] or {}).get("sval", ""))
        else:
            value = ("other", None)
        out.setdefault(const.get("location", 0), []).append(value)


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


# ---- MySQL / MariaDB ------------------------------------------------------------------------

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


def _my_lex(sql: str, backslash: bool, ansi_quotes: bool) -> list[_MyStatement]:
    """Split the text into statements the way the MySQL server lexes it.

    `--` starts a comment only before whitespace or a control character, `#` comments run to
    the end of the line, `/* */` does not nest, and the body of `/*! ... */` and `/*M! ... */`
    is executed, so it is read as ordinary text."""
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
        where = node.args.get("where")
        if where is None or where.find(exp.Column) is None:
            cats.add(f"{verb}_without_where")
    return cats, ""


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
        source = words[words.index("FROM") + 1 : words.index("FROM") + 2] if "FROM" in words[:4] else []
        if source == ["'"] and st.strings:
            for sub in _classify_mysql_text(st.strings[0], depth + 1):
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
    elif first == "SET" and second == "PASSWORD":
        cats.add("alter")
    elif first == "START":
        cats.add("admin")  # START SLAVE / REPLICA / GROUP_REPLICATION
    elif first == "BEGIN" and second not in ("", "WORK"):
        cats.add("do")  # MariaDB's anonymous block, BEGIN NOT ATOMIC ... END
    elif first in _MY_FIRST:
        cats.update(_MY_FIRST[first])
        if first == "INSERT" and "DUPLICATE" in words:
            cats.add("update")  # ON DUPLICATE KEY UPDATE
    else:
        cats.add("unparseable")
        note = note or f"unknown statement {first[:40]!r}"
    return cats, note


def _classify_mysql_text(sql: str, depth: int = 0, backslash: bool = True, ansi: bool = False) -> list[StatementClass]:
    if depth > 4:
        return [_part(sql, ("unparseable",), "statements nested too deeply")]
    parts = []
    for st in _my_lex(sql, backslash, ansi):
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
    return tuple(parts)


class _QuietCommandFallback(logging.Filter):
    """sqlglot logs a warning for every statement it reads as a generic Command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_QuietCommandFallback())


# ---- classify -------------------------------------------------------------------------------

_DIALECTS = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
# Statements longer than this are classified every time rather than cached: a cache of 4096
# multi-megabyte INSERTs would be a memory leak.
CACHE_MAX_SQL = 8192
CACHE_SIZE = 4096


@lru_cache(maxsize=CACHE_SIZE)
def _classify_cached(sql: str, dialect: str) -> tuple[StatementClass, ...]:
    return _classify_uncached(sql, dialect)


def _classify_uncached(sql: str, dialect: str) -> tuple[StatementClass, ...]:
    if dialect == "postgres":
        return _classify_postgres(sql)
    return _classify_mysql(sql)


def _classify(sql: str, dialect: str) -> tuple[StatementClass, ...]:
    try:
        canonical = _DIALECTS[dialect]
    except (KeyError, TypeError):
        raise ValueError(f"unknown SQL dialect {dialect!r}: expected 'postgres' or 'mysql'") from None
    if len(sql) > CACHE_MAX_SQL:
        return _classify_uncached(sql, canonical)
    return _classify_cached(sql, canonical)


def classify(sql: str, dialect: Dialect) -> list[StatementClass]:
    """Each statement in `sql` with its categories, in order; [] for an empty string.

    `dialect` is "postgres" or "mysql" ("postgresql" and "mariadb" are accepted too)."""
    return list(_classify(sql, dialect))


# Masked key -> the parts' categories (texts dropped), or None: "classify by exact text".
_MASKED: dict[str, tuple[StatementClass, ...] | None] = {}


def _decide_parts(sql: str, dialect: str) -> tuple[StatementClass, ...]:
    """The parts `Policy.decide` judges: `_classify`, but served from the masked-literal cache
    for PostgreSQL when it can be (see above); parts from there carry no text. Parts that come
    from a cache are the same tuple object every time (`Policy.decide` memoizes on that)."""
    if len(sql) <= CACHE_MAX_SQL and (dialect == "postgres" or dialect == "postgresql"):
        masked = _pg_mask(sql)
        if masked is not None:
            key, spans = masked
            try:
                hit = _MASKED[key]
            except KeyError:
                return _pg_masked_miss(sql, key, spans)
            if hit is not None:
                return hit
    return _classify(sql, dialect)


def _pg_masked_miss(sql: str, key: str, spans: list[tuple[int, int, str]]) -> tuple[StatementClass, ...]:
    consts: dict[int, list[tuple[str, Any]]] = {}
    parts = _pg_parse(sql, consts)
    if parts is None:  # as _classify_postgres; the text has no backslash, so no other reading
        return (_part(sql, ("unparseable",), "PostgreSQL's parser refused the text"),)
    if len(_MASKED) >= CACHE_SIZE:
        del _MASKED[next(iter(_MASKED))]  # the oldest
    if _pg_literals_are_constants(sql, spans, consts):
        entry = _MASKED[key] = tuple(StatementClass("", part.categories) for part in parts)
        return entry
    _MASKED[key] = None
    return tuple(parts)


def _cache_clear() -> None:
    _classify_cached.cache_clear()
    _MASKED.clear()


classify.cache_clear = _cache_clear  # type: ignore[attr-defined]
classify.cache_info = _classify_cached.cache_info  # type: ignore[attr-defined]


# ---- policy ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    match: frozenset[str]
    action: PolicyAction
    groups: frozenset[str] = frozenset()
    subjects: frozenset[str] = frozenset()

    def applies_to(self, sub: str, groups: Iterable[str]) -> bool:
        """A rule without groups or subjects applies to everyone; otherwise to either list."""
        if not self.groups and not self.subjects:
            return True
        return sub in self.subjects or not self.groups.isdisjoint(groups)


# Used for a connection configured with `policy = "default"`. Besides the DDL and privilege
# statements, `do` and `dynamic_sql` are held too: a DO block or a PREPARE from a variable can
# run any of the others out of sight.
MAX_JUDGED_CHARS = 256 * 1024  # ~0.1 s of pglast; larger statements are not parsed on the relay

_MEMO_SIZE = 1024  # decisions remembered per policy (per parts object and subject)

DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(
        frozenset({"drop", "truncate", "alter", "grant", "revoke", "delete_without_where",
                   "update_without_where", "do", "dynamic_sql",
                   # SQL-level EXECUTE of something prepared earlier: what it runs cannot be
                   # seen here, and an approval for the PREPARE must not let it run twice.
                   "execute_prepared"}),
        "require_approval",
    ),
    Rule(frozenset({"copy_program"}), "deny"),
)


@dataclass(frozen=True, slots=True)
class Decision:
    action: PolicyAction
    categories: tuple[str, ...]  # every category of every part, sorted
    rule_index: int | None  # the rule that set the action; None for a default
    reason: str  # e.g. "rule 0: drop", "default: select", "unparseable", "empty statement"


_RULE_KEYS = {"match", "action", "groups", "subjects", "name", "description"}
_POLICY_KEYS = {"default", "unparseable", "rules"}


def _str_list(value: Any, where: str, *, known: frozenset[str] | None = None) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings, got {value!r}")
    if known is not None:
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                             f"{', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    return frozenset(value)


def _action(value: Any, where: str) -> PolicyAction:
    if value not in ACTIONS:
        raise ValueError(f"{where}: expected one of {', '.join(ACTIONS)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Policy:
    """Rules for one connection.

    For every category of every statement part, the first rule (in order) that names the
    category and applies to the identity gives its action; a category no rule names gets
    `default`, except `unparseable`, which gets `unparseable`. The statement's decision is the
    riskiest of these (deny > require_approval > allow). So an allow-list (`default = "deny"`)
    cannot be slipped past by hiding a DELETE inside an allowed SELECT, and an earlier rule for
    a group can exempt it from a later, general one.

    `unparseable` defaults to "require_approval": fail closed on text the parser cannot read,
    yet recoverable, since an approver can let a statement through that the parser (or this
    parser's PostgreSQL/MySQL version) does not know.
    """

    rules: tuple[Rule, ...] = ()
    default: PolicyAction = "allow"
    unparseable: PolicyAction = "require_approval"

    def __post_init__(self) -> None:
        by_category: dict[str, list[tuple[int, Rule]]] = {}
        for index, rule in enumerate(self.rules):
            for category in rule.match:
                by_category.setdefault(category, []).append((index, rule))
        object.__setattr__(self, "_by_category", {k: tuple(v) for k, v in by_category.items()})
        # (id(parts), sub) -> (parts, groups, Decision) for parts served from a cache. The entry
        # holds the parts tuple itself, so its id cannot be reused while the entry exists.
        object.__setattr__(self, "_memo", {})

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | str | None, where: str = "policy") -> Policy:
        """Build from a gateway.toml table (or the string "default"); ValueError names the bad field."""
        if config is None or config == "default":
            return cls(DEFAULT_RULES)
        if isinstance(config, str):
            raise ValueError(f'{where}: expected a table or "default", got {config!r}')
        if not isinstance(config, Mapping):
            raise ValueError(f"{where}: expected a table, got {type(config).__name__}")
        unknown = sorted(set(config) - _POLICY_KEYS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown field; expected one of {', '.join(sorted(_POLICY_KEYS))}")
        default = _action(config.get("default", "allow"), f"{where}.default")
        unparseable = _action(config.get("unparseable", "require_approval"), f"{where}.unparseable")
        raw_rules = config.get("rules", [])
        if raw_rules == "default":
            raw_rules = None
        elif not isinstance(raw_rules, (list, tuple)):
            raise ValueError(f'{where}.rules: expected a list of tables or "default", got {raw_rules!r}')
        rules: list[Rule] = []
        for i, raw in enumerate(raw_rules if raw_rules is not None else ()):
            at = f"{where}.rules[{i}]"
            if not isinstance(raw, Mapping):
                raise ValueError(f"{at}: expected a table, got {raw!r}")
            unknown = sorted(set(raw) - _RULE_KEYS)
            if unknown:
                raise ValueError(f"{at}.{unknown[0]}: unknown field; expected one of {', '.join(sorted(_RULE_KEYS))}")
            if "match" not in raw:
                raise ValueError(f"{at}.match: missing (a list of categories)")
            if "action" not in raw:
                raise ValueError(f"{at}.action: missing (one of {', '.join(ACTIONS)})")
            match = _str_list(raw["match"], f"{at}.match", known=CATEGORIES)
            if not match:
                raise ValueError(f"{at}.match: empty; name at least one category")
            rules.append(
                Rule(
                    match,
                    _action(raw["action"], f"{at}.action"),
                    _str_list(raw.get("groups", []), f"{at}.groups"),
                    _str_list(raw.get("subjects", []), f"{at}.subjects"),
                )
            )
        return cls(DEFAULT_RULES if raw_rules is None else tuple(rules), default, unparseable)

    def _category_action(self, category: str, sub: str, groups: Iterable[str]) -> tuple[PolicyAction, int | None]:
        for index, rule in self._by_category.get(category, ()):  # type: ignore[attr-defined]
            if rule.applies_to(sub, groups):
                return rule.action, index
        return (self.unparseable if category == "unparseable" else self.default), None

    def decide(self, sql: str, identity: tuple[str, Iterable[str]], dialect: Dialect) -> Decision:
        """The action for a statement string run by `identity` = (sub, groups)."""
        sub, groups = identity
        if len(sql) > MAX_JUDGED_CHARS:
            # Parsing runs on the relay's event loop: a statement this large would stall every
            # session for a noticeable time, so it is not parsed but treated as unparseable.
            parts = (_part(sql[:200], ("unparseable",), f"longer than {MAX_JUDGED_CHARS} characters"),)
        else:
            parts = _decide_parts(sql, dialect)
        memo = None
        if "\ufffd" in sql:
            # The wire engine could not decode some bytes: what the server will make of them
            # is unknown, so the statement also counts as unparseable.
            parts = (*parts, _part(sql, ("unparseable",), "bytes that are not valid UTF-8"))
        elif len(sql) <= CACHE_MAX_SQL:  # parts from a cache: the same object every time
            memo = self._memo  # type: ignore[attr-defined]
            known = memo.get((id(parts), sub))
            if known is not None and known[0] is parts and known[1] == groups:
                return known[2]
        decision = self._judge(parts, sub, groups)
        if memo is not None:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[(id(parts), sub)] = (parts, groups, decision)
        return decision

    def _judge(self, parts: tuple[StatementClass, ...], sub: str, groups: Iterable[str]) -> Decision:
        if not parts:
            return Decision("allow", (), None, "empty statement")
        best: tuple[int, PolicyAction, int | None, str] | None = None
        all_categories: set[str] = set()
        for part in parts:
            all_categories.update(part.categories)
            for category in part.categories:
                action, index = self._category_action(category, sub, groups)
                severity = _SEVERITY[action]
                if best is None or severity > best[0]:
                    best = (severity, action, index, category)
        assert best is not None
        _, action, index, category = best
        if index is not None:
            reason = f"rule {index}: {category}"
        elif category == "unparseable":
            reason = "unparseable"
        else:
            reason = f"default: {category}"
        return Decision(action, tuple(sorted(all_categories)), index, reason)


# ---- the gate -------------------------------------------------------------------------------


def make_gate(
    policy: Policy,
    book: ApprovalBook | None,
    identity: tuple[str, Iterable[str]],
    connection: str,
    dialect: Dialect,
) -> Gate:
    """The `gate(text) -> Verdict` a wire engine calls for each statement of one session.

    A statement that needs approval is let through once when an approver has granted exactly
    this text to this identity on this connection (the verdict carries the request id for the
    audit record); otherwise a request is filed (or the pending one reused) and it is held.
    Without an approval book, statements that need approval are denied."""
    sub, groups = identity
    groups = frozenset(groups)
    identity = (sub, groups)
    _classify("", dialect)  # reject an unknown dialect now, not on the first statement

    def gate(text: str) -> Verdict:
        try:
            decision = policy.decide(text, identity, dialect)
        except Exception:  # a bug here must not forward an unjudged statement
            log.exception("policy failed on a statement for %s on %s", sub, connection)
            return Verdict("deny", "hoop: statement refused: the policy could not judge it (see gateway log)")
        if decision.action == "allow":
            return ALLOW
        if decision.action == "deny":
            return Verdict("deny", f"hoop: statement denied by policy ({decision.reason})", rule=decision.reason)
        if book is None:
            return Verdict(
                "deny",
                f"hoop: statement needs approval ({decision.reason}) but approvals are not enabled",
                rule=decision.reason,
            )
        grant = book.consume(sub, connection, text)
        if grant is not None:
            return Verdict("allow", request_id=grant.id, rule=decision.reason)
        try:
            request = book.request(sub, connection, text, decision.categories)
        except PermissionError as exc:  # too many pending requests
            return Verdict("deny", f"hoop: {exc}", rule=decision.reason)
        return Verdict(
            "hold",
            f"hoop: statement held for approval (request {request.id}). "
            f"An approver runs: hoop approvals approve {request.id}",
            request_id=request.id,
            rule=decision.reason,
        )

    return gate
