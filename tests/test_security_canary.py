"""Secret canaries, end to end: no password or token hoop handles ever shows up in argv, in a
file, in a log, or in the audit trail.

Every secret here is unique to this run, so any hit is a leak:
  * a PostgreSQL role created by the test with the password `canary-pw-<random>` (the user's
    own database password, given to hoop's children through PGPASSWORD);
  * fresh id_tokens from the real OpenID provider (HOOP_TOKEN for subprocesses), and the
    id, access and refresh tokens of an in-process `hoop login` (the test's memory keyring);
  * the database password Vault (OpenBao) issues through the vault broker, and the AWS secret
    key and session token STS (moto) issues through the aws broker — learned by the test from
    the child hoop starts, over a UNIX socket (never a file), so they can be searched for.

Every command runs with --debug, and the gateway too. While they run, every process's argv is
watched (ArgvWatch: each exec as it happens, through the kernel's proc connector, when the test
runs as root; /proc/*/cmdline sampled as well). Afterwards the HOMEs (config and cache dirs
included), the TMPDIR given to hoop, every file under the system temp dirs changed during the
run, the gateway's work dir (its log, audit database, JSON-lines export) and all captured
stdout/stderr are searched for each canary.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import HOOP, REPO, subprocess_env
from tests.support.exec_watch import ExecWatcher
from tests.support.gateway import GatewayProcess

ROLE_ARN = "arn:aws:iam::123456789012:role/hoop-canary"
SCAN_LIMIT = 64 * 1024 * 1024
REPORT_VARS = ("PGPASSWORD", "MYSQL_PWD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


# ---- helpers ----------------------------------------------------------------------------------


class ArgvSampler(threading.Thread):
    """Reads /proc/*/cmdline of every process every `period` seconds until stopped."""

    def __init__(self, period: float = 0.02):
        super().__init__(name="argv-sampler", daemon=True)
        self.period = period
        self.seen: set[str] = set()
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                            raw = f.read()
                    except OSError:
                        continue
                    if raw:
                        self.seen.add(raw.replace(b"\0", b" ").decode("utf-8", "replace"))
            self.samples += 1
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class ArgvWatch:
    """Every argv seen while it runs, from two sources; `sources` says which ran.

    The exec watcher (tests/support/exec_watch.py) reads each process's argv at its exec, so
    a process of a millisecond is seen too; it needs root (CAP_NET_ADMIN) and Linux. It cannot
    see a process that exits before its argv is read (counted as unreadable), nor an argv
    rewritten after the exec: the /proc sampler keeps running for those, every 100 ms. Without
    the watcher the sampler runs alone every 20 ms and misses whatever lives shorter."""

    def __init__(self):
        self.watcher = ExecWatcher()
        self.sampler = ArgvSampler()
        self.sources: list[str] = []

    def start(self) -> None:
        if self.watcher.start():
            self.sources.append("exec-watcher")
            self.sampler.period = 0.1
        self.sampler.start()
        self.sources.append("argv-sampler")

    def stop(self) -> None:
        self.sampler.stop()
        self.watcher.stop()

    @property
    def seen(self) -> set[str]:
        return self.sampler.seen | self.watcher.seen


def exec_watcher_required() -> bool:
    """CI runs as root on Linux: there the watcher must run, not quietly fall back."""
    return sys.platform == "linux" and (os.geteuid() == 0 or bool(os.environ.get("CI")))


class SecretReceiver(threading.Thread):
    """A UNIX socket the children report their secret environment variables to (JSON)."""

    CHILD = (
        "import json, os, socket; s = socket.socket(socket.AF_UNIX); s.connect(os.environ['CANARY_SOCK']); "
        f"s.sendall(json.dumps({{k: os.environ.get(k) for k in {REPORT_VARS!r}}}).encode()); s.close()"
    )

    def __init__(self, path: Path):
        super().__init__(name="secret-receiver", daemon=True)
        self.path = str(path)
        self.reports: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen(8)

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            self.reports.append(json.loads(data))

    def close(self) -> None:
        self.sock.close()


def files_under(*roots: Path, since: float | None = None):
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink() or st.st_size > SCAN_LIMIT:
                    continue
                if since is not None and max(st.st_mtime, st.st_ctime) < since:
                    continue
                yield path


def hits(canaries: dict[str, str], *, files=(), texts: dict[str, str] | None = None) -> list[str]:
    """'<canary name> in <where>' for every place a canary shows up."""
    found = []
    needles = {name: value.encode() for name, value in canaries.items() if value}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for name, needle in needles.items():
            if needle in data:
                found.append(f"{name} in {path}")
    for where, text in (texts or {}).items():
        for name, value in canaries.items():
            if value and value in text:
                found.append(f"{name} in {where}")
    return found


def start_debug_gateway(config_text: str, workdir: Path, stack) -> GatewayProcess:
    """`hoop --debug gateway` (tests/support/gateway.start_gateway without --debug otherwise)."""
    from tests.support.gateway import _read_line

    config = workdir / "gateway.toml"
    config.write_text(config_text)
    log = stack.enter_context(open(workdir / "gateway.log", "wb"))
    proc = subprocess.Popen(
        HOOP + ["--debug", "gateway", "--config", str(config), "--dev-tls", str(workdir / "tls"), "--json"],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=log,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )

    def stop():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    stack.callback(stop)
    line = _read_line(proc, 30)
    if not line:
        pytest.fail("the gateway did not start:\n" + (workdir / "gateway.log").read_text()[-3000:], pytrace=False)
    event = json.loads(line)
    return GatewayProcess(event["url"], event["ca_file"], event["audit_store"], str(workdir / "audit.jsonl"), workdir, proc, config)


# ---- the run ------------------------------------------------------------------------------------


class Run:
    """Everything the module did, for the tests to search through."""

    def __init__(self):
        self.canaries: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.roots: list[Path] = []
        self.started = time.time()
        self.argv = ArgvWatch()
        self.gateway: GatewayProcess | None = None
        self.role = ""

    def add_output(self, name: str, proc_or_text) -> None:
        if isinstance(proc_or_text, str):
            self.outputs[name] = proc_or_text
        else:
            self.outputs[name + ".stdout"] = proc_or_text.stdout or ""
            self.outputs[name + ".stderr"] = proc_or_text.stderr or ""


@pytest.fixture(scope="module")
def canary_run(oidc_provider, pg_server, openbao, moto_sts, tmp_path_factory):  # noqa: F811 (fixtures)
    import contextlib

    from psycopg import sql

    run = Run()
    base = tmp_path_factory.mktemp("canary")
    home, tmpdir, gwdir = base / "home", base / "tmp", base / "gateway"
    for d in (home, tmpdir, gwdir):
        d.mkdir()
    run.roots = [base]
    run.role = "canary_" + secrets.token_hex(4)
    password = "canary-pw-" + secrets.token_urlsafe(18)
    run.canaries["postgres password"] = password
    pg_server.sql(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(run.role), sql.Literal(password)))
    pg_server.sql(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(run.role)), dbname="app")

    hints = ", ".join(f'{k} = "{v}"' for k, v in openbao.hints().items())
    config = f"""
[gateway]
listen = "127.0.0.1:0"
audit_store = "audit.db"

[gateway.export]
jsonl = "audit.jsonl"

[[issuers]]
issuer = "{oidc_provider.issuer}"
audiences = ["hoop-cli"]

[connections.canary-db]
protocol = "postgres"
target = "127.0.0.1:{pg_server.port}"
groups = ["dba"]
database = "app"
credentials = {{ broker = "none", user = "{run.role}" }}

[connections.vault-db]
protocol = "postgres"
target = "127.0.0.1:{pg_server.port}"
groups = ["dba"]
database = "app"
credentials = {{ {hints} }}
"""
    receiver = SecretReceiver(base / "report.sock")
    receiver.start()
    run.argv.start()
    with contextlib.ExitStack() as stack:
        gw = run.gateway = start_debug_gateway(config, gwdir, stack)
        token = oidc_provider.device_login("alice")["id_token"]
        run.canaries["id_token (HOOP_TOKEN)"] = token
        import tomli_w

        (home / ".config" / "hoop").mkdir(parents=True)
        (home / ".config" / "hoop" / "config.toml").write_text(tomli_w.dumps({"profiles": {"default": {"connections": {
            "aws-canary": {"broker": "aws", "role_arn": ROLE_ARN, "region": "eu-west-1", "sts_endpoint": moto_sts.endpoint}}}}}))
        env = subprocess_env(home, HOOP_TOKEN=token, HOOP_GATEWAY=gw.url, HOOP_CA_FILE=gw.ca_file, TMPDIR=str(tmpdir),
                             CANARY_SOCK=receiver.path, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
                             AWS_EC2_METADATA_DISABLED="true")

        def hoop(name: str, *args: str, extra_env: dict | None = None, stdin: str | None = None):
            done = subprocess.run(HOOP + ["--debug", *args], env={**env, **(extra_env or {})}, input=stdin,
                                  capture_output=True, text=True, timeout=90, stdin=None if stdin is not None else subprocess.DEVNULL)
            run.add_output(name, done)
            return done

        with_pw = {"PGPASSWORD": password}
        # 1. hoop exec with psql, the user's own password (broker "none").
        done = hoop("exec-psql", "exec", "canary-db", "--", "psql", "-X", "-A", "-t", "-c", "select current_user, 'canary-exec'", extra_env=with_pw)
        assert done.returncode == 0 and done.stdout.strip() == f"{run.role}|canary-exec", done.stderr
        done = hoop("exec-c-json", "exec", "canary-db", "-c", "select 'canary-json'", "--json", extra_env=with_pw)
        assert done.returncode == 0, done.stderr
        done = hoop("exec-stdin", "exec", "canary-db", extra_env=with_pw, stdin="select 'canary-stdin';\n\\conninfo\n")
        assert done.returncode == 0 and "canary-stdin" in done.stdout, done.stderr
        # A failed login: the password is wrong, the error must not echo either one.
        done = hoop("exec-wrong-password", "exec", "canary-db", "--", "psql", "-X", "-c", "select 1",
                    extra_env={"PGPASSWORD": password + "-wrong"})
        assert done.returncode != 0 and "password authentication failed" in done.stderr, done.stderr

        # 2. hoop connect and a psycopg client.
        import psycopg

        proc = subprocess.Popen(HOOP + ["--debug", "connect", "canary-db", "--json"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            ready = json.loads(proc.stdout.readline())
            assert ready["event"] == "ready", ready
            param = run.canaries["bind parameter (record_params = false)"] = "canary-param-" + secrets.token_urlsafe(12)
            for n in range(3):
                with psycopg.connect(host="127.0.0.1", port=ready["port"], user=run.role, password=password, dbname="app",
                                     sslmode="disable", connect_timeout=10) as conn:
                    assert conn.execute("select %s::text", (f"canary-connect-{n}",)).fetchone()[0] == f"canary-connect-{n}"
                    assert conn.execute("select length(%s::text)", (param,)).fetchone()[0] == len(param)
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        run.add_output("connect.stdout", out)
        run.add_output("connect.stderr", err)

        # 3. The vault broker: a database password Vault made for this exec.
        child = f'{sys.executable} -c "{SecretReceiver.CHILD}" && psql -X -A -t -c "select current_user"'
        done = hoop("exec-vault", "exec", "vault-db", "--", "sh", "-c", child)
        assert done.returncode == 0 and done.stdout.strip().startswith("v-"), done.stdout + done.stderr
        # 4. The aws broker (a profile-local connection): STS keys for this exec.
        done = hoop("exec-aws", "exec", "aws-canary", "--", sys.executable, "-c", SecretReceiver.CHILD)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while len(receiver.reports) < 2 and time.monotonic() < deadline:  # the receiver thread catches up
            time.sleep(0.01)
        reports = receiver.reports
        assert len(reports) == 2, reports
        vault, aws = reports
        assert vault["PGPASSWORD"] and aws["AWS_SECRET_ACCESS_KEY"] and aws["AWS_SESSION_TOKEN"], reports
        run.canaries["vault-issued postgres password"] = vault["PGPASSWORD"]
        run.canaries["AWS secret access key"] = aws["AWS_SECRET_ACCESS_KEY"]
        run.canaries["AWS session token"] = aws["AWS_SESSION_TOKEN"]

        done = hoop("whoami", "whoami", "--json")
        assert done.returncode == 0, done.stderr
        done = hoop("connections", "connections", "--json")
        assert done.returncode == 0, done.stderr
    # (the gateway has been stopped, which flushes its writer and exporter: its log and trail are
    # complete; the guard test checks that the export holds every stored record)
    run.argv.stop()
    receiver.close()
    yield run
    with contextlib.suppress(Exception):
        pg_server.sql(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(run.role)), dbname="app")
        pg_server.sql(sql.SQL("DROP ROLE {}").format(sql.Identifier(run.role)))


# ---- the searches -------------------------------------------------------------------------------


def test_the_canaries_were_really_used(canary_run):
    """Guard against a vacuous pass: the trail holds the canary sessions, and argv was watched
    (as root, by the exec watcher, which saw its millisecond-long probe and dropped nothing)."""
    from hoopcli.gateway.audit import open_store, read_jsonl

    with open_store(canary_run.gateway.audit_store) as store:
        stored = store.query()
    statements = [r["statement"] for r in stored if r["kind"] == "statement"]
    assert {r["hash"] for r in stored} <= {r.get("hash") for r in read_jsonl(canary_run.gateway.jsonl)}
    assert "select current_user, 'canary-exec'" in statements
    assert any("canary-connect-2" in (s or "") or "$1" in (s or "") for s in statements)
    argv = canary_run.argv
    assert argv.sampler.samples > 10
    assert any("psql" in seen for seen in argv.seen)
    if exec_watcher_required():
        assert "exec-watcher" in argv.sources, f"the exec watcher did not run: {argv.watcher.error}"
        assert argv.watcher.working, argv.watcher.summary  # it saw its probe (/bin/sh -c :, ~1 ms)
        assert argv.watcher.summary["overflows"] == 0, argv.watcher.summary
        assert any("/psql " in seen and "canary-exec" in seen for seen in argv.watcher.seen)  # psql's execs
    assert len(canary_run.canaries) == 6


def test_no_canary_in_any_process_argv(canary_run):
    """No secret in the argv of any process that ran during the run (argv.sources says which
    watchers ran). What this still cannot see: a process that exits (or execs again) before the
    watcher reads its cmdline, tens of microseconds after its exec (the watcher counts these as
    `unreadable`); an argv rewritten after the exec and restored within the sampler's 100 ms;
    and without root, any process shorter than the 20 ms the sampler then runs at."""
    found = hits(canary_run.canaries, texts={f"argv: {argv[:120]}": argv for argv in canary_run.argv.seen})
    assert found == []


def test_no_canary_in_any_captured_output_or_debug_log(canary_run):
    assert any("DEBUG" in text for text in canary_run.outputs.values())  # --debug really logged
    # The aws broker's debug log is checked on its own below (a known leak, reported).
    outputs = {k: v for k, v in canary_run.outputs.items() if k != "exec-aws.stderr"}
    assert hits(canary_run.canaries, texts=outputs) == []


def test_no_aws_secret_in_the_debug_log_of_hoop_exec(canary_run):
    """`hoop --debug exec` with the aws broker: botocore's DEBUG log of the STS response body
    (<SecretAccessKey>, <SessionToken>) must be masked too."""
    assert hits(canary_run.canaries, texts={"exec-aws.stderr": canary_run.outputs["exec-aws.stderr"]}) == []


def test_no_canary_in_the_gateway_log_audit_database_or_export(canary_run):
    gw = canary_run.gateway
    files = list(files_under(gw.workdir))
    assert {p.name for p in files} >= {"gateway.log", "audit.db", "audit.jsonl"}
    assert hits(canary_run.canaries, files=files) == []


def test_no_canary_in_home_config_cache_or_tmpdir(canary_run):
    files = list(files_under(*canary_run.roots))
    assert hits(canary_run.canaries, files=files) == []


VAULT_TOKEN = re.compile(rb"(?<![A-Za-z0-9_.])(?:[sb]\.[A-Za-z0-9]{24}|hv[sb]\.[A-Za-z0-9_-]{24,})(?![A-Za-z0-9])")


def test_no_vault_token_in_any_output_or_file_hoop_wrote(canary_run):
    """hoop's Vault token itself cannot be learned by the test (OpenBao refuses raw audit
    devices over the API), so look for anything shaped like one (`s.` + 24, `hvs.`...)."""
    found = [f"{where}: {m.group()[:6]}…" for where, text in canary_run.outputs.items() for m in VAULT_TOKEN.finditer(text.encode())]
    for path in files_under(*canary_run.roots, canary_run.gateway.workdir):
        found += [f"{path}: {m.group()[:6]}…" for m in VAULT_TOKEN.finditer(path.read_bytes())]
    assert found == []


def test_no_canary_in_any_temp_file_written_during_the_run(canary_run):
    roots = {Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")}
    files = list(files_under(*roots, since=canary_run.started - 1))
    assert hits(canary_run.canaries, files=files) == []


# ---- an in-process `hoop login` and its tokens -------------------------------------------------


@pytest.fixture
def quiet_root_logger():
    """--debug in-process replaces the root logger's handlers; put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_in_process_login_tokens_never_leave_the_keyring(hoop, hoop_home, mem_keyring, oidc_provider, canary_run, pg_server,
                                                          monkeypatch, capfd, quiet_root_logger, tmp_path):
    from tests.support.oidc import approve_in_background

    gw_workdir = tmp_path / "gateway"
    gw_workdir.mkdir()
    import contextlib

    argv = ArgvWatch()
    argv.start()
    outputs: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        config = canary_run.gateway.config.read_text()
        gw = start_debug_gateway(config, gw_workdir, stack)
        monkeypatch.setenv("HOOP_GATEWAY", gw.url)
        monkeypatch.setenv("HOOP_CA_FILE", gw.ca_file)
        monkeypatch.setenv("PGPASSWORD", canary_run.canaries["postgres password"])
        assert hoop("config", "set", "issuer", oidc_provider.issuer).code == 0
        approver = approve_in_background(oidc_provider, login="alice")
        result = hoop("--debug", "login", "--json")
        approver.join()
        assert result.code == 0, result.err
        outputs["login"] = result.out + result.err
        stored = json.loads(mem_keyring.items[("hoop", "default")])
        canaries = {"in-process id_token": stored["id_token"], "in-process access_token": stored["access_token"],
                    "in-process refresh_token": stored["refresh_token"],
                    "postgres password": canary_run.canaries["postgres password"]}
        assert all(canaries.values())
        for name, args in {"whoami": ("whoami", "--json"), "connections": ("connections", "--json"),
                           "exec": ("exec", "canary-db", "--", "psql", "-X", "-A", "-t", "-c", "select 'canary-inproc'")}.items():
            result = hoop("--debug", *args)
            captured = capfd.readouterr()  # the child's own output went to the real fds
            outputs[name] = result.out + result.err + captured.out + captured.err
            assert result.code == 0, outputs[name]
        assert "canary-inproc" in outputs["exec"]
        result = hoop("--debug", "logout", "--json")
        outputs["logout"] = result.out + result.err
        assert result.code == 0 and json.loads(result.out.splitlines()[-1])["refresh_token_revoked"] is True
    argv.stop()
    assert "exec-watcher" in argv.sources or not exec_watcher_required(), argv.watcher.error
    assert mem_keyring.items == {}
    found = hits(canaries, files=list(files_under(hoop_home, gw_workdir)), texts=outputs)
    found += hits(canaries, texts={f"argv: {a[:120]}": a for a in argv.seen})
    assert found == []
