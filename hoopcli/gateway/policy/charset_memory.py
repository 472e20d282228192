"""mysqldump's restore lines: `SET character_set_client = @saved_cs_client` (and `SET
SQL_MODE=@OLD_SQL_MODE`), per session.

A dump saves the session's character set in a user variable and restores it later:

    /*!40101 SET @saved_cs_client     = @@character_set_client */;
    … CREATE TABLE …
    /*!40101 SET character_set_client = @saved_cs_client */;

Read alone, the restore is an `encoding` switch to a value the classifier cannot see, which
the gate always refuses — so every dump restore through the gateway would fail. But the value
was the session's own character set, and the gateway only ever lets a session run under an
ASCII-safe one. So the gate remembers, per session, the user variables saved from
`@@character_set_client` / `_connection` / `_results` / `@@collation_connection`, and judges a
restore of exactly such a variable as a restore of a safe set. Any later statement that so much
as names the variable (in any quoting, with backslashes dropped as MySQL drops them) forgets
it: the next restore from it is an `encoding` switch again.
"""

from __future__ import annotations

import re

__all__ = ["SavedCharsets"]

_SETTING = r"(character_set_client|character_set_connection|character_set_results|collation_connection|sql_mode)"
_GATED = r"\s*(?:/\*!\d*\s*)?"
_END = r"\s*(?:\*/)?\s*;?\s*"
# `SET @x = @@setting` anywhere in a SET list (mysqldump: `SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='…'`)
_SAVE = re.compile(rf"@(\w+)\s*:?=\s*@@(?:session\.)?{_SETTING}\b", re.IGNORECASE)
_RESTORE = re.compile(rf"({_GATED}SET\s+(?:session\s+|@@(?:session\.)?)?){_SETTING}(\s*=\s*)@(\w+)({_END})", re.IGNORECASE)
_SAFE_LITERAL = {"sql_mode": "''"}  # what a restored value is judged as; character sets: utf8mb4


def _plain(text: str) -> str:
    """The text lower-cased without quotes and backslashes: `@'\\saved'` names `saved` too."""
    return re.sub(r"[\\'\"`]", "", text.lower())


class SavedCharsets:
    """One session's user variables that hold the session's own (safe) character set."""

    def __init__(self) -> None:
        self._safe: set[str] = set()

    def judged_text(self, text: str) -> str:
        """What the policy judges: a restore from a remembered variable reads as one from a
        safe literal; everything else is judged as it is."""
        if not self._safe or "@" not in text:
            return text  # nothing saved, or no variable to restore from: the common case, on the relay
        m = _RESTORE.fullmatch(text)
        if m is None or m.group(4).lower() not in self._safe:
            return text
        setting = m.group(2)
        return m.group(1) + setting + m.group(3) + _SAFE_LITERAL.get(setting.lower(), "utf8mb4") + m.group(5)

    def forwarded(self, text: str) -> None:
        """Called for every statement the gate lets through, before the server runs it."""
        if not self._safe and "@@" not in text:
            return
        plain = _plain(text)
        self._safe = {name for name in self._safe if name not in plain or _is_restore_of(text, name)}
        if re.match(rf"{_GATED}SET\b", text, re.IGNORECASE):
            for m in _SAVE.finditer(text):  # the session's own value, safe by construction
                self._safe.add(m.group(1).lower())


def _is_restore_of(text: str, name: str) -> bool:
    m = _RESTORE.fullmatch(text)
    return m is not None and m.group(4).lower() == name
