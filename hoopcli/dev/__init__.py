"""`hoop dev`: the whole stack on one machine, for development and demos only.

issuer.py  a development-only OpenID issuer (device flow, refresh, revocation, JWKS)
stack.py   issuer + throw-away PostgreSQL (or a TCP echo target) + the gateway, in one process
demo.py    `hoop dev --demo`: login, statements, a held DROP, the audit trail — unattended
"""
