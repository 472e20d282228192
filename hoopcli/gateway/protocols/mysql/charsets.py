"""Client character sets the gateway can read the way the server will.

A character set is safe when every byte below 0x80 is that ASCII character and never part of a
multibyte character: then the server splits a statement into quotes, backslashes, backticks
and keywords exactly where the gateway (which reads the bytes as UTF-8) does. sjis, cp932,
gbk, big5, gb18030 and euckr have multibyte characters whose second byte can be `\\`, `'`,
`` ` `` or a letter; ucs2/utf16/utf32 are not ASCII-compatible at all; ujis, eucjpms and
gb2312 are left out as well (no client needs them through a policy gateway; utf8mb4 reads
every script). A collation id not listed below is refused, so a new server collation is
refused until someone checks its character set and adds it here.

The ids are every collation of the safe sets on MariaDB 10.11 (`SELECT ID,
CHARACTER_SET_NAME FROM information_schema.COLLATION_CHARACTER_SET_APPLICABILITY`, including
the UCA 14.0 collations from 2048 up) and on MySQL 8.4 (its documented table, as shipped in
mysql-connector-python's `charsets.py`). No id means a safe set on one server and an unsafe one
on the other (tests/test_protocol_mysql.py checks both tables; the live test checks the server).

The handshake carries a one-byte collation id, COM_CHANGE_USER a two-byte one; both are checked
against SAFE_COLLATION_IDS. Statements that switch the character set (`SET NAMES`, `SET
character_set_client = …`, through a user variable or a numeric id) are the classifier's to
judge (its "encoding" category, which the gate always denies); the pattern here only backs it up.
"""

from __future__ import annotations

import re

from ..base import Verdict

SAFE_CHARSETS: dict[str, tuple[int, ...]] = {
    "armscii8": (32, 64, 1056, 1088),
    "ascii": (11, 65, 1035, 1089),
    "binary": (63,),
    "cp1250": (26, 34, 44, 66, 99, 1050, 1090),
    "cp1251": (14, 23, 50, 51, 52, 1074, 1075),
    "cp1256": (57, 67, 1081, 1091),
    "cp1257": (29, 58, 59, 1082, 1083),
    "cp850": (4, 80, 1028, 1104),
    "cp852": (40, 81, 1064, 1105),
    "cp866": (36, 68, 1060, 1092),
    "dec8": (3, 69, 1027, 1093),
    "geostd8": (92, 93, 1116, 1117),
    "greek": (25, 70, 1049, 1094),
    "hebrew": (16, 71, 1040, 1095),
    "hp8": (6, 72, 1030, 1096),
    "keybcs2": (37, 73, 1061, 1097),
    "koi8r": (7, 74, 1031, 1098),
    "koi8u": (22, 75, 1046, 1099),
    "latin1": (5, 8, 15, 31, 47, 48, 49, 94, 1032, 1071),
    "latin2": (2, 9, 21, 27, 77, 1033, 1101),
    "latin5": (30, 78, 1054, 1102),
    "latin7": (20, 41, 42, 79, 1065, 1103),
    "macce": (38, 43, 1062, 1067),
    "macroman": (39, 53, 1063, 1077),
    "swe7": (10, 82, 1034, 1106),
    "tis620": (18, 89, 1042, 1113),
    "utf8mb3": (
        33, 76, 83, *range(192, 216), 223, 576, 577, 578, 1057, 1107, 1216, 1238,
        *range(2048, 2216), *range(2232, 2248),  # MariaDB utf8mb3_uca1400_*
    ),
    "utf8mb4": (
        45, 46, *range(224, 248), 608, 609, 610, 1069, 1070, 1248, 1270,  # both servers
        *range(255, 272), 273, 274, 275, *range(277, 295), 296, 297, 298, 300, *range(303, 324),  # MySQL *_0900_*
        *range(2304, 2472), *range(2488, 2504),  # MariaDB utf8mb4_uca1400_*
    ),
}  # fmt: skip

SAFE_COLLATION_IDS = frozenset(i for ids in SAFE_CHARSETS.values() for i in ids)

# Defence in depth only: the classifier's "encoding" category is the primary check.
_UNSAFE_CHARSET_SWITCH = re.compile(
    r"(?is)\b(?:names|charset|character\s+set|character_set_client|character_set_connection)\b.{0,200}?\b(?:big5|sjis|cp932|gbk|gb18030)\b"
)
CHARSET_REFUSED = Verdict(
    "deny",
    "hoop: this character set is not supported through the gateway (its multibyte characters can hide quotes); use utf8mb4",
    rule="charset",
)


def charset_refusal(collation_id: int) -> str:
    """The message for a login naming a collation outside the allow-list."""
    return (
        f"hoop: client character set (collation id {collation_id}) refused: the gateway reads "
        "statements only in ASCII-safe character sets (utf8mb4, utf8mb3, latin1, ascii, binary ...); use utf8mb4"
    )
