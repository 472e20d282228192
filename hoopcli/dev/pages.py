"""The dev issuer's HTML: the /device sign-in page and what its form does. DEVELOPMENT ONLY.

The page pre-selects the identity the code's client is meant for (dev-user for hoop's own
client, dev-admin for the approver profile's), never the only approver for everyone: a
statement held for dev-admin could never be approved, since nobody approves their own.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from hoopcli.dev.issuer import BANNER, DEV_IDENTITIES, normalize_user_code

if TYPE_CHECKING:  # pragma: no cover
    from hoopcli.dev.issuer import DevIssuer

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#222}
.banner{background:#b00020;color:#fff;padding:.75rem 1rem;border-radius:.4rem;font-weight:600}
label{display:block;margin:1rem 0 .3rem}
input,select{font-size:1.1rem;padding:.4rem;width:100%;box-sizing:border-box}
button{font-size:1rem;padding:.5rem 1.2rem;margin:1rem .5rem 0 0}
.ok{color:#0a6b2d}.err{color:#b00020}code{font-size:1.1rem}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} — hoop dev issuer</title><style>{_STYLE}</style></head><body>"
        f"<p class=banner>DEVELOPMENT ONLY — {html.escape(BANNER)}</p>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def index_page() -> str:
    return _page("hoop dev issuer", "<p>To sign in a device, open <a href=/device>/device</a> and enter the code hoop shows.</p>")


def device_page(issuer: DevIssuer, user_code: str = "", message: str = "", error: bool = False) -> str:
    nonce = issuer.new_form_nonce()
    chosen = issuer.default_identity_for(user_code)
    options = "".join(
        f"<option value={html.escape(i.sub, quote=True)}{' selected' if i.sub == chosen else ''}>"
        f"{html.escape(i.sub)} — {html.escape(', '.join(i.groups))}</option>"
        for i in DEV_IDENTITIES.values()
    )
    note = f"<p class={'err' if error else 'ok'}>{html.escape(message)}</p>" if message else ""
    body = (
        f"{note}<form method=post action=/device>"
        f"<input type=hidden name=nonce value={html.escape(nonce, quote=True)}>"
        "<label for=user_code>Code shown by hoop</label>"
        f"<input id=user_code name=user_code autocomplete=off required value=\"{html.escape(normalize_user_code(user_code), quote=True)}\">"
        "<label for=identity>Sign in as</label>"
        f"<select id=identity name=identity>{options}</select>"
        "<button type=submit name=action value=approve>Approve</button>"
        "<button type=submit name=action value=deny>Deny</button>"
        "</form>"
    )
    return _page("Sign in a device", body)


def device_decision(issuer: DevIssuer, form: dict[str, str]) -> tuple[int, str]:
    code = form.get("user_code", "")
    if not issuer.take_form_nonce(form.get("nonce", "")):
        return 400, device_page(issuer, code, "This form expired or was already used; try again.", error=True)
    action = form.get("action", "")
    if action == "approve":
        identity = form.get("identity", "")
        if identity not in DEV_IDENTITIES:
            return 400, device_page(issuer, code, "Choose one of the listed identities.", error=True)
        if issuer.approve(code, identity):
            return 200, _page("Device signed in", f"<p class=ok>Signed in as <code>{html.escape(identity)}</code>. You can go back to your terminal.</p>")
    elif action == "deny":
        if issuer.deny(code):
            return 200, _page("Request denied", "<p>The device was not signed in. You can close this page.</p>")
    else:
        return 400, device_page(issuer, code, "Choose Approve or Deny.", error=True)
    return 400, device_page(issuer, code, "Unknown, expired or already used code.", error=True)
