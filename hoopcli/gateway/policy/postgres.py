"""PostgreSQL statements classified with PostgreSQL's own parser (pglast), including the
reading a server with standard_conforming_strings = off would give."""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Mapping

from .categories import StatementClass, _extra_readings, _part
from .narrowing import pg_narrows, pg_target_names
from .postgres_risks import LITERAL_DEPENDENT, pg_risk_scan, pg_walk_risks

log = logging.getLogger(__name__)

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
    "RuleStmt": ("create", "routine"),
    "DefineStmt": ("create",),  # aggregates and operators (they call code) add "routine": postgres_risks.py
    "CompositeTypeStmt": ("create",),
    "CreatedbStmt": ("create",),
    "ImportForeignSchemaStmt": ("create",),
    # Who may do what: a new role (a login outside the IdP, memberships), a row-level policy.
    "CreateRoleStmt": ("create", "grant"),
    "CreatePolicyStmt": ("create", "grant"),
    # Data leaving for, or arriving from, another server; connections past a pinned database.
    "CreatePublicationStmt": ("create", "admin"),
    "CreateSubscriptionStmt": ("create", "admin"),
    "CreateForeignServerStmt": ("create", "admin"),
    "CreateUserMappingStmt": ("create", "admin"),
    "CreateFdwStmt": ("create", "admin"),
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


def _pg_dml_categories(kind: str, fields: Mapping[str, Any], out: set[str]) -> None:
    if kind == "DeleteStmt" or kind == "UpdateStmt":
        verb = "delete" if kind == "DeleteStmt" else "update"
        out.add(verb)
        joined = fields.get("usingClause") or fields.get("fromClause")
        target = pg_target_names(fields.get("relation")) if joined else None
        if not pg_narrows(fields.get("whereClause"), target):
            out.add(f"{verb}_without_where")
    elif kind == "InsertStmt":
        out.add("insert")
        conflict = fields.get("onConflictClause") or {}
        if conflict.get("action") == "ONCONFLICT_UPDATE":
            out.add("update")
            source = (fields.get("selectStmt") or {}).get("SelectStmt") or {}
            if source.get("fromClause") or source.get("op", "SETOP_NONE") != "SETOP_NONE":
                # INSERT … SELECT … FROM t ON CONFLICT DO UPDATE: an UPDATE of every row it reads
                out.add("update_without_where")
    elif kind == "MergeStmt":
        out.add("merge")
        for clause in fields.get("mergeWhenClauses") or ():
            arm = clause.get("MergeWhenClause") or {}
            verb = {"CMD_DELETE": "delete", "CMD_UPDATE": "update", "CMD_INSERT": "insert"}.get(arm.get("commandType", ""))
            if verb is None:
                continue
            out.add(verb)
            # An arm's own AND condition is its WHERE. The ON condition is a join, not a filter:
            # `USING t AS s ON t.id = s.id` matches every row, so it never narrows an arm.
            condition = arm.get("condition")
            if verb != "insert" and not pg_narrows(condition, pg_target_names(fields.get("relation"))):
                out.add(f"{verb}_without_where")


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
        if fields.get("replace") is True:
            out.add("alter")  # CREATE OR REPLACE changes an object that may already exist
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
        elif kind == "CreateSchemaStmt":  # CREATE SCHEMA s GRANT … / CREATE TRIGGER …: each element counts
            for element in fields.get("schemaElts") or ():
                if isinstance(element, dict):
                    _pg_node_categories(element, out)
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
    risks = pg_risk_scan(text)
    if risks.literal_dependent and consts is not None:
        consts[LITERAL_DEPENDENT] = []  # the masked-literal cache must not keep this shape
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
        if risks.found:
            pg_walk_risks(node, cats)
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
