"""`hoop gateway check` (issue 30), run as an admin runs it in CI: the real CLI in a subprocess.
The README's sample passes without errors; a fixture config with each listed mistake gets each
one named, at its line, with a hint, and exit code 1. The schema of known keys is held to the
keys the gateway's own loaders read, so a key they learn cannot be reported as a typo."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from hoopcli.gateway.config_check import SCHEMA, check_text
from hoopcli.gateway.policy.rules import _POLICY_KEYS, _RULE_KEYS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "gateway.toml"

# Each mistake sits on a line that carries a marker comment (#M:<code>), so the test knows its line.
MISTAKES = """\
[gateway]
listen = "127.0.0.1:8443"
audit_store = "postgresql://hoop:s3cret@db.example.com/hoop_audit"   #M:url-password
auditor_groups = ["auditors"]

[gateway.approvals]
approver_groups = ["approvers"]
window_secs = 900                                                 #M:typo-window

[[issuers]]
issuer = "https://idp.example.com"
audiences = ["hoop-cli"]
grants = ["dba", "developers", "approvers", "auditors"]

[[issuers]]
issuer = "https://token.actions.githubusercontent.com"
audiences = ["hoop"]
grants = ["ci", "approvers"]                                      #M:machine-approver

[[issuers]]
issuer = "http://idp.internal.example.com"                        #M:plain-http
audiences = ["hoop"]

[connections.app-db]
protocol = "postgres"
target = "10.0.0.5:5432"
groups = ["developers"]
policy = "default"
credentials = { broker = "none", user = "app", password = "hunter2" }   #M:inline-secret

[connections.reports]                                             #M:no-policy
protocol = "mysql"
target = "10.0.0.6:3306"
groups = ["developers"]
polcy = "default"                                                 #M:typo-policy

[connections.ghost]
protocol = "postgres"
target = "10.0.0.7:5432"
groups = ["contractors"]                                          #M:unreachable
approver_groups = ["dba-leads"]                                   #M:no-approver
policy = "default"
"""


def hoop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoopcli", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def line_of(marker: str, text: str = MISTAKES) -> int:
    (number,) = [n for n, line in enumerate(text.splitlines(), 1) if f"#M:{marker}" in line]
    return number


def check(config: Path, *extra: str) -> tuple[int, dict]:
    done = hoop("gateway", "check", "--config", str(config), "--json", *extra)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


def test_the_readme_sample_passes_without_errors():
    code, report = check(SAMPLE)
    assert code == 0 and report["errors"] == 0
    # Its one warning is the SQLite store the sample uses (README: Audit store).
    assert [(f["level"], f["code"], f["line"]) for f in report["findings"]] == [("warning", "sqlite-store", 6)]
    assert hoop("gateway", "check", "--config", str(SAMPLE), "--strict").returncode == 1


def test_each_listed_mistake_is_found_at_its_line_with_a_hint(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(MISTAKES)
    code, report = check(config)
    assert code == 1
    found = {(f["code"], f["line"]): f for f in report["findings"]}
    expected = {
        ("inline-secret", line_of("url-password")): "error",
        ("unknown-key", line_of("typo-window")): "error",
        ("machine-approver", line_of("machine-approver")): "error",
        ("plain-http", line_of("plain-http")): "error",
        ("inline-secret", line_of("inline-secret")): "error",
        ("no-policy", line_of("no-policy")): "warning",
        ("unknown-key", line_of("typo-policy")): "error",
        ("unreachable", line_of("unreachable")): "error",
        ("no-approver", line_of("no-approver")): "error",
    }
    for key, level in expected.items():
        assert key in found, f"{key} not reported; got {sorted(found)}"
        assert found[key]["level"] == level and found[key]["hint"], found[key]
    assert set(found) == set(expected), sorted(set(found) - set(expected))
    assert found[("unknown-key", line_of("typo-window"))]["hint"] == "did you mean 'window_seconds'?"
    assert found[("unknown-key", line_of("typo-policy"))]["hint"] == "did you mean 'policy'?"
    assert "connections.ghost" not in found[("no-approver", line_of("no-approver"))]["message"]  # names the connection by name
    assert "ghost" in found[("no-approver", line_of("no-approver"))]["message"]
    assert report["errors"] == 8 and report["warnings"] == 1
    # The secrets never reach the output.
    assert "s3cret" not in json.dumps(report) and "hunter2" not in json.dumps(report)


def test_text_output_names_file_line_level_and_hint(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(MISTAKES)
    done = hoop("gateway", "check", "--config", str(config))
    assert done.returncode == 1
    assert f"{config}:{line_of('typo-policy')}: error: unknown key 'connections.reports.polcy'" in done.stdout
    assert "    hint: did you mean 'policy'?" in done.stdout
    assert "8 error(s), 1 warning(s)" in done.stderr


def test_a_start_time_error_is_reported_at_its_line_and_broken_toml_too(tmp_path):
    wrong_protocol = SAMPLE.read_text().replace('protocol = "postgres"', 'protocol = "oracle"')
    (tmp_path / "a.toml").write_text(wrong_protocol)
    code, report = check(tmp_path / "a.toml")
    (finding,) = [f for f in report["findings"] if f["level"] == "error"]
    assert code == 1 and finding["code"] == "invalid" and "protocol must be one of" in finding["message"]
    assert finding["line"] == line_of("x", wrong_protocol.replace("[connections.app-db]", "[connections.app-db] #M:x"))
    bad_rule = SAMPLE.read_text().replace('policy = "default"', 'policy = { rules = [{ match = ["drp"], action = "deny" }] }')
    (tmp_path / "b.toml").write_text(bad_rule)
    code, report = check(tmp_path / "b.toml")
    assert code == 1 and any("unknown category 'drp'" in f["message"] for f in report["findings"])
    (tmp_path / "c.toml").write_text("[gateway]\nlisten = \n")
    code, report = check(tmp_path / "c.toml")
    assert code == 1 and report["findings"][0]["code"] == "toml" and report["findings"][0]["line"] == 2


def test_unknown_keys_in_policy_rules_are_found_in_array_tables():
    text = SAMPLE.read_text().replace('policy = "default"', "") + (
        '\n[connections.app-db.policy]\ndefault = "allow"\n[[connections.app-db.policy.rules]]\nmatch = ["drop"]\n'
        'action = "deny"\n[[connections.app-db.policy.rules]]\nmatch = ["truncate"]\nacton = "deny"  #M:acton\n')
    findings = [f for f in check_text(text) if f.code in ("unknown-key", "invalid")]
    assert any(f.code == "unknown-key" and f.line == line_of("acton", text) and "'action'" in f.hint for f in findings)


def _keys_read(path: Path) -> set[str]:
    """String keys a loader reads: x.get("key", ...), x["key"] and "key" in x."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and node.args:
            arg = node.args[0]
        elif isinstance(node, ast.Subscript):
            arg = node.slice
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In):
            arg = node.left
        else:
            continue
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.isidentifier():
            keys.add(arg.value)
    return keys


def _schema_keys(schema) -> set[str]:
    keys = set()
    for key, sub in schema.items():
        if key not in ("*", "[]"):
            keys.add(key)
        if isinstance(sub, dict):
            keys |= _schema_keys(sub)
    return keys


def test_the_schema_knows_every_key_the_gateway_reads():
    read = _keys_read(REPO / "hoopcli" / "gateway" / "settings.py") | _keys_read(REPO / "hoopcli" / "gateway" / "registry.py")
    assert read - _schema_keys(SCHEMA) == set()
    policy = SCHEMA["connections"]["*"]["policy"]
    assert set(policy) == _POLICY_KEYS and set(policy["rules"]["[]"]) == _RULE_KEYS
