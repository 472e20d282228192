"""Shared fixtures live in tests/support/, one module per real server the tests start.

Each server is started once per test session on a free 127.0.0.1 port and torn down at exit.
"""

pytest_plugins = [
    "tests.support.cli",
    "tests.support.oidc",
    "tests.support.pg",
    "tests.support.mariadb",
    "tests.support.mysql_wire",  # the `split` fixture of the MySQL engine tests
    "tests.support.gateway",
    "tests.support.openbao",
    "tests.support.moto_sts",
]

import os
import signal

import pytest

# A shell without job control starts background commands (`bash .ci/run &`) with SIGINT
# ignored, and an ignored signal stays ignored across exec: every `hoop` the tests start
# would then shrug off the Ctrl-C they send it. Start the children the way a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ---- a skip is not a pass ---------------------------------------------------------------------
# A test that skips proves nothing, and a skip can hide a whole class of tests (a missing server
# skips every test of its fixture). The session fails on any skip whose reason is not below,
# with why it is acceptable. HOOP_ALLOW_SKIPS=1 lifts this for a partial local setup.
ALLOWED_SKIPS: dict[str, str] = {
    "needs root and setpriv": "runs a client as another uid; CI runs as root, a developer's laptop may not",
}
_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def _unexplained_skips() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason in _skipped if not any(allowed in reason for allowed in ALLOWED_SKIPS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("HOOP_ALLOW_SKIPS") == "1" or exitstatus not in (0, 1):
        return
    if _unexplained_skips():
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    unexplained = _unexplained_skips()
    if unexplained and os.environ.get("HOOP_ALLOW_SKIPS") != "1":
        terminalreporter.section("skips that are not on the allow-list (tests/conftest.py): the run fails", red=True)
        for nodeid, reason in unexplained:
            terminalreporter.line(f"{nodeid}: {reason}")
