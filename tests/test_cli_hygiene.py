"""CLI hygiene: every --help works, bad input is one error line and one hint with exit code 2,
--json errors are JSON on stdout, --debug never shows a secret, and start-up stays light.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
from contextlib import redirect_stderr

import pytest
import typer

from hoopcli import logs
from tests.support.cli import REPO, run_subprocess, subprocess_env

# Modules `hoop --help` and `hoop --version` must not pay for (DESIGN: heavy imports are lazy).
HEAVY = ("boto3", "botocore", "hvac", "uvloop", "pglast", "sqlglot", "requests")


def _fake_jwt(header: dict, claims: dict, signature: bytes) -> str:
    """A JWT-shaped string made at run time (no token-looking literal in the repository)."""
    import base64
    import json

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join((part(json.dumps(header, separators=(",", ":")).encode()), part(json.dumps(claims, separators=(",", ":")).encode()), part(signature)))


def command_paths() -> list[list[str]]:
    from hoopcli.cli import app

    def walk(command, path):
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not sub.hidden:
                yield from walk(sub, path + [name])

    return list(walk(typer.main.get_command(app), []))


def assert_one_error_and_hint(result, code: int = 2) -> None:
    lines = result.err.splitlines()
    assert result.code == code, result.err
    assert "Traceback" not in result.err
    assert len(lines) == 2, result.err
    assert lines[0].startswith("hoop: error: ") and len(lines[0]) > len("hoop: error: ")
    assert lines[1].startswith("hoop: hint: ") and len(lines[1]) > len("hoop: hint: ")


def only_json(result) -> dict:
    lines = result.out.splitlines()
    assert len(lines) == 1, result.out
    obj = json.loads(lines[0])
    assert isinstance(obj, dict) and {"error", "hint", "exit_code"} <= set(obj)
    return obj


# ---- help ----------------------------------------------------------------------------------


def test_the_command_tree_is_complete():
    names = {" ".join(p) for p in command_paths()}
    assert {"", "exec", "connect", "creds", "connections", "login", "config set", "approvals approve", "audit verify", "gateway"} <= names


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "hoop")
def test_every_command_has_help(path, hoop):
    result = hoop(*path, "--help")
    assert result.code == 0, result.err
    assert result.out.startswith("Usage: hoop"), result.out
    assert result.err == ""


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["connections", "--bogus"],
        ["nope"],
        ["exec"],
        ["connect"],
        ["creds"],
        ["approvals", "approve"],
        ["config", "set", "issuer"],
        ["connect", "app-db", "--port", "not-a-number"],
        ["audit", "list", "--limit"],
    ],
    ids=" ".join,
)
def test_bad_input_is_one_error_and_one_hint(args, hoop):
    result = hoop(*args)
    assert_one_error_and_hint(result)
    assert result.out == ""


def test_the_hint_names_the_commands_own_help(hoop):
    assert "`hoop connect --help`" in hoop("connect").err
    assert "`hoop --help`" in hoop("--bogus").err


def test_hoop_alone_shows_usage(hoop):
    result = hoop()
    assert result.code == 2 and "Usage: hoop" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("args", [["--bogus"], ["exec"], ["connect", "x", "--port", "x"]], ids=" ".join)
def test_bad_input_in_a_real_process(args, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert_one_error_and_hint(run_subprocess(args, subprocess_env(home)))


# ---- --json errors -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["connections", "--json", "--bogus"], ["exec", "--json"]], ids=" ".join)
def test_json_usage_error_is_json_on_stdout(args, hoop):
    result = hoop(*args)
    assert_one_error_and_hint(result)
    obj = only_json(result)
    assert obj["exit_code"] == 2 and obj["error"] and obj["hint"]


def test_json_not_logged_in(hoop, monkeypatch):
    monkeypatch.setenv("HOOP_GATEWAY", "https://gateway.invalid:8443")
    result = hoop("connections", "--json")
    assert_one_error_and_hint(result, code=3)
    assert only_json(result)["exit_code"] == 3


def test_json_error_from_the_gateway(as_user):
    result = run_subprocess(["creds", "no-such-db", "--json"], as_user("alice"))
    assert_one_error_and_hint(result, code=7)
    assert only_json(result)["exit_code"] == 7


def test_password_in_the_gateway_url_is_never_shown(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    token = _fake_jwt({"alg": "RS256"}, {"sub": "alice"}, b"signature-secret")
    env = subprocess_env(home, HOOP_TOKEN=token, HOOP_GATEWAY=f"https://alice:hunter2secret@127.0.0.1:{closed}")
    result = run_subprocess(["--debug", "connections", "--json"], env)
    assert result.code == 6, result.err
    assert only_json(result)["exit_code"] == 6
    for secret in ("hunter2secret", token, token.rsplit(".", 1)[1]):
        assert secret not in result.out and secret not in result.err


# ---- --debug -------------------------------------------------------------------------------


def test_debug_log_never_shows_the_token(as_user, tokens):
    token = tokens("alice")
    result = run_subprocess(["--debug", "connections"], as_user("alice"))
    assert result.code == 0, result.err
    assert "app-db" in result.out
    assert " DEBUG " in result.err  # the log was on
    assert token not in result.err and token.rsplit(".", 1)[1] not in result.err


@pytest.fixture
def debug_log():
    """logs.setup(True) writing into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    with redirect_stderr(buffer):
        logs.setup(True)
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


def test_debug_log_masks_secrets(debug_log):
    jwt = _fake_jwt({"alg": "RS256"}, {"sub": "alice"}, b"signature-secret")
    log = logging.getLogger("hoopcli.test")
    log.debug("id token %s", jwt)
    log.debug("headers {'Authorization': 'Bearer %s'}", "opaque-access-token-value")
    log.debug("dsn postgresql://app_user:pg-pass-123@127.0.0.1:5432/app password=hunter2 ok")
    logs.register_secret("vault-issued-pw-42")
    log.debug("child env PGPASSWORD set to vault-issued-pw-42")
    text = debug_log.getvalue()
    for secret in (jwt, "c2lnbmF0dXJlLXNlY3JldA", "opaque-access-token-value", "pg-pass-123", "hunter2", "vault-issued-pw-42"):
        assert secret not in text, text
    assert text.count("DEBUG") == 4 and "127.0.0.1:5432/app" in text


# ---- logs.redact ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, secret",
    [
        ("token " + _fake_jwt({"alg": "HS256"}, {"sub": "1"}, b"sig-part"), _fake_jwt({"alg": "HS256"}, {}, b"").split(".")[0]),
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("Proxy-Authorization: bearer opaque123", "opaque123"),
        ("password=hunter2&user=x", "hunter2"),
        ('{"refresh_token": "rt-9f8e7d"}', "rt-9f8e7d"),
        ("client_secret: s3cr3t", "s3cr3t"),
        ("postgresql://u:pw-in-url@h:5432/db", "pw-in-url"),
        ("cannot reach the gateway at alice:netloc-pw@gw:8443", "netloc-pw"),
    ],
)
def test_redact_masks(text, secret):
    masked = logs.redact(text)
    assert secret not in masked and ("[REDACTED]" in masked or "[JWT]" in masked)


@pytest.mark.parametrize(
    "text",
    ["connect app-db:5432", "GET /api/connections HTTP/1.1 200", "at 12:30 alice@example.com", "https://gw:8443/api", ""],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert logs.redact(text) == text


def test_redact_masks_registered_secrets_but_not_short_ones():
    logs.register_secret("issued-password-xyz")
    logs.register_secret("abc")  # too short to mask without garbling ordinary text
    assert logs.redact("pw issued-password-xyz, abc") == "pw [REDACTED], abc"


# ---- start-up ------------------------------------------------------------------------------

IMPORTS = """
import json, os, sys
from hoopcli.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args)
    except SystemExit:
        pass
heavy = set(json.loads(sys.argv[2]))
bad = sorted(m for m in sys.modules if m.split(".")[0] in heavy or m == "hoopcli.gateway" or m.startswith("hoopcli.gateway."))
os.write(2, ("\\nOFFENDERS " + json.dumps(bad) + "\\n").encode())
"""


def imported_heavy(runs: list[list[str]], env: dict, heavy: tuple[str, ...] = HEAVY, expect: str = "") -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS, json.dumps(runs), json.dumps(heavy)],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("OFFENDERS ")]
    assert line, proc.stderr
    assert expect in proc.stderr, proc.stderr
    return json.loads(line[-1].split(" ", 1)[1])


def test_help_and_version_import_nothing_heavy(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    offenders = imported_heavy([["--version"], ["--help"], ["exec", "--help"], ["config", "--help"]], subprocess_env(home))
    assert offenders == [], f"`hoop --help`/`--version` imported {offenders}: import them inside the command that needs them"


def test_completing_a_command_imports_nothing_heavy(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(home, _HOOP_COMPLETE="complete_bash", COMP_WORDS="hoop ex", COMP_CWORD="1")
    assert imported_heavy([[]], env) == []


# What `hoop exec NAME -- CMD` and `hoop connect NAME` must not pay for on every start (issue 10:
# ≤ 150 ms over the command itself): pydantic (typer 0.29 builds every parameter's coercion with
# it, hence the pin in pyproject.toml), requests for the one gateway API call, a JOSE library
# for reading the token's expiry.
EXEC_HEAVY = ("boto3", "botocore", "hvac", "pglast", "sqlglot", "requests", "urllib3", "pydantic", "jwt", "cryptography")


def test_exec_and_connect_start_import_nothing_heavy(tmp_path):
    import time

    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as s:  # a port nothing listens on: the run stops at the API call
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = _fake_jwt({"alg": "RS256"}, {"sub": "alice", "iss": "https://idp.example", "exp": int(time.time()) + 600}, b"sig")
    env = subprocess_env(home, HOOP_TOKEN=token, HOOP_GATEWAY=f"https://127.0.0.1:{port}")
    runs = [["exec", "app-db", "--", "true"], ["connect", "app-db", "--port", "0"], ["--profile", "default", "exec", "app-db", "-c", "select 1"]]
    offenders = imported_heavy(runs, env, EXEC_HEAVY, expect=f"cannot reach the gateway at 127.0.0.1:{port}")
    assert offenders == [], f"`hoop exec`/`hoop connect` imported {offenders} before reaching the gateway"


# ---- leaving at once after exec/connect ----------------------------------------------------

LEAVE = """
import logging, sys
from hoopcli.entry import _leave
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
sys.stdout.write("x" * 200000)  # more than any pipe buffer: only a flush gets it all out
logging.getLogger("t").info("logged before leaving")
_leave(eval(sys.argv[1]))
"""


@pytest.mark.parametrize("code, status, said", [(3, 3, ""), (None, 0, ""), (130, 130, ""), (256 + 7, 7, ""), ("bad input", 1, "bad input")])
def test_leaving_at_once_flushes_output_and_keeps_the_exit_status(code, status, said):
    """`hoop exec`/`hoop connect` end with os._exit (no interpreter teardown): what was
    written and logged still comes out in full, and the status is what sys.exit would give."""
    proc = subprocess.run([sys.executable, "-c", LEAVE, repr(code)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == status
    assert proc.stdout == "x" * 200000
    assert "logged before leaving" in proc.stderr and said in proc.stderr


def test_exec_and_connect_leave_at_once_and_other_commands_do_not(tmp_path):
    """Only the commands whose resources are closed before they return skip the teardown."""
    from hoopcli import entry

    assert entry._LEAVE_AT_ONCE == {"exec", "connect"}
    home = tmp_path / "home"
    home.mkdir()
    env = subprocess_env(home)
    script = "import atexit, os, sys; atexit.register(lambda: os.write(2, b'TORN-DOWN')); sys.argv = ['hoop', *sys.argv[1:]]; from hoopcli.entry import main; main()"
    for args, torn_down in ((["exec", "--help"], False), (["connect", "--help"], False), (["config", "--help"], True)):
        proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        assert ("TORN-DOWN" in proc.stderr) == torn_down, (args, proc.stderr)
        assert "Usage" in proc.stdout


# ---- `hoop exec NAME -- CMD…` without typer ----------------------------------------------------

FAST_EXEC = """
import json, sys
from hoopcli import entry

def leave(code):
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("typer", "click") or m == "hoopcli.cli")
    sys.stderr.write("\\nLOADED " + json.dumps(loaded) + "\\n")
    sys.exit(code)

entry._leave = leave
sys.argv = ["hoop", *json.loads(sys.argv[1])]
entry.main()
"""

THROUGH_TYPER = "import json, sys; from hoopcli.cli import main; main(json.loads(sys.argv[1]))"


def _run(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, json.dumps(args)], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_plain_exec_is_recognised_only_in_its_exact_form():
    from hoopcli.entry import _is_plain_exec

    assert _is_plain_exec(["exec", "app-db", "--", "psql", "-c", "select 1"])
    assert _is_plain_exec(["exec", "app-db", "--"])
    for args in (["exec", "app-db"], ["exec", "app-db", "-c", "select 1"], ["exec", "--json", "--", "x"], ["exec", "app-db", "--json", "--", "x"],
                 ["--profile", "p", "exec", "app-db", "--", "x"], ["connect", "app-db", "--", "x"], ["exec", "--help", "--"]):
        assert not _is_plain_exec(args), args


@pytest.mark.parametrize("case", ["gateway unreachable", "not logged in", "unknown profile"])
def test_plain_exec_fails_exactly_as_the_typer_path_does_without_loading_typer(tmp_path, case):
    """The fast lane and typer run the same exec function and render failures the same way:
    same stdout, stderr and exit code, for failures at each step before the child starts."""
    import time

    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = _fake_jwt({"alg": "RS256"}, {"sub": "alice", "iss": "https://idp.example", "exp": int(time.time()) + 600}, b"sig")
    extra = {"HOOP_GATEWAY": f"https://127.0.0.1:{port}", "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    if case != "not logged in":
        extra["HOOP_TOKEN"] = token
    if case == "unknown profile":
        extra["HOOP_PROFILE"] = "nosuch"
    env = subprocess_env(home, **extra)
    args = ["exec", "app-db", "--", "psql", "--json"]  # the child's --json is not hoop's
    fast, typer_path = _run(FAST_EXEC, args, env), _run(THROUGH_TYPER, args, env)
    loaded = json.loads(fast.stderr.rsplit("LOADED ", 1)[1])
    assert loaded == [], f"the fast lane loaded {loaded}"
    fast_err = fast.stderr.rsplit("\nLOADED ", 1)[0]
    assert (fast.returncode, fast.stdout, fast_err) == (typer_path.returncode, typer_path.stdout, typer_path.stderr)
    assert fast.returncode != 0 and fast_err.startswith("hoop: error: ") and "hoop: hint: " in fast_err
    assert "Traceback" not in fast_err and fast.stdout == ""


# ---- hints name the profile in use (issue 18) -------------------------------------------------


def test_hints_carry_the_profile_in_use():
    from hoopcli import errors

    hint = "Run `hoop login` (in another terminal), then `hoop -p x whoami`; `hoop dev --demo` and `hoop agent` need none."
    assert errors.with_profile(hint, "default") == hint
    assert errors.with_profile(hint, None) == hint
    assert errors.with_profile(hint, "prod") == (
        "Run `hoop --profile prod login` (in another terminal), then `hoop -p x whoami`; `hoop dev --demo` and `hoop agent` need none."
    )


def test_a_rendered_hint_names_the_profile(capsys, monkeypatch):
    from hoopcli import errors

    monkeypatch.setattr(errors, "_profile_in_use", None)
    errors.use_profile("staging")
    errors.render(errors.NotLoggedIn("not logged in (profile 'staging', keyring)"), as_json=True)
    err = capsys.readouterr()
    assert "hoop: hint: Run `hoop --profile staging login`" in err.err
    assert '"hint": "Run `hoop --profile staging login`' in err.out


def test_the_held_hint_names_the_approvers_profile_and_ends_the_output():
    from hoopcli.launch import held_hint

    gateway = "ERROR:  hoop: statement held for approval (request ab12). An approver runs: hoop approvals approve ab12\nDETAIL:  hoop request ab12\n"
    for profile, approver, again in (("dev", "--profile dev-approver ", "hoop --profile dev exec"),
                                     ("prod", "--profile prod ", "hoop --profile prod exec"),
                                     ("default", "", "hoop exec")):
        shown = held_hint(gateway, profile)
        assert f"An approver runs: hoop {approver}approvals approve ab12" in shown
        assert shown.splitlines()[-1] == f"hoop: hint: once it is approved, run the same statement again with {again} (it runs once)."
