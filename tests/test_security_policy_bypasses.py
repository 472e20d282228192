"""Ways to make the server run something risky while the classifier sees something harmless
(issue 17), one class per test, decided by the default policy exactly as the gateway decides
live traffic. Each class lists its spellings; the property tests generate more of them.

A class is closed when every spelling is held (require_approval) or refused (deny), and the
harmless neighbours of the trick still pass: a policy that holds everything would pass the
first half only.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopcli.gateway.policy import Policy, classify, database_pin, make_gate

PG, MY = "postgres", "mysql"
POLICY = Policy.from_config("default")
ALICE = ("alice", frozenset({"developers"}))


def decide(sql: str, dialect: str) -> str:
    return POLICY.decide(sql, ALICE, dialect).action


def categories(sql: str, dialect: str) -> set[str]:
    return {c for part in classify(sql, dialect) for c in part.categories}


# ---- 1. replacing is dropping --------------------------------------------------------------

REPLACES = [
    "CREATE OR REPLACE DATABASE app",
    "create or replace database app character set utf8mb4",
    "CREATE OR REPLACE SCHEMA app",
    "CREATE OR REPLACE TABLE items (id int)",
    "CREATE OR REPLACE TABLE items LIKE other",
    "CREATE OR REPLACE TABLE items AS SELECT 1 AS id",
    "CREATE OR REPLACE TEMPORARY TABLE items (id int)",
    "/*!CREATE OR REPLACE*/ TABLE items (id int)",
    "CREATE /* x */ OR /* y */ REPLACE TABLE items (id int)",
    "CREATE OR REPLACE VIEW v AS SELECT 1",
    "CREATE OR REPLACE USER app_user IDENTIFIED BY 'x'",
    "CREATE OR REPLACE ROLE r",
    "CREATE OR REPLACE SEQUENCE s",
    "CREATE OR REPLACE INDEX i ON items (id)",
    "CREATE OR REPLACE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (HOST 'h')",
]


@pytest.mark.parametrize("sql", REPLACES)
def test_mysql_create_or_replace_is_a_drop_and_held(sql):
    assert "drop" in categories(sql, MY)
    assert decide(sql, MY) == "require_approval"


@pytest.mark.parametrize("sql", ["CREATE OR REPLACE VIEW v AS SELECT 1", "create or replace view v as select * from t"])
def test_postgres_create_or_replace_view_is_an_alter_and_held(sql):
    assert "alter" in categories(sql, PG)
    assert decide(sql, PG) == "require_approval"


@pytest.mark.parametrize("sql", ["CREATE TABLE items2 (id int)", "CREATE DATABASE IF NOT EXISTS other", "CREATE VIEW v2 AS SELECT 1"])
def test_plain_create_still_passes(sql):
    assert decide(sql, MY) == "allow"


# ---- 2. code the server runs later ---------------------------------------------------------

PG_ROUTINES = [
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ TRUNCATE customers; SELECT 1 $$",
    "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DROP TABLE customers'; END $$",
    "create function public.lower(text) returns text language sql as 'select $1'",
    "CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM customers $$",
    "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC DELETE FROM customers; END",
    "CREATE TRIGGER t AFTER INSERT ON orders EXECUTE FUNCTION f()",
    "CREATE OR REPLACE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE CONSTRAINT TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
    "CREATE RULE r AS ON INSERT TO orders DO ALSO DELETE FROM customers WHERE id = 1",
    "CREATE OR REPLACE RULE r AS ON SELECT TO v DO INSTEAD SELECT 1",
    "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
    "ALTER FUNCTION f() SECURITY DEFINER",
    "CREATE AGGREGATE a (int) (sfunc = f, stype = int)",
    "CREATE OPERATOR public.= (leftarg = int, rightarg = int, function = f)",
    "CREATE CAST (int AS text) WITH FUNCTION f(int) AS IMPLICIT",
    "CREATE EXTENSION dblink",
    "CREATE LANGUAGE plperlu",
    "CREATE SCHEMA s CREATE TRIGGER t AFTER INSERT ON orders EXECUTE FUNCTION f()",
    "select 1; create function g() returns int language sql as 'select 1'",
    "PREPARE p AS SELECT 1; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'",
]
MY_ROUTINES = [
    "CREATE FUNCTION f() RETURNS INT RETURN 1",
    "CREATE OR REPLACE FUNCTION f() RETURNS INT RETURN 1",
    "CREATE DEFINER=`root`@`%` PROCEDURE p() BEGIN DROP TABLE items; END",
    "CREATE DEFINER = CURRENT_USER PROCEDURE p() DELETE FROM items",
    "CREATE TRIGGER t BEFORE INSERT ON items FOR EACH ROW DELETE FROM other",
    "CREATE OR REPLACE TRIGGER t BEFORE INSERT ON items FOR EACH ROW SET NEW.id = 1",
    "CREATE EVENT e ON SCHEDULE EVERY 1 SECOND DO DROP TABLE items",
    "CREATE AGGREGATE FUNCTION a(x INT) RETURNS INT BEGIN RETURN 1; END",
    "CREATE FUNCTION sys_exec RETURNS INT SONAME 'lib_mysqludf_sys.so'",
    "ALTER EVENT e ON SCHEDULE EVERY 1 SECOND DO TRUNCATE items",
    "/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t BEFORE INSERT ON items FOR EACH ROW DELETE FROM x */",
]


@pytest.mark.parametrize("sql", PG_ROUTINES)
def test_postgres_routines_triggers_rules_are_held(sql):
    assert "routine" in categories(sql, PG), classify(sql, PG)
    assert decide(sql, PG) == "require_approval"


@pytest.mark.parametrize("sql", MY_ROUTINES)
def test_mysql_routines_triggers_events_are_held(sql):
    assert "routine" in categories(sql, MY), classify(sql, MY)
    assert decide(sql, MY) == "require_approval"


@pytest.mark.parametrize("sql", ["CREATE TABLE event (id int)", "CREATE TABLE trigger_log (id int)", "CREATE INDEX i ON procedure_log (id)"])
def test_tables_named_like_routines_are_not_routines(sql):
    assert "routine" not in categories(sql, MY)


# ---- 3. MERGE arms are DELETEs and UPDATEs -------------------------------------------------

MERGE_UNBOUNDED = [
    ("MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED THEN DELETE", "delete_without_where"),
    ("MERGE INTO customers c USING (SELECT id FROM customers) s ON true WHEN MATCHED THEN DELETE", "delete_without_where"),
    ("MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED THEN UPDATE SET name = 'x'", "update_without_where"),
    ("MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED AND true THEN DELETE", "delete_without_where"),
    ("MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED AND 1 = 1 THEN UPDATE SET name = 'x'", "update_without_where"),
    ("MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED AND c.id > 5 THEN DO NOTHING "
     "WHEN MATCHED THEN DELETE", "delete_without_where"),
    ("WITH x AS (SELECT 1) MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED THEN DELETE", "delete_without_where"),
    ("EXPLAIN ANALYZE MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED THEN DELETE", "delete_without_where"),
    ("MERGE INTO customers c USING customers s ON c.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE", "delete_without_where"),
]


@pytest.mark.parametrize("sql, category", MERGE_UNBOUNDED)
def test_merge_arm_without_its_own_condition_is_unbounded_and_held(sql, category):
    assert category in categories(sql, PG), classify(sql, PG)
    assert decide(sql, PG) == "require_approval"


@pytest.mark.parametrize(
    "sql",
    [
        "MERGE INTO customers c USING new_customers s ON c.id = s.id WHEN MATCHED AND c.archived THEN DELETE "
        "WHEN MATCHED AND c.name = 'old' THEN UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name)",
        "MERGE INTO customers c USING new_customers s ON c.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.name)",
        "EXPLAIN MERGE INTO customers c USING customers s ON c.id = s.id WHEN MATCHED THEN DELETE",
    ],
)
def test_merge_with_conditions_on_every_delete_and_update_arm_passes(sql):
    assert decide(sql, PG) == "allow"


# ---- 4. character-set switches -------------------------------------------------------------

UNSAFE_MY = ["sjis", "cp932", "gbk", "big5", "gb18030"]
SAFE_MY = ["utf8mb4", "utf8", "utf8mb3", "latin1", "ascii", "binary"]
MY_SWITCHES = [
    "SET NAMES {v}", "SET NAMES '{v}'", 'SET NAMES "{v}"', "SET NAMES `{v}`", "set names {v} collate {v}_bin",
    "SET CHARACTER SET {v}", "SET CHARSET '{v}'", "SET character_set_client = {v}", "SET character_set_client := '{v}'",
    "SET @@character_set_client = {v}", "SET @@session.character_set_client = '{v}'", "SET SESSION character_set_connection = {v}",
    "SET LOCAL character_set_client = {v}", "SET GLOBAL character_set_client = {v}", "SET `character_set_client` = '{v}'",
    "SET collation_connection = {v}_bin", "SET autocommit = 1, NAMES {v}", "SET @x = 1, character_set_client = {v}",
    "/*!40101 SET NAMES {v} */", "/*!40101 SET character_set_client = {v} */", "SET/**/NAMES/**/{v}",
    "SET STATEMENT character_set_client = {v} FOR SELECT 1", "PREPARE s FROM 'SET NAMES {v}'",
]
MY_COMPUTED = [
    "SET character_set_client = 28",  # sjis_japanese_ci's collation id
    "SET character_set_client = 0x736a6973",
    "SET character_set_client = X'736a6973'",
    "SET character_set_client = _latin1'sjis'",
    "SET character_set_client = _utf8mb4 0x736a6973",
    "SET @c = 'sj' 'is'; SET character_set_client = @c",
    "SET character_set_client = @@character_set_results",
    "SET character_set_client = CONCAT('sj', 'is')",
    "SET character_set_client = (SELECT 'sjis')",
    "SET character_set_client = IF(1, 'sjis', 'utf8mb4')",
    "SET NAMES 'utf8mb4' 'x'",
    "SET NAMES @c",
]


@pytest.mark.parametrize("template", MY_SWITCHES)
@pytest.mark.parametrize("value", UNSAFE_MY)
def test_mysql_switch_to_an_unsafe_character_set_is_refused(template, value):
    sql = template.format(v=value)
    assert "encoding" in categories(sql, MY), (sql, classify(sql, MY))
    assert decide(sql, MY) == "deny"


@pytest.mark.parametrize("sql", MY_COMPUTED)
def test_mysql_computed_character_set_is_refused(sql):
    assert decide(sql, MY) == "deny", classify(sql, MY)


@pytest.mark.parametrize("template", [t for t in MY_SWITCHES if "PREPARE" not in t and "STATEMENT" not in t])
@pytest.mark.parametrize("value", SAFE_MY)
def test_mysql_switch_to_a_safe_character_set_passes(template, value):
    sql = template.format(v=value)
    assert "encoding" not in categories(sql, MY), (sql, classify(sql, MY))


def test_mysql_user_variables_named_like_charset_settings_are_not_switches():
    for sql in ("SET @names = 'sjis'", "SET @character_set_client = 'sjis'", "SELECT @@character_set_client"):
        assert decide(sql, MY) == "allow", sql


def test_mysql_refused_switch_refuses_the_whole_string_before_anything_runs():
    assert decide("SET NAMES sjis; SELECT 1", MY) == "deny"
    assert decide("SELECT 1; SET NAMES gbk; SELECT 2", MY) == "deny"


UNSAFE_PG = ["SJIS", "sjis", "Shift_JIS", "ShiftJIS", "mskanji", "win932", "windows932", "BIG5", "GBK", "cp936",
             "UHC", "windows949", "JOHAB", "GB18030", "SHIFT_JIS_2004", "nosuchencoding"]
SAFE_PG = ["UTF8", "utf-8", "Unicode", "LATIN1", "SQL_ASCII", "EUC_JP", "WIN1252", "ISO_8859_5", "KOI8R"]
PG_SWITCHES = [
    "SET client_encoding = '{v}'", "SET client_encoding TO '{v}'", "set CLIENT_ENCODING to \"{v}\"",
    "SET SESSION client_encoding = E'{v}'", "SET LOCAL client_encoding = U&'{v}'", "SET client_encoding = $${v}$$",
    "SET client_encoding = $q${v}$q$", "SET NAMES '{v}'", "set names '{v}'",
    "SET U&\"\\0063lient_encoding\" TO '{v}'",
    "SELECT set_config('client_encoding', '{v}', false)", "select pg_catalog.set_config('CLIENT_ENCODING', '{v}', true)",
    "SELECT set_config(E'client_encoding', $${v}$$, false)", "SELECT 1 FROM (SELECT set_config('client_encoding', '{v}', false)) s",
    "WITH x AS (SELECT set_config('client_encoding', '{v}', false)) SELECT * FROM x",
    "INSERT INTO log SELECT set_config('client_encoding', '{v}', false)",
    "SELECT 1; SET client_encoding = '{v}'", "PREPARE p AS SELECT set_config('client_encoding', '{v}', false)",
    "DECLARE c CURSOR FOR SELECT set_config('client_encoding', '{v}', false)",
]
PG_COMPUTED = [
    "SELECT set_config('client_' || 'encoding', 'SJIS', false)",
    "SELECT set_config(chr(99) || 'lient_encoding', 'SJIS', false)",
    "SELECT set_config(name, 'SJIS', false) FROM settings",
    "SELECT set_config('client_encoding', 'SJ' || 'IS', false)",
    "SELECT set_config('client_encoding', lower('SJIS'), false)",
    "SELECT set_config('client_encoding'::text, 'SJIS', false)",
    "SELECT set_config(setting_name => 'client_encoding', new_value => 'SJIS', is_local => false)",
    "SET client_encoding = 5",
]


@pytest.mark.parametrize("template", PG_SWITCHES)
@pytest.mark.parametrize("value", UNSAFE_PG)
def test_postgres_switch_to_an_unsafe_client_encoding_is_refused(template, value):
    sql = template.format(v=value)
    assert decide(sql, PG) == "deny", (sql, classify(sql, PG))


@pytest.mark.parametrize("sql", PG_COMPUTED)
def test_postgres_computed_client_encoding_is_refused(sql):
    assert decide(sql, PG) == "deny", classify(sql, PG)


@pytest.mark.parametrize("template", PG_SWITCHES[:10])
@pytest.mark.parametrize("value", SAFE_PG)
def test_postgres_switch_to_a_safe_client_encoding_passes(template, value):
    sql = template.format(v=value)
    assert "encoding" not in categories(sql, PG), (sql, classify(sql, PG))


@pytest.mark.parametrize("sql", ["RESET client_encoding", "SET client_encoding TO DEFAULT", "RESET ALL", "DISCARD ALL",
                                 "SELECT set_config('search_path', 'public', false)", "EXPLAIN SELECT set_config('client_encoding', 'SJIS', false)"])
def test_postgres_statements_that_keep_a_safe_encoding_pass(sql):
    assert "encoding" not in categories(sql, PG)


def test_postgres_encoding_decision_is_never_served_from_the_masked_literal_cache():
    """The cache keyed on text with literals masked must not let 'SJIS' reuse 'UTF8''s answer."""
    policy = Policy.from_config("default")
    for safe, unsafe in (("SET client_encoding = 'UTF8'", "SET client_encoding = 'SJIS'"),
                         ("SELECT set_config('search_path', 'x', false)", "SELECT set_config('client_encoding', 'x', false)"),
                         ("SELECT set_config('client_encoding', 'UTF8', false)", "SELECT set_config('client_encoding', 'BIG5', false)")):
        for _ in range(3):
            assert policy.decide(safe, ALICE, PG).action == "allow"
        assert policy.decide(unsafe, ALICE, PG).action == "deny", unsafe


def test_no_rule_can_allow_an_encoding_switch():
    lenient = Policy.from_config({"default": "allow", "rules": [{"match": ["encoding", "set"], "action": "allow"}]})
    assert lenient.decide("SET NAMES sjis", ALICE, MY).action == "deny"
    assert lenient.decide("SET client_encoding = 'SJIS'", ALICE, PG).action == "deny"


_case = st.sampled_from([str.lower, str.upper, str.title])


@settings(max_examples=300, deadline=None)
@given(
    scope=st.sampled_from(["", "SESSION ", "LOCAL ", "@@", "@@session.", "@@SESSION.", "@@local."]),
    name=st.sampled_from(["character_set_client", "character_set_connection"]),
    quote=st.sampled_from(["{}", "'{}'", '"{}"', "`{}`"]),
    case=_case,
    op=st.sampled_from(["=", ":=", " = ", "\t=\n"]),
    charset=st.sampled_from(UNSAFE_MY),
    comment=st.sampled_from(["", "/**/", "/* x */", "#c\n", "-- c\n"]),
)
def test_property_mysql_charset_variable_spellings(scope, name, quote, case, op, charset, comment):
    sql = f"SET {comment}{scope}{case(name)}{op}{comment}{quote.format(case(charset))}"
    assert decide(sql, MY) == "deny", (sql, classify(sql, MY))


@settings(max_examples=200, deadline=None)
@given(
    keyword=st.sampled_from(["NAMES", "CHARACTER SET", "CHARSET"]),
    quote=st.sampled_from(["{}", "'{}'", '"{}"', "`{}`", "_latin1'{}'", "X'736a6973'", "0x736a6973", "@v", "28"]),
    case=_case,
    charset=st.sampled_from(UNSAFE_MY),
    wrap=st.sampled_from(["{}", "/*!40101 {} */", "/*M!100100 {} */", "SELECT 1; {}", "{}; SELECT 1"]),
)
def test_property_mysql_names_and_charset_spellings(keyword, quote, case, charset, wrap):
    sql = wrap.format(f"SET {case(keyword)} {quote.format(case(charset))}")
    assert decide(sql, MY) == "deny", (sql, classify(sql, MY))


@settings(max_examples=200, deadline=None)
@given(
    form=st.sampled_from(["SET {s}client_encoding {op} {v}", "SET {s}NAMES {v}", "SELECT set_config('client_encoding', {v}, false)"]),
    scope=st.sampled_from(["", "SESSION ", "LOCAL "]),
    op=st.sampled_from(["=", "TO"]),
    literal=st.sampled_from(["'{}'", "E'{}'", "U&'{}'", "$${}$$", "$tag${}$tag$", "'{}'::text"]),
    case=_case,
    encoding=st.sampled_from(UNSAFE_PG),
)
def test_property_postgres_client_encoding_spellings(form, scope, op, literal, case, encoding):
    if form.startswith("SET") and literal.endswith("::text"):
        literal = "'{}'"  # SET takes no expressions
    sql = form.format(s=scope, op=op, v=literal.format(case(encoding)))
    assert decide(sql, PG) == "deny", (sql, classify(sql, PG))


# ---- 5. wrappers that run a statement ------------------------------------------------------

@pytest.mark.parametrize(
    "sql",
    ["SET STATEMENT max_statement_time = 10 FOR DROP TABLE items",
     "SET STATEMENT max_statement_time = 10, sql_mode = '' FOR DELETE FROM items",
     "set statement foreign_key_checks = 0 for truncate items",
     "SET STATEMENT a = (1), b = 2 FOR UPDATE items SET name = 'x'"],
)
def test_mysql_set_statement_for_classifies_its_statement(sql):
    assert decide(sql, MY) == "require_approval", classify(sql, MY)


def test_mysql_set_statement_for_a_select_passes():
    assert decide("SET STATEMENT max_statement_time = 10 FOR SELECT * FROM items", MY) == "allow"


# ---- 6. functions that run SQL text or reach past the database -----------------------------

@pytest.mark.parametrize(
    "sql, category",
    [
        ("SELECT dblink_exec('dbname=app', 'DROP TABLE customers')", "dynamic_sql"),
        ("SELECT * FROM public.dblink('dbname=app', 'DELETE FROM customers RETURNING 1') AS t(x int)", "dynamic_sql"),
        ("SELECT query_to_xml('DELETE FROM customers RETURNING id', true, false, '')", "dynamic_sql"),
        ("SELECT * FROM ts_stat('DELETE FROM customers RETURNING to_tsvector(name)')", "dynamic_sql"),
        ("SELECT cron.schedule('* * * * *', 'TRUNCATE customers')", "dynamic_sql"),
        ("SELECT lo_export(1234, '/var/lib/postgresql/15/main/postgresql.auto.conf')", "copy_file"),
        ("SELECT pg_read_file('/etc/passwd')", "copy_file"),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "admin"),
        ("SELECT lo_unlink(1234)", "drop"),
        ("UPDATE orders SET note = (SELECT dblink_exec('', 'DROP TABLE customers')) WHERE id = 1", "dynamic_sql"),
    ],
)
def test_postgres_risky_function_calls_are_held(sql, category):
    assert category in categories(sql, PG), classify(sql, PG)
    assert decide(sql, PG) == "require_approval"


@pytest.mark.parametrize("sql", ["SELECT LOAD_FILE('/etc/passwd')", "SELECT * FROM items INTO OUTFILE '/tmp/x'",
                                 "LOAD DATA INFILE '/etc/passwd' INTO TABLE items", "INSTALL SONAME 'ha_connect'",
                                 "KILL 7", "SHUTDOWN", "RESET MASTER"])
def test_mysql_server_files_and_administration_are_held(sql):
    assert decide(sql, MY) == "require_approval", classify(sql, MY)


@pytest.mark.parametrize("sql, dialect", [("LOAD 'auto_explain'", PG), ("COPY customers TO '/tmp/x'", PG),
                                          ("COPY customers FROM '/etc/passwd'", PG)])
def test_postgres_server_files_and_libraries_are_held(sql, dialect):
    assert decide(sql, dialect) == "require_approval"


# ---- 7. a pinned database ------------------------------------------------------------------

@pytest.mark.parametrize("sql", ["USE other", "use `other`", "USE `app`; USE other", "/*!USE other*/", "select 1; use other",
                                 "USE `ap``p`", "USE App", "USE app other"])
def test_pinned_mysql_connection_refuses_use_of_another_database(sql):
    check = database_pin("app", MY)
    verdict = check(sql)
    assert verdict is not None and verdict.action == "deny" and verdict.rule == "database-pinned", sql
    gate = make_gate(POLICY, None, ALICE, "app-mysql", MY, database="app")
    assert gate(sql).action == "deny"


@pytest.mark.parametrize("sql", ["USE app", "use `app`", "/*!USE app*/", "SELECT * FROM users", "SELECT 'use other'"])
def test_pinned_mysql_connection_allows_its_own_database(sql):
    assert database_pin("app", MY)(sql) is None
    assert make_gate(POLICY, None, ALICE, "app-mysql", MY, database="app")(sql).action == "allow"


def test_unpinned_or_postgres_connections_have_no_use_check():
    assert database_pin(None, MY) is None and database_pin("", MY) is None
    assert database_pin("app", PG) is None


# ---- 8. a WHERE that names a column but matches every row (issue 28) -----------------------

EVERY_ROW = [
    "DELETE FROM t WHERE id = id", "DELETE FROM t WHERE t.id = t.id", "DELETE FROM t WHERE id IS NOT NULL",
    "DELETE FROM t WHERE NOT (id IS NULL)", "DELETE FROM t WHERE id > 0 OR true", "DELETE FROM t WHERE true OR id = 5",
    "DELETE FROM t WHERE (id = 5) OR (1 = 1)", "DELETE FROM t WHERE id = id + 0", "DELETE FROM t WHERE id IN (SELECT id FROM t)",
    "DELETE FROM t WHERE id IN (SELECT id FROM t UNION SELECT id FROM u WHERE x = 1)",
    "DELETE FROM t WHERE EXISTS (SELECT 1)", "DELETE FROM t WHERE 5 IN (SELECT id FROM t WHERE id = 5)",
    "DELETE FROM t WHERE (SELECT true)", "UPDATE t SET x = 1 WHERE id = id", "UPDATE t SET x = 1 WHERE x IS NOT NULL OR x IS NULL",
    "UPDATE t SET x = 1 WHERE id IN (SELECT id FROM t)",
]
NARROW = [
    "DELETE FROM t WHERE id = 5", "DELETE FROM t WHERE id IN (1, 2, 3)", "DELETE FROM t WHERE id BETWEEN 1 AND 5",
    "DELETE FROM t WHERE name LIKE 'a%'", "DELETE FROM t WHERE id IS NULL", "DELETE FROM t WHERE id = 5 AND true",
    "DELETE FROM t WHERE id = 5 OR id = 6", "DELETE FROM t WHERE id IN (SELECT id FROM u WHERE u.x = 1)",
    "DELETE FROM t WHERE id = (SELECT max(id) FROM t)", "UPDATE t SET x = 1 WHERE id = 5",
    "DELETE FROM t WHERE NOT (id = 5) AND id < 10", "DELETE FROM t WHERE lower(name) = 'bob'",
]


@pytest.mark.parametrize("dialect", [PG, MY])
@pytest.mark.parametrize("sql", EVERY_ROW)
def test_where_that_matches_every_row_is_held(sql, dialect):
    cats = categories(sql, dialect)
    assert cats & {"delete_without_where", "update_without_where", "unparseable"}, (sql, cats)
    assert decide(sql, dialect) == "require_approval"


@pytest.mark.parametrize("dialect", [PG, MY])
@pytest.mark.parametrize("sql", NARROW)
def test_where_that_compares_a_column_with_a_value_passes(sql, dialect):
    assert decide(sql, dialect) == "allow", classify(sql, dialect)


# ---- 9. switching off the server's own safety or audit (issue 28) --------------------------

@pytest.mark.parametrize(
    "sql, dialect",
    [
        ("SET session_replication_role = replica", PG), ("SET LOCAL session_replication_role TO 'replica'", PG),
        ("SELECT set_config('session_replication_role', 'replica', false)", PG), ("SET pgaudit.log = 'none'", PG),
        ("SET pgaudit.log_level TO debug5", PG), ("SET log_statement = 'none'", PG),
        ("SET GLOBAL general_log = 0", MY), ("SET sql_log_bin = 0", MY), ("SET @@session.sql_log_bin = OFF", MY),
        ("SET SESSION sql_log_off = 1", MY), ("SET GLOBAL server_audit_logging = OFF", MY),
        ("SET @@global.server_audit_excl_users = 'app_user'", MY), ("SET STATEMENT sql_log_bin = 0 FOR DELETE FROM t WHERE id = 1", MY),
        ("SET GLOBAL max_connections = 1", MY), ("SET PERSIST local_infile = 1", MY),
        ("SET @@global.general_log_file = '/var/lib/mysql/x.php'", MY), ("INSTALL PLUGIN server_audit SONAME 'server_audit'", MY),
        ("INSTALL COMPONENT 'file://component_validate_password'", MY), ("UNINSTALL PLUGIN server_audit", MY),
    ],
)
def test_switching_off_the_servers_own_safety_is_held(sql, dialect):
    assert decide(sql, dialect) == "require_approval", classify(sql, dialect)


@pytest.mark.parametrize("sql, dialect", [("RESET session_replication_role", PG), ("SET search_path = app, public", PG),
                                          ("SET statement_timeout = 5000", PG), ("SET autocommit = 0", MY),
                                          ("SET SESSION sql_mode = 'STRICT_ALL_TABLES'", MY), ("SET @sql_log_bin = 0", MY)])
def test_ordinary_session_settings_pass(sql, dialect):
    assert decide(sql, dialect) == "allow", classify(sql, dialect)


# ---- 10. access, replication and the database's own record ---------------------------------

@pytest.mark.parametrize(
    "sql, dialect",
    [
        ("CREATE ROLE helper IN ROLE pg_read_server_files", PG), ("CREATE USER backdoor PASSWORD 'x'", PG),
        ("CREATE POLICY open_all ON customers USING (true)", PG), ("CREATE PUBLICATION leak FOR ALL TABLES", PG),
        ("CREATE SUBSCRIPTION pull CONNECTION 'host=evil' PUBLICATION p", PG),
        ("SELECT pg_stat_statements_reset()", PG), ("SELECT pg_stat_reset()", PG),
        ("CREATE USER backdoor IDENTIFIED BY 'x'", MY), ("CREATE ROLE r", MY), ("SET DEFAULT ROLE admin FOR app_user", MY),
        ("DELETE FROM t WHERE id = ANY(ARRAY(SELECT id FROM t))", PG),
        ("DELETE FROM t WHERE id = ANY((SELECT array_agg(id) FROM t)::int[])", PG),
    ],
)
def test_access_replication_and_the_servers_record_are_held(sql, dialect):
    assert decide(sql, dialect) == "require_approval", classify(sql, dialect)


def test_a_scalar_subquery_is_one_value():
    assert decide("DELETE FROM t WHERE id = (SELECT max(id) FROM t)", PG) == "allow"
    assert decide("DELETE FROM t WHERE id = ANY(ARRAY(SELECT id FROM u WHERE u.x = 1))", PG) == "allow"


# ---- 11. what the red team found after the first round ------------------------------------

RED_TEAM = [
    # version-gated comments some server skips: the quote that hid the rest never opens
    ("SELECT 1 /*!50700 '*/; DROP TABLE u; -- '*/", MY, "require_approval"),
    ("DELETE FROM t WHERE name = 'a' /*!50700 '*/ OR 1=1 -- '*/", MY, "require_approval"),
    ("SELECT 1 /*!50700 '*/; SET NAMES sjis; -- '*/", MY, "deny"),
    ("SELECT 1 /*M! '*/; DROP TABLE u; -- '*/", MY, "require_approval"),
    ("SELECT 1 /*!999999 '*/; DROP TABLE u; -- '*/", MY, "require_approval"),
    # column notation calls a function of one argument
    ("SELECT ('DROP TABLE victim'::text).dblink_exec", PG, "require_approval"),
    ("SELECT ('postgresql.conf'::text).pg_read_file", PG, "require_approval"),
    ("SELECT ((SELECT 1)).pg_terminate_backend", PG, "require_approval"),
    ("SELECT lo_truncate(lo_open(oid, 131072), 0) FROM pg_largeobject_metadata", PG, "require_approval"),
    ("SELECT dblink_connect('dbname=other')", PG, "require_approval"),
    # upserts and REPLACE fed by a SELECT touch every row they read
    ("INSERT INTO t SELECT * FROM t ON CONFLICT (id) DO UPDATE SET name = NULL", PG, "require_approval"),
    ("INSERT INTO t (id) SELECT id FROM t ON DUPLICATE KEY UPDATE name = NULL", MY, "require_approval"),
    ("REPLACE INTO t (id) SELECT id FROM t", MY, "require_approval"),
    # a WHERE on a joined table, not the target
    ("DELETE FROM t USING u WHERE u.id = 5", PG, "require_approval"),
    ("UPDATE t SET name = NULL FROM u WHERE u.id = 5", PG, "require_approval"),
    ("DELETE t FROM t JOIN u ON 1 = 1 WHERE u.id = 5", MY, "require_approval"),
    ("UPDATE t, u SET t.name = NULL WHERE u.id = 5", MY, "require_approval"),
    ("MERGE INTO t USING (SELECT 1 AS k) s ON true WHEN MATCHED AND s.k = 1 THEN DELETE", PG, "require_approval"),
    # EXISTS, correlated scalars, negations, tests and arithmetic that match every row
    ("DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = 5)", PG, "require_approval"),
    ("DELETE FROM t WHERE EXISTS (SELECT 1 FROM (SELECT 1 AS k) d WHERE d.k = 1)", MY, "require_approval"),
    ("DELETE FROM t WHERE id = (SELECT id)", PG, "require_approval"),
    ("DELETE FROM t WHERE id = (SELECT id)", MY, "require_approval"),
    ("DELETE FROM t WHERE NOT (id = 0 AND false)", PG, "require_approval"),
    ("DELETE FROM t WHERE NOT active", PG, "require_approval"),  # every row but the active ones
    ("DELETE FROM t WHERE !(id = 0 && 0)", MY, "require_approval"),
    ("DELETE FROM t WHERE (id = id) IS TRUE", PG, "require_approval"),
    ("DELETE FROM t WHERE coalesce(id = id, true)", PG, "require_approval"),
    ("DELETE FROM t WHERE id IS DISTINCT FROM NULL", PG, "require_approval"),
    ("DELETE FROM t WHERE id - id = 0", PG, "require_approval"),
    ("DELETE FROM t WHERE id - id = 0", MY, "require_approval"),
    ("DELETE FROM t WHERE id XOR 0", MY, "require_approval"),
    ("DELETE FROM t WHERE id <= (SELECT max(id) FROM t)", PG, "require_approval"),
    # nested grants, SQL-running procedures, adjacent literals, quoted names
    ("CREATE SCHEMA s2 GRANT ALL ON public.mine TO PUBLIC", PG, "require_approval"),
    ("CALL sys.execute_prepared_stmt('DROP TABLE app.u')", MY, "require_approval"),
    ("CALL mysql.DropGeometryColumn('', 'app', 't', 'name')", MY, "require_approval"),
    ("PREPARE s FROM 'DELETE FROM t WHERE id = 1' ' OR 1=1'", MY, "require_approval"),
    ("PREPARE s FROM 'SET NAMES ascii' ', character_set_client = sjis'", MY, "deny"),
    ("SELECT `load_file`('/etc/hostname')", MY, "require_approval"),
    # whose privileges, and the server's own safety
    ("SET ROLE admin", PG, "require_approval"), ("SET SESSION AUTHORIZATION bob", PG, "require_approval"),
    ("SET ROLE admin", MY, "require_approval"), ("SET default_transaction_read_only = off", PG, "require_approval"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", PG, "require_approval"),
    ("SET sql_safe_updates = 0", MY, "require_approval"), ("SET log_slow_query = 0", MY, "require_approval"),
    ("CREATE SERVER other FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'other')", PG, "require_approval"),
    ("CREATE USER MAPPING FOR CURRENT_USER SERVER other", PG, "require_approval"),
]
RED_TEAM_NEIGHBOURS = [
    ("DELETE FROM t USING u WHERE t.id = 5 AND t.owner = u.id", PG), ("UPDATE t, u SET t.name = NULL WHERE t.id = 5", MY),
    ("DELETE FROM t WHERE id = (SELECT max(id) FROM t)", PG), ("DELETE FROM t WHERE id = (SELECT max(id) FROM t)", MY),
    ("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT 1000)", PG), ("DELETE FROM t ORDER BY id LIMIT 1000", MY),
    ("INSERT INTO t VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET name = 'a'", PG),
    ("REPLACE INTO t VALUES (1)", MY), ("RESET ROLE", PG), ("CALL app.refresh_totals()", MY),
    ("/*!40000 ALTER TABLE `t` DISABLE KEYS */", MY), ("/*!40000 ALTER TABLE `t` ENABLE KEYS */", MY),
    ("/*!40101 SET NAMES utf8mb4 */", MY), ("/*!40101 SET @saved_cs_client     = @@character_set_client */", MY),
]


@pytest.mark.parametrize("sql, dialect, action", RED_TEAM)
def test_red_team_findings_are_held_or_refused(sql, dialect, action):
    assert decide(sql, dialect) == action, classify(sql, dialect)


@pytest.mark.parametrize("sql, dialect", RED_TEAM_NEIGHBOURS)
def test_their_harmless_neighbours_pass(sql, dialect):
    assert decide(sql, dialect) == "allow", classify(sql, dialect)


def test_keys_only_is_exact():
    assert decide("ALTER TABLE t DROP COLUMN x, DISABLE KEYS", MY) == "require_approval"
    assert decide("ALTER TABLE t DISABLE KEYS, DROP COLUMN x", MY) == "require_approval"


def test_mysqldump_restores_its_saved_character_set_in_the_same_session():
    gate = make_gate(POLICY, None, ALICE, "app-mysql", MY)
    restore = "/*!40101 SET character_set_client = @saved_cs_client */"
    assert gate(restore).action == "deny"  # nothing saved yet: an unknown value
    assert gate("/*!40101 SET @saved_cs_client     = @@character_set_client */").action == "allow"
    assert gate("CREATE TABLE t (id int)").action == "allow"
    assert gate(restore).action == "allow"
    assert gate(restore).action == "allow"  # restoring twice is still the saved value
    assert make_gate(POLICY, None, ALICE, "app-mysql", MY)(restore).action == "deny"  # another session


@pytest.mark.parametrize("overwrite", ["SET @saved_cs_client = 'sjis'", "SET @'saved_cs_client' = 'sjis'",
                                       "SET @'\\saved_cs_client' = 'sjis'", "SELECT 'sjis' INTO @saved_cs_client",
                                       "SELECT @`saved_cs_client` := 'sjis'", "SET @x = 1, @SAVED_CS_CLIENT = 'sjis'"])
def test_a_saved_character_set_is_forgotten_once_anything_names_the_variable(overwrite):
    gate = make_gate(POLICY, None, ALICE, "app-mysql", MY)
    assert gate("SET @saved_cs_client = @@character_set_client").action == "allow"
    gate(overwrite)
    assert gate("SET character_set_client = @saved_cs_client").action == "deny", overwrite


# ---- 12. the third red-team round ------------------------------------------------------------

RED_TEAM_3 = [
    ("SET NAMES DEFAULT", MY, "deny"), ("SET CHARACTER SET DEFAULT", MY, "deny"),
    ("SET @@session.character_set_client = DEFAULT", MY, "deny"),  # the server's global set may be GBK
    ("SET sql_mode = 'ANSI_QUOTES'", MY, "deny"), ("SET sql_mode = CONCAT(@@sql_mode, ',PIPES_AS_CONCAT')", MY, "deny"),
    ("SET SESSION sql_mode = 'ANSI'", MY, "deny"), ("SET @@sql_mode = 'NO_BACKSLASH_ESCAPES'", MY, "deny"),
    ("SET STATEMENT sql_mode = 'ANSI_QUOTES' FOR DELETE FROM t WHERE v = \"v\"", MY, "deny"),
    ("DELETE FROM t LIMIT 18446744073709551615", MY, "require_approval"),
    ("UPDATE t SET a = 1 ORDER BY id LIMIT 18446744073709551615", MY, "require_approval"),
    ("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT ALL)", PG, "require_approval"),
    ("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT NULL)", PG, "require_approval"),
    ("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT (SELECT count(*) FROM t))", PG, "require_approval"),
    ("SELECT set_config('role', 'admin_r', false)", PG, "require_approval"),
    ("SELECT set_config('session_authorization', 'admin_r', false)", PG, "require_approval"),
    ("BEGIN READ WRITE", PG, "require_approval"), ("START TRANSACTION READ WRITE", PG, "require_approval"),
    ("SET TRANSACTION READ WRITE", PG, "require_approval"), ("SET SESSION TRANSACTION READ WRITE", MY, "require_approval"),
    ("SET transaction_read_only = 0", MY, "require_approval"),
    ("DELETE FROM t WHERE flag OR NOT flag", PG, "require_approval"), ("DELETE FROM t WHERE flag OR NOT flag", MY, "require_approval"),
    ("DELETE FROM t WHERE id * 0 = 0", PG, "require_approval"), ("DELETE FROM t WHERE id * 0 = 0", MY, "require_approval"),
    ("DELETE FROM t WHERE (id IS NOT NULL) = true", PG, "require_approval"),
    ("DELETE FROM t WHERE (id IS NULL) = false", MY, "require_approval"),
    ("DELETE FROM t WHERE id <> ALL('{}')", PG, "require_approval"),
    ("DELETE FROM t WHERE id <> 1 OR id <> 2", PG, "require_approval"), ("DELETE FROM t WHERE id <> 1 OR id <> 2", MY, "require_approval"),
    ("SELECT pg_logical_slot_get_changes('cdc', NULL, NULL)", PG, "require_approval"),
    ("SELECT pg_replication_slot_advance('cdc', pg_current_wal_lsn())", PG, "require_approval"),
    ("SELECT lo_put(4242, 0, 'XXXXXXXXX')", PG, "require_approval"), ("SELECT setval('s', 1)", PG, "require_approval"),
    ("SET pg_stat_statements.track = none", PG, "require_approval"),
    ("REPLACE INTO t TABLE u", MY, "require_approval"),
    ("SET skip_replication = 1", MY, "require_approval"), ("SET timestamp = 1", MY, "require_approval"),
]
RED_TEAM_3_NEIGHBOURS = [
    ("SET sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE'", MY), ("SET sql_mode = ''", MY), ("SET sql_mode = DEFAULT", MY),
    ("DELETE FROM t ORDER BY id LIMIT 1000", MY), ("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 1000)", PG),
    ("BEGIN READ ONLY", PG), ("BEGIN", PG), ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", PG),
    ("START TRANSACTION", MY), ("DELETE FROM t WHERE lower(name) = 'bob'", PG), ("DELETE FROM t WHERE id::text = '5'", PG),
]


@pytest.mark.parametrize("sql, dialect, action", RED_TEAM_3)
def test_third_round_findings_are_held_or_refused(sql, dialect, action):
    assert decide(sql, dialect) == action, classify(sql, dialect)


@pytest.mark.parametrize("sql, dialect", RED_TEAM_3_NEIGHBOURS)
def test_third_round_neighbours_pass(sql, dialect):
    assert decide(sql, dialect) == "allow", classify(sql, dialect)


def test_mysqldump_restores_its_saved_sql_mode_and_a_pinned_database_cannot_be_left_by_set_statement():
    gate = make_gate(POLICY, None, ALICE, "app-mysql", MY, database="app")
    assert gate("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */").action == "allow"
    assert gate("/*!40101 SET SQL_MODE=@OLD_SQL_MODE */").action == "allow"
    gate("SET @OLD_SQL_MODE = 'ANSI_QUOTES'")
    assert gate("SET SQL_MODE=@OLD_SQL_MODE").action == "deny"
    assert gate("SET STATEMENT max_statement_time = 0 FOR USE other").action == "deny"
