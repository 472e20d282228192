"""`hoop dev --demo`: the whole loop, unattended, on a throw-away stack. DEVELOPMENT ONLY.

1. sign in as `dev-user` with the device flow against the dev issuer (auto-approved), in this
   process, with hoop's own OIDC client; the id_token is validated against the issuer's JWKS
   and then only ever handed to child processes in their environment (HOOP_TOKEN) — no
   keyring is touched, nothing is written;
2. run statements with `hoop exec demo-db -c …` as real `python -m hoopcli` subprocesses
   (a config dir of their own, profile `dev`), so the tunnel, the gateway, the PostgreSQL
   engine, the policy and the audit writer all do their real work;
3. send one risky statement (DROP TABLE), which the default policy holds for approval, and
   check that the table is still there and that its requester cannot approve it;
4. sign in a second identity, dev-admin, with the approver client (profile `dev-approver`),
   approve the request, re-run the same statement as dev-user: now it runs;
5. read the trail back and verify its hash chain (what `hoop audit list/verify --store` do).

Every command is echoed as a person would type it (`hoop --profile dev …`).

The verdict is 0 only when every expected step happened. Without PostgreSQL server binaries
the target is a TCP echo server and the loop is: login, one echoed session, its records, the
chain.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from hoopcli.dev.profiles import APPROVER_CLIENT_ID, APPROVER_PROFILE, CLIENT_ID, PROFILE
from hoopcli.dev.stack import DevStack
from hoopcli.dev.targets import DEMO_TABLE

DEMO_IDENTITY = "dev-user"
STATEMENTS = (
    ("read", f"select id, name, email from {DEMO_TABLE} order by id"),
    ("insert", f"insert into {DEMO_TABLE} (name, email) values ('Katherine Johnson', 'katherine@example.com')"),
    ("update", f"update {DEMO_TABLE} set email = 'grace.hopper@example.com' where name = 'Grace Hopper'"),
)
RISKY = f"drop table {DEMO_TABLE}"
CHECK = f"select count(*) as rows_left from {DEMO_TABLE}"
ECHO_PAYLOAD = "hello through hoop"
# Reads back exactly what it sent, then closes (no half-close: hoop's tunnel does not carry one).
ECHO_CLIENT = (
    "import os, socket, sys\n"
    f"payload = {ECHO_PAYLOAD!r}.encode()\n"
    "s = socket.create_connection((os.environ['HOOP_HOST'], int(os.environ['HOOP_PORT'])), timeout=10)\n"
    "s.sendall(payload)\n"
    "data = b''\n"
    "while len(data) < len(payload):\n"
    "    chunk = s.recv(4096)\n"
    "    if not chunk: break\n"
    "    data += chunk\n"
    "s.close(); print(data.decode(errors='replace')); sys.exit(0 if data == payload else 1)\n"
)
CHILD_TIMEOUT = 60
TRAIL_TIMEOUT = 10.0


@dataclass
class Step:
    name: str
    ok: bool
    detail: str = ""
    exit_code: int | None = None


class Demo:
    def __init__(self, stack: DevStack, json_out: bool):
        from hoopcli.output import info

        self.stack = stack
        self.json_out = json_out
        self.say = (lambda _msg: None) if json_out else info
        self.steps: list[Step] = []
        self.env: dict[str, str] = {}
        self.approver_env: dict[str, str] = {}
        self.identity: dict = {}
        self.approver: dict = {}
        self.request_id: str | None = None
        self.commands: list[str] = []  # every hoop command run, as a person would type it
        self.records: list[dict] = []
        self.verify: dict = {}
        self.since = datetime.fromtimestamp(time.time() - 1, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        s = self.stack.describe()
        self.say(f"Stack up: issuer {s['issuer']}, gateway {s['gateway']}, {s['connection']} → {s['target']}")
        if self.login():
            if self.stack.postgres is not None:
                self.database_loop()
            else:
                self.echo_loop()
        self.read_trail()
        self.judge()
        return self.report()

    def login(self) -> bool:
        self.say(f"1. hoop --profile {PROFILE} login: device flow against the dev issuer, auto-approved as {self.stack.issuer.auto_identity}")
        signed_in = self._sign_in("login", CLIENT_ID)
        if signed_in is None:
            return False
        self.identity, token = signed_in
        self.env = self._child_env(token)
        return True

    def _sign_in(self, step: str, client_id: str) -> tuple[dict, str] | None:
        """The device flow with hoop's own OIDC client; (identity, id_token) or None."""
        from hoopcli.auth.oidc import Provider
        from hoopcli.config import Profile
        from hoopcli.errors import HoopError

        try:
            provider = Provider(self.stack.issuer.url, client_id)
            code = provider.start_device_flow(Profile().scopes)
            tokens = provider.token_set(provider.poll_device_flow(code))  # signature, iss, aud, exp checked
            claims = provider.validate_id_token(tokens.bearer)
        except HoopError as exc:
            self.steps.append(Step(step, False, exc.message))
            return None
        who = {"sub": claims["sub"], "email": claims.get("email"), "groups": claims.get("groups", [])}
        self.steps.append(Step(step, True, f"{claims['sub']} ({', '.join(who['groups'])}), token valid until {_clock(claims['exp'])}"))
        self.say(f"   signed in as {claims['sub']} (groups: {', '.join(who['groups'])})")
        return who, tokens.bearer

    def database_loop(self) -> None:
        conn = self.stack.connection
        self.say(f"2. statements through the gateway: hoop --profile {PROFILE} exec {conn} -c …")
        for name, sql in STATEMENTS:
            done = self.hoop("exec", conn, "-c", sql)
            self.steps.append(Step(name, done.returncode == 0, _first_line(done) if done.returncode else sql, done.returncode))
        self.held()
        if self.request_id:
            self.approve_and_rerun()

    def held(self) -> None:
        conn = self.stack.connection
        self.say(f"3. a risky statement, held by the default policy: {RISKY}")
        done = self.hoop("exec", conn, "-c", RISKY)
        self.held_exit = done.returncode
        self.request_id = _request_id(done.stderr)
        self.steps.append(Step("drop_held", done.returncode == 5 and bool(self.request_id), _first_line(done) or "it ran", done.returncode))
        done = self.hoop("exec", conn, "-c", CHECK)
        exists = self.stack.postgres.table_exists()
        self.steps.append(Step("table_still_exists", done.returncode == 0 and exists,
                               f"{DEMO_TABLE} " + ("still exists" if exists else "is GONE"), done.returncode))
        if self.request_id:
            done = self.hoop("approvals", "approve", self.request_id)
            self.steps.append(Step("requester_cannot_approve", done.returncode == 4, _first_line(done) or "it was approved", done.returncode))

    def approve_and_rerun(self) -> None:
        self.say(f"4. a second identity approves: hoop --profile {APPROVER_PROFILE} login, then approvals approve {self.request_id}")
        signed_in = self._sign_in("approver_login", APPROVER_CLIENT_ID)
        if signed_in is None:
            return
        self.approver, token = signed_in
        self.approver_env = {**self.env, "HOOP_TOKEN": token}
        done = self.hoop("approvals", "approve", self.request_id, "--reason", "hoop dev --demo", profile=APPROVER_PROFILE)
        self.steps.append(Step("approved", done.returncode == 0, _first_line(done), done.returncode))
        self.say(f"   the requester runs the same statement again: {RISKY}")
        done = self.hoop("exec", self.stack.connection, "-c", RISKY)
        gone = not self.stack.postgres.table_exists()
        self.steps.append(Step("approved_drop_ran", done.returncode == 0 and gone,
                               f"{DEMO_TABLE} " + ("dropped" if gone else "still exists"), done.returncode))

    def echo_loop(self) -> None:
        conn = self.stack.connection
        self.say(f"2. one TCP session through the gateway: hoop exec {conn} -- python (echo client)")
        done = self.hoop("exec", conn, "--", sys.executable, "-c", ECHO_CLIENT)
        self.steps.append(Step("echo", done.returncode == 0, _first_line(done) or "echoed", done.returncode))

    def read_trail(self) -> None:
        """Wait (bounded) until every session's end is stored, then read and verify as a person would."""
        from hoopcli.gateway.audit import open_store

        self.say(f"5. the audit trail: hoop --profile {PROFILE} audit list / verify --store {self.stack.audit_store}")
        deadline = time.monotonic() + TRAIL_TIMEOUT
        seen = -1
        while True:
            self.stack.gateway.flush(2.0)
            with open_store(self.stack.audit_store) as store:
                rows = store.query(since=self.since)
            opened = sum(1 for r in rows if r["kind"] == "connect" and r.get("outcome") == "ok")
            ended = sum(1 for r in rows if r["kind"] == "session_end")
            if (ended >= opened and len(rows) == seen) or time.monotonic() > deadline:
                break  # every session ended, and nothing new arrived since the last look
            seen = len(rows)
            time.sleep(0.2)
        # What `hoop audit list/verify --store …` run (same functions, without two more
        # interpreter start-ups).
        from hoopcli.audit_client import list_records, verify

        try:
            self.records = list_records(self.stack.audit_store, None, since=self.since)
            self.verify = verify(self.stack.audit_store, None)
        except Exception as exc:  # noqa: BLE001 — reported as a failed step
            self.verify = {"ok": False, "checked": 0, "problems": [f"{type(exc).__name__}: {exc}"]}
        self.steps.append(Step("audit_list", bool(self.records), f"{len(self.records)} records"))
        self.steps.append(Step("audit_verify", bool(self.verify.get("ok")),
                               f"checked {self.verify.get('checked')} records: " + ("chain intact" if self.verify.get("ok") else "PROBLEMS")))

    # ---- the verdict -------------------------------------------------------------------
    def judge(self) -> None:
        """Each expected record must be in the trail, from the signed-in identity."""
        if not self.identity:
            return
        sub = self.identity["sub"]
        mine = [r for r in self.records if r.get("sub") == sub and r.get("connection") == self.stack.connection]
        if self.stack.postgres is not None:
            for name, sql in STATEMENTS:
                rec = _find(mine, "statement", sql)
                self.steps.append(Step(f"recorded_{name}", bool(rec and rec.get("outcome") == "ok"),
                                       _describe(rec) if rec else f"no record of: {sql}"))
            held = _find(mine, "statement", RISKY)
            request = _find(mine, "approval_request", RISKY)
            self.steps.append(Step("recorded_drop_held", bool(held and held.get("outcome") == "held" and request),
                                   _describe(held) if held else "no record of the DROP"))
            self.judge_approval(mine)
        else:
            ends = [r for r in mine if r["kind"] == "session_end"]
            moved = [r for r in ends if (r.get("details") or {}).get("bytes_up") and (r.get("details") or {}).get("bytes_down")]
            detail = f"bytes up/down {moved[0]['details']['bytes_up']}/{moved[0]['details']['bytes_down']}" if moved else "no session_end record with bytes"
            self.steps.append(Step("recorded_session", bool(moved), detail))

    def judge_approval(self, mine: list[dict]) -> None:
        """The approval is recorded as the approver's decision on this request; its use as the
        requester's, followed by the statement running (ok)."""
        def decision(outcome: str) -> dict | None:
            return next((r for r in self.records if r["kind"] == "approval_decision" and r.get("outcome") == outcome
                         and (r.get("details") or {}).get("request_id") == self.request_id), None)

        approved, used = decision("approved"), decision("used")
        approver = self.approver.get("sub")
        self.steps.append(Step("recorded_approval", bool(approved and approver and approved.get("sub") == approver),
                               f"{_describe(approved)}, by {approved.get('sub')}" if approved else "no approval_decision record"))
        ran = next((r for r in mine if r["kind"] == "statement" and r.get("outcome") == "ok" and used
                    and r.get("seq", 0) > used.get("seq", 0) and (r.get("statement") or "").strip().rstrip(";") == RISKY), None)
        self.steps.append(Step("recorded_drop_ran", bool(used and used.get("sub") == self.identity["sub"] and ran),
                               f"grant used at seq {used.get('seq')}, then {_describe(ran)}" if used and ran else "no record of the approved DROP running"))

    def summary(self) -> dict:
        held = None
        if self.stack.postgres is not None:
            rec = _find(self.records, "statement", RISKY) or {}
            held = {
                "statement": RISKY,
                "outcome": rec.get("outcome"),
                "request_id": (rec.get("details") or {}).get("request_id"),
                "exit_code": getattr(self, "held_exit", None),
                "table_still_exists": any(s.name == "table_still_exists" and s.ok for s in self.steps),
                "approved_by": self.approver.get("sub"),
                "ran_after_approval": any(s.name == "approved_drop_ran" and s.ok for s in self.steps),
            }
        return {
            "event": "demo_summary",
            "ok": all(s.ok for s in self.steps) and bool(self.steps),
            "identity": self.identity,
            "steps": [asdict(s) for s in self.steps],
            "statements": [
                {k: r.get(k) for k in ("seq", "kind", "statement", "outcome", "tag", "code")}
                for r in self.records if r["kind"] in ("statement", "approval_request")
            ],
            "held": held,
            "commands": self.commands,
            "audit": {"store": self.stack.audit_store, "records": len(self.records), "verify": self.verify},
            "stack": self.stack.describe(),
        }

    def report(self) -> int:
        summary = self.summary()
        if self.json_out:
            from hoopcli.output import emit_json

            emit_json(summary)
        else:
            self._print_trail()
            out = sys.stdout
            out.write("\nSteps:\n")
            for s in self.steps:
                out.write(f"  {'ok  ' if s.ok else 'FAIL'}  {s.name:<25} {s.detail}\n")
            if summary["held"]:
                h = summary["held"]
                out.write(f"\nThe DROP was {h['outcome'] or 'not recorded'} (request {h['request_id']}; `hoop exec` exited {h['exit_code']}), "
                          f"approved by {h['approved_by'] or 'nobody'} with `hoop --profile {APPROVER_PROFILE} approvals approve {h['request_id']}`, "
                          f"and {'ran' if h['ran_after_approval'] else 'did NOT run'} when dev-user sent it again.\n")
            out.write("\n" + ("Demo complete: every expected step happened.\n" if summary["ok"] else "Demo FAILED: see the steps marked FAIL.\n"))
            out.flush()
        return 0 if summary["ok"] else 1

    # ---- helpers -----------------------------------------------------------------------
    def hoop(self, *args: str, profile: str = PROFILE) -> subprocess.CompletedProcess:
        """`hoop --profile PROFILE ARGS…` as a real subprocess (echoed as typed), with that
        profile's identity in its environment."""
        env = self.approver_env if profile == APPROVER_PROFILE else self.env
        argv = ["--profile", profile, *args]
        try:
            done = subprocess.run([sys.executable, "-m", "hoopcli", *argv], env=env or None, capture_output=True,
                                  text=True, timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess(argv, 124, "", f"hoop {args[0]} did not finish within {CHILD_TIMEOUT} s")
        self._show(argv, done)
        return done

    def _child_env(self, token: str) -> dict[str, str]:
        import hoopcli

        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOOP_", "PG"))}
        env.update(
            HOOP_CONFIG_DIR=str(self.stack.config_dir),
            HOOP_TOKEN=token,  # the children's environment is the only place it goes
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",  # never the person's keyring
        )
        package_root = str(Path(hoopcli.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        if self.stack.psql and shutil.which("psql", path=env.get("PATH")) is None:
            env["PATH"] = os.pathsep.join((str(Path(self.stack.psql).parent), env.get("PATH", "")))
        return env

    def _show(self, argv: list[str], done: subprocess.CompletedProcess) -> None:
        command = "hoop " + " ".join(shlex.quote(a) for a in argv)
        self.commands.append(command)
        self.say(f"   $ {command}   → exit {done.returncode}")
        for line in (done.stdout + done.stderr).strip().splitlines()[:12]:
            self.say(f"     | {line}")

    def _print_trail(self) -> None:
        out = sys.stdout
        out.write(f"\nAudit trail ({len(self.records)} records in {self.stack.audit_store}):\n")
        out.write(f"  {'seq':>4}  {'time':<8}  {'kind':<17} {'who':<9} {'outcome':<8} {'tag/code':<12} statement\n")
        for r in self.records:
            tag = r.get("tag") or r.get("code") or ""
            stmt = (r.get("statement") or "").replace("\n", " ")
            stmt = stmt if len(stmt) <= 60 else stmt[:57] + "..."
            out.write(f"  {r.get('seq', ''):>4}  {str(r.get('ts', ''))[11:19]:<8}  {r['kind']:<17} {str(r.get('sub') or '-'):<9} "
                      f"{str(r.get('outcome') or ''):<8} {tag:<12} {stmt}\n")
        v = self.verify
        out.write(f"hoop audit verify: checked {v.get('checked')} records: {'chain intact' if v.get('ok') else 'PROBLEMS: ' + '; '.join(v.get('problems', []))}\n")


def run_demo(stack: DevStack, json_out: bool) -> int:
    return Demo(stack, json_out).run()


def _find(records: list[dict], kind: str, statement: str) -> dict | None:
    for r in records:
        if r["kind"] == kind and (r.get("statement") or "").strip().rstrip(";") == statement:
            return r
    return None


def _request_id(stderr: str) -> str | None:
    """The request id in the gateway's held message (the DETAIL line psql prints)."""
    found = re.search(r"hoop request ([0-9a-f]+)", stderr)
    return found.group(1) if found else None


def _describe(rec: dict) -> str:
    bits = [f"seq {rec.get('seq')}", str(rec.get("outcome"))]
    if rec.get("tag"):
        bits.append(rec["tag"])
    if rec.get("code"):
        bits.append(f"code {rec['code']}")
    return ", ".join(bits)


def _first_line(done: subprocess.CompletedProcess) -> str:
    for line in (done.stderr + "\n" + done.stdout).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _clock(ts) -> str:
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%H:%M:%S UTC")
