"""The PostgreSQL wire engine, fed real protocol bytes built here; no sockets.

Every scenario is a script of (direction, bytes) steps. It is fed three ways — each step
all at once, one byte at a time, and cut at random points — and the concatenated output
and the events must be the same every way. Then an incomplete trailing message must be
held back untouched until its last byte arrives.
"""

from __future__ import annotations

import random
import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopcli.gateway.protocols.base import (
    MAX_MESSAGE_BYTES,
    ProtocolError,
    SessionStarted,
    StatementBlocked,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    Verdict,
)
from hoopcli.gateway.protocols.pgwire.encodings import reads_the_same_in_every_encoding
from hoopcli.gateway.protocols.postgres import (
    DENY_SQLSTATE,
    GRANT_USED_MESSAGE,
    HOLD_SQLSTATE,
    SKIPPED_SQLSTATE,
    PostgresEngine,
)

# ---- building protocol bytes ------------------------------------------------------------


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(user="alice", database=None, **extra) -> bytes:
    body = struct.pack("!I", 196608) + cstr("user") + cstr(user)
    if database is not None:
        body += cstr("database") + cstr(database)
    for k, v in extra.items():
        body += cstr(k) + cstr(v)
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)


def cancel_request(pid=42, key=7) -> bytes:
    return struct.pack("!IIII", 16, 80877102, pid, key)


def Q(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def P(sql: str, name: str = "") -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def B(params=(), name: str = "", portal: str = "", formats=None) -> bytes:
    formats = formats or []
    body = cstr(portal) + cstr(name) + struct.pack("!h", len(formats))
    body += b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            raw = p.encode() if isinstance(p, str) else p
            body += struct.pack("!i", len(raw)) + raw
    return msg(b"B", body + struct.pack("!h", 0))


def D(what: str = "P", name: str = "") -> bytes:
    return msg(b"D", what.encode() + cstr(name))


def E(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!I", max_rows))


def CLOSE(what: str = "S", name: str = "") -> bytes:
    return msg(b"C", what.encode() + cstr(name))


SYNC = msg(b"S")
FLUSH = msg(b"H")
TERMINATE = msg(b"X")
COPY_DONE = msg(b"c")


def copy_data(raw: bytes) -> bytes:
    return msg(b"d", raw)


def copy_fail(reason: str) -> bytes:
    return msg(b"f", cstr(reason))


def password(secret: str) -> bytes:
    return msg(b"p", cstr(secret))


# server side
def auth_ok() -> bytes:
    return msg(b"R", struct.pack("!I", 0))


def param_status(k, v) -> bytes:
    return msg(b"S", cstr(k) + cstr(v))


def backend_key() -> bytes:
    return msg(b"K", struct.pack("!II", 42, 7))


def Z(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def T(*cols: str) -> bytes:
    body = struct.pack("!h", len(cols))
    for c in cols:
        body += cstr(c) + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
    return msg(b"T", body)


def DR(*values) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            raw = v if isinstance(v, bytes) else str(v).encode()
            body += struct.pack("!i", len(raw)) + raw
    return msg(b"D", body)


def CC(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def ERR(code: str, message: str, severity: str = "ERROR") -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(message) + b"\0"
    return msg(b"E", body)


def NOTICE(message: str) -> bytes:
    return msg(b"N", b"SNOTICE\0C00000\0M" + cstr(message) + b"\0")


PARSE_OK = msg(b"1")
BIND_OK = msg(b"2")
CLOSE_OK = msg(b"3")
NO_DATA = msg(b"n")
EMPTY = msg(b"I")
SUSPENDED = msg(b"s")


def param_desc(*oids) -> bytes:
    return msg(b"t", struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def copy_in_response() -> bytes:
    return msg(b"G", struct.pack("!bh", 0, 1) + struct.pack("!h", 0))


def copy_out_response() -> bytes:
    return msg(b"H", struct.pack("!bh", 0, 1) + struct.pack("!h", 0))


LOGIN = auth_ok() + param_status("server_version", "16.1") + backend_key() + Z()


def parse_messages(stream: bytes) -> list[tuple[bytes, bytes]]:
    """Split a typed stream into (type, body) pairs; asserts it is well framed."""
    out, i = [], 0
    while i < len(stream):
        (ln,) = struct.unpack_from("!I", stream, i + 1)
        out.append((stream[i : i + 1], stream[i + 5 : i + 1 + ln]))
        i += 1 + ln
    assert i == len(stream), "stream not well framed"
    return out


def error_fields(body: bytes) -> dict[str, str]:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


# ---- feeding ----------------------------------------------------------------------------


class Result:
    def __init__(self) -> None:
        self.to_server = b""
        self.to_client = b""
        self.events: list = []
        self.close = False
        self.per_step: list[tuple[bytes, bytes, list]] = []


def _chunks(data: bytes, how: str, rng: random.Random) -> list[bytes]:
    if how == "whole" or len(data) <= 1:
        return [data]
    if how == "bytes":
        return [data[k : k + 1] for k in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def feed(engine: PostgresEngine, script, how: str = "whole", seed: int = 0) -> Result:
    rng = random.Random(seed)
    res = Result()
    for direction, data in script:
        step_s, step_c, step_ev = b"", b"", []
        for chunk in _chunks(data, how, rng):
            out = engine.from_client(chunk) if direction == "c" else engine.from_server(chunk)
            step_s += out.to_server
            step_c += out.to_client
            step_ev += out.events
            res.close = res.close or out.close
        res.to_server += step_s
        res.to_client += step_c
        res.events += step_ev
        res.per_step.append((step_s, step_c, step_ev))
    return res


def run(script, gate=None, record_params=False, trailing=True) -> Result:
    """Feed the script three ways; all must agree. Returns the result of the whole-chunk run."""
    results = [feed(PostgresEngine(gate, record_params), script, "whole")]
    results.append(feed(PostgresEngine(gate, record_params), script, "bytes"))
    for seed in range(4):
        results.append(feed(PostgresEngine(gate, record_params), script, "random", seed))
    first = results[0]
    for other in results[1:]:
        assert other.per_step == first.per_step
        assert other.close == first.close
    if trailing and not first.close:
        check_trailing(script, gate, record_params)
    return first


def check_trailing(script, gate, record_params) -> None:
    """Bytes of a next message must be held back whole and released when complete."""
    engine = PostgresEngine(gate, record_params)
    feed(engine, script)
    nxt = Q("select 'trailing'")
    for cut in (1, 4, 5, len(nxt) - 1):
        e2 = PostgresEngine(gate, record_params)
        feed(e2, script)
        first = e2.from_client(nxt[:cut])
        assert first.to_server == b"" and first.events == [] and not first.close
        rest = e2.from_client(nxt[cut:])
        assert rest.to_server == nxt
        assert rest.events == [StatementStarted("select 'trailing'", "query")]


def session(*steps) -> list[tuple[str, bytes]]:
    return [("c", startup()), ("s", LOGIN), *steps]


def allow_all(text: str) -> Verdict:
    return Verdict("allow")


def policy(text: str) -> Verdict:
    low = text.lower()
    if "drop" in low:
        return Verdict("deny", "dropping tables is not allowed", rule="no-drop")
    if "delete" in low:
        return Verdict("hold", "waiting for approval", request_id="req-7")
    return Verdict("allow")


# ---- startup ----------------------------------------------------------------------------


def test_ssl_request_answered_n_and_not_forwarded():
    res = run([("c", SSL_REQUEST), ("c", startup("bob", "shop")), ("s", LOGIN)])
    assert res.per_step[0] == (b"", b"N", [])
    assert res.per_step[1][0] == startup("bob", "shop")
    assert res.events == [SessionStarted("bob", "shop")]
    assert res.to_client == b"N" + LOGIN


def test_gssenc_then_ssl_then_startup_database_defaults_to_user():
    res = run([("c", GSSENC_REQUEST), ("c", SSL_REQUEST), ("c", startup("carol")), ("s", LOGIN)])
    assert res.to_client == b"NN" + LOGIN
    assert res.to_server == startup("carol")
    assert res.events == [SessionStarted("carol", "carol")]


def test_cancel_request_forwarded_as_is():
    res = run([("c", cancel_request())], trailing=False)
    assert res.to_server == cancel_request()
    assert res.events == [] and not res.close
    engine = PostgresEngine()
    engine.from_client(cancel_request())
    out = engine.from_client(b"more")
    assert out.close and isinstance(out.events[0], ProtocolError)


def test_startup_passes_through_without_copy():
    engine = PostgresEngine()
    data = startup()
    assert engine.from_client(data).to_server == data
    chunk = P("select 1") + B() + E() + SYNC
    assert engine.from_client(chunk).to_server is chunk
    reply = T("a") + DR(1) + CC("SELECT 1") + Z()
    assert engine.from_server(reply).to_client is reply


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack("!II", 8, 12345),  # unknown code
        struct.pack("!II", 8, 131072),  # protocol 2
        struct.pack("!II", 3, 80877103),  # length below 8
        struct.pack("!II", 100_000, 196608),  # too long for a startup packet
        b"\x16\x03\x01\x02\x00\x01\x00\x01",  # a TLS ClientHello (direct TLS)
        struct.pack("!II", 12, 80877103) + b"xxxx",  # SSLRequest of the wrong size
        struct.pack("!II", 12, 196608) + b"\0\0\0\0",  # no user
    ],
)
def test_bad_startup_is_a_protocol_error(bad):
    for how in ("whole", "bytes"):
        res = feed(PostgresEngine(), [("c", bad)], how)
        assert res.close
        assert [type(e) for e in res.events] == [ProtocolError]
        assert res.events[0].direction == "client"
        assert res.to_server == b""


# ---- simple protocol --------------------------------------------------------------------


def test_simple_query_started_and_finished_with_tag():
    reply = T("n") + DR(1) + DR(2) + CC("SELECT 2") + Z()
    res = run(session(("c", Q("select n from t")), ("s", reply)))
    assert res.events == [
        SessionStarted("alice", "alice"),
        StatementStarted("select n from t", "query"),
        StatementFinished("SELECT 2"),
    ]
    assert res.to_client == LOGIN + reply


def test_simple_query_error_gives_sqlstate():
    reply = ERR("42P01", 'relation "nope" does not exist') + Z()
    res = run(session(("c", Q("select * from nope")), ("s", reply)))
    assert res.events[1:] == [
        StatementStarted("select * from nope", "query"),
        StatementFailed("42P01", 'relation "nope" does not exist'),
    ]


def test_multi_statement_query_is_one_statement_with_the_last_tag():
    reply = CC("BEGIN") + CC("INSERT 0 1") + T("n") + DR(1) + CC("SELECT 1") + CC("COMMIT") + Z()
    res = run(session(("c", Q("begin; insert into t values (1); select 1; commit")), ("s", reply)))
    assert res.events[1:] == [
        StatementStarted("begin; insert into t values (1); select 1; commit", "query"),
        StatementFinished("COMMIT"),
    ]


def test_multi_statement_query_error_wins_and_is_reported_once():
    reply = CC("INSERT 0 1") + ERR("22012", "division by zero") + Z()
    res = run(session(("c", Q("insert into t values (1); select 1/0; select 2")), ("s", reply)))
    assert res.events[2:] == [StatementFailed("22012", "division by zero")]


def test_empty_query_and_notices():
    reply = NOTICE("hello") + EMPTY + Z()
    res = run(session(("c", Q("")), ("s", reply)))
    assert res.events[1:] == [StatementStarted("", "query"), StatementFinished("EMPTY QUERY")]


def test_pipelined_simple_queries_each_get_their_outcome():
    """ASCII queries read the same whatever encoding a query before them switched to: the
    fence lets them go at once, and each still gets its own outcome."""
    client = Q("select 1") + Q("select x") + Q("select 3")
    res = run(session(
        ("c", client),
        ("s", T("a") + DR(1) + CC("SELECT 1") + Z()),
        ("s", ERR("42703", "no x") + Z()),
        ("s", T("a") + DR(3) + CC("SELECT 1") + Z(b"I")),
    ))
    assert res.events[1:] == [
        StatementStarted("select 1", "query"),
        StatementStarted("select x", "query"),
        StatementStarted("select 3", "query"),
        StatementFinished("SELECT 1"),
        StatementFailed("42703", "no x"),
        StatementFinished("SELECT 1"),
    ]
    assert [step[0] for step in res.per_step[2:]] == [client, b"", b"", b""]


# Shift_JIS reads 0x95 0x5C as one character (表): the backslash is gone and the quote after it
# ends the string, so the INSERT runs. Read as UTF-8 the whole thing is one string literal.
SJIS_SMUGGLE = b"select E'\x95\\'; insert into t values (1); --'"


def test_a_non_ascii_query_waits_for_the_answers_ahead_of_it_and_blocks_what_follows():
    """Held: the query whose text a switch could change, and everything after it (order);
    let go after the ReadyForQuery of every statement forwarded before it."""
    sneaky = msg(b"Q", SJIS_SMUGGLE + b"\0")
    client = Q("select 1") + Q("select 2") + sneaky + Q("select 4")
    answer = T("a") + DR(1) + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", answer), ("s", answer), ("s", answer + answer)))
    assert res.per_step[2][0] == Q("select 1") + Q("select 2")
    assert res.per_step[3][0] == b""  # select 2 is not answered yet
    assert res.per_step[4][0] == sneaky + Q("select 4")  # the ASCII query behind it waited too
    assert [e.text for e in res.events if isinstance(e, StatementStarted)] == [
        "select 1", "select 2", SJIS_SMUGGLE.decode("utf-8", "replace"), "select 4"]


def test_a_pipeline_behind_a_copy_waits_whole_until_the_copy_is_answered():
    """A Query sent before the server asked for COPY data would be read as a broken COPY and
    never answered: behind a statement that says COPY every message but COPY data waits."""
    data = copy_data(b"1\n") + COPY_DONE
    client = Q("copy t from stdin") + data + Q("select 2")
    res = run(session(("c", client), ("s", copy_in_response()), ("s", CC("COPY 1") + Z()), ("s", CC("SELECT 1") + Z())))
    assert res.per_step[2][0] == Q("copy t from stdin")
    assert res.per_step[3][0] == data  # the server reads COPY data now; the Query still waits
    assert res.per_step[4][0] == Q("select 2")
    assert res.events[1:] == [
        StatementStarted("copy t from stdin", "query"), StatementFinished("COPY 1"),
        StatementStarted("select 2", "query"), StatementFinished("SELECT 1"),
    ]


def test_a_long_held_pipeline_is_let_go_without_copying_what_stays_held():
    """Each release feeds the held chunk on from where the last one stopped and leaves the rest
    where it lies (before: a copy and a re-framing of all that stayed, per release: quadratic)."""
    engine = PostgresEngine()
    engine.from_client(startup())
    engine.from_server(LOGIN)
    count = 4000
    queries = [msg(b"Q", "select '中%d'".encode() % k + b"\0") for k in range(count)]  # GBK: 中's last byte + '
    assert not reads_the_same_in_every_encoding(queries[1][5:])
    chunk = b"".join(queries)
    assert engine.from_client(chunk).to_server == queries[0]
    answer = CC("SELECT 1") + Z()
    sent = []
    at = len(queries[0])
    for k in range(1, count - 1):
        sent.append(engine.from_server(answer).to_server)
        at += len(queries[k])
        assert engine._held[0] is chunk and engine._held_from == at
    sent += [engine.from_server(answer).to_server, engine.from_server(answer).to_server]
    assert engine._held is None
    assert sent[:-1] == queries[1:] and sent[-1] == b""  # one at a time, in order
    assert engine._held is None and engine._held_size == 0


def test_password_message_never_appears_in_events_or_errors():
    secret = "s3cr3t-hunter2"
    sasl = msg(b"R", struct.pack("!I", 10) + cstr("SCRAM-SHA-256") + b"\0")
    script = [
        ("c", startup()),
        ("s", sasl),
        ("c", msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", 20) + f"n,,n=,r={secret}".encode())),
        ("s", msg(b"R", struct.pack("!I", 11) + b"r=abc,s=xyz,i=4096")),
        ("c", password(secret)),
        ("s", LOGIN),
        ("c", Q("select 1")),
        ("s", CC("SELECT 1") + Z()),
    ]
    res = run(script)
    assert secret.encode() in res.to_server
    assert secret not in repr(res.events)
    # and a broken frame after a password never echoes its bytes either
    engine = PostgresEngine()
    engine.from_client(startup())
    out = engine.from_client(password(secret) + b"\x01" + secret.encode())
    assert out.close and secret not in repr(out.events)


# ---- extended protocol ------------------------------------------------------------------


def test_extended_query_with_params_recorded():
    client = P("select * from t where id = $1 and tag = $2", "s1") + B(["42", b"\x00\x01"], "s1", formats=[0, 1]) + D() + E() + SYNC
    server = PARSE_OK + BIND_OK + T("id") + DR(42) + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", server)), record_params=True)
    assert res.events[1:] == [
        StatementStarted("select * from t where id = $1 and tag = $2", "execute", ("42", "0001")),
        StatementFinished("SELECT 1"),
    ]
    assert res.to_server == startup() + client


def test_extended_params_null_and_single_format():
    client = P("select $1, $2") + B([None, b"\xff"], formats=[1]) + E() + SYNC
    server = PARSE_OK + BIND_OK + DR(None, b"\xff") + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", server)), record_params=True)
    assert res.events[1] == StatementStarted("select $1, $2", "execute", (None, "ff"))


def test_extended_params_not_recorded_by_default():
    client = P("select $1") + B(["secret-value"]) + E() + SYNC
    server = PARSE_OK + BIND_OK + DR("x") + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", server)))
    assert res.events[1] == StatementStarted("select $1", "execute", None)
    assert "secret-value" not in repr(res.events)


def test_prepared_statement_reused_and_closed():
    prepare = P("select abalance from pgbench_accounts where aid = $1", "q1") + D("S", "q1") + SYNC
    prepared = PARSE_OK + param_desc(23) + T("abalance") + Z()
    runs = []
    for aid in (1, 2):
        runs.append(("c", B([str(aid)], "q1") + D() + E() + SYNC))
        runs.append(("s", BIND_OK + T("abalance") + DR(0) + CC("SELECT 1") + Z()))
    script = session(("c", prepare), ("s", prepared), *runs, ("c", CLOSE("S", "q1") + SYNC), ("s", CLOSE_OK + Z()))
    res = run(script)
    assert res.events[1:] == [
        StatementStarted("select abalance from pgbench_accounts where aid = $1", "execute"),
        StatementFinished("SELECT 1"),
        StatementStarted("select abalance from pgbench_accounts where aid = $1", "execute"),
        StatementFinished("SELECT 1"),
    ]


def test_pipelined_executes_each_get_their_outcome():
    client = (
        P("insert into t values ($1)", "ins")
        + B(["1"], "ins") + E()
        + B(["2"], "ins") + E()
        + SYNC
        + P("select 1") + B() + E() + SYNC
    )
    first = PARSE_OK + BIND_OK + CC("INSERT 0 1") + BIND_OK + CC("INSERT 0 1") + Z(b"I")
    res = run(session(("c", client), ("s", first), ("s", PARSE_OK + BIND_OK + DR(1) + CC("SELECT 1") + Z())))
    assert res.events[1:] == [
        StatementStarted("insert into t values ($1)", "execute"),
        StatementStarted("insert into t values ($1)", "execute"),
        StatementStarted("select 1", "execute"),
        StatementFinished("INSERT 0 1"),
        StatementFinished("INSERT 0 1"),
        StatementFinished("SELECT 1"),
    ]
    # The second segment's text is ASCII: it went at once, behind the first one.
    assert res.per_step[2][0] == client
    assert res.per_step[3][0] == b""


def test_error_mid_pipeline_skips_to_sync():
    client = (
        P("insert into t values ($1)", "ins")
        + B(["1"], "ins") + E()
        + B(["x"], "ins") + E()  # fails
        + B(["3"], "ins") + E()  # skipped by the server
        + SYNC
        + B(["4"], "ins") + E() + SYNC  # runs again after the Sync
    )
    first = (
        PARSE_OK + BIND_OK + CC("INSERT 0 1")
        + BIND_OK + ERR("22P02", "invalid input syntax for type integer")
        + Z(b"I")
    )
    res = run(session(("c", client), ("s", first), ("s", BIND_OK + CC("INSERT 0 1") + Z())))
    outcomes = [e for e in res.events if not isinstance(e, (StatementStarted, SessionStarted))]
    assert outcomes == [
        StatementFinished("INSERT 0 1"),
        StatementFailed("22P02", "invalid input syntax for type integer"),
        StatementFailed(SKIPPED_SQLSTATE, "not executed: an earlier message before Sync failed"),
        StatementFinished("INSERT 0 1"),
    ]


def test_parse_error_is_reported_on_the_execute_it_prevented():
    client = P("selec 1") + B() + D() + E() + SYNC + Q("select 1")
    res = run(session(("c", client), ("s", ERR("42601", 'syntax error at or near "selec"') + Z()), ("s", CC("SELECT 1") + Z())))
    assert res.events[1:] == [
        StatementStarted("selec 1", "execute"),
        StatementStarted("select 1", "query"),
        StatementFailed("42601", 'syntax error at or near "selec"'),
        StatementFinished("SELECT 1"),
    ]


def test_error_at_sync_and_portal_suspended():
    client = P("select generate_series(1, 5)") + B() + E(max_rows=2) + E(max_rows=2) + SYNC
    server = PARSE_OK + BIND_OK + DR(1) + DR(2) + SUSPENDED + DR(3) + DR(4) + SUSPENDED + ERR("40001", "could not serialize") + Z()
    res = run(session(("c", client), ("s", server)))
    assert res.events[3:] == [StatementFinished("SUSPENDED"), StatementFinished("SUSPENDED")]


def test_flush_and_empty_execute():
    client = P("") + B() + E() + FLUSH
    server = PARSE_OK + BIND_OK + EMPTY
    res = run(session(("c", client), ("s", server), ("c", SYNC), ("s", Z())))
    assert res.events[1:] == [StatementStarted("", "execute"), StatementFinished("EMPTY QUERY")]


def test_unknown_portal_is_named():
    res = run(session(("c", E("cur") + SYNC), ("s", CC("FETCH 0") + Z())))
    assert res.events[1] == StatementStarted("<unknown portal 'cur'>", "execute")


def test_a_bind_of_a_statement_never_parsed_here_is_refused():
    """SQL `PREPARE s AS …` (or a routine) makes a statement the gateway never saw as a Parse:
    binding it through the protocol would run text the gate did not judge (and an approved
    PREPARE any number of times), so the Bind is refused and its segment dropped."""
    res = run(session(("c", B(name="sqlprep") + E() + SYNC), ("c", Q("select 1")), ("s", CC("SELECT 1") + Z())))
    blocked = res.events[1]
    assert isinstance(blocked, StatementBlocked) and blocked.verdict.rule == "unknown-statement"
    assert res.per_step[2][0] == b""  # nothing of that segment reached the server
    (refusal,) = _refusals(res.per_step[2][1])
    assert refusal["C"] == DENY_SQLSTATE and 'prepared statement "sqlprep"' in refusal["M"]
    assert res.events[2:] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


# ---- COPY -------------------------------------------------------------------------------


def test_copy_in_simple():
    script = session(
        ("c", Q("copy t from stdin")),
        ("s", copy_in_response()),
        ("c", copy_data(b"1\tone\n") + copy_data(b"2\ttwo\n") + COPY_DONE),
        ("s", CC("COPY 2") + Z()),
        ("c", Q("select 1")),
        ("s", CC("SELECT 1") + Z()),
    )
    res = run(script)
    assert res.events[1:] == [
        StatementStarted("copy t from stdin", "query"),
        StatementFinished("COPY 2"),
        StatementStarted("select 1", "query"),
        StatementFinished("SELECT 1"),
    ]


def test_copy_in_extended_ignores_the_early_sync():
    # libpq: P B D E S, then the data, then CopyDone + Sync; the first Sync is read (and
    # ignored) by the server as part of the copy, so only one ReadyForQuery comes back.
    script = session(
        ("c", P("copy t from stdin") + B() + D() + E() + SYNC),
        ("s", PARSE_OK + BIND_OK + NO_DATA + copy_in_response()),
        ("c", copy_data(b"1\n") + COPY_DONE + SYNC),
        ("s", CC("COPY 1") + Z()),
        ("c", Q("select 2")),
        ("s", CC("SELECT 1") + Z()),
    )
    res = run(script)
    assert res.events[1:] == [
        StatementStarted("copy t from stdin", "execute"),
        StatementFinished("COPY 1"),
        StatementStarted("select 2", "query"),
        StatementFinished("SELECT 1"),
    ]


def test_copy_in_fail():
    script = session(
        ("c", Q("copy t from stdin")),
        ("s", copy_in_response()),
        ("c", copy_data(b"1\n") + copy_fail("client gave up")),
        ("s", ERR("57014", "COPY from stdin failed: client gave up") + Z()),
    )
    res = run(script)
    assert res.events[-1] == StatementFailed("57014", "COPY from stdin failed: client gave up")


def test_copy_out_large_rows_streamed():
    big = b"x" * 300_000
    server = copy_out_response() + copy_data(big) + copy_data(b"2\n") + msg(b"c") + CC("COPY 2") + Z()
    res = run(session(("c", Q("copy t to stdout")), ("s", server)))
    assert res.events[1:] == [StatementStarted("copy t to stdout", "query"), StatementFinished("COPY 2")]
    assert res.to_client == LOGIN + server


def test_runs_of_data_rows_and_copy_data_end_where_the_next_message_starts():
    # Runs of D/d messages take a tighter loop: rows of every width (an empty one too), a
    # run reaching into the next read, and what follows each run must all come out the same.
    rows = b"".join(DR(str(k) * (k % 7)) for k in range(40)) + msg(b"D", b"")
    copy = b"".join(copy_data(b"%d\t%s\n" % (k, b"x" * (k % 11))) for k in range(40))
    server_select = T("n") + rows + CC("SELECT 41") + Z()
    server_copy = copy_out_response() + copy + msg(b"c") + CC("COPY 40") + Z()
    res = run(session(("c", Q("select n from t")), ("s", server_select), ("c", Q("copy t to stdout")), ("s", server_copy)))
    assert res.events[1:] == [
        StatementStarted("select n from t", "query"), StatementFinished("SELECT 41"),
        StatementStarted("copy t to stdout", "query"), StatementFinished("COPY 40"),
    ]
    assert res.to_client == LOGIN + server_select + server_copy


@pytest.mark.parametrize("bad", [b"D\0\0\0\x03", b"d\0\0\0\x00", b"D\xff\xff\xff\xff"])
def test_a_bad_length_inside_a_run_of_data_rows_is_a_protocol_error(bad):
    engine = PostgresEngine()
    feed(engine, session(("c", Q("select n from t"))))
    out = engine.from_server(T("n") + DR("1") + DR("2") + bad + DR("3") + CC("SELECT 3") + Z())
    assert out.close and isinstance(out.events[-1], ProtocolError) and out.events[-1].direction == "server"


def test_large_datarow_and_query_across_many_reads():
    engine = PostgresEngine()
    engine.from_client(startup())
    engine.from_server(LOGIN)
    text = "select '" + "y" * 3_000_000 + "'"
    query = Q(text)
    forwarded = b""
    for k in range(0, len(query), 65536):
        out = engine.from_client(query[k : k + 65536])
        forwarded += out.to_server
        assert out.events == [] or out.events == [StatementStarted(text, "query")]
    assert forwarded == query
    reply = T("y") + DR(b"y" * 5_000_000) + CC("SELECT 1") + Z()
    got = b""
    events = []
    for k in range(0, len(reply), 65536):
        out = engine.from_server(reply[k : k + 65536])
        got += out.to_client
        events += out.events
    assert got == reply and events == [StatementFinished("SELECT 1")]


# ---- gating -----------------------------------------------------------------------------


def _refusals(stream: bytes) -> list[dict[str, str]]:
    return [error_fields(body) for kind, body in parse_messages(stream) if kind == b"E"]


def test_gate_deny_simple_query():
    script = session(
        ("c", Q("drop table accounts")),
        ("c", Q("select 1")),
        ("s", CC("SELECT 1") + Z()),
    )
    res = run(script, gate=policy)
    denied_step = res.per_step[2]
    assert denied_step[0] == b""  # nothing reaches the server
    kinds = [k for k, _ in parse_messages(denied_step[1])]
    assert kinds == [b"E", b"Z"]
    fields = _refusals(denied_step[1])[0]
    assert fields["C"] == DENY_SQLSTATE and fields["S"] == "ERROR"
    assert fields["M"] == "dropping tables is not allowed"
    assert isinstance(denied_step[2][0], StatementBlocked)
    assert denied_step[2][0].verdict.rule == "no-drop"
    # the session goes on
    assert res.events[-2:] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_gate_hold_uses_its_own_sqlstate_and_transaction_status():
    script = session(
        ("c", Q("begin")),
        ("s", CC("BEGIN") + Z(b"T")),
        ("c", Q("delete from accounts")),
        ("c", Q("commit")),
        ("s", CC("COMMIT") + Z(b"I")),
    )
    res = run(script, gate=policy)
    held = res.per_step[4]
    assert held[0] == b""
    msgs = parse_messages(held[1])
    assert [k for k, _ in msgs] == [b"E", b"Z"] and msgs[1][1] == b"T"
    fields = error_fields(msgs[0][1])
    assert fields["C"] == HOLD_SQLSTATE != DENY_SQLSTATE
    assert fields["M"] == "waiting for approval" and "req-7" in fields["D"]
    assert held[2] == [StatementBlocked("delete from accounts", Verdict("hold", "waiting for approval", "req-7"))]


def test_gate_refusal_waits_behind_outstanding_answers():
    # select 1 is still running at the server when the drop is refused: the refusal must
    # reach the client after select 1's answer, not before.
    client = Q("select 1") + Q("drop table t") + Q("select 3")
    server_1 = T("a") + DR(1) + CC("SELECT 1") + Z()
    server_3 = T("a") + DR(3) + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", server_1), ("s", server_3)), gate=policy)
    assert res.per_step[2][0] == Q("select 1") + Q("select 3")  # ASCII: the fence lets it go
    assert res.per_step[3][0] == b""
    assert res.per_step[2][1] == b""  # nothing for the client yet
    kinds = [k for k, _ in parse_messages(res.to_client[len(LOGIN) :])]
    assert kinds == [b"T", b"D", b"C", b"Z", b"E", b"Z", b"T", b"D", b"C", b"Z"]
    assert res.per_step[3][1].startswith(server_1) and res.per_step[3][1] != server_1
    assert res.per_step[4][1] == server_3
    assert [type(e).__name__ for e in res.events[1:]] == [
        "StatementStarted",
        "StatementBlocked",
        "StatementStarted",
        "StatementFinished",
        "StatementFinished",
    ]


def test_gate_refusal_waits_behind_a_streamed_notification():
    engine = PostgresEngine(policy)
    feed(engine, session())
    note = msg(b"A", struct.pack("!I", 1) + cstr("chan") + cstr("p" * 1000))
    first = engine.from_server(note[:100])
    assert first.to_client == note[:100]
    out = engine.from_client(Q("drop table t"))
    assert out.to_client == b"" and out.to_server == b""
    rest = engine.from_server(note[100:])
    assert rest.to_client.startswith(note[100:])
    assert [k for k, _ in parse_messages(rest.to_client[len(note) - 100 :])] == [b"E", b"Z"]


def test_gate_deny_parse_at_segment_start_drops_through_sync():
    client = P("drop table t", "x") + B(name="x") + D() + E() + SYNC + P("select 1") + B() + E() + SYNC
    server = PARSE_OK + BIND_OK + DR(1) + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", server)), gate=policy)
    assert res.per_step[2][0] == P("select 1") + B() + E() + SYNC
    immediate = parse_messages(res.per_step[2][1])
    assert [k for k, _ in immediate] == [b"E", b"Z"]
    assert error_fields(immediate[0][1])["C"] == DENY_SQLSTATE
    assert res.events[1:] == [
        StatementBlocked("drop table t", Verdict("deny", "dropping tables is not allowed", rule="no-drop")),
        StatementStarted("select 1", "execute"),
        StatementFinished("SELECT 1"),
    ]


def test_gate_parse_refusal_ordered_after_earlier_pipeline():
    client = P("select 1") + B() + E() + SYNC + P("delete from t") + B() + E() + SYNC
    server = PARSE_OK + BIND_OK + DR(1) + CC("SELECT 1") + Z()
    res = run(session(("c", client), ("s", server)), gate=policy)
    assert res.per_step[2][0] == P("select 1") + B() + E() + SYNC
    assert res.per_step[2][1] == b""
    out = res.per_step[3][1]
    assert out.startswith(server)
    tail = parse_messages(out[len(server) :])
    assert [k for k, _ in tail] == [b"E", b"Z"] and error_fields(tail[0][1])["C"] == HOLD_SQLSTATE


def test_gate_parse_refused_mid_segment_is_failed_by_the_server():
    # pgjdbc style: BEGIN and the statement in one segment. The refused Parse is replaced
    # by one that fails at the server, so the segment's implicit work is rolled back and
    # the server's own ReadyForQuery ends it.
    client = P("begin") + B() + E() + P("drop table t") + B() + D() + E() + SYNC
    engine = PostgresEngine(policy)
    feed(engine, session())
    out = engine.from_client(client)
    sent = parse_messages(out.to_server)
    assert [k for k, _ in sent] == [b"P", b"B", b"E", b"P", b"S"]
    assert b"drop" not in out.to_server and b"hoop_blocked_statement" in sent[3][1]
    server = PARSE_OK + BIND_OK + CC("BEGIN") + ERR("42601", 'syntax error at or near "hoop_blocked_statement"') + Z(b"E")
    script = session(("c", client), ("s", server), ("c", Q("rollback")), ("s", CC("ROLLBACK") + Z()))
    res = run(script, gate=policy)
    got = parse_messages(res.per_step[3][1])
    assert [k for k, _ in got] == [b"1", b"2", b"C", b"E", b"Z"]
    assert error_fields(got[3][1])["C"] == DENY_SQLSTATE and got[4][1] == b"E"
    assert res.events[1:] == [
        StatementStarted("begin", "execute"),
        StatementBlocked("drop table t", Verdict("deny", "dropping tables is not allowed", rule="no-drop")),
        StatementFinished("BEGIN"),
        StatementStarted("rollback", "query"),
        StatementFinished("ROLLBACK"),
    ]


def test_gate_query_refused_mid_segment_uses_the_server_round_trip():
    client = P("select 1") + B() + E() + Q("drop table t") + SYNC
    server = PARSE_OK + BIND_OK + DR(1) + CC("SELECT 1") + ERR("42601", "syntax error") + Z() + Z()
    res = run(session(("c", client), ("s", server)), gate=policy)
    assert b"drop" not in res.to_server
    got = parse_messages(res.per_step[3][1])
    assert [k for k, _ in got] == [b"1", b"2", b"D", b"C", b"E", b"Z", b"Z"]
    assert error_fields(got[4][1])["C"] == DENY_SQLSTATE


def test_gate_refused_parse_after_a_failed_one_only_reports_the_real_error():
    client = P("select nope") + B() + E() + P("drop table t") + B() + E() + SYNC
    # the server fails the first Parse and skips our stand-in with everything else
    server = ERR("42703", 'column "nope" does not exist') + Z()
    res = run(session(("c", P("select 0") + B() + E() + FLUSH), ("s", PARSE_OK + BIND_OK + CC("SELECT 1")), ("c", client), ("s", server)), gate=policy)
    got = parse_messages(res.per_step[5][1])
    assert [k for k, _ in got] == [b"E", b"Z"] and error_fields(got[0][1])["C"] == "42703"
    assert res.events[-1] == StatementFailed("42703", 'column "nope" does not exist')


def test_gate_exception_fails_closed():
    def broken(text):
        raise RuntimeError("policy store down")

    res = run(session(("c", Q("select 1"))), gate=broken, trailing=False)
    assert res.per_step[2][0] == b""
    assert error_fields(parse_messages(res.per_step[2][1])[0][1])["C"] == DENY_SQLSTATE
    assert isinstance(res.events[-1], StatementBlocked)


def test_gate_allow_passes_the_same_bytes():
    engine = PostgresEngine(allow_all)
    feed(engine, session())
    chunk = P("select 2") + B() + E() + SYNC
    out = engine.from_client(chunk)
    assert out.to_server is chunk


def test_function_call_is_gated_and_recorded():
    call = msg(b"F", struct.pack("!Ihh", 1598, 0, 1) + struct.pack("!i", 4) + b"\0\0\0\x01" + struct.pack("!h", 0))
    reply = msg(b"V", struct.pack("!i", 1) + b"x") + Z()
    res = run(session(("c", call), ("s", reply)))
    body = call[5:]
    expected = f"<function call oid 1598 (\0\0\0\x01); call sha256 {hashlib.sha256(body).hexdigest()}>"
    assert res.events[1:] == [StatementStarted(expected, "function_call"), StatementFinished("FUNCTION CALL")]
    denied = run(session(("c", call)), gate=lambda text: Verdict("deny", "no fastpath"), trailing=False)
    assert denied.per_step[2][0] == b""
    assert [k for k, _ in parse_messages(denied.per_step[2][1])] == [b"E", b"Z"]


# ---- broken streams ---------------------------------------------------------------------


def test_oversized_message_is_a_protocol_error():
    engine = PostgresEngine()
    feed(engine, session())
    head = b"Q" + struct.pack("!I", MAX_MESSAGE_BYTES + 10) + b"select "
    out = engine.from_client(head)
    assert out.close and out.to_server == b""
    assert isinstance(out.events[0], ProtocolError) and "larger" in out.events[0].reason
    assert engine.from_client(b"more").close

    engine = PostgresEngine()
    feed(engine, session())
    out = engine.from_server(b"E" + struct.pack("!I", MAX_MESSAGE_BYTES) + b"SERROR\0")
    assert out.close and out.events[0].direction == "server"


@pytest.mark.parametrize(
    "garbage",
    [
        b"Q\0\0\0\x02",  # length below 4
        b"\x01\0\0\0\x04",  # unknown type
        b"GET / HTTP/1.1\r\n\r\n",  # not PostgreSQL at all
        msg(b"S", b"x"),  # Sync with a body
        msg(b"B", b"no-nul"),  # malformed Bind
    ],
)
def test_garbage_from_the_client_is_a_protocol_error(garbage):
    for how in ("whole", "bytes"):
        engine = PostgresEngine()
        feed(engine, session())
        # The garbage waits behind the fence and is read once select 1 is answered.
        res = feed(engine, [("c", Q("select 1") + garbage), ("s", CC("SELECT 1") + Z())], how)
        assert res.close
        assert res.events[0] == StatementStarted("select 1", "query")
        assert isinstance(res.events[-1], ProtocolError)
        assert res.to_server == Q("select 1")  # what came before is still passed on


@pytest.mark.parametrize("garbage", [b"\xff\0\0\0\x04", b"Z\0\0\0\x06II", b"D\0\0\0\x01"])
def test_garbage_from_the_server_is_a_protocol_error(garbage):
    engine = PostgresEngine()
    feed(engine, session())
    out = engine.from_server(garbage)
    assert out.close and out.events[-1].direction == "server"


def test_bound_bind_with_bad_params_when_recording():
    bad = msg(b"B", cstr("") + cstr("") + struct.pack("!hh", 0, 1) + struct.pack("!i", 99) + b"abc" + struct.pack("!h", 0))
    engine = PostgresEngine(record_params=True)
    feed(engine, session(("c", P("select $1") + SYNC), ("s", PARSE_OK + Z())))
    out = engine.from_client(bad)
    assert out.close and isinstance(out.events[-1], ProtocolError)


# ---- fuzzing ----------------------------------------------------------------------------


def _feed_split(engine, data: bytes, cuts: list[int], direction: str):
    points = sorted({c % (len(data) + 1) for c in cuts})
    prev = 0
    for p in points + [len(data)]:
        out = engine.from_client(data[prev:p]) if direction == "c" else engine.from_server(data[prev:p])
        assert isinstance(out.to_server, bytes) and isinstance(out.to_client, bytes)
        prev = p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", startup(), SSL_REQUEST, startup() + Q("select 1")]),
    client=st.binary(max_size=300),
    server=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    gated=st.booleans(),
    record=st.booleans(),
)
def test_random_bytes_never_raise(prefix, client, server, cuts, gated, record):
    engine = PostgresEngine(policy if gated else None, record)
    _feed_split(engine, prefix + client, cuts, "c")
    _feed_split(engine, server, cuts, "s")
    _feed_split(engine, client, cuts, "c")


_CLIENT_PIECES = [
    Q("select 1"), Q("drop table t"), Q("delete from t"), P("select $1"), P("drop x", "d"), P("select 2", "n"),
    B(["1"]), B(name="n"), D(), D("S", "n"), E(), E(max_rows=1), SYNC, FLUSH, CLOSE(), CLOSE("P"),
    copy_data(b"row\n"), COPY_DONE, copy_fail("x"), password("pw"),
]
_SERVER_PIECES = [
    PARSE_OK, BIND_OK, CLOSE_OK, NO_DATA, EMPTY, SUSPENDED, T("a"), DR(1), CC("SELECT 1"), Z(), Z(b"T"),
    ERR("42601", "syntax"), NOTICE("n"), copy_in_response(), copy_out_response(), copy_data(b"x"), msg(b"c"),
    param_desc(23), param_status("a", "b"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.booleans(), st.lists(st.integers(0, 100), min_size=1, max_size=6)), max_size=12
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    gated=st.booleans(),
)
def test_random_valid_messages_split_anywhere_give_the_same_result(steps, cuts, gated):
    script = [("c", startup()), ("s", LOGIN)]
    for from_client, picks in steps:
        pieces = _CLIENT_PIECES if from_client else _SERVER_PIECES
        script.append(("c" if from_client else "s", b"".join(pieces[p % len(pieces)] for p in picks)))
    gate = policy if gated else None
    whole = feed(PostgresEngine(gate), script, "whole")
    rng_seed = sum(cuts)
    split = feed(PostgresEngine(gate), script, "random", rng_seed)
    assert split.per_step == whole.per_step
    assert not whole.close
    # whatever the engine sends on is well framed
    parse_messages(whole.to_server[len(startup()) :])
    parse_messages(whole.to_client)
    # each statement gets at most one outcome, and only after it started
    started = sum(isinstance(e, StatementStarted) for e in whole.events)
    ended = sum(isinstance(e, (StatementFinished, StatementFailed)) for e in whole.events)
    assert ended <= started


# ---- model-based: a toy backend answers whatever the engine forwards --------------------


class ToyBackend:
    """Answers typed frontend messages the way PostgreSQL does, for a tiny SQL dialect:
    texts with "fail" fail at execution, "bad" fails at Parse, `hoop_blocked_statement`
    fails at Parse/Query, and with `refuse` set, texts the test policy would refuse fail
    with the engine's refusal SQLSTATEs (the reference for what the client should see)."""

    def __init__(self, refuse: bool = False, engine_view: bool = False) -> None:
        self.refuse = refuse
        self.engine_view = engine_view  # the reference: also answer as the engine would
        self.stmts: dict[bytes, str] = {}
        self.portals: dict[bytes, str] = {}
        self.skipping = False
        self.carry = None
        self.outcomes: list = []
        self.seg_open = False  # extended messages since the last Sync
        # What the engine believes each statement name holds: it refuses a Bind of any other
        # (its own refusal, then it drops to Sync: `dropping`).
        self.known: set[bytes] = set()
        self.dropping = False

    def _refusal(self, text):
        if not self.refuse:
            return None
        verdict = policy(text)
        if verdict.action == "allow":
            return None
        return ERR(DENY_SQLSTATE if verdict.action == "deny" else HOLD_SQLSTATE, verdict.message)

    def _skip_outcome(self):
        if self.carry is not None:
            self.outcomes.append(self.carry)
            self.carry = None
        else:
            self.outcomes.append(StatementFailed(SKIPPED_SQLSTATE, "not executed: an earlier message before Sync failed"))

    def feed(self, stream: bytes) -> bytes:
        out = b""
        for kind, body in parse_messages(stream):
            out += self.message(kind, body)
        return out

    def message(self, kind: bytes, body: bytes) -> bytes:
        if kind == b"S":
            self.skipping = self.dropping = False
            self.carry = None
            self.seg_open = False
            return Z()
        if self.skipping and not self.dropping:  # the engine still reads what the server skips
            if kind == b"P":
                name, text, _ = body.split(b"\0", 2)
                if not self._refusal(text.decode()):
                    self.known.add(name)
                else:  # refused: the engine drops the rest of the segment
                    self.known.discard(name) if name == b"" else None
                    self.dropping = True
            elif kind == b"C" and body[:1] == b"S":
                self.known.discard(body[1:-1])
            elif kind == b"B" and self.engine_view and body.split(b"\0", 2)[1] not in self.known:
                self.dropping = True
        if self.skipping:
            if kind == b"E" or kind == b"Q" and body != b"hoop_blocked_statement\0":
                self._skip_outcome()
            return b""
        if kind == b"Q":
            text = body[:-1].decode()
            refused = self._refusal(text)
            if refused:
                return refused + Z()
            if text == "hoop_blocked_statement":
                return ERR("42601", "syntax error") + Z()
            if "fail" in text:
                self.outcomes.append(StatementFailed("22012", "division by zero"))
                return ERR("22012", "division by zero") + Z()
            self.outcomes.append(StatementFinished("SELECT 1"))
            return T("a") + DR(1) + CC("SELECT 1") + Z()
        if kind == b"P":
            name, text, _ = body.split(b"\0", 2)
            text = text.decode()
            refused = self._refusal(text)
            if refused:
                if name == b"" and self.seg_open:
                    self.known.discard(name)
                self.dropping = True
            else:
                self.known.add(name)
            if refused or "bad" in text or text == "hoop_blocked_statement":
                self.skipping = True
                # Documented divergence: a refused Parse at the start of a segment is
                # dropped by the engine, so the server keeps its old unnamed statement.
                if name == b"" and (self.seg_open or not refused):
                    self.stmts.pop(name, None)
                self.seg_open = self.seg_open or not refused
                if refused:
                    return refused
                err = ERR("42601", "syntax error")
                if text != "hoop_blocked_statement":
                    self.carry = StatementFailed("42601", "syntax error")
                return err
            self.stmts[name] = text
            self.seg_open = True
            return PARSE_OK
        if kind in b"BDEC":
            self.seg_open = True
        if kind == b"C" and body[:1] == b"S":
            self.known.discard(body[1:-1])
        if kind == b"B":
            portal, name, _ = body.split(b"\0", 2)
            if self.engine_view and name not in self.known and name != b"hoop_grant_used":
                self.skipping = self.dropping = True
                return ERR(DENY_SQLSTATE, "unknown statement")
            if name not in self.stmts:
                self.skipping = True
                self.carry = StatementFailed("26000", "no such statement")
                return ERR("26000", "no such statement")
            self.portals[portal] = self.stmts[name]
            return BIND_OK
        if kind == b"D":
            return NO_DATA if body[:1] == b"P" else param_desc() + NO_DATA
        if kind == b"E":
            portal = body.split(b"\0", 1)[0]
            text = self.portals.get(portal)
            if text is None:
                self.skipping = True
                self.outcomes.append(StatementFailed("34000", "no such portal"))
                return ERR("34000", "no such portal")
            if "fail" in text:
                self.skipping = True
                self.outcomes.append(StatementFailed("22012", "division by zero"))
                return ERR("22012", "division by zero")
            self.outcomes.append(StatementFinished("SELECT 1"))
            return DR(1) + CC("SELECT 1")
        return b""  # H Flush and the rest: no answer


def _kinds_and_codes(stream: bytes) -> list:
    out = []
    for kind, body in parse_messages(stream):
        out.append((kind, error_fields(body).get("C")) if kind == b"E" else (kind, body if kind == b"Z" else None))
    return out


_TEXTS = ["select 1", "select fail", "select bad", "drop t", "delete t"]
_OPS = st.one_of(
    st.tuples(st.just("Q"), st.sampled_from(_TEXTS)),
    st.tuples(st.just("P"), st.sampled_from(["", "a"]), st.sampled_from(_TEXTS)),
    st.tuples(st.just("B"), st.sampled_from(["", "p"]), st.sampled_from(["", "a"])),
    st.tuples(st.just("D")),
    st.tuples(st.just("E"), st.sampled_from(["", "p"])),
    st.tuples(st.just("S")),
    st.tuples(st.just("H")),
)


def _encode(op) -> bytes:
    kind = op[0]
    if kind == "Q":
        return Q(op[1])
    if kind == "P":
        return P(op[2], op[1])
    if kind == "B":
        return B(portal=op[1], name=op[2])
    if kind == "D":
        return D()
    if kind == "E":
        return E(op[1])
    return SYNC if kind == "S" else FLUSH


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rounds=st.lists(st.lists(_OPS, min_size=1, max_size=8), min_size=1, max_size=6),
    gated=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_model_outcomes_and_client_view_match_a_real_backend(rounds, gated, seed):
    rng = random.Random(seed)
    engine = PostgresEngine(policy if gated else None)
    feed(engine, session())
    backend = ToyBackend()
    reference = ToyBackend(refuse=gated, engine_view=True)
    seen_by_client = b""
    expected_by_client = b""
    events = []
    for ops in rounds + [[("S",)]]:  # end with a Sync so that every answer is due
        client = b"".join(_encode(op) for op in ops)
        expected_by_client += reference.feed(client)
        forwarded = b""
        for chunk in _chunks(client, "random", rng):
            out = engine.from_client(chunk)
            assert not out.close
            forwarded += out.to_server
            seen_by_client += out.to_client
            events += out.events
        while forwarded:  # what the fence lets go goes to the backend in turn
            reply = backend.feed(forwarded)
            forwarded = b""
            for chunk in _chunks(reply, "random", rng):
                out = engine.from_server(chunk)
                assert not out.close
                forwarded += out.to_server
                seen_by_client += out.to_client
                events += out.events
    assert _kinds_and_codes(seen_by_client) == _kinds_and_codes(expected_by_client)
    outcomes = [e for e in events if isinstance(e, (StatementFinished, StatementFailed))]
    assert outcomes == backend.outcomes
    assert len(outcomes) == sum(isinstance(e, StatementStarted) for e in events)
    for e in events:
        if isinstance(e, StatementStarted):
            assert "drop" not in e.text and "delete" not in e.text or not gated


# ---- resources ----------------------------------------------------------------------------


def test_large_bind_is_streamed_when_params_are_not_recorded():
    engine = PostgresEngine()
    feed(engine, session(("c", P("insert into blobs values ($1)") + SYNC), ("s", PARSE_OK + Z())))
    bind = B([b"\x00" * 4_000_000], formats=[1])
    first = engine.from_client(bind[:65536])
    assert first.to_server == bind[:65536]  # passed on before the message is complete
    sent = first.to_server
    for k in range(65536, len(bind), 65536):
        sent += engine.from_client(bind[k : k + 65536]).to_server
    out = engine.from_client(E() + SYNC)
    assert sent + out.to_server == bind + E() + SYNC
    assert out.events == [StatementStarted("insert into blobs values ($1)", "execute")]


def test_state_stays_bounded_over_a_long_session():
    engine = PostgresEngine(policy)
    feed(engine, session())
    for k in range(3000):
        engine.from_client(P("select $1", f"s{k}") + B([str(k)], f"s{k}", portal=f"p{k}") + E(f"p{k}") + SYNC)
        engine.from_server(PARSE_OK + BIND_OK + DR(k) + CC("SELECT 1") + Z())
        engine.from_client(Q("drop table t"))
    assert not engine._fifo and not engine._payloads
    assert len(engine._stmts) <= 10_000 and len(engine._portals) <= 10_000


def test_an_internal_error_is_contained():
    engine = PostgresEngine()
    feed(engine, session())
    engine._fifo = None  # simulate a bug of ours
    out = engine.from_client(Q("select 1"))
    assert out.close and isinstance(out.events[-1], ProtocolError)
    assert "internal error" in out.events[-1].reason
    assert engine.from_server(Z()).close


def test_a_multibyte_client_encoding_that_can_hide_quotes_ends_the_session():
    """SJIS/BIG5/GBK… characters may end in 0x5C or 0x27: the gateway would read a statement
    differently from the server (`SELECT E'<95 5C>' ; DROP …`), so such a session is ended."""
    from hoopcli.gateway.protocols.base import ProtocolError
    from hoopcli.gateway.protocols.postgres import PostgresEngine

    def param(name: bytes, value: bytes) -> bytes:
        body = name + b"\0" + value + b"\0"
        return b"S" + (len(body) + 4).to_bytes(4, "big") + body

    engine = PostgresEngine()
    engine.from_client(b"\0\0\0\x17\0\x03\0\0user\0alice\0\0")
    ok = engine.from_server(param(b"client_encoding", b"UTF8"))
    assert not ok.close and ok.to_client.startswith(b"S")
    out = engine.from_server(param(b"server_version", b"15") + param(b"client_encoding", b"SJIS"))
    assert out.close
    assert any(isinstance(e, ProtocolError) and "SJIS" in e.reason for e in out.events)
    assert b"server_version" in out.to_client  # what came before is passed on
    assert b"client_encoding\0SJIS" not in out.to_client
    assert b"hoop: client_encoding SJIS is not supported" in out.to_client


# ---- approvals run once ---------------------------------------------------------------------
# A Parse the gate allows on a grant (allow + request_id) may be bound once; later Binds of that
# statement are refused, and a name forgets its grant only when the server confirms it.

TRUNCATE_TAG = CC("TRUNCATE TABLE")


def grants(text: str) -> Verdict:
    if "truncate" in text.lower():
        return Verdict("allow", request_id="req-9", rule="rule 0: truncate")
    return policy(text)


USED = Verdict("deny", GRANT_USED_MESSAGE, request_id="req-9", rule="grant-used")


def _used_refusal(stream: bytes) -> None:
    """stream is exactly the grant-used ErrorResponse and a ReadyForQuery."""
    got = parse_messages(stream)
    assert [k for k, _ in got] == [b"E", b"Z"]
    fields = error_fields(got[0][1])
    assert fields["C"] == DENY_SQLSTATE and fields["M"] == GRANT_USED_MESSAGE and fields["D"] == "hoop request req-9"


def prepared_and_run(name: str = "s1") -> list:
    """The psycopg prepare=True shape: Parse + Sync, then Bind/Describe/Execute/Sync."""
    return [
        ("c", P("truncate t", name) + SYNC),
        ("s", PARSE_OK + Z()),
        ("c", B(name=name) + D() + E() + SYNC),
        ("s", BIND_OK + NO_DATA + TRUNCATE_TAG + Z()),
    ]


@pytest.mark.parametrize("record", [False, True])
def test_a_granted_statement_is_bound_once_then_refused(record):
    again = B(name="s1") + D() + E() + SYNC
    script = session(*prepared_and_run(), ("c", again), ("c", again), ("c", Q("select 1")), ("s", CC("SELECT 1") + Z()))
    res = run(script, gate=grants, record_params=record)
    assert res.per_step[4][0] == B(name="s1") + D() + E() + SYNC  # the first run passes untouched
    assert res.per_step[4][2] == [StatementStarted("truncate t", "execute", () if record else None)]
    for step in (6, 7):  # every later Bind: nothing reaches the server, the client gets the refusal
        assert res.per_step[step][0] == b""
        _used_refusal(res.per_step[step][1])
        assert res.per_step[step][2] == [StatementBlocked("truncate t", USED)]
    assert res.events[-2:] == [StatementStarted("select 1", "query"), StatementFinished("SELECT 1")]


def test_a_refused_bind_inside_a_segment_is_failed_by_the_server():
    # The second Bind of the statement follows other work in its segment: it is replaced by a
    # Bind the server must fail, and its error is swapped for the refusal.
    client = B(name="s1") + E() + B(name="s1") + E() + SYNC
    engine = PostgresEngine(grants)
    feed(engine, session(*prepared_and_run()[:2]))
    out = engine.from_client(client)
    sent = parse_messages(out.to_server)
    assert [k for k, _ in sent] == [b"B", b"E", b"B", b"S"]
    assert sent[2][1].startswith(b"\0hoop_grant_used\0")
    server = BIND_OK + TRUNCATE_TAG + ERR("26000", 'prepared statement "hoop_grant_used" does not exist') + Z()
    script = session(*prepared_and_run()[:2], ("c", client), ("s", server), ("c", Q("select 1")), ("s", CC("SELECT 1") + Z()))
    res = run(script, gate=grants)
    got = parse_messages(res.per_step[5][1])
    assert [k for k, _ in got] == [b"2", b"C", b"E", b"Z"]
    assert error_fields(got[2][1])["M"] == GRANT_USED_MESSAGE
    assert res.events[1:] == [
        StatementStarted("truncate t", "execute"),
        StatementBlocked("truncate t", USED),
        StatementFinished("TRUNCATE TABLE"),
        StatementStarted("select 1", "query"),
        StatementFinished("SELECT 1"),
    ]


def test_the_unnamed_statement_runs_once_until_parsed_again():
    once = P("truncate t") + B() + E() + SYNC
    script = session(
        ("c", once),
        ("s", PARSE_OK + BIND_OK + TRUNCATE_TAG + Z()),
        ("c", B() + E() + SYNC),  # the unnamed statement again, without a new Parse
        ("c", P("select 1") + B() + E() + SYNC),  # a new statement in it: fine
        ("s", PARSE_OK + BIND_OK + DR(1) + CC("SELECT 1") + Z()),
        ("c", B() + E() + SYNC),  # and bound again, as often as the client likes
        ("s", BIND_OK + DR(1) + CC("SELECT 1") + Z()),
        ("c", once),  # a new approval of the same text: runs once more
        ("s", PARSE_OK + BIND_OK + TRUNCATE_TAG + Z()),
    )
    res = run(script, gate=grants)
    assert res.per_step[4] [0] == b"" and res.per_step[4][2] == [StatementBlocked("truncate t", USED)]
    _used_refusal(res.per_step[4][1])
    assert res.per_step[5][0] == P("select 1") + B() + E() + SYNC
    assert res.per_step[7][0] == B() + E() + SYNC
    assert res.per_step[9][0] == once
    engine = PostgresEngine(grants)
    feed(engine, script[:7])
    assert engine._granted == {}  # the ParseComplete of "select 1" settled it: nothing left to check


def test_pipelined_binds_before_the_parse_is_answered():
    client = P("truncate t", "s1") + SYNC + B(name="s1") + E() + SYNC + B(name="s1") + E() + SYNC
    res = run(session(("c", client), ("s", PARSE_OK + Z()), ("s", BIND_OK + TRUNCATE_TAG + Z())), gate=grants)
    assert res.per_step[2][0] == P("truncate t", "s1") + SYNC + B(name="s1") + E() + SYNC
    assert res.per_step[2][1] == b""  # the refusal waits for the answers ahead of it
    got = parse_messages(res.per_step[3][1] + res.per_step[4][1])
    assert [k for k, _ in got] == [b"1", b"Z", b"2", b"C", b"Z", b"E", b"Z"]
    assert error_fields(got[5][1])["M"] == GRANT_USED_MESSAGE
    # the third segment is ASCII: judged (and refused) at once, not behind the fence
    assert [type(e).__name__ for e in res.events[1:]] == ["StatementStarted", "StatementBlocked", "StatementFinished"]


def test_a_confirmed_close_or_new_parse_frees_the_name():
    script = session(
        *prepared_and_run(),
        ("c", CLOSE("S", "s1") + SYNC),
        ("s", CLOSE_OK + Z()),
        ("c", P("select 1", "s1") + SYNC),
        ("s", PARSE_OK + Z()),
        *[step for _ in range(3) for step in (("c", B(name="s1") + E() + SYNC), ("s", BIND_OK + DR(1) + CC("SELECT 1") + Z()))],
    )
    res = run(script, gate=grants)
    for k in (10, 12, 14):
        assert res.per_step[k][0] == B(name="s1") + E() + SYNC
        assert res.per_step[k][2] == [StatementStarted("select 1", "execute")]
    assert not any(isinstance(e, StatementBlocked) for e in res.events)


@pytest.mark.parametrize(
    "attempt, answer",
    [
        # a Close the server skips (an earlier message failed) leaves the statement in place
        (P("select nope") + CLOSE("S", "s1") + SYNC, ERR("42703", "no such column") + Z()),
        # a named statement cannot be redefined: the Parse fails, s1 is still the truncate
        (P("select 1", "s1") + SYNC, ERR("42P05", 'prepared statement "s1" already exists') + Z()),
        # answered after the next Bind was sent: that Bind is judged against both
        (CLOSE("S", "s1") + SYNC, None),
    ],
)
def test_a_close_or_parse_the_server_did_not_do_frees_nothing(attempt, answer):
    steps = [*prepared_and_run(), ("c", attempt)]
    if answer is not None:
        steps.append(("s", answer))
    steps.append(("c", B(name="s1") + E() + SYNC))
    res = run(session(*steps), gate=grants)
    assert res.per_step[-1][0] == b""
    assert res.per_step[-1][2] == [StatementBlocked("truncate t", USED)]


def test_an_unnamed_parse_the_server_skipped_frees_nothing():
    script = session(
        ("c", P("truncate t") + B() + E() + SYNC),
        ("s", PARSE_OK + BIND_OK + TRUNCATE_TAG + Z()),
        ("c", P("select nope") + P("select 1") + SYNC),  # the second Parse is skipped
        ("s", ERR("42703", "no such column") + Z()),
        ("c", B() + E() + SYNC),  # would run the truncate again
    )
    res = run(script, gate=grants)
    assert res.per_step[6][0] == b"" and res.per_step[6][2] == [StatementBlocked("truncate t", USED)]


def test_statements_never_granted_run_any_number_of_times():
    for gate in (None, policy, grants):
        engine = PostgresEngine(gate)
        feed(engine, session(("c", P("select $1", "s") + SYNC), ("s", PARSE_OK + Z())))
        for k in range(5):
            chunk = B([str(k)], name="s") + E() + SYNC
            out = engine.from_client(chunk)
            assert out.to_server is chunk and out.to_client == b""
            engine.from_server(BIND_OK + DR(k) + CC("SELECT 1") + Z())
        assert engine._granted == {}


def test_a_large_refused_bind_is_dropped_as_it_streams():
    engine = PostgresEngine(grants)
    feed(engine, session(*prepared_and_run()))
    bind = B([b"\x00" * 4_000_000], name="s1", formats=[1])
    first = engine.from_client(bind[:8])  # the statement name is not complete yet
    assert first.to_server == b"" and engine._c_need < 100  # a few bytes buffered, not 4 MB
    rest, answer = b"", b""
    for k in range(8, len(bind), 65536):
        out = engine.from_client(bind[k : k + 65536])
        rest, answer = rest + out.to_server, answer + out.to_client
    assert parse_messages(answer)[0][0] == b"E"  # refused as soon as the name was complete
    out = engine.from_client(E() + SYNC)
    assert rest + out.to_server == b""
    _used_refusal(answer + out.to_client)


def test_a_large_bind_with_split_names_is_streamed_after_a_few_bytes():
    engine = PostgresEngine(grants)
    feed(engine, session(("c", P("insert into blobs values ($1)", "a_rather_long_statement_name") + SYNC), ("s", PARSE_OK + Z())))
    bind = B([b"\x00" * 4_000_000], name="a_rather_long_statement_name", formats=[1])
    sent, pos, most = b"", 0, 0
    while pos < 1000:  # names split across many reads
        sent += engine.from_client(bind[pos : pos + 7]).to_server
        pos += 7
        most = max(most, len(engine._c_pend or b""))
    assert sent == bind[:pos]  # passed on long before the message is complete
    assert most < 100  # what was buffered meanwhile: a few bytes
    rest = engine.from_client(bind[pos:])
    assert sent + rest.to_server == bind


class GrantBackend(ToyBackend):
    """ToyBackend with PostgreSQL's statement rules that matter here: a named statement
    cannot be redefined, an unnamed Parse drops the old unnamed statement first, Close
    answers CloseComplete, and every run of a "truncate N" text is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: dict[str, int] = {}

    def message(self, kind: bytes, body: bytes) -> bytes:
        if self.skipping or kind not in b"PCE":
            return super().message(kind, body)
        if kind == b"P":
            name = body.split(b"\0", 1)[0]
            if name and name in self.stmts:
                self.skipping = True
                self.seg_open = True
                self.carry = StatementFailed("42P05", "already exists")
                return ERR("42P05", "already exists")
            if not name:
                self.stmts.pop(name, None)
            return super().message(kind, body)
        if kind == b"C":
            self.seg_open = True
            if body[:1] == b"S":
                self.stmts.pop(body[1:-1], None)
            else:
                self.portals.pop(body[1:-1], None)
            return CLOSE_OK
        portal = body.split(b"\0", 1)[0]
        text = self.portals.get(portal)
        out = super().message(kind, body)
        if text is not None and text.startswith("truncate") and out.endswith(CC("SELECT 1")):
            self.runs[text] = self.runs.get(text, 0) + 1
            self.portals.pop(portal)  # a portal runs its statement once
        return out


_GRANT_OPS = st.one_of(
    st.tuples(st.just("P"), st.sampled_from(["", "a"]), st.sampled_from(["truncate", "select 1", "select bad"])),
    st.tuples(st.just("B"), st.sampled_from(["", "a"])),  # a Bind and an Execute of it
    st.tuples(st.just("C"), st.sampled_from(["", "a"])),
    st.tuples(st.just("S")),
    st.tuples(st.just("H")),
)


def _grant_gate(text: str) -> Verdict:
    if text.startswith("truncate"):
        return Verdict("allow", request_id=text, rule="rule 0: truncate")
    return Verdict("allow")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(st.lists(_GRANT_OPS, max_size=6), min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_model_no_approval_runs_twice_whatever_the_client_sends(rounds, seed):
    """Each Parse of "truncate" is a new approval (text "truncate N"); the server may run
    each at most once, however the client names, closes, re-parses, pipelines and splits."""
    rng = random.Random(seed)
    engine = PostgresEngine(_grant_gate)
    feed(engine, session())
    backend = GrantBackend()
    counter = 0
    events = []
    for ops in rounds:
        client = b""
        for op in ops:
            if op[0] == "P":
                text = op[2]
                if text == "truncate":
                    counter += 1
                    text = f"truncate {counter}"
                client += P(text, op[1])
            elif op[0] == "B":
                client += B(name=op[1]) + E()
            elif op[0] == "C":
                client += CLOSE("S", op[1])
            else:
                client += SYNC if op[0] == "S" else FLUSH
        client += SYNC  # each round ends its segment, as clients do (more Syncs may come before)
        forwarded = b""
        for chunk in _chunks(client, "random", rng):
            out = engine.from_client(chunk)
            assert not out.close
            forwarded += out.to_server
            events += out.events
        while forwarded:  # what the fence lets go goes to the backend in turn
            reply = backend.feed(forwarded)
            forwarded = b""
            for chunk in _chunks(reply, "random", rng):
                out = engine.from_server(chunk)
                assert not out.close
                forwarded += out.to_server
                events += out.events
    assert all(n == 1 for n in backend.runs.values()), backend.runs
    outcomes = [e for e in events if isinstance(e, (StatementFinished, StatementFailed))]
    assert outcomes == backend.outcomes
    refused = [e for e in events if isinstance(e, StatementBlocked)]
    assert all(
        e.verdict.rule == "grant-used" and e.text.startswith("truncate") or e.verdict.rule == "unknown-statement"
        for e in refused
    )
    assert not engine._fifo and not engine._tracked


def test_a_function_calls_text_binds_its_arguments():
    """An approval is for one text: setval(seq, 5) and setval(seq, 999999) must differ (red team)."""
    from hoopcli.gateway.protocols.pgwire.wire import function_call_text

    def call(*args: bytes, binary: bool = False) -> bytes:
        body = struct.pack("!IH", 1576, 1) + struct.pack("!H", 1 if binary else 0) + struct.pack("!H", len(args))
        for a in args:
            body += struct.pack("!i", len(a)) + a
        return body + struct.pack("!h", 0)

    five, big = function_call_text(call(b"rtseq", b"5")), function_call_text(call(b"rtseq", b"999999"))
    assert five != big and "rtseq, 5" in five and "rtseq, 999999" in big
    assert "0x01ff" in function_call_text(call(b"\x01\xff", binary=True))
    assert "unreadable" in function_call_text(struct.pack("!I", 1576) + b"\xff")


def test_a_rejected_reparse_of_a_name_does_not_change_what_its_binds_are_recorded_as():
    """Red team: Parse s 'DELETE …'; Parse s 'SELECT 42' (the server answers 42P05); Bind s: the
    server runs the DELETE, so the record must say DELETE, not SELECT 42."""
    steps = [
        ("c", P("DELETE FROM rt1 WHERE id = 1", "s") + SYNC), ("s", msg(b"1") + Z()),
        ("c", P("SELECT 42", "s") + SYNC), ("s", ERR("42P05", 'prepared statement "s" already exists') + Z()),
        ("c", B(name="s") + E() + SYNC),
    ]
    res = run(session(*steps))
    started = [e for e in res.events if isinstance(e, StatementStarted) and e.kind == "execute"]
    assert [e.text for e in started] == ["DELETE FROM rt1 WHERE id = 1"]
