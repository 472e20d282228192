"""Shared fixtures live in tests/support/, one module per real server the tests start.

Each server is started once per test session on a free 127.0.0.1 port and torn down at exit.
"""

pytest_plugins = [
    "tests.support.cli",
    "tests.support.oidc",
    "tests.support.pg",
    "tests.support.mariadb",
    "tests.support.gateway",
    "tests.support.openbao",
    "tests.support.moto_sts",
]
