"""Version-gated comments: which `/*!NNNNN … */` and `/*M! … */` bodies a server runs.

MySQL and MariaDB run the body of `/*! … */` as SQL. With a version number, only a server at
least that version does; MySQL treats `/*M! … */` (MariaDB-only) as a plain comment; MariaDB
treats `/*!50700` … `/*!99999` (MySQL 5.7 and later) as plain comments whatever its own version.
A skipped body is a comment up to the first `*/`, so text that one server reads inside a quoted
string can be a statement for another: `SELECT 1 /*!50700 '*/; DROP TABLE t; -- '*/`.

The classifier does not know which server and version sit behind a connection, so it reads the
text as every server could: once with every body run (mysql.py's main reading), and once for
each distinct set of bodies some server version would skip (`skip_profiles`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ServerProfile", "skip_profiles"]

_GATE = re.compile(r"/\*(M?)!(\d*)")
_MYSQL_ONLY = range(50700, 100000)  # MariaDB reads these MySQL versions as "not me"


@dataclass(frozen=True, slots=True)
class ServerProfile:
    family: str  # "mysql" or "mariadb"
    version: int  # as in the gate numbers: 80036, 101119

    def runs(self, token: str) -> bool:
        """Whether this server runs the body of the comment opened by `token` (`/*!40101`)."""
        mariadb_only = token.startswith("/*M!")
        digits = token[4:] if mariadb_only else token[3:]
        if self.family == "mysql" and mariadb_only:
            return False
        if not digits:
            return True
        gate = int(digits[:6])  # a version has at most six digits; more digits are body text
        if self.family == "mariadb" and not mariadb_only and gate in _MYSQL_ONLY:
            return False
        return gate <= self.version

    def __str__(self) -> str:
        return f"a {self.family} server of version {self.version}"


def skip_profiles(sql: str) -> list[ServerProfile]:
    """One server profile per distinct set of gated bodies it would skip (none: every body runs)."""
    tokens = sorted({m.group(0) for m in _GATE.finditer(sql)})
    if not tokens:
        return []
    versions = {0, 999999}
    for token in tokens:
        digits = token.split("!", 1)[1][:6]
        if digits:
            versions.update((int(digits), int(digits) - 1))
    seen = {tuple(True for _ in tokens)}  # the main reading: every body runs
    profiles = []
    for family in ("mysql", "mariadb"):
        for version in sorted(versions):
            profile = ServerProfile(family, version)
            signature = tuple(profile.runs(t) for t in tokens)
            if signature not in seen:
                seen.add(signature)
                profiles.append(profile)
    return profiles
