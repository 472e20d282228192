"""Does a WHERE clause single rows out? `DELETE … WHERE <this>` counts as a DELETE of every row
(`delete_without_where`) unless it does.

A condition narrows when it compares a column with a value: `id = 5`, `name LIKE 'a%'`,
`id IN (1, 2)`, `id BETWEEN 1 AND 5`, `created < now()`, `id IS NULL`, a boolean column, a
function of a column. These do not, and fail closed (count as "every row"):
- no column at all: `WHERE true`, `WHERE 1 = 1`;
- a column against a column, itself included: `id = id`, `a.id = b.id` (a join matches as
  many rows as it likes), `id = id + 0`;
- `id IS NOT NULL`;
- `x OR y` unless both sides narrow (`id = 5 OR true` does not);
- `id IN (SELECT …)` and `EXISTS (SELECT …)` unless the subquery's own WHERE narrows
  (`id IN (SELECT id FROM t)` is every row).
`x AND y` narrows when either side does. What the syntax cannot tell (`id > 0` when every id
is positive, `name LIKE '%'`) still counts as narrowing: the classifier is one line of
defence, the database role's privileges are the boundary.

Only node types and columns are read, never a constant's value (the PostgreSQL cache keyed on
masked literals relies on that: postgres_cache.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["my_narrows", "pg_narrows"]


def _pg_columns(node: Any) -> bool:
    """True when a column (or CURRENT OF) appears under `node`, outside subqueries (a scalar
    subquery is a value: `id = (SELECT max(id) FROM t)` compares a column with a value)."""
    stack = [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            if "ColumnRef" in obj or "CurrentOfExpr" in obj:
                return True
            stack.extend(v for k, v in obj.items() if isinstance(v, (dict, list)) and k != "SubLink")
        elif isinstance(obj, list):
            stack.extend(obj)
    return False


def _pg_set_sublinks(node: Any, every: bool = False) -> list[dict]:
    """Subqueries under `node` that yield a set of values (`ARRAY(SELECT …)`, `ANY (SELECT …)`;
    with `every`, scalar ones too): `id = ANY(ARRAY(SELECT id FROM t))` is every row. Elsewhere
    a scalar subquery is one value."""
    found, stack = [], [node]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            sub = obj.get("SubLink")
            if isinstance(sub, dict) and (every or sub.get("subLinkType") != "EXPR_SUBLINK"):
                found.append(sub)
            stack.extend(v for v in obj.values() if isinstance(v, (dict, list)))
        elif isinstance(obj, list):
            stack.extend(obj)
    return found


def _pg_subquery_narrows(subselect: Any) -> bool:
    select = (subselect or {}).get("SelectStmt") if isinstance(subselect, dict) else None
    if not isinstance(select, dict):
        return False
    if select.get("op", "SETOP_NONE") != "SETOP_NONE":  # UNION of subqueries: each must narrow
        return _pg_subquery_narrows(select.get("larg") and {"SelectStmt": select["larg"]}) and _pg_subquery_narrows(
            select.get("rarg") and {"SelectStmt": select["rarg"]}
        )
    return pg_narrows(select.get("whereClause"))


def pg_narrows(where: Any) -> bool:
    """For PostgreSQL's parse tree (pglast JSON) of a WHERE / MERGE arm condition."""
    if not isinstance(where, dict) or len(where) != 1:
        return False
    (kind, node), = where.items()
    if not isinstance(node, dict):
        return False
    if kind == "CurrentOfExpr":
        return True  # WHERE CURRENT OF cursor: one row
    if kind == "BoolExpr":
        args = node.get("args") or []
        op = node.get("boolop")
        if op == "AND_EXPR":
            return any(pg_narrows(a) for a in args)
        if op == "OR_EXPR":
            return bool(args) and all(pg_narrows(a) for a in args)
        # NOT x: `NOT (id IS NULL)` is IS NOT NULL; other negations of a column test narrow.
        inner = args[0] if args else None
        if isinstance(inner, dict) and "NullTest" in inner:
            return inner["NullTest"].get("nulltesttype") != "IS_NULL" and _pg_columns(inner)
        return _pg_columns(inner)
    if kind == "NullTest":
        return node.get("nulltesttype") == "IS_NULL" and _pg_columns(node.get("arg"))
    if kind == "A_Expr":
        left, right = _pg_columns(node.get("lexpr")), _pg_columns(node.get("rexpr"))
        if left == right:
            return False  # no column, or a column against a column
        value = node.get("rexpr") if left else node.get("lexpr")
        # `= ANY (array)`: even a scalar subquery there yields a set (`array_agg(id)`)
        every = node.get("kind") in ("AEXPR_OP_ANY", "AEXPR_OP_ALL")
        return all(_pg_subquery_narrows(sub.get("subselect")) for sub in _pg_set_sublinks(value, every))
    if kind == "SubLink":
        if node.get("subLinkType") == "EXPR_SUBLINK":  # WHERE (SELECT …): a value
            return False
        test = node.get("testexpr")
        if test is not None and not _pg_columns(test):
            return False  # `5 IN (SELECT id FROM t)`: the same answer for every row
        return _pg_subquery_narrows(node.get("subselect"))
    if kind in ("TypeCast", "CollateClause"):
        return pg_narrows(node.get("arg"))
    return _pg_columns(where)  # a boolean column, a function of a column, IS TRUE …


def my_narrows(where: Any) -> bool:
    """For a sqlglot expression (MySQL): the same rules."""
    from sqlglot import exp

    if where is None:
        return False
    if isinstance(where, exp.Where):
        return my_narrows(where.this)
    if isinstance(where, exp.Paren):
        return my_narrows(where.this)
    if isinstance(where, exp.And):
        return my_narrows(where.left) or my_narrows(where.right)
    if isinstance(where, exp.Or):
        return my_narrows(where.left) and my_narrows(where.right)
    if isinstance(where, exp.Not):
        inner = where.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, exp.Is):
            return False  # NOT (x IS NULL): IS NOT NULL
        return _my_columns(inner)
    if isinstance(where, exp.Is):
        return isinstance(where.expression, exp.Null) and _my_columns(where.this)
    if isinstance(where, exp.Exists):
        return _my_subquery_narrows(where.this)
    if isinstance(where, exp.In):
        if not _my_columns(where.this):
            return False
        query = where.args.get("query")
        if query is not None:
            return _my_subquery_narrows(query)
        return not any(_my_columns(e) for e in where.expressions)
    if isinstance(where, exp.Binary):
        return _my_columns(where.left) != _my_columns(where.right)
    if isinstance(where, exp.Between):
        sides = [where.this, where.args.get("low"), where.args.get("high")]
        return [s is not None and _my_columns(s) for s in sides] == [True, False, False]
    if isinstance(where, exp.Subquery):
        return False  # WHERE (SELECT …): a value
    return _my_columns(where)


def _my_columns(node: Any) -> bool:
    """As _pg_columns: a column outside subqueries."""
    from sqlglot import exp

    return any(isinstance(n, exp.Column) for n in node.walk(prune=lambda n: isinstance(n, (exp.Subquery, exp.Select))))


def _my_subquery_narrows(query: Any) -> bool:
    from sqlglot import exp

    while isinstance(query, (exp.Subquery, exp.Paren)):
        query = query.this
    if isinstance(query, exp.Union):
        return _my_subquery_narrows(query.left) and _my_subquery_narrows(query.right)
    if isinstance(query, exp.Select):
        return my_narrows(query.args.get("where"))
    return False
