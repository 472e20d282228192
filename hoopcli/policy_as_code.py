"""`hoop policy explain|test`: the gateway's own policy objects and classifier, run locally
against a gateway config file (or the default policy), for admins and CI. Rendering stays in
cli.py; this module turns arguments into results and configuration mistakes into HoopErrors."""

from __future__ import annotations

from pathlib import Path

from hoopcli.errors import ConfigError, UsageError


def explain_statement(sql: str, connection: str | None, config: str | None, dialect: str | None,
                      subject: str | None, groups: list[str], api=None) -> dict:
    """Locally from a gateway.toml (`config`), by the default policy (`dialect`), or — with a
    connection and no config — through the gateway's API (`api()`: the live policy)."""
    from hoopcli.gateway.policy.explain import explain, source_from_config, source_inline

    if connection and not config:
        if api is None:
            raise UsageError("--connection needs --config FILE, or a gateway to ask", hint="hoop login, or pass --config gateway.toml")
        return api().explain(connection, sql, subject, groups)
    subject = subject or "someone"
    try:
        if connection:
            source = source_from_config(config, connection)
        else:
            source = source_inline("default", dialect or "postgres")
    except ValueError as exc:
        raise ConfigError(str(exc), hint="check the file and the connection name") from None
    try:
        who = source.subject(subject)
    except ValueError as exc:
        raise UsageError(f"--as {subject!r}: {exc}", hint='a bare subject is the first issuer\'s; "<issuer URL>|<sub>" another\'s') from None
    result = explain(source.policy, sql, source.dialect, (who, groups)).to_dict()
    result["subject"] = subject
    result["connection"] = source.connection
    return result


def run_test_files(files: list[str], config: str | None) -> list[dict]:
    from hoopcli.gateway.policy.explain import run_policy_tests

    if not files:
        raise UsageError("name at least one policy test file", hint="hoop policy test policy-tests.toml")
    results = []
    for name in files:
        try:
            results += [r.to_dict() for r in run_policy_tests(Path(name), config)]
        except ValueError as exc:
            raise ConfigError(str(exc), hint="see README: Policy as code for the file format") from None
    return results
