"""Client encodings the gateway can read statements under, and the server's ParameterStatus
check that ends a session switching to another one."""

from __future__ import annotations

from .wire import _Broken, error_response

# fooled (`SELECT E'<0x95 0x5C>' ; DROP …`). Sessions that switch to one are ended.
UNSAFE_CLIENT_ENCODINGS = frozenset({b"SJIS", b"SHIFT_JIS_2004", b"BIG5", b"GBK", b"UHC", b"GB18030", b"JOHAB"})


def _check_parameter_status(data: bytes, start: int, end: int) -> None:
    name, _, rest = data[start + 5 : end].partition(b"\0")
    if name == b"client_encoding":
        value = rest.split(b"\0", 1)[0].upper()
        if value in UNSAFE_CLIENT_ENCODINGS:
            refusal = _Broken(f"client_encoding {value.decode('ascii', 'replace')} refused: the gateway reads statements as UTF-8")
            refusal.answer = error_response(
                "22021",
                f"hoop: client_encoding {value.decode('ascii', 'replace')} is not supported through the gateway; use UTF8",
            )
            raise refusal
