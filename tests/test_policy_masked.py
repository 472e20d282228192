"""The PostgreSQL cache keyed on text with its literals masked (policy/classify.py, `_decide_parts`).

What must hold: a decision served from the masked cache is exactly the decision PostgreSQL's
parser path gives for that very text (`reference`), whichever text of the same shape filled the
cache; a statement whose classification depends on a literal's value is never served from it;
and every literal the cache masks for a text it stores is a single ICONST/SCONST token of
PostgreSQL's own scanner.
"""

from __future__ import annotations

import re
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hoopcli.gateway.policy import classifier as C
from hoopcli.gateway.policy import postgres as PGP
from hoopcli.gateway.policy import postgres_cache as PC
from hoopcli.gateway.policy import rules as R
from hoopcli.gateway.policy.categories import CACHE_SIZE
from hoopcli.gateway.policy import DEFAULT_RULES, Policy, classify

from .test_policy import AGENT, ALICE, CASES, EXAMPLE, PG

POLICIES = [
    Policy(DEFAULT_RULES),
    Policy.from_config(EXAMPLE),
    # an allow-list: anything not named is denied
    Policy.from_config({"default": "deny", "rules": [{"match": ["select", "show", "set", "transaction"], "action": "allow"}]}),
]
IDENTITIES = [ALICE, AGENT]


def reference(policy: Policy, sql: str, identity=ALICE) -> R.Decision:
    """The decision with every part from PostgreSQL's parser, no cache of any kind."""
    with mock.patch.object(R, "_decide_parts", lambda text, dialect: C._classify_uncached(text, "postgres")):
        return policy.decide(sql, identity, PG)


def same(a: R.Decision, b: R.Decision) -> bool:
    return (a.action, a.categories, a.rule_index, a.reason) == (b.action, b.categories, b.rule_index, b.reason)


def check_pair(first: str, second: str) -> None:
    """Caches empty, `first` decided (filling them), then `second` must match its reference."""
    classify.cache_clear()
    for policy in POLICIES:
        for identity in IDENTITIES:
            got = policy.decide(first, identity, PG)
            assert same(got, reference(policy, first, identity)), (first, got)
    for policy in POLICIES:
        for identity in IDENTITIES:
            got = policy.decide(second, identity, PG)
            want = reference(policy, second, identity)
            assert same(got, want), (first, second, got, want)


def masked_key(sql: str) -> str | None:
    masked = PC._pg_mask(sql)
    return masked[0] if masked else None


@pytest.fixture(autouse=True)
def _fresh_caches():
    classify.cache_clear()
    yield
    classify.cache_clear()


# ---- the hot path ---------------------------------------------------------------------------


def test_pgbench_statements_are_served_without_the_parser():
    policy = Policy(DEFAULT_RULES)
    first = policy.decide("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", ALICE, PG)
    assert first.action == "allow"
    with mock.patch.object(PC, "_pg_parse", side_effect=AssertionError("parser called")), mock.patch.object(PGP, "_pg_parse", side_effect=AssertionError("parser called")):
        for aid in (1, 7, 99999, 123456789, 0):
            got = policy.decide(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};", ALICE, PG)
            assert same(got, first)
        upd = "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};"
        with pytest.raises(AssertionError):  # a new shape goes to the parser
            policy.decide(upd.format(5, 6), ALICE, PG)
    for delta in (5, -5, "- 5"):  # a minus sign is part of the shape: three shapes
        policy.decide(upd.format(delta, 6), ALICE, PG)
    with mock.patch.object(PC, "_pg_parse", side_effect=AssertionError("parser called")), mock.patch.object(PGP, "_pg_parse", side_effect=AssertionError("parser called")):
        for delta in (4321, -4321, "- 4321", 0, -0):
            assert policy.decide(upd.format(delta, 77), ALICE, PG).action == "allow"


def test_a_risky_shape_stays_risky_for_every_value():
    policy = Policy(DEFAULT_RULES)
    for i in range(5):
        assert policy.decide(f"DELETE FROM t WHERE {i} = {i}", ALICE, PG).action == "require_approval"
        assert policy.decide(f"UPDATE t SET a = 'x{i}'", ALICE, PG).action == "require_approval"
        assert policy.decide(f"SELECT {i}; DROP TABLE t", ALICE, PG).action == "require_approval"
        assert policy.decide(f"COPY (SELECT {i}) TO PROGRAM 'cat'", ALICE, PG).action == "deny"
        assert policy.decide(f"WITH d AS (DELETE FROM t WHERE a = {i} RETURNING *) SELECT 1", ALICE, PG).action == "allow"
        assert policy.decide(f"WITH d AS (DELETE FROM t WHERE {i} = 1 RETURNING *) SELECT 1", ALICE, PG).action == "require_approval"


# ---- literal-dependent statements never come from the masked cache ---------------------------


@pytest.mark.parametrize(
    "low, high",
    [
        # EXPLAIN runs the statement unless ANALYZE is off/0/false: the value decides
        ("EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"),
        ("EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t"),
        ("EXPLAIN (ANALYZE 'false') UPDATE t SET a = 1", "EXPLAIN (ANALYZE 'true') UPDATE t SET a = 1"),
        # an empty COPY file name is no file; anything else is a server file
        ("COPY t FROM ''", "COPY t FROM '/etc/passwd'"),
        # float(1..53) is a type; float(60) is a syntax error: unparseable
        ("SELECT a::float(10) FROM t", "SELECT a::float(60) FROM t"),
    ],
)
def test_statements_whose_decision_depends_on_a_literal_are_never_served_masked(low, high):
    key = masked_key(low)
    assert key is not None and key == masked_key(high)  # one shape, two outcomes
    policy = Policy(DEFAULT_RULES)
    for order in ((low, high), (high, low)):
        classify.cache_clear()
        decisions = {sql: policy.decide(sql, ALICE, PG) for sql in order}
        for sql, got in decisions.items():
            assert same(got, reference(policy, sql)), sql
        assert PC._MASKED.get(key) is None  # absent, or marked "exact text only"
    assert decisions[low].categories != decisions[high].categories


@pytest.mark.parametrize(
    "template",
    [
        "DO {s}",  # the body is a literal the classifier cannot see into
        "COPY t TO {s}",
        "COPY t FROM PROGRAM {s}",
        "LOAD {s}",
        "SELECT E{s}, {i}",  # an E'' string: its A_Const sits at the E
        "SELECT U&{s}, {i}",
        "SELECT {s}\n{s}",  # one string continued on the next line
        "SELECT $$ {i} $$",  # a digit inside a dollar-quoted string
        "SELECT 1 /* /* */ {s} */",  # nested comment: the literal is still inside it
        "FETCH {i} FROM c",  # a count, not an A_Const
        "VACUUM (PARALLEL {i}) t",
        "ALTER TABLE t ALTER a SET STATISTICS {i}",
        "NOTIFY c, {s}",
        "CREATE FUNCTION f() RETURNS int AS {s} LANGUAGE sql",
    ],
)
def test_literals_that_are_not_expression_constants_mark_the_shape_exact_only(template):
    sql = template.format(s="'x'", i="5")
    key = masked_key(sql)
    assert key is not None
    Policy(DEFAULT_RULES).decide(sql, ALICE, PG)
    assert PC._MASKED.get(key, None) is None


def test_set_client_encoding_is_literal_independent_and_verdicts_match():
    # The classifier never looks at a SET value (the wire engine refuses unsafe encodings when
    # the server reports them), so these may share an entry; their verdicts match the parser's.
    for template in ("SET client_encoding = {}", "SELECT set_config('client_encoding', {}, false)", "SET search_path = {}"):
        texts = [template.format(v) for v in ("'UTF8'", "'SJIS'", "'BIG5'", "'x'''")]
        for first in texts:
            for second in texts:
                check_pair(first, second)


def test_parts_from_the_masked_cache_never_carry_another_statements_text():
    policy = Policy(DEFAULT_RULES)
    policy.decide("SELECT 'secret-one'", ALICE, PG)
    entry = PC._MASKED[masked_key("SELECT 'secret-two'")]
    assert entry is not None and all(part.text == "" for part in entry)
    assert [p.text for p in classify("SELECT 'secret-two'", PG)] == ["SELECT 'secret-two'"]


def test_texts_with_backslashes_or_nul_are_not_masked():
    assert PC._pg_mask("SELECT E'\\'', 1") is None
    assert PC._pg_mask("SELECT '\\', 1") is None
    assert PC._pg_mask("SELECT 1\0") is None
    assert PC._pg_mask("SELECT a FROM t") is None


def test_the_masked_cache_is_bounded():
    policy = Policy(DEFAULT_RULES)
    for n in range(CACHE_SIZE + 50):
        policy.decide(f"SELECT c{n} FROM t WHERE a = 1", ALICE, PG)
    assert len(PC._MASKED) <= CACHE_SIZE


# ---- differential: the case table, with its literals swapped -------------------------------

PG_CASES = [sql for dialect, sql, _ in CASES if dialect == PG]
_NUM = re.compile(r"(?<![A-Za-z0-9_$.])[0-9]+(?![A-Za-z0-9_$.])")
_STR = re.compile(r"'(?:[^']|'')*'")

OTHER_NUMBERS = ["0", "7", "123456789", "1234567890", "99999999999", "-3", "- 3", "1.5", ".5", "1e5", "0x1F", "1_000"]
OTHER_STRINGS = ["''", "'x'", "'it''s'", "';drop table x'", "'$$'", "'/*'", "'--'", "E'\\''", "'\n'", "U&'\\0061'"]


def variants(sql: str) -> list[str]:
    out = []
    for number in OTHER_NUMBERS:
        out.append(_NUM.sub(number, sql, count=1))
        out.append(_NUM.sub(number, sql))
    for string in OTHER_STRINGS:
        out.append(_STR.sub(lambda _: string, sql, count=1))
        out.append(_STR.sub(lambda _: string, sql))
    return [v for v in dict.fromkeys(out) if v != sql]


def test_case_table_has_shapes_with_literals():
    assert len(PG_CASES) >= 60
    assert sum(1 for sql in PG_CASES if masked_key(sql)) >= 20


@pytest.mark.parametrize("sql", PG_CASES, ids=[s[:40] for s in PG_CASES])
def test_case_table_differential(sql):
    check_pair(sql, sql)
    for variant in variants(sql):
        check_pair(sql, variant)
        check_pair(variant, sql)


# ---- differential: generated statements ----------------------------------------------------

TEMPLATES = [
    # routine
    "SELECT abalance FROM pgbench_accounts WHERE aid = {i};",
    "SELECT * FROM t WHERE a = {i} AND b = {s} ORDER BY 1 LIMIT {i} OFFSET {i}",
    "SELECT * FROM t WHERE a IN ({i}, {i}, {s}) OR b BETWEEN {i} AND -{i}",
    "INSERT INTO t (a, b) VALUES ({i}, {s}), (-{i}, {s}::text)",
    "UPDATE t SET a = a + {i}, b = {s} WHERE id = {i}",
    "DELETE FROM t WHERE id = {i} RETURNING *",
    "SELECT date {s}, interval {s} hour, {s}::varchar({i}), x::numeric({i}, {i}) FROM t",
    "SELECT * FROM t FETCH FIRST {i} ROWS ONLY",
    "SELECT * FROM t OFFSET {i} ROWS FETCH FIRST -{i} ROWS ONLY",
    "SET client_encoding = {s}",
    "SET statement_timeout = {i}",
    "SELECT set_config({s}, {s}, false), pg_sleep({i})",
    "BEGIN; SELECT {i}; COMMIT",
    "EXECUTE p({i}, {s})",
    "PREPARE p AS SELECT * FROM t WHERE a = {i}",
    "CREATE TABLE t2 (a int DEFAULT {i}, b text DEFAULT {s})",
    "SELECT {s} AS \"{{x}}\" -- {s}\n, {i} /* {i} */",
    # risky
    "DELETE FROM t WHERE {i} = {i}",
    "DELETE FROM t WHERE {s} = {s}",
    "UPDATE t SET a = {i}",
    "SELECT {i}; DROP TABLE t",
    "SELECT {s}; TRUNCATE t",
    "WITH d AS (DELETE FROM t WHERE a = {i} RETURNING *) SELECT * FROM d WHERE b = {s}",
    "WITH d AS (DELETE FROM t WHERE {i} > {i} RETURNING *) SELECT {s}",
    "COPY (SELECT {i}) TO PROGRAM {s}",
    "COPY t FROM {s}",
    "EXPLAIN (ANALYZE {i}) DELETE FROM t WHERE {i} = {i}",
    "EXPLAIN (ANALYZE {s}) UPDATE t SET a = {i}",
    "EXPLAIN (ANALYZE {i}) DELETE FROM t WHERE a = {i}",
    "DO {s}",
    "GRANT SELECT ON t TO u; SELECT {i}",
    "ALTER TABLE t ALTER a SET DEFAULT {i}",
    "PREPARE p AS DELETE FROM t WHERE {i} = {i}",
    "INSERT INTO t VALUES ({i}) ON CONFLICT (a) DO UPDATE SET b = {s}",
    "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED AND s.b = {i} THEN DELETE",
    "SELECT a::float({i}) FROM t",
    "SELECT $${s}$$, {i}",
    "SELECT {s}\n{s}, {i}",
]

INTS = st.one_of(
    st.integers(0, 999_999_999).map(str),
    st.sampled_from(OTHER_NUMBERS + ["00", "007", "2147483648", "1.", "1e-3", "0b101", "0o17", "5a"]),
)
STRING_BODY = st.text(alphabet=st.sampled_from(list("ab 'é;-/*$\"\n\t0x\\")), max_size=12)
STRINGS = st.one_of(
    STRING_BODY.map(lambda v: "'" + v.replace("'", "''") + "'"),
    st.sampled_from(OTHER_STRINGS + ["E'\\\\'", "B'101'", "X'1F'", "N'n'", "$q$x$q$"]),
)
FILLS = st.lists(st.tuples(INTS, STRINGS), min_size=6, max_size=6)
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fill(template: str, values: list[tuple[str, str]]) -> str:
    ints = iter(v[0] for v in values * 2)
    strs = iter(v[1] for v in values * 2)
    return re.sub(r"\{([is])\}", lambda m: next(ints) if m.group(1) == "i" else next(strs), template.replace("{{x}}", "x"))


@MANY
@given(template=st.sampled_from(TEMPLATES), a=FILLS, b=FILLS)
def test_generated_statements_differential(template, a, b):
    first, second = fill(template, a), fill(template, b)
    check_pair(first, second)


# ---- the masking agrees with PostgreSQL's own scanner ---------------------------------------

LITERALS = st.one_of(INTS, STRINGS, st.sampled_from(["x", "$1", "NULL", "true", "'a'\n'b'", "'a' 'b'", "1.5e3"]))
BEFORE = st.sampled_from(["", "", "-", "- ", "+", "x-", "x - ", "x*-", "x@-", "(", "date ", "int ", "E", "U&", "B", "x", "a.",
                          "/* ", "/* /* */ ", "-- c\n", "$$ ", "\"", "ARRAY[", "é"])
AFTER = st.sampled_from(["", "", "::int", ")", " */", " $$", "\n'a'", " 'a'", "[1]", ".x", "e", "_", "é", "\"", "::varchar(5)",
                         " UESCAPE '!'", " AS y", "::float(10)"])
ITEMS = st.lists(st.tuples(BEFORE, LITERALS, AFTER).map("".join), min_size=1, max_size=5)
SCAN = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SCAN
@given(items=ITEMS, tail=st.sampled_from(["", " FROM t", " FROM t WHERE a = 1", "; DELETE FROM t WHERE 1 = 1"]))
def test_every_literal_of_a_stored_shape_is_one_scanner_token(items, tail):
    from pglast.parser import scan

    sql = "SELECT " + ", ".join(items) + tail
    masked = PC._pg_mask(sql)
    assume(masked is not None)
    key, spans = masked
    consts: dict = {}
    assume(PGP._pg_parse(sql, consts) is not None)
    if not PC._pg_literals_are_constants(sql, spans, consts):
        return
    tokens = {(t.start, t.end): t.name for t in scan(sql)}  # character offsets, end inclusive
    for start, end, kind in spans:
        assert tokens.get((start, end - 1)) == ("ICONST" if kind == "i" else "SCONST"), (sql, sql[start:end])
    # and another text of that shape gets the parser's own decision
    other = "".join(
        (("'z'" if kind == "s" else "4") + sql[end : spans[k + 1][0] if k + 1 < len(spans) else len(sql)])
        for k, (start, end, kind) in enumerate(spans)
    )
    other = sql[: spans[0][0]] + other
    assert masked_key(other) == key
    check_pair(sql, other)


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT 5", [("5", "ICONST")]),
        ("SELECT 'a''b', -7, - 8, x-9", [("'a''b'", "SCONST"), ("7", "ICONST"), ("8", "ICONST"), ("9", "ICONST")]),
        ("SELECT date '2020-01-01', 'x'::varchar(5)", [("'2020-01-01'", "SCONST"), ("'x'", "SCONST"), ("5", "ICONST")]),
        ("SELECT \"a'b\", '\"', 1 -- '2\n, 3", [("'\"'", "SCONST"), ("1", "ICONST"), ("3", "ICONST")]),
    ],
)
def test_masked_literals_are_scanner_tokens(sql, expected):
    from pglast.parser import scan

    _, spans = PC._pg_mask(sql)
    tokens = {(t.start, t.end): t.name for t in scan(sql)}
    assert [(sql[s:e], tokens.get((s, e - 1))) for s, e, _ in spans] == expected


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1.5", "SELECT .5", "SELECT 1e5", "SELECT 0x1F", "SELECT 1_000", "SELECT 1234567890", "SELECT a1", "SELECT $1",
     "SELECT 5a", "SELECT x.5", "SELECT 1é"],
)
def test_numbers_postgres_reads_otherwise_are_not_masked(sql):
    assert PC._pg_mask(sql) is None


# ---- condition (2): the classifier never reads an A_Const's value ---------------------------


def _tree_categories(tree) -> list[tuple[str, ...]]:
    out = []
    for entry in tree.get("stmts", ()):
        cats: set[str] = set()
        PGP._pg_node_categories(entry["stmt"], cats)
        PGP._pg_walk_dml(entry["stmt"], cats)
        out.append(tuple(sorted(cats)))
    return out


def _with_other_values(obj, value):
    if isinstance(obj, list):
        return [_with_other_values(v, value) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if isinstance(obj.get("A_Const"), dict):
        return {"A_Const": {**value, "location": obj["A_Const"].get("location", 0)}}
    return {k: _with_other_values(v, value) for k, v in obj.items()}


CONST_VALUES = [
    {"ival": {"ival": 987654}},
    {"ival": {}},
    {"sval": {"sval": 'off'}},
    {"sval": {"sval": '"DeleteStmt": {"ColumnRef": 1}; DROP TABLE x'}},
    {"fval": {"fval": "0"}},
    {"boolval": {}},
    {"isnull": True},
]


@pytest.mark.parametrize("sql", PG_CASES + [fill(t, [("5", "'x'")] * 6) for t in TEMPLATES], ids=lambda s: s[:40])
def test_classifier_ignores_a_const_values(sql):
    import json

    from pglast.parser import ParseError, parse_sql_json

    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        return
    want = _tree_categories(tree)
    for value in CONST_VALUES:
        assert _tree_categories(_with_other_values(tree, value)) == want, (sql, value)


# ---- the decision memo (Policy.decide, parts served from a cache) ---------------------------


def test_memoized_decisions_follow_the_identity():
    policy = Policy.from_config(EXAMPLE)  # agents need approval for DML; others do not
    texts = [f"DELETE FROM t WHERE id = {n}" for n in range(3)] + ["DELETE FROM t WHERE id = $1"]
    for _ in range(2):
        for sql in texts:
            for identity, action in (
                (ALICE, "allow"),
                (AGENT, "require_approval"),
                (("bot-7", ["agents"]), "require_approval"),  # groups as a list
                (("bot-7", frozenset()), "allow"),  # same subject, no group
                (("alice", ("agents",)), "require_approval"),
            ):
                got = policy.decide(sql, identity, PG)
                assert got.action == action, (sql, identity, got)
                assert same(got, reference(policy, sql, identity))


def test_the_memo_is_bounded_and_survives_cache_eviction():
    policy = Policy(DEFAULT_RULES)
    for n in range(R._MEMO_SIZE + CACHE_SIZE + 10):
        sql = f"SELECT c{n} FROM t WHERE a = {n}" if n % 2 else f"DROP TABLE t{n}"
        assert policy.decide(sql, ALICE, PG).action == ("allow" if n % 2 else "require_approval")
    assert len(policy._memo) <= R._MEMO_SIZE
