"""gateway.toml mistakes are refused at start with the field named, never silently taken."""

import pytest

from hoopcli.gateway.settings import settings_from_dict

ISSUER = [{"issuer": "https://idp.example.com", "audiences": ["hoop-cli"]}]
PG = {"protocol": "postgres", "target": "db:5432", "groups": ["dba"]}


def _load(connections=None, issuers=ISSUER, gateway=None):
    return settings_from_dict({"gateway": gateway or {}, "issuers": issuers, "connections": connections or {}})


def test_a_good_config_loads():
    settings = _load({"app-db": PG})
    assert settings.registry.get("app-db").port == 5432


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"issuers": [{"issuer": "http://idp.example.com", "audiences": ["x"]}]}, "issuers[0].issuer"),
        ({"issuers": [{"issuer": "https://idp", "audiences": ["x"], "jwks_uri": "http://evil/jwks"}]}, "issuers[0].jwks_uri"),
        ({"issuers": [{"issuer": "https://idp", "audiences": "hoop-cli"}]}, "issuers[0].audiences"),
        ({"gateway": {"approvals": {"webhook": "http://chat.example.com/hook"}}}, "gateway.approvals.webhook"),
        ({"gateway": {"export": {"webhook": "ftp://siem"}}}, "gateway.export.webhook"),
        ({"gateway": {"auditor_groups": "admins"}}, "gateway.auditor_groups"),
        ({"gateway": {"record_params": "false"}}, "gateway.record_params"),
        ({"gateway": {"approvals": "x"}}, "gateway.approvals"),
        ({"connections": {"app-db": {**PG, "groups": "dba"}}}, "connections.app-db: groups"),
        ({"connections": {"app-db": {"target": "db:5432", "groups": ["dba"]}}}, "connections.app-db: protocol is required"),
        ({"connections": {"raw": {"protocol": "tcp", "target": "db:5432", "groups": ["dba"], "policy": "default"}}}, "connections.raw: a policy needs"),
    ],
)
def test_mistakes_are_refused_with_the_field_named(kwargs, field):
    with pytest.raises(ValueError) as excinfo:
        _load(**kwargs)
    assert field in str(excinfo.value)


def test_loopback_http_issuer_is_allowed_for_development():
    assert _load(issuers=[{"issuer": "http://127.0.0.1:9000", "audiences": ["hoop-cli"]}]).issuers


def test_audit_store_path_must_exist(tmp_path):
    from tests.support.cli import run_inprocess

    result = run_inprocess(["audit", "verify", "--store", str(tmp_path / "typo.db")])
    assert result.code == 7 and "no audit store" in result.err
    assert not (tmp_path / "typo.db").exists()
