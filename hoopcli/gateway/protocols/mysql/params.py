"""Binary-protocol parameters of COM_STMT_EXECUTE, decoded into strings for the record."""

from __future__ import annotations

import struct

from .state import _Stmt
from .wire import _lenenc, _Malformed, _text

# Execute packets larger than this are relayed without decoding their parameters.
PARAMS_KEEP_BYTES = 1 << 20


def decode_params(stmt: _Stmt, payload: bytes, size: int) -> tuple[str | None, ...] | None:
    """The execute's parameters as strings, or None when they cannot (or should not) be read."""
    n = stmt.num_params
    if n is None or size > PARAMS_KEEP_BYTES:
        return None
    if n == 0:
        return ()
    try:
        return _decode_binary_params(stmt, payload, n)
    except (_Malformed, IndexError, ValueError, struct.error):
        return None


_FIXED = {0x01: 1, 0x02: 2, 0x0D: 2, 0x03: 4, 0x09: 4, 0x08: 8}
_DATES = {0x07, 0x0A, 0x0C, 0x11, 0x12}  # timestamp, date, datetime (+ 2 variants)
_TIMES = {0x0B, 0x13}
_STRINGS = {0x00, 0x0F, 0x10, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF}


def _decode_binary_params(stmt: _Stmt, payload: bytes, n: int) -> tuple[str | None, ...] | None:
    pos = 10  # command, statement id (4), flags (1), iteration count (4)
    nulls = payload[pos : pos + (n + 7) // 8]
    pos += (n + 7) // 8
    if len(nulls) != (n + 7) // 8 or pos >= len(payload):
        raise _Malformed("truncated parameters")
    bound = payload[pos]
    pos += 1
    if bound:
        stmt.types = payload[pos : pos + 2 * n]
        pos += 2 * n
    types = stmt.types
    if types is None or len(types) != 2 * n:
        return None
    out: list[str | None] = []
    for k in range(n):
        if nulls[k >> 3] & (1 << (k & 7)):
            out.append(None)
            continue
        if k in stmt.long_data:
            out.append("<long data>")
            continue
        t, unsigned = types[2 * k], types[2 * k + 1] & 0x80
        if t in _FIXED:
            w = _FIXED[t]
            raw = payload[pos : pos + w]
            if len(raw) != w:
                raise _Malformed("truncated parameter")
            out.append(str(int.from_bytes(raw, "little", signed=not unsigned)))
            pos += w
        elif t == 0x04 or t == 0x05:
            w = 4 if t == 0x04 else 8
            (value,) = struct.unpack_from("<f" if w == 4 else "<d", payload, pos)
            out.append(repr(value))
            pos += w
        elif t == 0x06:
            out.append(None)
        elif t in _DATES:
            ln = payload[pos]
            raw = payload[pos + 1 : pos + 1 + ln]
            pos += 1 + ln
            out.append(_date_text(raw))
        elif t in _TIMES:
            ln = payload[pos]
            raw = payload[pos + 1 : pos + 1 + ln]
            pos += 1 + ln
            out.append(_time_text(raw))
        elif t in _STRINGS:
            ln, pos = _lenenc(payload, pos)
            raw = payload[pos : pos + ln]
            if len(raw) != ln:
                raise _Malformed("truncated parameter")
            out.append(_text(raw))
            pos += ln
        else:
            return None
    return tuple(out)


def _date_text(raw: bytes) -> str:
    if len(raw) < 4:
        return "0000-00-00"
    y, mo, d = int.from_bytes(raw[0:2], "little"), raw[2], raw[3]
    text = f"{y:04d}-{mo:02d}-{d:02d}"
    if len(raw) >= 7:
        text += f" {raw[4]:02d}:{raw[5]:02d}:{raw[6]:02d}"
        if len(raw) >= 11:
            text += f".{int.from_bytes(raw[7:11], 'little'):06d}"
    return text


def _time_text(raw: bytes) -> str:
    if len(raw) < 8:
        return "00:00:00"
    neg = "-" if raw[0] else ""
    days = int.from_bytes(raw[1:5], "little")
    text = f"{neg}{days * 24 + raw[5]:02d}:{raw[6]:02d}:{raw[7]:02d}"
    if len(raw) >= 12:
        text += f".{int.from_bytes(raw[8:12], 'little'):06d}"
    return text
