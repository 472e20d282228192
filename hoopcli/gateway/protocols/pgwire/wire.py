"""Wire-level pieces of the PostgreSQL engine: constants, FIFO entry kinds, message builders
and the small decoders the client and server phases share. No state lives here."""

from __future__ import annotations

import struct

from ..base import Verdict

DENY_SQLSTATE = "42501"  # insufficient_privilege
HOLD_SQLSTATE = "57W01"  # operator intervention, hoop's own subclass: awaiting approval
SKIPPED_SQLSTATE = "25P02"  # in_failed_sql_transaction: skipped after an earlier error
SKIPPED_MESSAGE = "not executed: an earlier message before Sync failed"

# Outstanding when the engine ended the session (e.g. for a client_encoding switch): the
# outcome is unknown, the connection is gone.
ENDED_SQLSTATE = "08006"  # connection_failure
ENDED_MESSAGE = "hoop: the session was ended before this statement's outcome was known"

EMPTY_TAG = "EMPTY QUERY"
SUSPENDED_TAG = "SUSPENDED"
FUNCTION_TAG = "FUNCTION CALL"

# The replacement for a statement blocked inside an open extended-protocol segment: a bare
# identifier is a syntax error in every PostgreSQL version.
_BLOCKED_SQL = b"hoop_blocked_statement"

GRANT_USED_MESSAGE = "hoop: an approval lets a statement run once; ask again: prepare it anew to request another approval"
# The replacement for a refused Bind inside an open segment: a statement the client never
# made, and two parameter formats for three parameters. PostgreSQL raises an ERROR for
# either, whichever it checks first, so the Bind fails even if a client named a statement so.
_USED_BIND_BODY = b"\0hoop_grant_used\0" + struct.pack("!hhhh", 2, 0, 0, 3)
_USED_BIND = b"B" + struct.pack("!I", len(_USED_BIND_BODY) + 4) + _USED_BIND_BODY

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_MAX_STARTUP = 10_000  # PostgreSQL's own MAX_STARTUP_PACKET_LENGTH
_MAX_LEN = 0x7FFFFFFF  # lengths are signed int32 on the wire
_MAX_NAMES = 10_000  # prepared statements / portals remembered per session

_U32 = struct.Struct("!I").unpack_from
_TYPE_LEN = struct.Struct("!BI").unpack_from  # a message's type byte and length in one call
_I32 = struct.Struct("!i").unpack_from
_I16 = struct.Struct("!h").unpack_from
_U32_PACK = struct.Struct("!I").pack

# FIFO entry kinds. Extended-protocol kinds (an error makes the server skip to Sync) come
# first, then the kinds a ReadyForQuery answers, then the ones retired as soon as they
# reach the head.
# _PARSE_T / _CLOSE_T: a Parse or Close of a statement name tracked for a grant (its answer
# settles what the name holds). _INJ_P: our stand-in for a blocked Parse or a refused Bind.
_PARSE, _BIND, _DESCRIBE, _CLOSE, _PARSE_T, _CLOSE_T, _EXEC, _INJ_P = range(8)
_STARTUP, _SYNC, _QUERY, _INJ_Q = range(8, 12)
_SYNTH_E, _SYNTH_Z, _COPYEND = 12, 13, 14
_SYNTH = _SYNTH_E  # every kind from here on is retired as soon as it reaches the head

# Frontend message types after startup.
_CLIENT_TYPES = frozenset(b"BCDEFHPQSXcdfp")
# Frontend messages forwarded while incomplete: their bodies are never needed.
_CLIENT_STREAMED = frozenset(b"dfp")
# Backend message types.
_SERVER_TYPES = frozenset(b"RKSZTDCIENA123nstGHWdcVv")


class _Broken(Exception):
    """The stream broke the protocol; caught inside the engine, never raised to callers.

    `at`: offset of the offending message in the chunk; what precedes it is passed on.
    `answer`: bytes for the client before the session closes (a refusal it can show).
    """

    at = 0
    fwd = 0  # how far the chunk was already passed on or withheld when it broke
    answer = b""
    protocol = True  # False: a refusal on purpose (recorded by the caller), not a broken stream


class _Refused(_Broken):
    """The engine ends the session on purpose; `answer` tells the client why."""

    protocol = False


# Client encodings whose multibyte characters may end in an ASCII byte (0x5C backslash, 0x27

def error_response(code: str, message: str, detail: str | None = None, severity: bytes = b"ERROR") -> bytes:
    """A PostgreSQL ErrorResponse (severity ERROR) as the server would send it."""
    body = b"S" + severity + b"\0V" + severity + b"\0C" + _cstr(code) + b"M" + _cstr(message)
    if detail:
        body += b"D" + _cstr(detail)
    body += b"\0"
    return b"E" + _U32_PACK(len(body) + 4) + body


def fatal_response(code: str, message: str, detail: str | None = None) -> bytes:
    """An ErrorResponse of severity FATAL: the session ends after it (clients say so)."""
    return error_response(code, message, detail, b"FATAL")


def ready_for_query(status: bytes = b"I") -> bytes:
    return b"Z\0\0\0\x05" + status


def _cstr(text: str) -> bytes:
    return text.replace("\0", "").encode("utf-8") + b"\0"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _remember(table: dict, key: bytes, value) -> None:
    if len(table) >= _MAX_NAMES and key not in table:
        del table[next(iter(table))]  # the oldest
    table[key] = value


def _refusal(verdict: Verdict, fatal: bool = False) -> bytes:
    if verdict.action == "hold":
        code = HOLD_SQLSTATE
        message = verdict.message or "hoop: statement held for approval"
    else:
        code = DENY_SQLSTATE
        message = verdict.message or "hoop: statement denied by policy"
    detail = f"hoop request {verdict.request_id}" if verdict.request_id else None
    return error_response(code, message, detail, b"FATAL" if fatal else b"ERROR")


def _bind_params(data: bytes, j: int, end: int) -> tuple[str | None, ...]:
    try:
        nfmt = _I16(data, j)[0]
        if nfmt < 0:
            raise _Broken("malformed Bind")
        fmts = struct.unpack_from(f"!{nfmt}h", data, j + 2) if nfmt else ()
        j += 2 + 2 * nfmt
        count = _I16(data, j)[0]
        j += 2
        if count < 0:
            raise _Broken("malformed Bind")
        values: list[str | None] = []
        for k in range(count):
            size = _I32(data, j)[0]
            j += 4
            if size == -1:
                values.append(None)
                continue
            if size < 0 or j + size > end:
                raise _Broken("malformed Bind")
            raw = data[j : j + size]
            j += size
            fmt = fmts[k] if k < nfmt else (fmts[0] if nfmt == 1 else 0)
            values.append(raw.decode("utf-8", "replace") if fmt == 0 else raw.hex())
        if j > end:
            raise _Broken("malformed Bind")
        return tuple(values)
    except struct.error:
        raise _Broken("malformed Bind") from None


def _tag(data: bytes, i: int, end: int) -> str:
    return data[i + 5 : end].split(b"\0", 1)[0].decode("ascii", "replace")


def _error_fields(data: bytes, j: int, end: int) -> tuple[str, str]:
    code = ""
    message = ""
    while j < end and data[j] != 0:
        field = data[j]
        z = data.find(0, j + 1, end)
        if z < 0:
            break
        if field == 0x43:  # C
            code = data[j + 1 : z].decode("ascii", "replace")
        elif field == 0x4D:  # M
            message = _text(data[j + 1 : z])
        j = z + 1
    return code, message


def function_call_text(body: bytes) -> str:
    """What a FunctionCall ('F') is judged, approved and recorded as: its function oid, its
    arguments as far as they can be shown, and the SHA-256 of the whole call, so an approval of
    `setval(seq, 5)` is not an approval of `setval(seq, 999999)` (a grant matches the exact text)."""
    import hashlib

    oid = int.from_bytes(body[:4], "big") if len(body) >= 4 else 0
    digest = hashlib.sha256(body).hexdigest()
    shown = []
    try:
        j = 4
        (nformats,) = struct.unpack_from("!H", body, j)
        formats = struct.unpack_from(f"!{nformats}H", body, j + 2)
        j += 2 + 2 * nformats
        (nargs,) = struct.unpack_from("!H", body, j)
        j += 2
        for k in range(nargs):
            (length,) = struct.unpack_from("!i", body, j)
            j += 4
            if length < 0:
                shown.append("NULL")
                continue
            raw = body[j : j + length]
            j += length
            binary = (formats[k] if nformats > 1 else formats[0] if nformats else 0) == 1
            value = raw.hex() if binary else raw.decode("utf-8", "replace")
            shown.append(("0x" if binary else "") + (value[:60] + "…" if len(value) > 60 else value))
    except (struct.error, IndexError):
        shown = ["(arguments unreadable)"]
    return f"<function call oid {oid} ({', '.join(shown)}); call sha256 {digest}>"
