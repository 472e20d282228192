"""`hoop access matrix` (issue 30), run as an admin runs it: the real CLI in a subprocess against
real config files (the README's sample among them). The matrix's verdicts are checked against
the gateway's own objects (load_settings, Policy.from_config with the gateway's subject parser),
and `--against` is shown to report exactly the row a one-line change grants or takes away."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hoopcli.gateway.identity import Principal, parse_principal
from hoopcli.gateway.policy import CATEGORIES, Policy
from hoopcli.gateway.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "gateway.toml"
IDP = "https://idp.example.com"
GITHUB = "https://token.actions.githubusercontent.com"

REPORTS = """
[connections.reports]
protocol = "mysql"
target = "10.0.0.6:3306"
groups = ["analysts", "ci"]
approver_groups = ["dba-leads"]
database = "reports"
pin_database = false

[connections.reports.policy]
default = "deny"
[[connections.reports.policy.rules]]
match = ["select", "show", "set"]
action = "allow"
[[connections.reports.policy.rules]]
match = ["drop"]
action = "allow"
groups = ["dba"]
[[connections.reports.policy.rules]]
match = ["insert"]
action = "require_approval"

[connections.ssh-box]
protocol = "tcp"
target = "10.0.0.9:22"
subjects = ["alice"]
record = false
"""


def hoop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hoopcli", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def matrix_json(config: Path) -> dict:
    done = hoop("access", "matrix", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def against(new: Path, old: Path) -> dict:
    done = hoop("access", "matrix", "--config", str(new), "--against", str(old), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_readme_sample_matrix_is_well_formed_and_matches_the_live_policy():
    report = matrix_json(SAMPLE)
    assert set(report) == {"issuers", "connections", "rows"}
    assert [i["issuer"] for i in report["issuers"]] == [IDP, GITHUB]
    assert report["issuers"][1]["grants"] == []  # a machine issuer grants nothing by default
    (conn,) = report["connections"]
    assert conn["name"] == "app-db" and conn["protocol"] == "postgres"
    # Every group is granted by the human IdP only: a GitHub token cannot open app-db.
    assert conn["groups"] == {"dba": [IDP], "developers": [IDP], "agents": [IDP]}
    assert conn["record"] is True and conn["database"] == "app" and conn["database_pinned"] is True
    assert conn["credentials"]["broker"] == "vault" and conn["credentials"]["role"] == "app-readonly"
    assert conn["approvers"] == {"source": "gateway", "groups": {"approvers": [IDP]}, "needed": True}
    # The per-category actions are the live policy's, for every category there is.
    live = Policy.from_config("default")
    everyone = conn["policy"]["everyone"]
    assert sorted(c for cats in everyone.values() for c in cats) == sorted(CATEGORIES)
    for action, categories in everyone.items():
        for category in categories:
            assert live._category_action(category, Principal("", ""), frozenset())[0] == action, category
    assert "drop" in everyone["require_approval"] and "copy_program" in everyone["deny"] and "select" in everyone["allow"]
    assert conn["policy"]["exceptions"] == []
    for row in report["rows"]:
        assert set(row) == {"connection", "aspect", "subject", "value"} and all(isinstance(v, str) for v in row.values())


def test_group_exceptions_approvers_and_record_off_come_from_the_config(tmp_path):
    config = write(tmp_path, "gateway.toml", SAMPLE.read_text() + REPORTS)
    report = matrix_json(config)
    by_name = {c["name"]: c for c in report["connections"]}
    reports = by_name["reports"]
    settings = load_settings(config)
    issuers = [i.issuer for i in settings.issuers]
    live = Policy.from_config(settings.registry.get("reports").policy, subject=lambda s: parse_principal(s, issuers))
    assert reports["policy"]["everyone"]["allow"] == ["select", "set", "show"]
    assert reports["policy"]["everyone"]["require_approval"] == ["insert", "unparseable"]
    # dba members may drop here; nobody else may: exactly one exception, and it is live.
    assert reports["policy"]["exceptions"] == [{"who": "group dba", "category": "drop", "action": "allow", "rule": 1}]
    assert live._category_action("drop", Principal(IDP, "x"), frozenset({"dba"})) == ("allow", 1)
    assert live._category_action("drop", Principal(IDP, "x"), frozenset({"analysts"}))[0] == "deny"
    assert reports["approvers"]["source"] == "connection" and reports["approvers"]["groups"] == {"dba-leads": [IDP]}
    # "ci" is claimed by nobody who may grant it but the IdP: the GitHub issuer lists no grants.
    assert reports["groups"] == {"analysts": [IDP], "ci": [IDP]}
    assert reports["database_pinned"] is False
    box = by_name["ssh-box"]
    assert box["record"] is False and box["policy"]["kind"] == "none"
    assert box["subjects"] == [{"sub": "alice", "issuer": IDP}]
    rows = {(r["connection"], r["aspect"], r["subject"], r["value"]) for r in report["rows"]}
    assert ("ssh-box", "record", "", "off") in rows
    assert ("reports", "policy", "group dba", "drop: allow") in rows
    assert not any(r[0] == "ssh-box" and r[1] == "approve" for r in rows)  # nothing there is ever held


def test_a_one_line_subject_adds_exactly_that_grant(tmp_path):
    old = write(tmp_path, "old.toml", SAMPLE.read_text())
    new = write(tmp_path, "new.toml", SAMPLE.read_text().replace('database = "app"\n', 'database = "app"\nsubjects = ["mallory"]\n'))
    diff = against(new, old)
    assert diff == {"added": [{"connection": "app-db", "aspect": "access", "subject": "subject mallory", "value": f"of {IDP}"}],
                    "removed": []}
    back = against(old, new)  # the other way round it is taken away
    assert back["added"] == [] and back["removed"] == diff["added"]


def test_a_one_line_issuer_grant_shows_the_machine_issuer_gaining_access_and_approval(tmp_path):
    old = write(tmp_path, "old.toml", SAMPLE.read_text())
    new = write(tmp_path, "new.toml", SAMPLE.read_text().replace(
        'audiences = ["hoop"]\n', 'audiences = ["hoop"]\ngrants = ["agents", "approvers"]\n'))
    diff = against(new, old)
    changed = {(r["aspect"], r["subject"]): r["value"] for r in diff["added"]}
    assert changed == {
        ("access", "group agents"): f"via {IDP}, {GITHUB}",
        ("approve", "group approvers"): f"via {IDP}, {GITHUB} (gateway approvers)",
    }
    assert {(r["aspect"], r["subject"]) for r in diff["removed"]} == set(changed)


def test_a_one_line_policy_change_shows_the_category_it_lets_through(tmp_path):
    base = SAMPLE.read_text().replace('policy = "default"', "")
    table = '\n[connections.app-db.policy]\ndefault = "allow"\n[[connections.app-db.policy.rules]]\nmatch = ["drop", "truncate"]\naction = "require_approval"\n'
    old = write(tmp_path, "old.toml", base + table)
    new = write(tmp_path, "new.toml", base + table.replace('["drop", "truncate"]', '["drop"]'))
    diff = against(new, old)
    assert diff["added"] == [{"connection": "app-db", "aspect": "policy", "subject": "everyone", "value": "truncate: allow"}]
    assert diff["removed"] == [{"connection": "app-db", "aspect": "policy", "subject": "everyone", "value": "truncate: require_approval"}]
    text = hoop("access", "matrix", "--config", str(new), "--against", str(old))
    assert text.returncode == 0
    assert text.stdout.splitlines() == ["+ app-db  policy   everyone  truncate: allow",
                                        "- app-db  policy   everyone  truncate: require_approval"]


def test_markdown_has_one_line_per_row_and_an_unchanged_config_diffs_to_nothing(tmp_path):
    report = matrix_json(SAMPLE)
    md = hoop("access", "matrix", "--config", str(SAMPLE), "--markdown")
    assert md.returncode == 0
    lines = md.stdout.splitlines()
    assert lines[0] == "| connection | aspect | who / what | value |" and len(lines) == 2 + len(report["rows"])
    same = hoop("access", "matrix", "--config", str(SAMPLE), "--against", str(SAMPLE))
    assert same.returncode == 0 and same.stdout == "no change in access\n"


def test_a_broken_config_is_a_config_error_not_a_traceback(tmp_path):
    bad = write(tmp_path, "bad.toml", SAMPLE.read_text().replace('protocol = "postgres"', 'protocol = "oracle"'))
    done = hoop("access", "matrix", "--config", str(bad))
    assert done.returncode == 8
    assert "connections.app-db: protocol must be one of" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_inline_secrets_in_credential_hints_are_not_repeated(tmp_path):
    config = write(tmp_path, "gateway.toml", SAMPLE.read_text().replace(
        'role = "app-readonly" }', 'role = "app-readonly", password = "hunter2", token_url = "https://u:s3cret@x.example.com" }'))
    done = hoop("access", "matrix", "--config", str(config), "--json")
    assert done.returncode == 0 and "hunter2" not in done.stdout and "s3cret" not in done.stdout
    assert json.loads(done.stdout)["connections"][0]["credentials"]["password"] == "(inline secret)"
