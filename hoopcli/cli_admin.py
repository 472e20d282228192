"""Commands for admins and auditors: `hoop audit`, `hoop policy`, `hoop gateway` — thin typer
commands that call one function each and render the result (as in cli.py)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from hoopcli.cli_common import JsonOpt, _api
from hoopcli.errors import ExitCode, UsageError

audit_app = typer.Typer(help="Read and verify the gateway's audit trail.", no_args_is_help=True)
StoreOpt = typer.Option(None, "--store", help="Read the store directly (gateway host): a SQLite path or postgresql:// URL.")


@audit_app.command("list")
def audit_list(
    identity: Optional[str] = typer.Option(None, "--identity", help="Subject (sub) to filter on."),
    connection: Optional[str] = typer.Option(None, "--connection"),
    since: Optional[str] = typer.Option(None, "--since", help="RFC 3339 time, e.g. 2026-01-01T00:00:00Z"),
    kind: Optional[str] = typer.Option(None, "--kind", help="connect, api, statement, session_end, approval_request, approval_decision"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    store: Optional[str] = StoreOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Records of who ran what, when, with what result."""
    from hoopcli.audit_client import list_records
    from hoopcli.output import emit_json, table

    rows = list_records(store, _api, sub=identity, connection=connection, since=since, kind=kind, limit=limit)
    if json_out:
        for row in rows:
            emit_json(row)
    else:
        table(rows, ["seq", "ts", "kind", "sub", "connection", "statement", "outcome", "tag", "code"], title="Audit trail")


@audit_app.command("verify")
def audit_verify(
    store: Optional[str] = StoreOpt,
    head: List[str] = typer.Option([], "--head", help="A published chain head SEQ:HASH the store must still hold (repeatable)."),
    head_from: List[str] = typer.Option([], "--head-from", help="A JSONL export (gateway.export.jsonl): its newest head must still be in the store."),
    json_out: bool = JsonOpt,
) -> None:
    """Check the hash chain: finds edited, deleted, inserted or reordered records, and with a
    published head (--head, --head-from) records deleted from the end."""
    from hoopcli.audit_client import published_heads, verify
    from hoopcli.output import emit_json, info

    report = verify(store, _api, published_heads(head, head_from))
    if json_out:
        emit_json(report)
    else:
        against = f" against the published head seq {max(int(h.split(':')[0]) for h in report['heads'])}" if report.get("heads") else ""
        info(f"checked {report['checked']} records{against}: " + ("chain intact" if report["ok"] else "PROBLEMS FOUND"))
        for problem in report["problems"]:
            info(f"  {problem}")
    if not report["ok"]:
        raise typer.Exit(int(ExitCode.ERROR))


@audit_app.command("export")
def audit_export(
    fmt: str = typer.Option("jsonl", "--format", help="jsonl"),
    since: Optional[str] = typer.Option(None, "--since"),
    store: Optional[str] = StoreOpt,
) -> None:
    """Write every record as JSON lines on stdout (with hashes, so the copy can be verified)."""
    from hoopcli.audit_client import list_records
    from hoopcli.output import emit_json

    if fmt != "jsonl":
        raise UsageError(f"unknown format '{fmt}'", "Only jsonl is supported.")
    for row in list_records(store, _api, since=since):
        emit_json(row)


# ---- hoop dev -----------------------------------------------------------------------------


policy_app = typer.Typer(help="Read and test statement policies before they bite (policy as code).", no_args_is_help=True)


@policy_app.command("explain")
def policy_explain(
    sql: str = typer.Argument(..., help="The statement (string) to judge."),
    connection: Optional[str] = typer.Option(None, "--connection", "-c", help="A connection of --config."),
    config: Optional[str] = typer.Option(None, "--config", help="The gateway.toml that defines the connection."),
    dialect: Optional[str] = typer.Option(None, "--dialect", help="postgres or mysql, judged by the default policy (without --connection)."),
    subject: Optional[str] = typer.Option(None, "--as", help="The subject the statement runs as (through the gateway: auditors only; default: you)."),
    groups: str = typer.Option("", "--groups", help="Comma-separated groups of that subject."),
    json_out: bool = JsonOpt,
) -> None:
    """What the gateway would do with a statement, the categories of each part, and the rule that decides
    (from --config, or with --connection alone from the live gateway)."""
    from hoopcli.output import emit_json, info
    from hoopcli.policy_as_code import explain_statement

    result = explain_statement(sql, connection, config, dialect, subject, [g for g in groups.split(",") if g], api=_api)
    if json_out:
        emit_json(result)
        return
    info(f"{result['action']}  ({result['reason']})")
    for part in result["parts"]:
        info(f"  part: {part['text'][:100]}")
        for category, verdict in part["verdicts"].items():
            rule = "default" if verdict["rule"] is None else f"rule {verdict['rule']}"
            info(f"    {category:<22} {verdict['action']:<17} {rule}")
        if part["note"]:
            info(f"    note: {part['note']}")


@policy_app.command("test")
def policy_test(
    files: List[str] = typer.Argument(..., help="Policy test files (TOML, [[case]] tables)."),
    config: Optional[str] = typer.Option(None, "--config", help="The gateway.toml the cases' connections refer to (overrides config = in the file)."),
    json_out: bool = JsonOpt,
) -> None:
    """Run policy test files: every case's statement judged as the gateway would; exit 1 on a mismatch."""
    from hoopcli.output import emit_json, info
    from hoopcli.policy_as_code import run_test_files

    results = run_test_files(files, config)
    failed = [r for r in results if not r["ok"]]
    if json_out:
        emit_json({"cases": len(results), "failed": len(failed), "results": results})
    else:
        for r in failed:
            label = f" ({r['name']})" if r["name"] else ""
            info(f"FAIL {r['file']} case {r['index']}{label} on {r['connection']}: {r['statement'][:200]}")
            info(f"     expected {r['expected']}, got {r['actual']} ({r['reason']})")
        info(f"{len(results) - len(failed)} of {len(results)} policy cases pass")
    if failed:
        raise typer.Exit(int(ExitCode.ERROR))


gateway_app = typer.Typer(help="Run the gateway, or set up its audit trail as an admin (audit-schema, init).")
GatewayConfigOpt = typer.Option("gateway.toml", "--config", "-c", help="Path to gateway.toml.")


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    config: str = GatewayConfigOpt,
    dev_tls: Optional[str] = typer.Option(None, "--dev-tls", help="Make (or reuse) a development CA and server certificate in this folder."),
    insecure_listen: bool = typer.Option(False, "--insecure-listen", help="Listen without TLS (127.0.0.1 only; for tests)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse to start when the gateway's role could rewrite its own audit trail."),
    json_out: bool = JsonOpt,
) -> None:
    """Run the gateway: TLS, CONNECT with bearer tokens, per-statement audit trail."""
    if ctx.invoked_subcommand is not None:
        return
    from hoopcli.gateway.main import start_gateway
    from hoopcli.output import emit_json, info

    def ready(event: dict) -> None:
        if json_out:
            emit_json(event)
        info(f"hoop gateway listening on {event['url']} (audit store: {event['audit_store']})")
        for warning in event.get("audit_warnings") or []:
            info(f"hoop gateway: warning: {warning}")
        if event.get("audit_warnings"):
            info("  The gateway can rewrite the trail it is audited by: run `hoop gateway init --admin-dsn …` as an admin (--strict refuses to start).")
        if event.get("ca_file"):
            info(f"Development CA: {event['ca_file']}  (pin it with `hoop config set ca_file {event['ca_file']}`)")

    start_gateway(config, dev_tls, insecure_listen, ready, strict=strict)


@gateway_app.command("check")
def gateway_check(
    config: str = GatewayConfigOpt,
    strict: bool = typer.Option(False, "--strict", help="Fail (exit 1) on warnings too, not only on errors."),
    json_out: bool = JsonOpt,
) -> None:
    """Lint gateway.toml before deploying: each finding an error or warning with its line and a hint; exit 1 on errors."""
    from hoopcli.errors import ConfigError
    from hoopcli.gateway.config_check import check_config
    from hoopcli.output import emit_json, info

    try:
        findings = check_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="pass the gateway's config with --config FILE") from None
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    if json_out:
        emit_json({"file": config, "errors": errors, "warnings": warnings, "findings": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            sys.stdout.write(f"{config}:{f.line or '?'}: {f.level}: {f.message}\n" + (f"    hint: {f.hint}\n" if f.hint else ""))
        info(f"{config}: {errors} error(s), {warnings} warning(s)")
    if errors or (strict and warnings):
        raise typer.Exit(int(ExitCode.ERROR))


GatewayStoreOpt = typer.Option(None, "--store", help="The gateway's store URL, postgresql://GATEWAY_ROLE@host/db (default: --config's audit_store).")
GatewayRoleOpt = typer.Option(None, "--role", help="The gateway's role (default: the user of the store URL).")


@gateway_app.command("audit-schema")
def gateway_audit_schema(store: Optional[str] = GatewayStoreOpt, config: str = GatewayConfigOpt, role: Optional[str] = GatewayRoleOpt) -> None:
    """Print the SQL an admin runs so that the admin owns the audit table and the gateway may only INSERT and SELECT."""
    from hoopcli.audit_client import audit_schema

    sys.stdout.write(audit_schema(store, config, role))


@gateway_app.command("init")
def gateway_init(
    admin_dsn: str = typer.Option(..., "--admin-dsn", envvar="HOOP_ADMIN_DSN", help="An admin role of the audit database, not the gateway's; leave the password to PGPASSWORD or ~/.pgpass."),
    store: Optional[str] = GatewayStoreOpt,
    config: str = GatewayConfigOpt,
    role: Optional[str] = GatewayRoleOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create the audit table, its triggers and grants as an admin: the gateway's role gets INSERT and SELECT only."""
    from hoopcli.audit_client import init_schema
    from hoopcli.output import emit_json, info

    result = init_schema(admin_dsn, store, config, role)
    if json_out:
        emit_json(result)
    else:
        info(f"audit table {result['table']}: owned by the admin; {result['gateway_role']} may INSERT and SELECT.")
        for finding in result["findings"]:
            info(f"  still: {finding}")
    if not result["ok"]:
        raise typer.Exit(int(ExitCode.ERROR))


access_app = typer.Typer(help="Who can open each connection, what its policy holds, who approves (from gateway.toml).", no_args_is_help=True)


@access_app.command("matrix")
def access_matrix(
    config: str = typer.Option("gateway.toml", "--config", "-c", help="The gateway.toml to read."),
    against: Optional[str] = typer.Option(None, "--against", help="An older gateway.toml: show only what the change grants (+) or takes away (-)."),
    markdown_out: bool = typer.Option(False, "--markdown", help="A Markdown table (for a pull request)."),
    json_out: bool = JsonOpt,
) -> None:
    """The access matrix: per connection, the groups (and which issuer grants each) and subjects
    that open it, its policy per category and group, approvers, record, pinned database, broker."""
    from hoopcli.gateway import access_matrix as am
    from hoopcli.output import emit_json

    report = _matrix_of(config)
    rows = am.matrix_rows(report)
    if against is not None:
        diff = am.diff_rows(am.matrix_rows(_matrix_of(against)), rows)
        if json_out:
            emit_json({k: [r.to_dict() for r in v] for k, v in diff.items()})
        else:
            marks = [("+", r) for r in diff["added"]] + [("-", r) for r in diff["removed"]]
            sys.stdout.write("".join(f"{m} {r}\n" for m, r in sorted(marks, key=lambda x: (x[1], x[0]))) or "no change in access\n")
        return
    if json_out:
        emit_json({**report, "rows": [r.to_dict() for r in rows]})
    else:
        sys.stdout.write(am.markdown(rows) if markdown_out else "".join(f"{r}\n" for r in rows))


def _matrix_of(config: str) -> dict:
    from hoopcli.errors import ConfigError
    from hoopcli.gateway.access_matrix import matrix
    from hoopcli.gateway.settings import load_settings

    try:
        return matrix(load_settings(config))
    except ValueError as exc:
        raise ConfigError(str(exc), hint=f"run `hoop gateway check --config {config}`") from None


# ---- the error boundary -------------------------------------------------------------------
