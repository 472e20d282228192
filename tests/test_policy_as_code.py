"""`hoop policy explain` and `hoop policy test` (issue 30), run as a user runs them: the real CLI
in a subprocess against real config files — the shipped starter test file, the README's sample
gateway.toml, and configs written here. The runner is shown to fail on a wrong expectation, and
its verdicts are checked against `Policy.decide`, the function that judges live traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hoopcli.gateway.policy import Policy

REPO = Path(__file__).resolve().parents[1]
STARTER = REPO / "examples" / "default-policy-tests.toml"
SAMPLE_CONFIG = REPO / "examples" / "gateway.toml"


def hoop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoopcli", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_the_starter_file_passes_and_covers_every_action():
    done = hoop("policy", "test", str(STARTER), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["failed"] == 0 and report["cases"] >= 25
    assert {r["expected"] for r in report["results"]} == {"allow", "require_approval", "deny"}
    for r in report["results"]:  # the runner's verdict is the live one
        if r["connection"] in ("postgres", "mysql") and "agents" not in r["name"] and "people" not in r["name"]:
            assert Policy.from_config("default").decide(r["statement"], ("someone", frozenset()), r["connection"]).action == r["actual"]


def test_a_wrong_expectation_fails_with_the_statement_the_decisions_and_the_rule(tmp_path):
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[case]]\nname = "oops"\nsql = "DROP TABLE customers"\ndialect = "postgres"\nexpect = "allow"\n\n'
                     '[[case]]\nsql = "select 1"\ndialect = "postgres"\nexpect = "allow"\n')
    done = hoop("policy", "test", str(wrong))
    assert done.returncode == 1
    assert "FAIL" in done.stderr and "case 1 (oops)" in done.stderr and "DROP TABLE customers" in done.stderr
    assert "expected allow, got require_approval (rule 0: drop)" in done.stderr
    assert "1 of 2 policy cases pass" in done.stderr


def test_cases_against_a_gateway_config_use_its_connections_rules(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(SAMPLE_CONFIG.read_text() + """
[connections.reports]
protocol = "mysql"
target = "10.0.0.6:3306"
groups = ["analysts", "agents"]
database = "reports"

[connections.reports.policy]
default = "deny"
[[connections.reports.policy.rules]]
match = ["select", "show", "set"]
action = "allow"
""")
    tests = tmp_path / "reports.toml"
    tests.write_text('config = "gateway.toml"\n'
                     '[[case]]\nsql = "SELECT * FROM sales"\nconnection = "reports"\nexpect = "allow"\n'
                     '[[case]]\nsql = "INSERT INTO sales VALUES (1)"\nconnection = "reports"\nexpect = "deny"\n'
                     '[[case]]\nsql = "SELECT 1; DELETE FROM sales WHERE id = 1"\nconnection = "reports"\nexpect = "deny"\n'
                     '[[case]]\nsql = "DROP TABLE x"\nconnection = "app-db"\nexpect = "require_approval"\n')
    done = hoop("policy", "test", str(tests), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r["actual"] for r in json.loads(done.stdout)["results"]] == ["allow", "deny", "deny", "require_approval"]


def test_explain_names_each_part_its_categories_and_the_deciding_rule():
    done = hoop("policy", "explain", "select 1; DELETE FROM t WHERE id = id", "--config", str(SAMPLE_CONFIG),
                "--connection", "app-db", "--as", "alice", "--groups", "developers", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["action"] == "require_approval" and result["reason"] == "rule 0: delete_without_where"
    assert [p["text"] for p in result["parts"]] == ["select 1", "DELETE FROM t WHERE id = id"]
    assert result["parts"][1]["verdicts"]["delete_without_where"] == {"action": "require_approval", "rule": 0}
    assert result["parts"][0]["verdicts"] == {"select": {"action": "allow", "rule": None}}
    human = hoop("policy", "explain", "SET NAMES sjis", "--dialect", "mysql")
    assert human.returncode == 0 and human.stderr.startswith("deny") and "encoding" in human.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["explain", "select 1", "--config", str(SAMPLE_CONFIG), "--connection", "nope"], "no connection 'nope'"),
        (["explain", "select 1", "--dialect", "oracle"], "dialect must be one of"),
        (["test", "/nonexistent/cases.toml"], "does not exist"),
    ],
)
def test_mistakes_are_one_clear_line_and_no_traceback(args, message):
    done = hoop("policy", *args)
    assert done.returncode in (2, 8), done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_file_without_cases_or_with_a_typo_is_a_configuration_error(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text('config = "gateway.toml"\n')
    assert "no [[case]]" in hoop("policy", "test", str(empty)).stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('[[case]]\nsql = "select 1"\ndialect = "postgres"\nexpected = "allow"\n')
    done = hoop("policy", "test", str(typo))
    assert done.returncode == 8 and "unknown key 'expected'" in done.stderr


def test_the_sample_config_is_the_readmes():
    import re

    readme = (REPO / "README.md").read_text()
    block = re.search(r"### gateway.toml\n\n```toml\n(.*?)```", readme, re.S).group(1)
    sample = SAMPLE_CONFIG.read_text().split("\n", 1)[1]  # below its one-line header
    assert sample == block, "examples/gateway.toml drifted from the README's gateway.toml: copy it again"


def test_subject_rules_apply_as_the_gateway_applies_them(tmp_path):
    """A rule's `subjects` name the first issuer's subject when bare: `--as alice` and a case's
    `as = "alice"` must match it as the live gateway does (they compared a bare string before)."""
    config = tmp_path / "gateway.toml"
    config.write_text(SAMPLE_CONFIG.read_text() + """
[connections.ops]
protocol = "postgres"
target = "10.0.0.7:5432"
subjects = ["alice"]
[connections.ops.policy]
default = "allow"
[[connections.ops.policy.rules]]
subjects = ["alice"]
match = ["drop"]
action = "deny"
""")
    done = hoop("policy", "explain", "DROP TABLE t", "--config", str(config), "--connection", "ops", "--as", "alice", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["action"] == "deny"
    other = hoop("policy", "explain", "DROP TABLE t", "--config", str(config), "--connection", "ops",
                 "--as", "https://token.actions.githubusercontent.com|alice", "--json")
    assert json.loads(other.stdout)["action"] == "allow"  # the same sub from another issuer is someone else


def test_explain_through_the_gateway_uses_its_live_policy_and_who_asks(gateway, as_user):
    """`--connection` without `--config`: the gateway's API answers with the policy that judges
    live traffic; a non-auditor is explained as themselves whatever --as says, an auditor as
    anyone; a connection the caller may neither use nor audit is not found."""
    from tests.support.cli import run_subprocess

    def explain(login, *extra):
        done = run_subprocess(["policy", "explain", "DROP TABLE customers", "--connection", "gated-db", "--json", *extra], as_user(login))
        return done.code, (json.loads(done.out) if done.code == 0 else done.err)

    code, alice = explain("alice")
    assert code == 0 and alice["action"] == "require_approval" and alice["reason"] == "rule 0: drop"
    assert alice["connection"] == "gated-db" and alice["subject"].endswith("|alice")
    code, bob = explain("bob", "--as", "carol", "--groups", "approvers")
    assert code == 0 and bob["subject"].endswith("|bob") and bob["groups"] == ["developers"]  # --as ignored
    code, carol = explain("carol", "--as", "mallory", "--groups", "agents")
    assert code == 0 and carol["subject"].endswith("|mallory") and carol["groups"] == ["agents"]
    code, err = explain("nobody-at-all")
    assert code != 0 and "no connection named gated-db" in err
