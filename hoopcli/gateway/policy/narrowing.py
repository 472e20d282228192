"""Does a WHERE clause single rows out? `DELETE … WHERE <this>` counts as a DELETE of every row
(`delete_without_where`) unless it does.

A condition narrows when it compares one column of the target with a value: `id = 5`, `name
LIKE 'a%'`, `id IN (1, 2)`, `id BETWEEN 1 AND 5`, `created < now()`, `lower(name) = 'bob'`,
`id IS NULL`, a boolean column, `id IN (SELECT … WHERE <narrows>)`, `id = (SELECT max(id) FROM
t)`. `x AND y` narrows when either side does; `x OR y` only when both do; `NOT x` only when x is
one such comparison or a boolean column. Everything else fails closed (counts as every row):
- no column: `WHERE true`, `1 = 1`; a column against a column, itself included (`id = id`,
  `a.id = b.id`, `id - id = 0`, `id = (SELECT id)`): a join or a tautology;
- `IS NOT NULL`, `IS DISTINCT FROM NULL`; functions, CASE, COALESCE, arithmetic or XOR at the
  top (`coalesce(id = id, true)`), `(id = id) IS TRUE`;
- `EXISTS (…)`; `IN`/`ANY` over a subquery whose own WHERE does not narrow (and has no LIMIT);
  a range (`<`, `>=` …) against a scalar subquery (`id <= (SELECT max(id) FROM t)`);
- when other tables are joined in (`DELETE … USING u`, `UPDATE … FROM u`, MySQL multi-table
  forms, every MERGE arm), only columns qualified with the target's name or alias count:
  `DELETE FROM t USING u WHERE u.id = 5` deletes every row of t.
A LIMIT narrows (MySQL `DELETE … LIMIT n`; a subquery with LIMIT). What the syntax cannot tell
(`id > 0` when every id is positive, `name LIKE '%'`) still counts as narrowing: the classifier
is one line of defence, the database role's privileges are the boundary.

Only node types, operators and columns are read, never a constant's value (the PostgreSQL cache
keyed on masked literals relies on that: postgres_cache.py) — NULL is a keyword, not a value.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

__all__ = ["my_narrows", "pg_narrows", "pg_target_names"]

# ---- PostgreSQL (pglast's JSON tree) -----------------------------------------------------------

_PG_EQUALITY = frozenset({"=", "IN"})


def pg_target_names(relation: Any) -> frozenset[str]:
    """The names a column of the target may be qualified with: its table name and alias."""
    if not isinstance(relation, dict):
        return frozenset()
    names = {str(relation.get("relname", ""))}
    alias = relation.get("alias")
    if isinstance(alias, dict) and alias.get("aliasname"):
        names.add(str(alias["aliasname"]))
    return frozenset(n for n in names if n)


def _pg_refs(node: Any) -> list[list[str]]:
    """The field names of every ColumnRef under `node`, outside subqueries."""
    found, stack = [], [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            ref = obj.get("ColumnRef")
            if isinstance(ref, dict):
                found.append([str((f.get("String") or {}).get("sval", "*")) for f in ref.get("fields") or () if isinstance(f, dict)])
                continue
            if "CurrentOfExpr" in obj:
                found.append(["<current of>"])
                continue
            stack.extend(v for k, v in obj.items() if isinstance(v, (dict, list)) and k != "SubLink")
        elif isinstance(obj, list):
            stack.extend(obj)
    return found


def _pg_counts(ref: list[str], target: frozenset[str] | None) -> bool:
    """A column of the target: any column alone, a qualified one when other tables are joined."""
    if target is None:
        return True
    return len(ref) >= 2 and ref[-2] in target


def _pg_sublinks(node: Any) -> list[dict]:
    found, stack = [], [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            sub = obj.get("SubLink")
            if isinstance(sub, dict):
                found.append(sub)
                continue
            stack.extend(v for v in obj.values() if isinstance(v, (dict, list)))
        elif isinstance(obj, list):
            stack.extend(obj)
    return found


def _pg_select(subselect: Any) -> dict | None:
    select = subselect.get("SelectStmt") if isinstance(subselect, dict) else None
    return select if isinstance(select, dict) else None


def _pg_subquery_narrows(subselect: Any) -> bool:
    select = _pg_select(subselect)
    if select is None:
        return False
    if select.get("op", "SETOP_NONE") != "SETOP_NONE":  # a UNION: each branch must narrow
        return _pg_subquery_narrows({"SelectStmt": select.get("larg")}) and _pg_subquery_narrows({"SelectStmt": select.get("rarg")})
    limit = select.get("limitCount")
    if isinstance(limit, dict) and "ival" in (limit.get("A_Const") or {}):
        return True  # LIMIT n (a constant; LIMIT ALL, NULL or a subquery is no limit)
    return pg_narrows(select.get("whereClause"))


def _pg_scalar_is_a_value(sub: dict, target: frozenset[str] | None) -> bool:
    """`(SELECT max(id) FROM t)` is one value; `(SELECT id)` (no FROM) reads the outer row."""
    select = _pg_select(sub.get("subselect"))
    if select is None or not select.get("fromClause"):
        return False
    if target and any(len(r) >= 2 and r[-2] in target for r in _pg_refs(select)):
        return False  # correlated with the target row
    return True


def _pg_value_side_narrows(value: Any, operator: str, set_valued: bool, target: frozenset[str] | None) -> bool:
    for sub in _pg_sublinks(value):
        if sub.get("subLinkType") == "EXPR_SUBLINK" and not set_valued:
            if operator not in _PG_EQUALITY or not _pg_scalar_is_a_value(sub, target):
                return False
        elif not _pg_subquery_narrows(sub.get("subselect")):
            return False
    return True


def _pg_plain_column(node: Any) -> bool:
    """A column, or a function or cast of one (`lower(name)`, `id::text`) — not arithmetic or a test."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    (kind, inner), = node.items()
    if kind == "ColumnRef":
        return True
    if kind in ("TypeCast", "CollateClause"):
        return _pg_plain_column(inner.get("arg"))
    if kind == "FuncCall":
        return sum(_pg_plain_column(a) for a in inner.get("args") or ()) == 1
    return False


def _pg_comparison_narrows(node: dict, target: frozenset[str] | None) -> bool:
    left, right = _pg_refs(node.get("lexpr")), _pg_refs(node.get("rexpr"))
    if bool(left) == bool(right):
        return False  # no column, or a column against a column
    column_side = left or right
    if len(column_side) != 1 or not _pg_counts(column_side[0], target):
        return False  # `id - id`, or a column of another table
    kind = node.get("kind")
    names = node.get("name") or []
    operator = str((names[-1].get("String") or {}).get("sval", "")) if names and isinstance(names[-1], dict) else ""
    if operator in ("<>", "!=") or kind == "AEXPR_DISTINCT":
        return False  # every row but some: `id <> 1 OR id <> 2`, `id <> ALL('{}')`
    column = node.get("lexpr") if left else node.get("rexpr")
    if not _pg_plain_column(column):
        return False  # `id * 0 = 0`, `(id IS NOT NULL) = true`: the column is not compared itself
    value = node.get("rexpr") if left else node.get("lexpr")
    if kind == "AEXPR_DISTINCT" and isinstance(value, dict) and (value.get("A_Const") or {}).get("isnull"):
        return False  # IS DISTINCT FROM NULL: IS NOT NULL
    if kind == "AEXPR_IN":
        operator = "IN"
    return _pg_value_side_narrows(value, operator, kind in ("AEXPR_OP_ANY", "AEXPR_OP_ALL"), target)


def pg_narrows(where: Any, target: frozenset[str] | None = None) -> bool:
    """For PostgreSQL's parse tree of a WHERE or a MERGE arm's condition. `target`: the names
    of the table written to, when other tables are joined in (None: it is the only one)."""
    if not isinstance(where, dict) or len(where) != 1:
        return False
    (kind, node), = where.items()
    if not isinstance(node, dict):
        return False
    if kind == "CurrentOfExpr":
        return True  # WHERE CURRENT OF cursor: one row
    if kind == "ColumnRef":  # a boolean column
        return _pg_counts(_pg_refs(where)[0], target)
    if kind == "BoolExpr":
        args = node.get("args") or []
        op = node.get("boolop")
        if op == "AND_EXPR":
            return any(pg_narrows(a, target) for a in args)
        if op == "OR_EXPR":
            return bool(args) and all(pg_narrows(a, target) for a in args)
        return False  # NOT x: every row but those x picks (`flag OR NOT flag`, `NOT (id = 5)`)
    if kind == "NullTest":
        refs = _pg_refs(node.get("arg"))
        return node.get("nulltesttype") == "IS_NULL" and len(refs) == 1 and _pg_counts(refs[0], target)
    if kind == "A_Expr":
        return _pg_comparison_narrows(node, target)
    if kind == "SubLink":
        if node.get("subLinkType") != "ANY_SUBLINK":
            return False  # EXISTS (…) is the same answer for every row unless correlated; WHERE (SELECT …)
        refs = _pg_refs(node.get("testexpr"))
        return len(refs) == 1 and _pg_counts(refs[0], target) and _pg_subquery_narrows(node.get("subselect"))
    if kind in ("TypeCast", "CollateClause"):
        return pg_narrows(node.get("arg"), target)
    return False  # functions, CASE, COALESCE, IS TRUE, arithmetic at the top: fail closed


# ---- MySQL / MariaDB (sqlglot) -------------------------------------------------------------------


def my_narrows(where: Any, target: frozenset[str] | None = None) -> bool:
    """For a sqlglot expression (MySQL): the same rules."""
    from sqlglot import exp

    if where is None:
        return False
    while isinstance(where, (exp.Where, exp.Paren)):
        where = where.this
    if isinstance(where, exp.Column):
        return _my_counts(where, target)
    if isinstance(where, exp.And):
        return my_narrows(where.left, target) or my_narrows(where.right, target)
    if isinstance(where, exp.Or):
        return my_narrows(where.left, target) and my_narrows(where.right, target)
    if isinstance(where, exp.Not):
        return False  # NOT x: every row but those x picks
    if isinstance(where, exp.Is):
        refs = _my_refs(where.this)
        return isinstance(where.expression, exp.Null) and len(refs) == 1 and _my_counts(refs[0], target)
    if isinstance(where, exp.In):
        refs = _my_refs(where.this)
        if len(refs) != 1 or not _my_counts(refs[0], target):
            return False
        query = where.args.get("query")
        if query is not None:
            return _my_subquery_narrows(query)
        return not any(_my_refs(e) for e in where.expressions)
    if isinstance(where, exp.Between):
        refs = _my_refs(where.this)
        bounds = [where.args.get("low"), where.args.get("high")]
        return len(refs) == 1 and _my_counts(refs[0], target) and not any(b is None or _my_refs(b) for b in bounds)
    if isinstance(where, _my_comparisons()):
        return _my_comparison_narrows(where, target)
    return False  # EXISTS, XOR, functions, arithmetic, CASE at the top: fail closed


def _my_comparison_narrows(node: Any, target: frozenset[str] | None) -> bool:
    from sqlglot import exp

    left, right = _my_refs(node.left), _my_refs(node.right)
    if bool(left) == bool(right) or isinstance(node, exp.NEQ):
        return False  # no column, a column against a column, or `<>`: every row but some
    column_side = left or right
    if len(column_side) != 1 or not _my_counts(column_side[0], target):
        return False
    if not _my_plain_column(node.left if left else node.right):
        return False  # `id * 0 = 0`, `(id IS NULL) = false`
    value = node.right if left else node.left
    for sub in value.find_all(exp.Subquery):
        query = sub.this
        if not isinstance(node, exp.EQ) or not isinstance(query, exp.Select) or not (query.args.get("from_") or query.args.get("from")):
            return False  # a range against a scalar subquery, or a FROM-less (correlated) one
    return True


def _my_plain_column(node: Any) -> bool:
    from sqlglot import exp

    while isinstance(node, (exp.Paren, exp.Cast)):
        node = node.this
    if isinstance(node, exp.Column):
        return True
    return isinstance(node, exp.Func) and not isinstance(node, (exp.Binary, exp.Predicate)) and len(_my_refs(node)) == 1


def _my_refs(node: Any) -> list:
    from sqlglot import exp

    return [n for n in node.walk(prune=lambda n: isinstance(n, (exp.Subquery, exp.Select))) if isinstance(n, exp.Column)]


def _my_counts(column: Any, target: frozenset[str] | None) -> bool:
    return target is None or (column.table or "").lower() in target


def _my_subquery_narrows(query: Any) -> bool:
    from sqlglot import exp

    while isinstance(query, (exp.Subquery, exp.Paren)):
        query = query.this
    if isinstance(query, exp.Union):
        return _my_subquery_narrows(query.left) and _my_subquery_narrows(query.right)
    if isinstance(query, exp.Select):
        return query.args.get("limit") is not None or my_narrows(query.args.get("where"))
    return False


@lru_cache(maxsize=1)
def _my_comparisons() -> tuple:
    """sqlglot's comparison nodes (imported on first use: sqlglot is slow to import)."""
    from sqlglot import exp

    return (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.NullSafeEQ, exp.RegexpLike)
