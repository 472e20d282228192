"""The one interface every audit store keeps, and `open_store` that picks one by URL."""

from __future__ import annotations

import json
from datetime import datetime
from operator import itemgetter
from typing import Any, Iterable

from .chain import ChainHead, Preencoded, VerifyReport, sorted_json_encoder
from .record import FIELDS, format_ts, normalize


class AuditStore:
    """Append-only, hash-chained storage of audit records.

    append() normalizes the records, then (atomically, under the store's lock) reads the chain
    head, assigns seq/prev_hash/hash and inserts them; it returns the stored records.
    query() returns records in seq order; with `limit` the newest `limit` matches.
    """

    def append(self, records: list[dict]) -> list[dict]:
        if not records:
            return []
        return self._append_normalized([normalize(r) for r in records])

    def append_normalized(self, records: list[dict]) -> list[dict]:
        """append() for records that already went through normalize() (the writer's batches)."""
        if not records:
            return []
        return self._append_normalized(records)

    def _append_normalized(self, records: list[dict]) -> list[dict]:
        raise NotImplementedError

    def query(
        self,
        sub: str | None = None,
        connection: str | None = None,
        since: datetime | str | float | None = None,
        kind: str | None = None,
        limit: int | None = None,
        *,
        session_id: str | None = None,
    ) -> list[dict]:
        raise NotImplementedError

    def verify(self, heads: Iterable[ChainHead] = ()) -> VerifyReport:
        """Walk the whole chain in one snapshot; with `heads` (published outside the store),
        also fail when the store ends before one of them or differs at its seq."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def filters(sub, connection, since, kind, session_id) -> list[tuple[str, Any]]:
    """(column, value) pairs for a query: equality except `ts`, which is `>=`."""
    out: list[tuple[str, Any]] = []
    for column, value in (("sub", sub), ("connection", connection), ("kind", kind), ("session_id", session_id)):
        if value is not None:
            out.append((column, value))
    if since is not None:
        out.append(("ts", format_ts(since)))  # the canonical form sorts as text
    return out


_DETAILS_TEXT = sorted_json_encoder(", ", ": ")  # json.dumps(details, sort_keys=True, ensure_ascii=False)
details_text = _DETAILS_TEXT  # how the `details` column keeps a record's details
_ROW_VALUES = itemgetter(*FIELDS)
_DETAILS_AT = FIELDS.index("details")


def to_row(record: dict) -> tuple:
    """A stored record as column values in FIELDS order (details as JSON text)."""
    if type(record) is Preencoded:
        return (record["seq"], *record.row_values, record["prev_hash"], record["hash"])
    row = _ROW_VALUES(record)
    details = row[_DETAILS_AT]
    if details is None:
        return row
    return (*row[:_DETAILS_AT], _DETAILS_TEXT(details), *row[_DETAILS_AT + 1:])


def from_row(values: Iterable) -> dict:
    """Column values in FIELDS order back to a record. Details that are no longer JSON (an
    edited row) stay raw text: their hash then does not match, which verify() reports."""
    record = dict(zip(FIELDS, values))
    if record["details"] is not None:
        try:
            record["details"] = json.loads(record["details"])
        except ValueError:
            pass
    return record


def select_sql(table: str, columns: str, where: list[tuple[str, Any]], limit: int | None, mark: str) -> tuple[str, list]:
    """The query() SELECT for either store (`mark` is its parameter placeholder): filters,
    records in seq order, with `limit` the newest matches."""
    clause = " AND ".join(f'"{col}" >= {mark}' if col == "ts" else f'"{col}" = {mark}' for col, _ in where)
    sql = f"SELECT {columns} FROM {table}" + (f" WHERE {clause}" if clause else "")
    params: list = [value for _, value in where]
    if limit is None:
        return sql + ' ORDER BY "seq"', params
    params.append(int(limit))
    return f'SELECT * FROM ({sql} ORDER BY "seq" DESC LIMIT {mark}) AS newest ORDER BY "seq"', params


def public_url(url: str) -> str:
    """A store URL fit for logs and the ready event: the password (userinfo, or a `password`,
    `sslpassword`… query parameter) replaced by ***. Userinfo ends at the last `@` before the
    first `/` (libpq reads no further), so an unencoded `@` in a password is hidden too."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority_end = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if at != -1:
            authority_end = min(authority_end, at)
    at = rest.rfind("@", 0, authority_end)
    if at != -1 and ":" in rest[:at]:
        user = rest[: rest.index(":")]
        rest = f"{user}:***{rest[at:]}"
    base, qmark, query = rest.partition("?")
    if qmark:
        base += "?" + "&".join(_redact_param(part) for part in query.split("&"))
    return f"{scheme}://{base}"


def _redact_param(part: str) -> str:
    name, eq, _ = part.partition("=")
    return f"{name}=***" if eq and "password" in name.lower() else part


def open_store(url_or_path: str) -> AuditStore:
    """`postgresql://…` (or `postgres://…`) → PostgresStore; `sqlite:///path` or a path → SQLiteStore."""
    target = str(url_or_path)
    if target.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(target)
    if target.startswith("sqlite://"):
        path = target[len("sqlite://"):]
        # sqlite:///rel/x.db is /rel/x.db (absolute); sqlite:////abs also tolerated.
        if path.startswith("//"):
            path = path[1:]
        target = path
    if "://" in target:
        raise ValueError(f"unsupported audit store URL scheme: {target.split('://', 1)[0]}://")
    from .sqlite import SQLiteStore

    return SQLiteStore(target)
