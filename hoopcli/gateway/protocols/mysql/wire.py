"""Small bounds-checked readers and packet builders."""

from __future__ import annotations

from .constants import MAX_PACKET


class _Malformed(Exception):
    """The peer broke the protocol; becomes a ProtocolError."""


# ---- small readers (bounds-checked) ---------------------------------------------------------


def _lenenc(buf: bytes, pos: int) -> tuple[int, int]:
    """Length-encoded integer at pos -> (value, next position)."""
    if pos >= len(buf):
        raise _Malformed("truncated length-encoded integer")
    b = buf[pos]
    if b < 0xFB:
        return b, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(b)
    if width is None:
        raise _Malformed(f"invalid length-encoded integer prefix 0x{b:02x}")
    end = pos + 1 + width
    if end > len(buf):
        raise _Malformed("truncated length-encoded integer")
    return int.from_bytes(buf[pos + 1 : end], "little"), end


def _cstring(buf: bytes, pos: int) -> tuple[bytes, int]:
    """NUL-terminated string at pos (lenient: the packet's end also terminates it)."""
    end = buf.find(b"\0", pos)
    if end < 0:
        return buf[pos:], len(buf)
    return buf[pos:end], end + 1


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload


def err_packet(errno: int, sqlstate: str, message: str, seq: int = 1) -> bytes:
    """An ERR packet in the 4.1 format (errno, '#', SQLSTATE, message)."""
    body = b"\xff" + errno.to_bytes(2, "little") + b"#" + sqlstate.encode("ascii")[:5].ljust(5, b"0")
    return _packet(seq, body + message.encode("utf-8")[: MAX_PACKET - 9])


def _rows_tag(n: int) -> str:
    return f"OK {n} row affected" if n == 1 else f"OK {n} rows affected"

