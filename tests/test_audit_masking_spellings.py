"""A password in SQL is masked whatever literal spelling carries it and wherever SQL takes one
(issue 17 item 5): properties over every spelling × every position of both dialects, and
checks that those spellings and positions are real — PostgreSQL and MariaDB decode each
spelling to the secret, and their parsers accept each position."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopcli.gateway.audit.masking import MASK, MASK_AMBIGUOUS, mask_sql_secrets
from tests.masking_spellings import (
    CONNINFO_TEMPLATES_MY,
    CONNINFO_TEMPLATES_PG,
    CONNINFOS,
    MY_SPELLINGS,
    MY_SPELLINGS_MODES,
    MY_TEMPLATES,
    MY_TEXT,
    PG_SPELLINGS,
    PG_TEMPLATES,
    PG_TEXT,
    conninfo_value,
    hexs,
    leaks,
)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Quotes, backslashes, dollars, comment starters, escapes' look-alikes and non-ASCII: whatever
# could end a literal early in one reading or another. Markers at both ends find partial leaks.
ALPHABET = st.sampled_from(list("abcXYZ019 '\"\\$#-*/;,()=@%_`&!\t") + ["é", "日", "\U0001f600", "\\'", "''", "$$", "*/"])
SECRETS = st.lists(ALPHABET, min_size=2, max_size=16).map(lambda parts: "Qz7" + "".join(parts) + "Wx4")


def _assert_masked(sql: str, secret: str, dialect: str | None = None) -> str:
    masked = mask_sql_secrets(sql, dialect)
    assert not leaks(secret, masked), (sql, masked)
    assert "Qz7" not in masked and "Wx4" not in masked and hexs("Qz7") not in masked.lower(), (sql, masked)
    assert "'[REDACTED" in masked
    return masked


@PROPS
@given(secret=SECRETS, spelling=st.sampled_from(sorted(PG_SPELLINGS)), template=st.sampled_from(PG_TEMPLATES))
def test_postgres_password_in_every_spelling_is_masked(secret, spelling, template):
    sql = template.format(PG_SPELLINGS[spelling](secret))
    _assert_masked(sql, secret)
    _assert_masked(sql, secret, "postgres")


@PROPS
@given(secret=SECRETS, spelling=st.sampled_from(sorted(MY_SPELLINGS)), template=st.sampled_from([t for t, _ in MY_TEMPLATES]))
def test_mysql_password_in_every_spelling_is_masked(secret, spelling, template):
    sql = template.format(MY_SPELLINGS[spelling](secret))
    _assert_masked(sql, secret)
    _assert_masked(sql, secret, "mysql")


@PROPS
@given(secret=SECRETS, spelling=st.sampled_from(sorted(PG_SPELLINGS) + sorted(MY_SPELLINGS)),
       template=st.sampled_from(CONNINFO_TEMPLATES_PG + CONNINFO_TEMPLATES_MY), conninfo=st.sampled_from(CONNINFOS))
def test_connection_string_with_a_password_is_masked(secret, spelling, template, conninfo):
    value = conninfo.format(secret if "://" in conninfo else conninfo_value(secret))
    spell = PG_SPELLINGS.get(spelling) or MY_SPELLINGS[spelling]
    _assert_masked(template.format(spell(value)), secret)


# Text before and after the statement that its own dialect parses whatever its quoting settings
# (plus one only with standard_conforming_strings on, kept from the spelling that needs it off).
PG_AROUND = (["", "SELECT 1; ", "/* x */ ", "/* /* ' */ */ ", "-- a '\n", "SELECT 'it''s'; ", "SELECT E'\\\\'; ",
              'SELECT "a\\"; ', "SELECT $$ ' $$; ", "SELECT $t$ $$ ' $t$; ", "SELECT 'a\\'; "],
             ["", ";", "; SELECT 'x'", " -- done '", " /* ' */", "\n; SELECT $$'$$"])
MY_AROUND = (["", "SELECT 1; ", "/* x ' */ ", "-- a '\n", "# b '\n", "SELECT 'it''s'; ", "SELECT `a'b`; ",
              "SELECT 'a\\\\'; ", "/*!50000 SELECT 1 */; "],
             ["", ";", "; SELECT 'x'", " -- done '", " # '", " /* ' */"])


@PROPS
@given(secret=SECRETS, data=st.data())
def test_what_surrounds_a_statement_does_not_hide_its_password(secret, data):
    """Quotes and comments around the statement, read in every dialect, never move where the
    password's literal starts or ends so that part of it escapes."""
    dialect = data.draw(st.sampled_from(["postgres", "mysql"]))
    spellings, (before, after), templates = (
        (PG_SPELLINGS, PG_AROUND, ["ALTER ROLE r1 PASSWORD {}", "CREATE USER MAPPING FOR u1 SERVER s1 OPTIONS (password {})"])
        if dialect == "postgres" else (MY_SPELLINGS, MY_AROUND, ["CREATE USER u1 IDENTIFIED BY {}", "SET PASSWORD = {}"]))
    spelling = data.draw(st.sampled_from(sorted(spellings)))
    first = data.draw(st.sampled_from(before if not spelling.startswith("backslash,") else before[:-1]))
    sql = first + data.draw(st.sampled_from(templates)).format(spellings[spelling](secret)) + data.draw(st.sampled_from(after))
    _assert_masked(sql, secret)
    _assert_masked(sql, secret, dialect)


@pytest.mark.parametrize(
    "sql, dialect",
    [
        ("ALTER ROLE r1 PASSWORD 'a\\' SUPERUSER --'", None),  # SUPERUSER runs with standard_conforming_strings on
        ("ALTER ROLE r1 PASSWORD 'a\\' SUPERUSER --'", "postgres"),
        ("SET PASSWORD = 'a\\'; DROP TABLE t; -- '", "mysql"),  # DROP runs under NO_BACKSLASH_ESCAPES
        ("SET PASSWORD = $a$; DROP TABLE t; $a$", None),  # a MySQL server runs the DROP
    ],
)
def test_a_mask_that_may_hide_sql_says_so(sql, dialect):
    """Masking the longest extent can hide text that one reading runs as SQL: the record must
    then say that what it hides depends on the dialect, so nobody approves it unseen."""
    assert MASK_AMBIGUOUS in mask_sql_secrets(sql, dialect)


@pytest.mark.parametrize(
    "sql, dialect",
    [("ALTER ROLE r1 PASSWORD E'a\\'b'", "postgres"), ("ALTER ROLE r1 PASSWORD $$a b$$", None),
     ("SET PASSWORD = _utf8mb4'x' ", None), ("ALTER ROLE r1 PASSWORD U&'\\0041'", None), ("SET PASSWORD = 'a'", None)],
)
def test_an_unambiguous_literal_gets_the_plain_mask(sql, dialect):
    masked = mask_sql_secrets(sql, dialect)
    assert MASK in masked and MASK_AMBIGUOUS not in masked


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, password_hash FROM users WHERE id = $1",
        "CREATE TABLE users (id int, password varchar(255) NOT NULL, passwd text)",
        "SELECT 'my password is long' AS note, 'identified' AS w",
        "UPDATE t SET identified = true WHERE id = 2",
        "ALTER ROLE r1 PASSWORD NULL",
        "ALTER USER u1 PASSWORD EXPIRE INTERVAL 90 DAY",
        "CREATE USER u1 IDENTIFIED BY RANDOM PASSWORD",
        "SELECT * FROM users WHERE email = 'a@example.com' -- reset password",
        "SELECT 'https://example.com/x'",
    ],
)
def test_statements_without_a_secret_keep_their_text(sql):
    assert mask_sql_secrets(sql) == sql


@pytest.mark.parametrize(
    "sql, kept, dialect",
    [
        ("ALTER ROLE r1 WITH PASSWORD E'x\\'y' VALID UNTIL '2030-01-01'", "VALID UNTIL '2030-01-01'", "postgres"),
        ("ALTER ROLE r1 WITH PASSWORD 'x' VALID UNTIL '2030-01-01'", "VALID UNTIL '2030-01-01'", None),
        ("CREATE USER 'bob'@'%' IDENTIFIED BY _utf8mb4'x' COMMENT 'team a'", "'bob'@'%'", None),
        ("SET PASSWORD FOR 'bob'@'%' = PASSWORD('x')", "'bob'@'%'", None),
        ("START SLAVE USER='rep' PASSWORD='x' DEFAULT_AUTH='sha256_password'", "USER='rep'", None),
        ("CREATE USER MAPPING FOR bob SERVER s1 OPTIONS (user 'bob', password 'x')", "user 'bob'", None),
        ("CHANGE MASTER TO MASTER_PASSWORD='x', MASTER_HOST='db1'", "MASTER_HOST='db1'", None),
    ],
)
def test_masking_keeps_who_and_what_around_the_secret(sql, kept, dialect):
    """The trail still says whose password changed and how: only the secret goes."""
    masked = mask_sql_secrets(sql, dialect)
    assert kept in masked and "'x" not in masked.replace(kept, ""), masked


# ---- the spellings and positions are real ----------------------------------------------------

REAL_SECRETS = ["Qz7plainWx4", "Qz7it's a \\ \"quote\" $$ $q$ */Wx4", "Qz7é日\U0001f600\\'Wx4", "Qz7-- #/*Wx4"]


@pytest.mark.parametrize("spelling", sorted(PG_TEXT))
def test_postgres_decodes_every_text_spelling_to_the_secret(pg_server, spelling):
    spell, conforming = PG_TEXT[spelling]
    with pg_server.connect() as conn:
        if conforming:
            conn.execute(f"SET standard_conforming_strings = {conforming}")
        for secret in REAL_SECRETS:
            [[value]] = conn.execute(f"SELECT {spell(secret)}::text").fetchall()
            assert value == secret, spelling


@pytest.mark.parametrize("spelling", sorted(k for k, (_, off) in PG_TEXT.items() if not off))  # pglast: scs on
def test_postgres_parser_takes_every_text_spelling_in_every_position(spelling):
    from pglast.parser import parse_sql

    spell, _ = PG_TEXT[spelling]
    for template in PG_TEMPLATES:
        parse_sql(template.format(spell(REAL_SECRETS[1])))


def _mariadb(mariadb_server):
    import pymysql

    return pymysql.connect(host=mariadb_server.host, port=mariadb_server.port, user=mariadb_server.admin_user,
                           password=mariadb_server.admin_password, charset="utf8mb4", autocommit=True)


@pytest.mark.parametrize("spelling", sorted(MY_SPELLINGS_MODES))
def test_mariadb_decodes_every_spelling_to_the_secret(mariadb_server, spelling):
    spell, sql_mode = MY_SPELLINGS_MODES[spelling]
    with _mariadb(mariadb_server) as conn, conn.cursor() as cur:
        cur.execute(f"SET SESSION sql_mode = '{sql_mode}'")
        for secret in REAL_SECRETS:
            cur.execute(f"SELECT HEX(CAST({spell(secret)} AS BINARY))")
            assert cur.fetchone()[0] == hexs(secret).upper(), (spelling, secret)


def test_mariadb_parser_takes_every_position(mariadb_server):
    """PREPARE parses without running: a syntax error is 1064; anything else (1295: not
    preparable, 1396: no such user, …) means the grammar took the statement."""
    import pymysql

    refused = []
    with _mariadb(mariadb_server) as conn, conn.cursor() as cur:
        for template, mariadb_syntax in MY_TEMPLATES:
            for name in (MY_SPELLINGS if template.startswith("SELECT") else MY_TEXT) if mariadb_syntax else ():
                # (not REAL_SECRETS[1]: MariaDB ends /*!…*/ at a */ even inside a quoted string)
                sql = template.format(MY_SPELLINGS[name]("Qz7it's a \\ \"quote\" $$ #Wx4"))
                cur.execute(f"SET @q = CONVERT(X'{hexs(sql)}' USING utf8mb4)")
                try:
                    cur.execute("PREPARE hoop_mask_check FROM @q")
                    cur.execute("DEALLOCATE PREPARE hoop_mask_check")
                except pymysql.MySQLError as exc:
                    if exc.args[0] == 1064:
                        refused.append(sql)
    assert refused == []
