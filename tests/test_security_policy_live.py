"""The policy holes of issue 17, tried end to end: the real psql and mariadb clients through
`hoop exec` and the real gateway (policy = "default") to throw-away PostgreSQL and MariaDB
servers with password auth. Each test checks on the server itself that the risky thing did not
happen (the table, rows, function or database are still as they were), that the client got the
hoop message in its own protocol, that the same session goes on working, and what the audit
trail says."""

from __future__ import annotations

import pytest

from tests.support.cli import run_subprocess


# ---- PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_victims(pg_server):
    pg_server.sql("CREATE TABLE IF NOT EXISTS merge_victim (id int primary key, name text)", dbname="app")
    pg_server.sql("INSERT INTO merge_victim VALUES (1, 'a'), (2, 'b'), (3, 'c') ON CONFLICT DO NOTHING", dbname="app")
    pg_server.sql("ALTER TABLE merge_victim OWNER TO app_user", dbname="app")
    pg_server.sql("GRANT CREATE ON SCHEMA public TO app_user", dbname="app")
    return pg_server


@pytest.fixture
def alice_pg(as_user, pg_victims):
    return as_user("alice", PGPASSWORD=pg_victims.app_password)


def _psql(env, *statements, connection="gated-db"):
    argv = ["exec", connection, "--", "psql", "-X", "-A", "-t"]
    for sql in statements:
        argv += ["-c", sql]
    return run_subprocess(argv, env)


def _rows(pg, sql):
    return pg.sql(sql, dbname="app")


def test_merge_deleting_every_matched_row_is_held_and_the_rows_stay(gateway, alice_pg, pg_victims):
    merge = "MERGE INTO merge_victim t USING merge_victim s ON t.id = s.id WHEN MATCHED THEN DELETE"
    result = _psql(alice_pg, merge, "select 'after-merge'")
    assert "held for approval" in result.err, result.err
    assert "after-merge" in result.out  # the same psql session carried on
    assert _rows(pg_victims, "select count(*) from merge_victim")[0][0] == 3
    [rec] = [r for r in gateway.records(kind="statement", sub="alice") if r["statement"] == merge]
    assert rec["outcome"] == "held"


def test_a_merge_whose_arms_have_conditions_runs(gateway, alice_pg, pg_victims):
    merge = ("MERGE INTO merge_victim t USING (VALUES (2, 'bb')) s(id, name) ON t.id = s.id "
             "WHEN MATCHED AND t.name = 'b' THEN UPDATE SET name = s.name")
    result = _psql(alice_pg, merge)
    assert result.code == 0, result.err
    assert _rows(pg_victims, "select name from merge_victim where id = 2")[0][0] == "bb"


@pytest.mark.parametrize(
    "sql, leftover",
    [
        ("CREATE FUNCTION hoop_evil() RETURNS int LANGUAGE sql AS $$ TRUNCATE merge_victim; SELECT 1 $$",
         "select count(*) from pg_proc where proname = 'hoop_evil'"),
        ("CREATE OR REPLACE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'select $1'",
         "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where proname = 'lower' and nspname = 'public'"),
        ("CREATE RULE hoop_rule AS ON INSERT TO merge_victim DO ALSO DELETE FROM merge_victim WHERE id > 0",
         "select count(*) from pg_rules where rulename = 'hoop_rule'"),
    ],
)
def test_creating_code_is_held_and_nothing_is_created(gateway, alice_pg, pg_victims, sql, leftover):
    result = _psql(alice_pg, sql)
    assert result.code != 0 and "held for approval" in result.err, result.err
    assert _rows(pg_victims, leftover)[0][0] == 0
    assert _rows(pg_victims, "select count(*) from merge_victim")[0][0] == 3


def test_client_encoding_switch_is_refused_before_the_next_statement(gateway, alice_pg, pg_victims):
    """`SET client_encoding` and the statement after it in one simple query: nothing of the
    string runs, the session stays UTF8 and usable."""
    result = _psql(alice_pg, "SET client_encoding = 'SJIS'; INSERT INTO merge_victim VALUES (90, 'enc')", "show client_encoding")
    assert "character set is not supported" in result.err, result.err
    assert result.out.strip().splitlines()[-1] == "UTF8"
    assert _rows(pg_victims, "select count(*) from merge_victim where id = 90")[0][0] == 0
    via_function = _psql(alice_pg, "select set_config('client_encoding', 'BIG5', false)", "show client_encoding")
    assert "character set is not supported" in via_function.err
    assert via_function.out.strip().splitlines()[-1] == "UTF8"
    recs = [r for r in gateway.records(kind="statement", sub="alice") if "client_encoding" in (r["statement"] or "")]
    assert {r["outcome"] for r in recs if "SJIS" in r["statement"] or "BIG5" in r["statement"]} == {"denied"}


def test_client_encoding_switch_in_a_pipeline_is_refused(gateway, as_user, pg_victims):
    """psycopg's pipeline mode sends SET and the next statement in one write (extended protocol)."""
    import psycopg

    from tests.test_gating_prepared import tunnel

    alice = as_user("alice", PGPASSWORD=pg_victims.app_password)
    with tunnel(alice, "gated-db") as port:
        with psycopg.connect(host="127.0.0.1", port=port, user="app_user", password=pg_victims.app_password,
                             dbname="app", sslmode="disable", connect_timeout=10, autocommit=True) as conn:
            with pytest.raises(psycopg.Error, match="character set is not supported"):
                with conn.pipeline():
                    conn.execute("SET client_encoding = 'SJIS'")
                    conn.execute("INSERT INTO merge_victim VALUES (91, 'pipelined')")
            assert conn.execute("show client_encoding").fetchone()[0] == "UTF8"
    assert _rows(pg_victims, "select count(*) from merge_victim where id = 91")[0][0] == 0


@pytest.mark.parametrize("connection", ["gated-db", "app-db"])  # with a policy and record-only: both pinned
def test_postgres_pinned_database_refuses_another_one_at_startup(gateway, alice_pg, connection):
    other = run_subprocess(["exec", connection, "--", "psql", "-X", "-A", "-t", "-d", "postgres", "-c", "select current_database()"], alice_pg)
    assert other.code != 0 and "pinned to database" in other.err, other.err
    own = _psql(alice_pg, "select current_database()", connection=connection)
    assert own.code == 0 and own.out.strip() == "app", own.err


# ---- MariaDB -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_victims(mariadb_server):
    mariadb_server.sql("CREATE TABLE IF NOT EXISTS app.replace_victim (id int primary key); "
                       "INSERT IGNORE INTO app.replace_victim VALUES (1), (2), (3)")
    return mariadb_server


@pytest.fixture
def alice_my(as_user, my_victims):
    return as_user("alice", MYSQL_PWD=my_victims.app_password)


def _mariadb(env, sql, *extra):
    """The statements on stdin with --force: the client goes on after an error (-e would stop)."""
    return run_subprocess(["exec", "app-mysql", "--", "mariadb", "--batch", "--skip-column-names", "--force", *extra], env, stdin=sql + ";\n")


def _victim_rows(my) -> int:
    return int(my.sql("SELECT COUNT(*) FROM app.replace_victim").split()[-1])


@pytest.mark.parametrize("sql", ["CREATE OR REPLACE TABLE replace_victim (id int)", "CREATE OR REPLACE DATABASE app",
                                 "/*!CREATE OR REPLACE */ TABLE replace_victim (x int)"])
def test_create_or_replace_is_held_and_the_table_survives(gateway, alice_my, my_victims, sql):
    result = _mariadb(alice_my, f"{sql}; SELECT 'after-replace'")
    assert "held for approval" in result.err, result.err
    assert "after-replace" in result.out
    assert _victim_rows(my_victims) == 3
    [rec] = [r for r in gateway.records(kind="statement", sub="alice", connection="app-mysql") if r["statement"] == sql][-1:]
    assert rec["outcome"] == "held"


@pytest.mark.parametrize("sql", ["CREATE TRIGGER hoop_trg BEFORE INSERT ON replace_victim FOR EACH ROW DELETE FROM replace_victim",
                                 "CREATE EVENT hoop_evt ON SCHEDULE EVERY 1 SECOND DO DELETE FROM replace_victim",
                                 "CREATE PROCEDURE hoop_proc() DELETE FROM replace_victim"])
def test_mysql_code_is_held_and_not_created(gateway, alice_my, my_victims, sql):
    result = _mariadb(alice_my, sql)
    assert "held for approval" in result.err, result.err
    names = my_victims.sql("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'app'; "
                           "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'app'; "
                           "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'app'").split()
    assert names[-3:] == ["0", "0", "0"]


@pytest.mark.parametrize("switch", ["SET NAMES sjis", "SET character_set_client = 28", "SET @c = 'sj' 'is'; SET character_set_client = @c",
                                    "SET character_set_client = 0x736a6973", "SET CHARACTER SET _latin1'gbk'",
                                    "SET STATEMENT character_set_client = big5 FOR SELECT 1"])
def test_mysql_character_set_switches_are_refused(gateway, alice_my, my_victims, switch):
    show = "SELECT @@character_set_client, @@character_set_connection"
    before = _mariadb(alice_my, show).out.strip()
    assert before.split("\t")[0].startswith("utf8"), before
    result = _mariadb(alice_my, f"{switch}; {show}")
    assert "character set is not supported" in result.err, result.err
    assert result.out.strip().splitlines()[-1] == before
    recs = [r for r in gateway.records(kind="statement", sub="alice", connection="app-mysql") if r["outcome"] == "denied"]
    assert any(r["statement"] in switch for r in recs)


def test_mysql_pinned_database_refuses_use_and_init_db(gateway, alice_my, my_victims):
    other = my_victims.create_database("pinned")
    result = _mariadb(alice_my, f"USE `{other}`; SELECT DATABASE()")
    assert "pinned to database `app`" in result.err, result.err
    assert result.out.strip().splitlines()[-1] == "app"
    at_login = _mariadb(alice_my, "SELECT DATABASE()", f"--database={other}")
    assert at_login.code != 0 and "pinned to database" in at_login.err, at_login.err
