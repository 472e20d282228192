"""The audit store stalls (issue 27): its PostgreSQL server SIGSTOPped while sessions stream.

The store is a second throw-away cluster, so stopping it leaves the target running. With the
default durability ("process") the gateway must stop forwarding within a bounded time (the
writer reports the store stuck after STALL_SECONDS without progress, and every statement is
then refused in the client's protocol), forward nothing while the store stays stopped, and
after SIGCONT store a record for every statement the target executed, none twice.

Values are unique per statement (psql: a counter; pgbench: a random 63-bit integer), so a
row and its record are matched by value.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from hoopcli.gateway.audit.writer import STALL_SECONDS
from tests.support.cli import HOOP, subprocess_env
from tests.support.gateway import single_db_config, start_gateway
from tests.support.pg import _bindir, _Cluster, _free_port

TABLE = "stall_hits"
INSERT = re.compile(rf"^insert into {TABLE} values \((\d+)\);?$")
REFUSED = "the audit store is unavailable"
SLACK = 15.0  # seconds beyond STALL_SECONDS for the in-flight batch and a loaded machine


@pytest.fixture(scope="module")
def store_cluster():
    """A PostgreSQL cluster of its own for the audit store: (URL, postmaster pid file)."""
    bindir = _bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are needed for this test")
    cluster = _Cluster(bindir)
    password = secrets.token_urlsafe(18)
    try:
        cluster.initdb("postgres", password)
        port = next((p for p in (_free_port() for _ in range(3)) if cluster.start(p)), None)
        assert port, f"the store's PostgreSQL did not start:\n{cluster.log_tail()}"
        import psycopg

        with psycopg.connect(f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE audit")
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}/audit", cluster.datadir / "postmaster.pid"
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def stall_table(pg_server):
    with pg_server.connect("app") as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (v bigint NOT NULL)")
        conn.execute(f"GRANT SELECT, INSERT, DELETE ON {TABLE} TO app_user")
        conn.execute(f"DELETE FROM {TABLE}")
    return TABLE


def cluster_pids(pidfile: Path) -> list[int]:
    """The postmaster first, then every process it started (backends, background workers)."""
    postmaster = int(pidfile.read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def server_values(pg_server) -> collections.Counter:
    with pg_server.connect("app") as conn:
        return collections.Counter(v for (v,) in conn.execute(f"SELECT v FROM {TABLE}"))


def server_count(pg_server) -> int:
    with pg_server.connect("app") as conn:
        return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


def start_streams(gw, token: str, pg_server, home: Path) -> list[subprocess.Popen]:
    """pgbench with 4 clients and one psql, inserting unique values; each stops at its first
    error (pgbench aborts a client, psql has ON_ERROR_STOP)."""
    home.mkdir(parents=True, exist_ok=True)
    env = subprocess_env(home, HOOP_TOKEN=token, HOOP_GATEWAY=gw.url, HOOP_CA_FILE=gw.ca_file, PGPASSWORD=pg_server.app_password)
    script = home / "pgbench.sql"
    script.write_text(f"\\set v random(1000000000, 9000000000000000000)\ninsert into {TABLE} values (:v);\n")
    sql = home / "psql.sql"
    sql.write_text("".join(f"insert into {TABLE} values ({i});\n" for i in range(1, 100_001)))
    out = lambda name: open(home / name, "wb")  # noqa: E731
    return [
        subprocess.Popen(HOOP + ["exec", "app-db", "--", "pgbench", "-n", "-M", "simple", "-c", "4", "-T", "90", "-f", str(script)],
                         env=env, stdout=out("pgbench.out"), stderr=out("pgbench.err")),
        subprocess.Popen(HOOP + ["exec", "app-db", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sql)],
                         env=env, stdout=out("psql.out"), stderr=out("psql.err")),
    ]


def wait_until(predicate, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    return predicate()


def stopped_growing(pg_server, quiet: float, timeout: float) -> float | None:
    """When the target's row count last changed, once it has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, changed_at = server_count(pg_server), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = server_count(pg_server)
        if now != last:
            last, changed_at = now, time.monotonic()
        elif time.monotonic() - changed_at >= quiet:
            return changed_at
    return None


def stored_inserts(store_url: str) -> list[tuple[int, str]]:
    from hoopcli.gateway.audit import open_store

    with open_store(store_url) as store:
        assert store.verify().ok
        found = []
        for record in store.query(kind="statement"):
            match = INSERT.match((record["statement"] or "").strip())
            if match:
                found.append((int(match.group(1)), record["outcome"]))
        return found


def test_a_stalled_store_stops_forwarding_in_bounded_time_and_loses_nothing(
    oidc_provider, pg_server, stall_table, store_cluster, tmp_path
):
    store_url, pidfile = store_cluster
    token = oidc_provider.device_login("alice")["id_token"]
    workdir = tmp_path / "gw"
    workdir.mkdir()
    config = single_db_config(oidc_provider.issuer, pg_server.port, audit_store=store_url,
                              gateway_extra=f'journal_dir = "{workdir / "journal"}"\n')
    with start_gateway(config, workdir) as gw:
        procs = start_streams(gw, token, pg_server, tmp_path / "home")
        stopped: list[int] = []
        try:
            assert wait_until(lambda: server_count(pg_server) >= 1_000, 60), "the streams did not get going"
            stopped = cluster_pids(pidfile)
            signal_all(stopped, signal.SIGSTOP)  # the store hangs: no error, no progress
            stalled_at = time.monotonic()
            last_forward = stopped_growing(pg_server, quiet=3.0, timeout=STALL_SECONDS + SLACK + 3.0)
            assert last_forward is not None, "statements were still forwarded while the store was stopped"
            assert last_forward - stalled_at <= STALL_SECONDS + SLACK, last_forward - stalled_at
            frozen = server_count(pg_server)
            time.sleep(2.0)
            assert server_count(pg_server) == frozen  # still nothing forwarded
        finally:
            signal_all(list(reversed(stopped)), signal.SIGCONT)
            for proc in procs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        refusals = (tmp_path / "home" / "psql.err").read_text(errors="replace")
        refusals += (tmp_path / "home" / "pgbench.err").read_text(errors="replace")
        assert REFUSED in refusals, refusals[-2000:]  # told in its own protocol why
    # The gateway stopped (SIGTERM) after the store came back: everything reached the store.
    rows = server_values(pg_server)
    records = stored_inserts(store_url)
    recorded = collections.Counter(value for value, outcome in records if outcome != "denied")
    missing = set(rows) - set(recorded)
    assert sum(rows.values()) >= 1_000
    assert not missing, f"{len(missing)} of {sum(rows.values())} executed statements have no record"
    twice = [value for value, count in recorded.items() if count > max(rows.get(value, 0), 1)]
    assert not twice, f"{len(twice)} statements recorded more than once"
    assert {value for value, outcome in records if outcome == "ok"} <= set(rows), "a statement recorded ok never ran"
    assert {value for value, outcome in records if outcome == "denied"}.isdisjoint(rows), "a refused statement ran"
    assert not list((workdir / "journal").glob("*.journal")), "a stored journal is trimmed at shutdown"
