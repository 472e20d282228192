"""What the classifier says of a statement: the categories, one classified part, and the
helper that merges another lexical reading of the same text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

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
        "routine",  # creates or changes code the server runs later: functions, procedures, triggers, rules, events
        "safety_off",  # switches off the server's own safety or audit (triggers, audit/binary logs)
        "encoding",
        "sql_mode",  # MySQL sql_mode that changes how later statements are read (ANSI_QUOTES, …): always refused  # may switch the client character set to one the gateway cannot read safely: always refused
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



def _extra_readings(primary: list[StatementClass], other: list[StatementClass], setting: str) -> list[StatementClass]:
    """Parts of another lexical reading that reveal categories the primary reading lacks."""
    seen = {c for part in primary for c in part.categories}
    extra = []
    for part in other:
        if not set(part.categories) - {"unparseable"} <= seen:
            extra.append(_part(part.text, (*part.categories, "ambiguous"), f"read this way when {setting}"))
    return extra



# Statements longer than this are classified every time rather than cached: a cache of 4096
# multi-megabyte INSERTs would be a memory leak.
CACHE_MAX_SQL = 8192
CACHE_SIZE = 4096
