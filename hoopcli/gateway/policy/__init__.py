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

from .categories import ACTIONS, CATEGORIES, Dialect, PolicyAction, StatementClass
from .classifier import classify
from .gate import database_pin, make_gate
from .rules import DEFAULT_RULES, MAX_JUDGED_CHARS, Decision, Policy, Rule

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "DEFAULT_RULES",
    "Decision",
    "Dialect",
    "MAX_JUDGED_CHARS",
    "Policy",
    "PolicyAction",
    "Rule",
    "StatementClass",
    "classify",
    "database_pin",
    "make_gate",
]
