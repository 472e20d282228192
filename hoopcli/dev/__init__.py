"""`hoop dev`: the whole stack on one machine, for development and demos only.

issuer.py   a development-only OpenID issuer (device flow, refresh, revocation, JWKS)
targets.py  the throw-away PostgreSQL cluster (or a TCP echo server) behind the gateway
stack.py    issuer + target + the gateway, in one process
command.py  `hoop dev`: start the stack, print the next commands, wait for Ctrl-C
demo.py     `hoop dev --demo`: login, statements, a held DROP, the audit trail — unattended
"""
