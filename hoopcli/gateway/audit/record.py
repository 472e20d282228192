"""The audit record: a plain dict with a fixed set of JSON-serialisable fields.

`new_record()` builds one on the gateway's hot path (cheap: no hashing, no I/O);
`normalize()` turns it into the exact values a store keeps and hashes, so that what is read
back hashes to what was written, in SQLite, in PostgreSQL and in an exported JSON line.
"""

from __future__ import annotations

import math
import time
from datetime import date, datetime, timezone
from typing import Any

# The order is only for humans (column order); hashing sorts keys.
FIELDS: tuple[str, ...] = (
    "seq",  # int, assigned by the store
    "ts",  # RFC 3339 UTC with microseconds: when the event happened
    "kind",  # one of KINDS
    "session_id",
    "sub",
    "email",
    "issuer",
    "connection",
    "db_user",
    "database",
    "statement",  # text or null
    "started_at",  # RFC 3339 UTC (statement or session start) or null
    "duration_ms",  # float or null
    "outcome",  # ok, error, held, denied, refused, ...
    "tag",  # command tag ("SELECT 1") or similar
    "code",  # SQLSTATE, errno or HTTP status, always kept as a string
    "message",
    "details",  # dict for the rest: bytes in/out, reason, client address, request id, ...
    "prev_hash",  # hex sha256 of the previous record (GENESIS for the first)
    "hash",  # hex sha256(prev_hash + canonical(record without hash))
)
FIELD_SET = frozenset(FIELDS)

# "api": a refused call to the gateway's API (details: method, path), with the caller's
# identity when the token was verified.
KINDS = frozenset({"connect", "api", "session_end", "statement", "approval_request", "approval_decision"})

# Fields the store assigns; a submitted record may leave them out.
STORE_FIELDS = frozenset({"seq", "prev_hash", "hash"})
TEXT_FIELDS = (
    "kind",
    "session_id",
    "sub",
    "email",
    "issuer",
    "connection",
    "db_user",
    "database",
    "statement",
    "outcome",
    "tag",
    "code",
    "message",
    "prev_hash",
    "hash",
)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# The last whole second formatted and its text, replaced as one tuple so that threads
# formatting at once never pair one second with another's text.
_ts_cache: tuple[float | None, str] = (None, "")
_UNIX_MAX = 253402300800.0  # 10000-01-01: _format_unix takes Unix seconds in [0, _UNIX_MAX)


def _format_unix(value: float) -> str:
    """format_ts for Unix seconds without a datetime: the same rounding (half-even to the
    microsecond, as datetime.fromtimestamp), the whole second's text cached."""
    global _ts_cache
    frac, whole = math.modf(value)
    us = round(frac * 1e6)
    if us >= 1000000:
        whole += 1
        us -= 1000000
    second, text = _ts_cache
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _ts_cache = (whole, text)
    return f"{text}.{us:06d}Z"


def format_ts(value: Any) -> str:
    """RFC 3339, UTC, microseconds, `Z`: `2024-05-01T12:00:00.000000Z` (sorts as text).

    Accepts a datetime (naive = UTC), an RFC 3339 / ISO 8601 string, or Unix seconds
    (a number or a numeric string)."""
    if type(value) is float and 0 <= value < _UNIX_MAX and math.isfinite(value):
        return _format_unix(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        dt = datetime.fromtimestamp(value, tz=timezone.utc)
    elif isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    elif isinstance(value, str) and _is_number(value):
        dt = datetime.fromtimestamp(float(value), tz=timezone.utc)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ts() -> str:
    return format_ts(time.time())


def check(record: dict) -> None:
    """The cheap checks `AuditWriter.submit` runs: a known kind and no unknown field."""
    if record.get("kind") not in KINDS:
        raise ValueError(f"audit record kind must be one of {sorted(KINDS)}, not {record.get('kind')!r}")
    unknown = record.keys() - FIELD_SET
    if unknown:
        raise ValueError(f"unknown audit record field(s): {', '.join(sorted(unknown))}; put them in details")


def new_record(kind: str, **fields: Any) -> dict:
    """A record of `kind` with `ts` = now unless given; every missing field is null."""
    record = dict.fromkeys(FIELDS)
    record.update(fields)
    record["kind"] = kind
    if record["ts"] is None:
        record["ts"] = now_ts()
    check(record)
    return record


def clean_text(value: Any) -> str:
    """Text every store and JSON can hold: no NUL (PostgreSQL text refuses it) and valid UTF-8."""
    if type(value) is str and value.isascii() and "\x00" not in value:
        return value  # the common case: nothing to clean
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def jsonable(value: Any) -> Any:
    """A JSON value that survives a dumps/loads round trip unchanged (so its hash is stable)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): v if type(v) is str and v.isascii() and "\x00" not in v else jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return clean_text(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return clean_text(value)


def normalize(record: dict) -> dict:
    """The record as a store keeps it: every field present, each with its stored type.

    Raises ValueError for an unknown kind or field, or a bad timestamp; everything else is
    coerced (text fields to str, `code` to str, `duration_ms` to float, `details` to JSON).
    Runs once per statement in the audit writer, so the common case (ASCII text, float
    times, flat details) takes the short way through each step.
    """
    check(record)
    out = dict.fromkeys(FIELDS)
    out.update(record)
    _clean_text_fields(out)
    ts = out["ts"]
    out["ts"] = format_ts(ts) if ts is not None else now_ts()
    started = out["started_at"]
    if started is not None:
        # The recorder gives a statement's start as its ts (one float): format it once.
        out["started_at"] = out["ts"] if started is ts else format_ts(started)
    if out["duration_ms"] is not None:
        duration = round(float(out["duration_ms"]), 3) + 0.0  # to the microsecond; + 0.0: no -0.0, which SQLite stores as 0.0
        out["duration_ms"] = duration if math.isfinite(duration) else None
    details = out["details"]
    if details is not None:
        details = jsonable(details)
        out["details"] = details if isinstance(details, dict) else {"value": details}
    if out["seq"] is not None:
        out["seq"] = int(out["seq"])
    return out


def _clean_text_fields(out: dict) -> None:
    values = [value for value in map(out.get, TEXT_FIELDS) if value is not None]
    try:
        joined = "".join(values)  # TypeError when one of them is not text
    except TypeError:
        joined = None
    if joined is not None and joined.isascii() and "\x00" not in joined:
        return  # the common case: every text field is clean ASCII already
    for name in TEXT_FIELDS:
        if out[name] is not None:
            out[name] = clean_text(out[name])
