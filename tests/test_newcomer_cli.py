"""What a newcomer trips over (issue 18), each with the real CLI: against the shared test
gateway where the gateway is involved, in-process otherwise."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from datetime import datetime

from tests.support.cli import HOOP, run_subprocess, subprocess_env

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
LOCAL = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


def _hold_a_drop(gateway, as_user, pg_server) -> str:
    """alice sends a DROP of a table that does not exist: held (the gateway cannot know), so a
    pending request with nothing behind it."""
    table = f"no_such_{secrets.token_hex(4)}"
    held = run_subprocess(["exec", "gated-db", "-c", f"DROP TABLE {table}"], as_user("alice", PGPASSWORD=pg_server.app_password))
    assert held.code == 5, held.err
    return re.search(r"hoop request (\w+)", held.err).group(1)


def test_approvals_list_shows_times_not_epochs(gateway, as_user, pg_server):
    request_id = _hold_a_drop(gateway, as_user, pg_server)
    carol = as_user("carol")
    listing = json.loads(run_subprocess(["approvals", "list", "--json", "--status", "pending", "--limit", "500"], carol).out)
    mine = next(a for a in listing["approvals"] if a["id"] == request_id)
    assert ISO_UTC.match(mine["created_at"]) and ISO_UTC.match(mine["expires_at"]), mine
    assert abs(datetime.fromisoformat(mine["created_at"]).timestamp() - datetime.now().timestamp()) < 120
    table = run_subprocess(["approvals", "list", "--status", "pending", "--limit", "500"], carol)
    row = next(line.split("\t") for line in table.out.splitlines() if line.startswith(request_id))
    assert LOCAL.match(row[-1]), row  # created_at, the last column, in local time


def test_deciding_an_unknown_request_points_at_the_list(gateway, as_user):
    result = run_subprocess(["approvals", "deny", "nosuchid"], as_user("carol"))
    assert result.code == 7
    assert "hoop: hint: See the open requests with `hoop approvals list --status pending`." in result.err
    assert "hoop connections" not in result.err


def test_the_requester_is_told_another_approver_decides(gateway, as_user, pg_server):
    request_id = _hold_a_drop(gateway, as_user, pg_server)
    result = run_subprocess(["approvals", "approve", request_id], as_user("alice"))
    assert result.code == 4 and "Another approver decides" in result.err, result.err


def test_audit_list_with_a_small_limit_does_not_warn(gateway, as_user):
    result = run_subprocess(["audit", "list", "--limit", "3", "--json"], as_user("carol"))
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 3
    assert "maximum" not in result.err and "only the newest" not in result.err, result.err


def test_logout_says_when_nothing_was_logged_in(hoop):
    result = hoop("logout")
    assert result.code == 0
    assert "Not logged in (profile 'default'" in result.err and "Logged out." not in result.err


def test_exec_help_shows_the_command_after_the_double_dash(hoop):
    result = hoop("exec", "--help")
    usage = result.out.splitlines()[0]
    assert usage.startswith("Usage: hoop exec [OPTIONS]") and usage.endswith("[-- CMD ARGS...]"), usage


def _gateway_toml(tmp_path, cert: str, key: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[gateway]\n"
        'listen = "127.0.0.1:0"\n'
        f'audit_store = "{tmp_path / "audit.db"}"\n'
        f'tls_cert = "{cert}"\n'
        f'tls_key = "{key}"\n'
        "[[issuers]]\n"
        'issuer = "https://issuer.example.com"\n'
        'audiences = ["hoop-cli"]\n'
        "[connections.app-db]\n"
        'protocol = "postgres"\n'
        'target = "127.0.0.1:5432"\n'
        'groups = ["dba"]\n'
    )
    return str(path)


def _gateway(tmp_path, config: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return subprocess.run(HOOP + ["gateway", "--config", config], env=subprocess_env(home), capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_gateway_with_a_missing_certificate_names_the_setting_and_the_path(tmp_path):
    from hoopcli.gateway.tls import make_dev_tls

    pair = make_dev_tls(tmp_path / "tls")
    missing = tmp_path / "no-such-cert.pem"
    done = _gateway(tmp_path, _gateway_toml(tmp_path, str(missing), pair["key"]))
    assert done.returncode == 8, done.stderr
    assert f"hoop: error: gateway.tls_cert = '{missing}': No such file or directory" in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr


def test_gateway_with_a_key_of_another_certificate_names_both(tmp_path):
    from hoopcli.gateway.tls import make_dev_tls

    one, other = make_dev_tls(tmp_path / "one"), make_dev_tls(tmp_path / "other")
    done = _gateway(tmp_path, _gateway_toml(tmp_path, one["cert"], other["key"]))
    assert done.returncode == 8, done.stderr
    assert "are not a usable pair" in done.stderr and one["cert"] in done.stderr and other["key"] in done.stderr
    assert "unexpected" not in done.stderr
