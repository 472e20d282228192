"""Passwords written inside SQL (`ALTER ROLE … PASSWORD '…'`, `IDENTIFIED BY '…'`) are masked
before a statement becomes an audit record: the trail says who changed a password, never what
it was. A cheap substring test keeps ordinary statements off the regex path."""

from __future__ import annotations

import re

_MASKS = (
    # PostgreSQL CREATE/ALTER ROLE|USER … [ENCRYPTED] PASSWORD '…'; MySQL SET PASSWORD … = '…'
    re.compile(r"(?is)(\bPASSWORD\b\s*(?:=\s*)?(?:PASSWORD\s*)?\(?\s*)('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$[A-Za-z_0-9]*\$.*?\$[A-Za-z_0-9]*\$)"),
    # MySQL/MariaDB … IDENTIFIED [WITH plugin] BY '…' / AS '…'
    re.compile(r"(?is)(\bIDENTIFIED\b(?:\s+(?:WITH|VIA)\s+\S+)?\s+(?:BY|AS|USING)\s+(?:PASSWORD\s*\(\s*)?)('(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\")"),
)


def mask_sql_secrets(text: str) -> str:
    lowered = text.lower()
    if "password" not in lowered and "identified" not in lowered:
        return text
    for pattern in _MASKS:
        text = pattern.sub(lambda m: m.group(1) + "'[REDACTED]'", text)
    return text
