"""`classify(sql, dialect)`: the entry point, its caches, and the parts `Policy.decide` judges."""

from __future__ import annotations

from functools import lru_cache

from .categories import CACHE_MAX_SQL, CACHE_SIZE, Dialect, StatementClass
from .mysql import _classify_mysql
from .postgres import _classify_postgres
from .postgres_cache import _MASKED, _pg_mask, _pg_masked_miss

_DIALECTS = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


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



def _cache_clear() -> None:
    _classify_cached.cache_clear()
    _MASKED.clear()


classify.cache_clear = _cache_clear  # type: ignore[attr-defined]
classify.cache_info = _classify_cached.cache_info  # type: ignore[attr-defined]

