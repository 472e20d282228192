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

import signal

# A shell without job control starts background commands (`bash .ci/run &`) with SIGINT
# ignored, and an ignored signal stays ignored across exec: every `hoop` the tests start
# would then shrug off the Ctrl-C they send it. Start the children the way a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
