"""Client encodings the gateway can read statements under.

The gateway reads statement text as UTF-8 and the classifier only cares about ASCII
characters (quotes, backslashes, semicolons, keywords). That reading matches the server's
whenever no multibyte character of the client encoding can contain a byte below 0x80: then
every ASCII byte is the same ASCII character for both. That holds for UTF8, the EUC family
and MULE_INTERNAL (trail bytes >= 0xA1 / >= 0x80, checked by the server's conversion) and
every single-byte encoding. It fails for SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030 and
JOHAB (trail bytes from 0x30/0x40), where `E'<0x95 0x5C>'` swallows a backslash and a
harmless-looking string hides a DROP. Hence an ALLOW-list: anything not on it, including a
name this module does not know, is refused.
"""

from __future__ import annotations

import re

from .wire import _Broken, fatal_response

# Canonical names, as the server reports them in ParameterStatus (pg_encoding_to_char).
SAFE_CLIENT_ENCODINGS = frozenset(
    {"SQL_ASCII", "UTF8", "EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004", "MULE_INTERNAL", "KOI8R", "KOI8U",
     "WIN866", "WIN874", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8"}
    | {f"LATIN{k}" for k in range(1, 11)}
    | {f"WIN{k}" for k in range(1250, 1259)}
)
UNSAFE_CLIENT_ENCODINGS = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"})

# PostgreSQL's spellings (encnames.c, compared after lower-casing and dropping everything but
# letters and digits) of the safe encodings. A startup client_encoding not here is refused.
_SAFE_ALIASES = {
    "sqlascii": "SQL_ASCII", "utf8": "UTF8", "unicode": "UTF8", "eucjp": "EUC_JP", "euccn": "EUC_CN",
    "euckr": "EUC_KR", "euctw": "EUC_TW", "eucjis2004": "EUC_JIS_2004", "muleinternal": "MULE_INTERNAL",
    "koi8": "KOI8R", "koi8r": "KOI8R", "koi8u": "KOI8U", "alt": "WIN866", "win866": "WIN866",
    "windows866": "WIN866", "win874": "WIN874", "windows874": "WIN874", "win": "WIN1251",
    "abc": "WIN1258", "tcvn": "WIN1258", "tcvn5712": "WIN1258", "vscii": "WIN1258",
    "iso88591": "LATIN1", "iso88592": "LATIN2", "iso88593": "LATIN3", "iso88594": "LATIN4",
    "iso88599": "LATIN5", "iso885910": "LATIN6", "iso885913": "LATIN7", "iso885914": "LATIN8",
    "iso885915": "LATIN9", "iso885916": "LATIN10", "iso88595": "ISO_8859_5", "iso88596": "ISO_8859_6",
    "iso88597": "ISO_8859_7", "iso88598": "ISO_8859_8",
    **{f"latin{k}": f"LATIN{k}" for k in range(1, 11)},
    **{f"win{k}": f"WIN{k}" for k in range(1250, 1259)},
    **{f"windows{k}": f"WIN{k}" for k in range(1250, 1259)},
}


def safe_encoding_for(name: str) -> str | None:
    """The canonical safe encoding a client_encoding spelling names, or None (refuse it)."""
    return _SAFE_ALIASES.get("".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum()))


def startup_encoding_is_safe(name: str) -> bool:
    return safe_encoding_for(name) is not None


def reads_the_same_in_every_encoding(raw: bytes) -> bool:
    """True when no refused encoding could read an ASCII byte of `raw` as part of a multibyte
    character (so the server reads it as the gateway does, whatever client_encoding it has).
    Conservative: it follows each encoding's character lengths as the server's mblen does and
    does not ask whether the sequence would be valid.

    Done at C speed: each byte becomes a letter for its role in that encoding (a: ASCII, H: a
    lead of two bytes, ...), whole characters are cut out left to right as the server reads
    them, and a lead left over right before an ASCII byte is a character that would swallow it.
    GB18030's four-byte characters have an ASCII digit second, so its rule is the two-byte one;
    a character cut short by the end of the text swallows nothing."""
    if raw.isascii():
        return True
    if b"Ha" in raw.translate(_AS_DOUBLE).replace(b"HH", b""):  # BIG5, GBK, UHC, GB18030
        return False
    if b"La" in _SJIS_CHARS(b"", raw.translate(_AS_SJIS)):
        return False
    if b"\x8f" not in raw:  # JOHAB's only three-byte lead: without it JOHAB reads as BIG5 does
        return True
    return _LEAD_BEFORE_ASCII(_JOHAB_CHARS(b"", raw.translate(_AS_JOHAB))) is None


def _roles(role) -> bytes:
    return bytes(0x61 if b < 0x80 else ord(role(b)) for b in range(256))


_AS_DOUBLE = _roles(lambda b: "H")
_AS_SJIS = _roles(lambda b: "K" if 0xA1 <= b <= 0xDF else "L")  # half-width katakana are one byte
_AS_JOHAB = _roles(lambda b: "J" if b == 0x8F else "H")  # pg_johab_mblen is pg_euc_mblen
_SJIS_CHARS = re.compile(rb"K+|L[KL]").sub
_JOHAB_CHARS = re.compile(rb"J[HJ][HJ]|H[HJ]").sub
_LEAD_BEFORE_ASCII = re.compile(rb"[HJ]a").search


class EncodingRefused(_Broken):
    """The server switched to a client encoding the gateway cannot read: the session ends."""


def check_parameter_status(data: bytes, start: int, end: int) -> None:
    name, _, rest = data[start + 5 : end].partition(b"\0")
    if name == b"client_encoding":
        value = rest.split(b"\0", 1)[0].decode("ascii", "replace").upper()
        if value not in SAFE_CLIENT_ENCODINGS:
            refusal = EncodingRefused(
                f"client_encoding {value} refused: the gateway cannot read statements in it; the session was ended"
            )
            refusal.answer = fatal_response(
                "22021",
                f"hoop: client_encoding {value} is not supported through the gateway; use UTF8. "
                "The session was ended: nothing sent after the statement that switched it was run",
            )
            raise refusal
