"""PostgreSQL statements that are risky for what they *enable*, not for the rows they touch.

- `routine`: statements that create or change code the server runs later — functions and
  procedures, triggers, rules, event triggers, casts, conversions, transforms, languages,
  operators and aggregates (they call functions), operator classes, extensions. A body is
  opaque to a statement classifier, and a trigger or rule turns an ordinary INSERT into
  anything, so the default policy holds the statement that creates the code.
- Functions that run SQL text or reach past the database: `dblink_exec('DROP …')`,
  `query_to_xml('DELETE … RETURNING …')` and `cron.schedule(…, 'TRUNCATE …')` run text the
  classifier cannot see (`dynamic_sql`); `lo_export`, `pg_read_file`, `pg_file_write` touch the
  server's files (`copy_file`); `pg_terminate_backend`, `pg_reload_conf`, replication-slot
  functions act on the server (`admin`); `lo_unlink` destroys a large object (`drop`).
- `safety_off`: `SET session_replication_role` (replica mode skips ordinary triggers, an
  audit trigger among them), `SET pgaudit.…`, `SET log_statement …`, also via set_config().
- `encoding`: a statement that may switch the session's client_encoding to one whose
  multibyte characters can end in an ASCII quote or backslash (SJIS, BIG5, GBK, …). From then
  on the server would read the bytes differently from the gateway, so a statement the gateway
  sees as one harmless SELECT could run a DROP. Only a literal, known ASCII-safe encoding
  passes; a computed name or value counts as unsafe. The gate refuses `encoding` whatever the
  rules say (policy/rules.py).

The scan is a regex over the parser's JSON, so statements without any of these cost nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["LITERAL_DEPENDENT", "SAFE_CLIENT_ENCODINGS", "pg_risk_scan", "pg_walk_risks", "safe_client_encoding"]

# A key in `consts` (see postgres_cache.py): this text's categories depend on a literal's
# value ('UTF8' vs 'SJIS'), so no other text of the same masked shape may reuse them.
LITERAL_DEPENDENT = -1

_ROUTINE_NODES = frozenset(
    {
        "CreateFunctionStmt", "AlterFunctionStmt", "CreateTrigStmt", "RuleStmt", "CreateEventTrigStmt",
        "AlterEventTrigStmt", "CreateCastStmt", "CreateConversionStmt", "CreateTransformStmt",
        "CreatePLangStmt", "CreateOpClassStmt", "CreateOpFamilyStmt", "AlterOpFamilyStmt",
        "CreateExtensionStmt", "AlterExtensionStmt", "AlterExtensionContentsStmt",
    }
)
_CODE_DEFINITIONS = frozenset({"OBJECT_AGGREGATE", "OBJECT_OPERATOR"})  # DefineStmt kinds

# Function name (last part of a possibly schema-qualified name, as the parser folds it) ->
# the categories calling it adds.
_RISKY_FUNCTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("dblink", "dblink_exec", "dblink_open", "dblink_send_query", "query_to_xml", "query_to_xmlschema",
         "query_to_xml_and_xmlschema", "ts_stat", "ts_rewrite", "schedule", "schedule_in_database", "alter_job"),
        ("dynamic_sql",),
    ),
    **dict.fromkeys(
        ("lo_import", "lo_export", "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file",
         "pg_file_write", "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls"),
        ("copy_file",),
    ),
    **dict.fromkeys(
        ("pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_promote",
         "pg_drop_replication_slot", "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
         "pg_replication_origin_drop", "pg_switch_wal", "pg_backup_start", "pg_backup_stop",
         "pg_wal_replay_pause", "pg_wal_replay_resume"),
        ("admin",),
    ),
    **dict.fromkeys(("lo_unlink", "lo_truncate", "lo_truncate64", "lo_put", "lowrite"), ("drop",)),
    # a logical slot's pending changes, which a CDC or audit consumer reads, thrown away
    **dict.fromkeys(("pg_logical_slot_get_changes", "pg_logical_slot_get_binary_changes",
                     "pg_replication_slot_advance", "pg_replication_origin_session_setup",
                     "pg_replication_origin_advance", "setval"), ("admin",)),
    "pg_background_launch": ("dynamic_sql",),
    "dblink_connect": ("dynamic_sql",),  # a connection to another database, past a pinned one
    "dblink_connect_u": ("dynamic_sql",),
    # pg_stat_statements and the statistics views are a record of what ran
    **dict.fromkeys(("pg_stat_statements_reset", "pg_stat_reset", "pg_stat_reset_shared",
                     "pg_stat_reset_single_table_counters", "pg_stat_reset_slru",
                     "pg_stat_reset_replication_slot", "pg_stat_reset_subscription_stats"), ("safety_off",)),
}

# Encodings whose every byte of a multibyte character is >= 0x80 (or that have none), named as
# PostgreSQL's clean_encoding_name() leaves them: lower case, only letters and digits.
SAFE_CLIENT_ENCODINGS = frozenset(
    {"utf8", "unicode", "sqlascii"}
    | {f"latin{n}" for n in range(1, 11)}
    | {f"iso8859{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16)}
    | {f"win{n}" for n in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)}
    | {f"windows{n}" for n in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)}
    | {"koi8", "koi8r", "koi8u", "eucjp", "euckr", "euccn", "euctw", "eucjis2004", "alt", "tcvn", "tcvn5712", "vscii"}
)

# The scan reads the parser's JSON with two cheap regexes (string values, and statement node
# names only when a CREATE/ALTER/… node may be there): on a routine SELECT it costs ~3 µs.
# Unquoted identifiers arrive folded to lower case, so function names are compared as they are.
_SVAL = re.compile(r'"sval":"([^"]*)"')
_NODE = re.compile(r'"(\w+Stmt)":')
_MARKED_NODES = _ROUTINE_NODES | {"DefineStmt", "VariableSetStmt"}
_MARKED_CALLS = frozenset(_RISKY_FUNCTIONS) | {"set_config"}


@dataclass(frozen=True, slots=True)
class RiskScan:
    found: bool  # the tree may hold one of the nodes or calls above: walk it
    literal_dependent: bool


_NOTHING = RiskScan(False, False)


def pg_risk_scan(tree_json: str) -> RiskScan:
    names = _SVAL.findall(tree_json)
    literal_dependent = "client_encoding" in tree_json or "set_config" in names
    found = literal_dependent or "transaction_read_only" in tree_json or not _MARKED_CALLS.isdisjoint(names)
    if not found and ("Create" in tree_json or "Alter" in tree_json or "Rule" in tree_json
                      or "Define" in tree_json or "VariableSet" in tree_json):
        found = not _MARKED_NODES.isdisjoint(_NODE.findall(tree_json))
    return RiskScan(found, literal_dependent) if found else _NOTHING


def safe_client_encoding(name: str) -> bool:
    """As PostgreSQL looks an encoding name up: case and punctuation do not count."""
    return "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum()) in SAFE_CLIENT_ENCODINGS


def _string_const(node: Any) -> str | None:
    """The value of a plain string constant; None for anything computed."""
    if isinstance(node, dict) and isinstance(node.get("A_Const"), dict):
        sval = node["A_Const"].get("sval")
        if isinstance(sval, dict):
            return str(sval.get("sval", ""))
    return None


# Settings that switch off the server's own safety or record: replica mode skips ordinary
# triggers (an audit trigger among them) and foreign-key actions; pgaudit and the statement
# log are the database's own trail.
_SAFETY_SETTINGS = frozenset({"session_replication_role", "log_statement", "log_min_duration_statement",
                              "log_duration", "log_min_error_statement", "log_min_messages",
                              # a role's read-only default is the admin's safety, not the session's
                              "default_transaction_read_only", "transaction_read_only"})
# Settings that change whose privileges the session has.
_IDENTITY_SETTINGS = frozenset({"role", "session_authorization"})


def _safety_setting(name: str) -> bool:
    name = name.lower()
    return name in _SAFETY_SETTINGS or name.startswith(("pgaudit.", "pg_stat_statements.", "auto_explain."))


def _set_statement_is_unsafe(fields: dict) -> bool:
    """SET client_encoding / SET NAMES (the parser gives both the name client_encoding)."""
    if str(fields.get("name", "")).lower() != "client_encoding" or fields.get("kind") != "VAR_SET_VALUE":
        return False  # DEFAULT, RESET, FROM CURRENT: back to the session's start-up value
    args = fields.get("args") or []
    value = _string_const(args[0]) if len(args) == 1 else None
    return value is None or not safe_client_encoding(value)


def _set_config_is_unsafe(args: list) -> bool:
    name = _string_const(args[0]) if args else None
    if name is None:
        return True  # a computed setting name could be client_encoding
    if name.lower() != "client_encoding":
        return False  # (a safety setting by name: _call_categories)
    value = _string_const(args[1]) if len(args) > 1 else None
    return value is None or not safe_client_encoding(value)


def _call_categories(fields: dict, out: set[str]) -> None:
    names = fields.get("funcname") or []
    last = names[-1] if names else None
    name = str((last or {}).get("String", {}).get("sval", "")).lower() if isinstance(last, dict) else ""
    if name == "set_config":
        args = fields.get("args") or []
        if _set_config_is_unsafe(args):
            out.add("encoding")
        setting = _string_const(args[0]) if args else None
        if setting is not None and _safety_setting(setting):
            out.add("safety_off")
        if setting is not None and setting.lower() in _IDENTITY_SETTINGS:
            out.add("grant")  # set_config('role', …) is SET ROLE
        return
    out.update(_RISKY_FUNCTIONS.get(name, ()))


def pg_walk_risks(node: Any, out: set[str]) -> None:
    """Add `routine`, `encoding` and the risky-call categories of everything under `node`."""
    from .postgres import _pg_explain_runs  # plain EXPLAIN runs nothing it names

    stack = [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, list):
            stack.extend(obj)
            continue
        if not isinstance(obj, dict):
            continue
        for key, value in obj.items():
            if not isinstance(value, (dict, list)):
                continue
            if isinstance(value, dict):
                if key == "ExplainStmt" and not _pg_explain_runs(value):
                    continue
                if key in _ROUTINE_NODES:
                    out.add("routine")
                elif key == "DefineStmt" and value.get("kind") in _CODE_DEFINITIONS:
                    out.add("routine")
                elif key == "FuncCall":
                    _call_categories(value, out)
                elif key == "A_Indirection" or key == "ColumnRef":
                    # `(x).f` and `t.f` call f(x) / f(t) when f is a function of one argument
                    # (PostgreSQL's column notation): the same risky names count there too.
                    for part in value.get("indirection" if key == "A_Indirection" else "fields") or ():
                        name = (part.get("String") or {}).get("sval") if isinstance(part, dict) else None
                        if isinstance(name, str):
                            out.update(_RISKY_FUNCTIONS.get(name.lower(), ()))
                elif key == "DefElem" and value.get("defname") == "transaction_read_only":
                    flag = (value.get("arg") or {}).get("A_Const") or {}
                    if not (flag.get("ival") or {}).get("ival"):
                        out.add("safety_off")  # BEGIN / SET TRANSACTION READ WRITE: past a read-only default
                elif key == "VariableSetStmt":
                    if _set_statement_is_unsafe(value):
                        out.add("encoding")
                    name = str(value.get("name", "")).lower()
                    if value.get("kind") in ("VAR_SET_VALUE", "VAR_SET_MULTI") and _safety_setting(name):
                        out.add("safety_off")
                    if name in _IDENTITY_SETTINGS and value.get("kind") != "VAR_RESET":
                        out.add("grant")  # SET ROLE / SET SESSION AUTHORIZATION
            stack.append(value)
