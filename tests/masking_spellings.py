"""Every literal spelling of PostgreSQL and MySQL/MariaDB, and every position where SQL carries a
password: shared by the masking property tests and the checks that the spellings are real (the
servers decode each one to the secret; their parsers accept each position).

A spelling is a function secret -> literal text. A template has one `{}` for the literal.
"""

from __future__ import annotations


def _std(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _bs(s: str, q: str = "'") -> str:
    return q + s.replace("\\", "\\\\").replace(q, "\\" + q) + q


def _halves(s: str) -> tuple[str, str]:
    return s[: len(s) // 2], s[len(s) // 2 :]


def esc_hex(s: str) -> str:
    return "".join(f"\\x{b:02x}" for b in s.encode())


def esc_octal(s: str) -> str:
    return "".join(f"\\{b:03o}" for b in s.encode())


def esc_unicode(s: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in s)


def uescape(s: str, e: str = "\\") -> str:
    return "".join(f"{e}{ord(c):04X}" if ord(c) < 0x10000 else f"{e}+{ord(c):06X}" for c in s)


def hexs(s: str) -> str:
    return s.encode().hex()


def bits(s: str) -> str:
    return "".join(f"{b:08b}" for b in s.encode())


def dollar(s: str) -> str:
    for tag in ("$$", "$q$", "$Tag_1$", "$zz$", "$é$"):
        if (s + tag).find(tag) == len(s):  # the body never closes the quote early
            return tag + s + tag
    raise AssertionError("no dollar tag fits")


# PostgreSQL spellings whose value is the secret as text, and the setting they need.
PG_TEXT = {
    "standard": (_std, ""),
    "backslash, standard_conforming_strings off": (_bs, "off"),
    "E": (lambda s: "E" + _bs(s), ""),
    "e, quotes doubled": (lambda s: "e'" + s.replace("\\", "\\\\").replace("'", "''") + "'", ""),
    "E hex escapes": (lambda s: "E'" + esc_hex(s) + "'", ""),
    "E octal escapes": (lambda s: "E'" + esc_octal(s) + "'", ""),
    "E unicode escapes": (lambda s: "E'" + esc_unicode(s) + "'", ""),
    "U&": (lambda s: "U&'" + uescape(s) + "'", ""),
    "U& UESCAPE": (lambda s: "U&'" + uescape(s, "!") + "' UESCAPE '!'", ""),
    "u& as written": (lambda s: "u&'" + s.replace("\\", "\\\\").replace("'", "''") + "'", ""),
    "dollar": (dollar, ""),
    "continued on the next line": (lambda s: _std(_halves(s)[0]) + "\n" + _std(_halves(s)[1]), ""),
    "continued after a comment": (lambda s: _std(_halves(s)[0]) + " -- c\n  " + _std(_halves(s)[1]), ""),
    "E continued": (lambda s: "E" + _bs(_halves(s)[0]) + "\r\n" + _bs(_halves(s)[1]), ""),
}
# Forms PostgreSQL reads as another type (bit strings, national char): not valid after PASSWORD,
# masked all the same.
PG_OTHER = {
    "N": lambda s: "N" + _std(s),
    "X": lambda s: "X'" + hexs(s) + "'",
    "B": lambda s: "B'" + bits(s) + "'",
}
PG_SPELLINGS = {**{k: f for k, (f, _) in PG_TEXT.items()}, **PG_OTHER}

# MySQL/MariaDB spellings, and the sql_mode they need.
MY_SPELLINGS_MODES = {
    "backslash": (_bs, ""),
    "quotes doubled": (lambda s: "'" + s.replace("\\", "\\\\").replace("'", "''") + "'", ""),
    "NO_BACKSLASH_ESCAPES": (_std, "NO_BACKSLASH_ESCAPES"),
    "double quotes": (lambda s: _bs(s, '"'), ""),
    "_utf8mb4": (lambda s: "_utf8mb4" + _bs(s), ""),
    "_utf8mb4 COLLATE": (lambda s: "_utf8mb4 " + _bs(s) + " COLLATE utf8mb4_bin", ""),
    "_binary X": (lambda s: "_binary X'" + hexs(s).upper() + "'", ""),
    "_utf8mb4 0x": (lambda s: "_utf8mb4 0x" + hexs(s), ""),
    "N": (lambda s: "N" + _bs(s), ""),
    "X": (lambda s: "X'" + hexs(s) + "'", ""),
    "x lower": (lambda s: "x'" + hexs(s) + "'", ""),
    "0x": (lambda s: "0x" + hexs(s), ""),
    "B": (lambda s: "B'" + bits(s) + "'", ""),
    "0b": (lambda s: "0b" + bits(s), ""),
    "adjacent": (lambda s: _bs(_halves(s)[0]) + " " + _bs(_halves(s)[1]), ""),
    "adjacent over lines": (lambda s: _bs(_halves(s)[0]) + "\n  " + _bs(_halves(s)[1], '"'), ""),
    "_utf8mb4 adjacent": (lambda s: "_utf8mb4" + _bs(_halves(s)[0]) + " " + _bs(_halves(s)[1]), ""),
}
MY_SPELLINGS = {k: f for k, (f, _) in MY_SPELLINGS_MODES.items()}
# The forms MariaDB's grammar takes where it wants a quoted text (IDENTIFIED BY, SET PASSWORD,
# OPTIONS): a plain quoted string only, not an introducer, N'', hex or adjacent strings.
MY_TEXT = ("backslash", "quotes doubled", "double quotes")

# Positions. PostgreSQL's parser (pglast) accepts every PG template with every PG_TEXT
# spelling; MySQL templates say whether MariaDB 10.11's parser takes them (with MY_TEXT
# spellings; in SELECT with all of them), else they are MySQL 8 syntax.
PG_TEMPLATES = [
    "CREATE ROLE r1 LOGIN PASSWORD {}",
    "ALTER ROLE r1 WITH ENCRYPTED PASSWORD {} VALID UNTIL 'infinity'",
    "CREATE USER u1 WITH LOGIN PASSWORD {}",
    "ALTER USER u1 PASSWORD {} CONNECTION LIMIT 3",
    "ALTER ROLE r1 /* why */ PASSWORD -- new\n {}",
    "CREATE USER MAPPING FOR u1 SERVER s1 OPTIONS (user 'u1', password {})",
    "ALTER USER MAPPING FOR CURRENT_USER SERVER s1 OPTIONS (SET password {})",
    "ALTER USER MAPPING FOR PUBLIC SERVER s1 OPTIONS (ADD \"password\" {}, sslkey '/k')",
    'CREATE USER MAPPING FOR u1 SERVER s1 OPTIONS (U&"p\\0061ssword" {})',
    "CREATE SERVER s1 FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'h', sslpassword {})",
    "SELECT crypt({}, gen_salt('bf'))",
    "SELECT pgp_sym_encrypt('data', {})",
]
MY_TEMPLATES = [
    ("CREATE USER 'u1'@'%' IDENTIFIED BY {}", True),
    ("CREATE USER IF NOT EXISTS u1@localhost IDENTIFIED BY {} PASSWORD EXPIRE NEVER", True),
    ("ALTER USER 'u1'@'%' IDENTIFIED BY {} REQUIRE SSL", True),
    ("ALTER USER u1 IDENTIFIED WITH mysql_native_password BY {}", False),
    ("ALTER USER u1 IDENTIFIED WITH 'mysql_native_password' AS {}", True),
    ("CREATE USER u1 IDENTIFIED VIA mysql_native_password USING PASSWORD({})", True),
    ("CREATE USER u1 IDENTIFIED VIA ed25519 USING PASSWORD({}) OR unix_socket", True),
    ("CREATE USER u1 IDENTIFIED VIA unix_socket OR mysql_native_password USING {}", True),
    ("GRANT SELECT ON app.* TO u1@'%' IDENTIFIED BY {} WITH GRANT OPTION", True),
    ("CREATE USER a1 IDENTIFIED BY 'other-1', u1 IDENTIFIED BY {}", True),
    ("CREATE USER u1 IDENTIFIED -- note\n BY {}", True),
    ("CREATE USER u1 IDENTIFIED # note\n BY {}", True),
    ("CREATE USER u1 IDENTIFIED /* c */ BY {}", True),
    ("/*!50700 CREATE USER u1 IDENTIFIED BY {} */", True),
    ("CREATE USER u1 /*M!100100 IDENTIFIED BY {} */", True),
    ("SET PASSWORD = {}", True),
    ("SET PASSWORD FOR 'u1'@'%' = PASSWORD({})", True),
    ("SET PASSWORD FOR u1 = OLD_PASSWORD({})", True),
    ("SET PASSWORD FOR CURRENT_USER() = {}", True),
    ("CHANGE MASTER TO MASTER_HOST='h1', MASTER_PASSWORD={}, MASTER_PORT=3306", True),
    ("CREATE SERVER s1 FOREIGN DATA WRAPPER mysql OPTIONS (USER 'u1', PASSWORD {}, HOST 'h1')", True),
    ("SELECT PASSWORD({})", True),
    ("SELECT ENCRYPT({}, 'ab')", True),
    ("SELECT AES_ENCRYPT('data', {})", True),
    # MySQL 8 only (MariaDB's parser refuses them; MySQL takes them)
    ("ALTER USER u1 IDENTIFIED BY 'new-1' REPLACE {} RETAIN CURRENT PASSWORD", False),
    ("SET PASSWORD = 'new-1' REPLACE {}", False),
    ("CHANGE REPLICATION SOURCE TO SOURCE_HOST='h1', SOURCE_PASSWORD = {}", False),
    ("START REPLICA USER='u1' PASSWORD={} DEFAULT_AUTH='caching_sha2_password'", False),
    ("START SLAVE USER='u1' PASSWORD={}", False),
    ("ALTER USER u1 ADD 2 FACTOR IDENTIFIED WITH authentication_ldap_sasl BY {}", False),
]

# Connection strings carrying a password, in a literal of any spelling.
CONNINFO_TEMPLATES_PG = [
    "CREATE SUBSCRIPTION sub1 CONNECTION {} PUBLICATION p1",
    "ALTER SUBSCRIPTION sub1 CONNECTION {}",
    "SELECT dblink_connect('c1', {})",
    "ALTER SYSTEM SET primary_conninfo = {}",
]
CONNINFO_TEMPLATES_MY = [
    "CREATE TABLE t1 (id int) ENGINE=FEDERATED CONNECTION={}",
    "CREATE TABLE t1 (id int) ENGINE=CONNECT TABLE_TYPE=MYSQL CONNECTION = {}",
]
CONNINFOS = [
    "host=db1 port=5432 password={} dbname=app",
    "host=db1 password = {}",
    "postgresql://rep:{}@db1:5432/app",
    "host=db1 user=rep sslpassword={}",
    "mysql://rep:{}@db1:3306/app/t1",
]


def conninfo_value(secret: str) -> str:
    """The secret as a libpq conninfo value: quoted, with \\ and ' escaped."""
    return "'" + secret.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fragments(secret: str) -> list[str]:
    """What must not survive masking: the secret, its halves (continued literals), its hex and
    bits, and its escaped spellings."""
    halves = [h for h in _halves(secret) if len(h) >= 4]
    forms = [secret, *halves, hexs(secret), hexs(secret).upper(), bits(secret), esc_hex(secret), esc_octal(secret),
             esc_unicode(secret), uescape(secret), uescape(secret, "!"), secret.replace("'", "''"),
             secret.replace("\\", "\\\\").replace("'", "\\'")]
    return forms


def leaks(secret: str, masked: str) -> list[str]:
    return [f for f in fragments(secret) if f and f in masked]

