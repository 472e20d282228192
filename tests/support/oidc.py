"""A real OpenID provider for the tests: npm `oidc-provider` run by node (tests/oidc_provider).

Fixtures:
  oidc_provider          session-wide provider (id_token / access token TTL 300 s)
  oidc_provider_factory  oidc_provider_factory(id_token_ttl=5) -> a provider with those settings,
                         started once per session per distinct settings

Outside fixtures, `start_oidc_provider(...)` is the context manager both are built on.

Accounts: any login, password "secret"; alice (dba, developers), bob (developers),
carol (approvers, auditors), agent-1 (agents), anyone else no groups. sub = login.
Clients: "hoop-cli" and "other-client", both public (no secret).

The person's side is driven over HTTP exactly as a browser would: GET /device, the user-code
form with its xsrf token, the confirm page, the login form and the consent page, with cookies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urljoin

import pytest
import requests

PROVIDER_DIR = Path(__file__).resolve().parent.parent / "oidc_provider"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_SCOPES = "openid email profile groups offline_access"
PASSWORD = "secret"
HTTP_TIMEOUT = 10
STARTUP_TIMEOUT = 20
NPM_TIMEOUT = 300
MAX_PAGES = 12  # a browser walk through the verification pages never needs more


class OIDCTestError(AssertionError):
    """The provider did not behave as the test helper expected; the message says what it showed."""


# ---- HTML: just enough of a browser to find forms and submit them ---------------------------


@dataclass
class Form:
    id: str
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)  # hidden and prefilled inputs
    inputs: list[str] = field(default_factory=list)  # visible inputs a person types into
    buttons: list[dict[str, str]] = field(default_factory=list)  # {"name", "value", "text"}


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.text: list[str] = []
        self.forms: list[Form] = []
        self._open_form: Form | None = None
        self._in_title = False
        self._skip = 0  # inside <style> or <script>: not text a person reads
        self._button: dict[str, str] | None = None
        self._loose_buttons: list[tuple[str, dict[str, str]]] = []  # button form="id" outside forms

    def handle_starttag(self, tag: str, attrs_list) -> None:
        attrs = {k: (v or "") for k, v in attrs_list}
        if tag == "title":
            self._in_title = True
        elif tag in ("style", "script"):
            self._skip += 1
        elif tag == "form":
            self._open_form = Form(
                id=attrs.get("id", ""),
                action=attrs.get("action", ""),
                method=attrs.get("method", "get").lower(),
            )
            self.forms.append(self._open_form)
        elif tag == "input":
            form = self._form_for(attrs)
            name = attrs.get("name")
            if form is None or not name:
                return
            kind = attrs.get("type", "text").lower()
            if kind in ("hidden",) or "value" in attrs:
                form.fields[name] = attrs.get("value", "")
            if kind != "hidden":
                form.inputs.append(name)
        elif tag == "button":
            self._button = {"name": attrs.get("name", ""), "value": attrs.get("value", ""), "text": "",
                            "type": attrs.get("type", "submit").lower(), "form": attrs.get("form", "")}

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        elif tag == "form":
            self._open_form = None
        elif tag == "button" and self._button is not None:
            button, self._button = self._button, None
            button["text"] = button["text"].strip()
            if button["type"] != "submit":
                return
            if button["form"]:
                self._loose_buttons.append((button["form"], button))
            elif self._open_form is not None:
                self._open_form.buttons.append(button)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._button is not None:
            self._button["text"] += data
        if data.strip() and not self._skip:
            self.text.append(data.strip())

    def _form_for(self, attrs: dict[str, str]) -> Form | None:
        if attrs.get("form"):
            return next((f for f in self.forms if f.id == attrs["form"]), None)
        return self._open_form

    def close(self) -> None:
        super().close()
        for form_id, button in self._loose_buttons:
            for form in self.forms:
                if form.id == form_id:
                    form.buttons.append(button)


@dataclass
class Page:
    url: str
    status: int
    title: str
    text: str
    forms: list[Form]

    def form(self, predicate: Callable[[Form], bool]) -> Form | None:
        return next((f for f in self.forms if predicate(f)), None)

    def describe(self) -> str:
        return f"{self.status} {self.url} «{self.title}»: {self.text[:400]}"


def parse_page(resp: requests.Response) -> Page:
    parser = _PageParser()
    parser.feed(resp.text)
    parser.close()
    return Page(resp.url, resp.status_code, parser.title.strip(), " ".join(parser.text), parser.forms)


# ---- the provider ---------------------------------------------------------------------------


@dataclass
class OIDCProvider:
    """One running provider. Every method talks to it over HTTP on 127.0.0.1."""

    issuer: str
    log_path: Path
    id_token_ttl: int
    access_token_ttl: int
    device_code_ttl: int
    device_interval: int
    client_id: str = "hoop-cli"
    other_client_id: str = "other-client"
    _metadata: dict | None = field(default=None, repr=False)
    _jwks_client: object | None = field(default=None, repr=False)

    # -- discovery and token checks --
    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            self._metadata = self._get(self.issuer + "/.well-known/openid-configuration").json()
        return self._metadata

    def endpoint(self, name: str) -> str:
        return self.metadata[name]

    @property
    def jwks_client(self):
        """A `jwt.PyJWKClient` for this provider's jwks_uri (it fetches with urllib, which honours
        *_PROXY variables; `decode` does not)."""
        import jwt

        if self._jwks_client is None:
            self._jwks_client = jwt.PyJWKClient(self.endpoint("jwks_uri"), cache_keys=True)
        return self._jwks_client

    def jwks(self) -> dict:
        return self._get(self.endpoint("jwks_uri")).json()

    def decode(self, id_token: str, audience: str | None = None, **options) -> dict:
        """Verify an id_token against this provider's JWKS (signature, iss, aud, exp) and return
        its claims. A token signed by another provider raises jwt.InvalidSignatureError."""
        import jwt

        kid = jwt.get_unverified_header(id_token).get("kid")
        key = next((k for k in jwt.PyJWKSet.from_dict(self.jwks()).keys if k.key_id == kid), None)
        if key is None:
            raise jwt.InvalidSignatureError(f"no key with kid {kid!r} in {self.endpoint('jwks_uri')}")
        return jwt.decode(
            id_token,
            key.key,
            algorithms=["RS256"],
            audience=audience or self.client_id,
            issuer=self.issuer,
            **options,
        )

    # -- the device's side (what hoop does) --
    def start_device_authorization(self, scopes: str = DEFAULT_SCOPES, client_id: str | None = None) -> dict:
        """POST the device authorization endpoint; returns its JSON (device_code, user_code, interval...)."""
        resp = self._post(self.endpoint("device_authorization_endpoint"),
                          data={"client_id": client_id or self.client_id, "scope": scopes})
        if resp.status_code != 200:
            raise OIDCTestError(f"device authorization refused: {resp.status_code} {resp.text}")
        return resp.json()

    def poll_token(self, device_code: str, client_id: str | None = None) -> requests.Response:
        """One poll of the token endpoint with the device_code grant."""
        return self._post(self.endpoint("token_endpoint"), data={
            "grant_type": DEVICE_GRANT,
            "device_code": device_code,
            "client_id": client_id or self.client_id,
        })

    def device_login(self, login: str = "alice", scopes: str = DEFAULT_SCOPES, client_id: str | None = None) -> dict:
        """The whole device flow without hoop: start, approve as `login`, poll. Returns the token
        response (id_token, access_token, refresh_token when offline_access is asked for, ...)."""
        started = self.start_device_authorization(scopes, client_id)
        self.approve(started["user_code"], login=login)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            resp = self.poll_token(started["device_code"], client_id)
            body = resp.json()
            if resp.status_code == 200:
                return body
            if body.get("error") not in ("authorization_pending", "slow_down"):
                raise OIDCTestError(f"token endpoint refused the device code: {resp.status_code} {body}")
            time.sleep(0.05)
        raise OIDCTestError("the approved device code never turned into tokens")

    def refresh(self, refresh_token: str, client_id: str | None = None) -> requests.Response:
        """The refresh_token grant. Note: the provider rotates refresh tokens of public clients,
        and presenting a rotated (already used) one revokes the whole grant."""
        return self._post(self.endpoint("token_endpoint"), data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id or self.client_id,
        })

    def revoke(self, token: str, hint: str = "refresh_token", client_id: str | None = None) -> requests.Response:
        return self._post(self.endpoint("revocation_endpoint"), data={
            "token": token,
            "token_type_hint": hint,
            "client_id": client_id or self.client_id,
        })

    def refresh_token_state(self, refresh_token: str) -> dict:
        """{"found", "consumed", "expired", "grant", "active"}, read without using the token."""
        resp = self._post(self.issuer + "/__test/refresh-token-state", json={"refresh_token": refresh_token})
        resp.raise_for_status()
        return resp.json()

    def revoked(self, refresh_token: str) -> bool:
        """True when the refresh token can no longer be used (revoked, rotated, expired or unknown)."""
        return not self.refresh_token_state(refresh_token)["active"]

    # -- test controls for the device flow --
    def set_device_behaviour(self, interval: int | None = None, slow_down_polls: int = 0) -> None:
        """For the NEXT device authorization only: its `interval`, and how many of its first
        token polls get 400 slow_down. Not for tests that run concurrently against one provider."""
        body = {"slow_down_polls": slow_down_polls}
        if interval is not None:
            body["interval"] = interval
        resp = self._post(self.issuer + "/__test/device-behaviour", json=body)
        if resp.status_code != 200:
            raise OIDCTestError(f"device-behaviour refused: {resp.status_code} {resp.text}")

    def poll_log(self, user_code: str) -> dict:
        """{"user_code", "interval", "slow_down_polls", "polls": [ms...], "answers": [...]};
        answers[i] is what poll i got: "slow_down", "authorization_pending", "ok", ..."""
        resp = self._get(self.issuer + "/__test/polls", params={"user_code": user_code})
        return resp.json()

    def polls(self, user_code: str) -> list[int]:
        """Epoch milliseconds of every token-endpoint poll made with this user_code's device_code."""
        return self.poll_log(user_code)["polls"]

    def device_authorizations(self, after: int = 0) -> dict:
        """{"latest": seq, "authorizations": [{"seq", "user_code", "client_id", "scope", "created_ms"}]}"""
        return self._get(self.issuer + "/__test/device-authorizations", params={"after": after}).json()

    def latest_device_seq(self) -> int:
        return self.device_authorizations(after=2**53)["latest"]

    def wait_for_user_code(self, after: int, timeout: float = 20, client_id: str | None = None) -> str:
        """The user_code of the first device authorization numbered after `after` (see
        latest_device_seq), waiting for it to be made. For tests that run hoop in-process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.device_authorizations(after)["authorizations"]:
                if client_id is None or item["client_id"] == client_id:
                    return item["user_code"]
            time.sleep(0.05)
        raise OIDCTestError(f"no device authorization after #{after} within {timeout}s")

    # -- the person's side (a browser at verification_uri) --
    def approve(self, user_code: str, login: str = "alice", password: str = PASSWORD) -> Page:
        """Enter the code, confirm, sign in, allow. Returns the final (success) page."""
        return self._browse(user_code, login, password, decision="allow")

    def deny(self, user_code: str, login: str = "alice", at: str = "consent") -> Page:
        """The person refuses: at="consent" signs in then presses Deny; at="confirm" presses
        Abort on the device-confirmation page before signing in. The device gets access_denied."""
        if at not in ("consent", "confirm"):
            raise ValueError("at must be 'consent' or 'confirm'")
        return self._browse(user_code, login, PASSWORD, decision=f"deny-{at}")

    def _browse(self, user_code: str, login: str, password: str, decision: str) -> Page:
        browser = direct_session()
        browser.headers["User-Agent"] = "hoop-tests-browser/1"
        history: list[str] = []
        with browser:
            page = parse_page(self._get(self.issuer + "/device", session=browser))  # verification_uri
            denied = False
            for _ in range(MAX_PAGES):
                history.append(page.describe())
                if page.title == "Sign-in Success":
                    if decision != "allow":
                        raise OIDCTestError("the provider reported success after a refusal:\n" + "\n".join(history))
                    return page
                if "was interrupted" in page.text and denied:
                    return page
                if page.status >= 400 or page.title.startswith("oops"):
                    raise OIDCTestError("the provider showed an error page:\n" + "\n".join(history))

                code_form = page.form(lambda f: "user_code" in f.inputs)
                confirm_form = page.form(lambda f: f.id == "op.deviceConfirmForm")
                login_form = page.form(lambda f: "login" in f.inputs and "password" in f.inputs)
                consent_form = page.form(lambda f: f.id == "consent")
                deny_form = page.form(lambda f: f.id == "deny")

                if code_form is not None:
                    if "incorrect" in page.text or "interrupted" in page.text or len(history) > 1:
                        raise OIDCTestError("the user code was not accepted:\n" + "\n".join(history))
                    page = self._submit(browser, page, code_form, {"user_code": user_code})
                elif confirm_form is not None:
                    if decision == "deny-confirm":
                        abort = next(b for b in confirm_form.buttons if b["name"] == "abort")
                        page = self._submit(browser, page, confirm_form, {}, abort)
                        denied = True
                    else:
                        plain = next(b for b in confirm_form.buttons if not b["name"])
                        page = self._submit(browser, page, confirm_form, {}, plain)
                elif login_form is not None:
                    if "Invalid login" in page.text:
                        raise OIDCTestError("the login was refused:\n" + "\n".join(history))
                    page = self._submit(browser, page, login_form, {"login": login, "password": password})
                elif consent_form is not None and deny_form is not None:
                    if decision == "deny-consent":
                        page = self._submit(browser, page, deny_form, {})
                        denied = True
                    else:
                        page = self._submit(browser, page, consent_form, {})
                else:
                    raise OIDCTestError("a page the test browser does not know:\n" + "\n".join(history))
            raise OIDCTestError(f"no end after {MAX_PAGES} pages:\n" + "\n".join(history))

    def _submit(self, browser: requests.Session, page: Page, form: Form, typed: dict[str, str],
                button: dict[str, str] | None = None) -> Page:
        data = dict(form.fields)
        data.update(typed)
        if button and button.get("name"):
            data[button["name"]] = button["value"]
        url = urljoin(page.url, form.action or page.url)
        if not url.startswith(self.issuer + "/"):
            raise OIDCTestError(f"a form posts away from the provider: {url}")
        if form.method != "post":
            return parse_page(self._get(url, params=data, session=browser))
        return parse_page(self._post(url, data=data, session=browser))

    # -- plumbing --
    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def _get(self, url: str, session: requests.Session | None = None, **kwargs) -> requests.Response:
        with contextlib.ExitStack() as stack:
            http = session or stack.enter_context(direct_session())
            return http.get(url, timeout=HTTP_TIMEOUT, **kwargs)

    def _post(self, url: str, session: requests.Session | None = None, **kwargs) -> requests.Response:
        with contextlib.ExitStack() as stack:
            http = session or stack.enter_context(direct_session())
            return http.post(url, timeout=HTTP_TIMEOUT, **kwargs)


def direct_session() -> requests.Session:
    """A requests session that ignores *_PROXY variables a test may have set: always 127.0.0.1."""
    http = requests.Session()
    http.trust_env = False
    return http


def approve_in_background(provider: OIDCProvider, get_user_code: Callable[[], str | None] | None = None,
                          login: str = "alice", deny: bool = False, timeout: float = 30) -> "Approver":
    """Approve (or deny) from a thread, for a test that runs hoop in-process and cannot read its
    output while it polls. get_user_code is polled until it returns a code; by default the
    approver takes the first device authorization made after this call. Call .join() to
    re-raise whatever went wrong in the thread."""
    if get_user_code is None:
        after = provider.latest_device_seq()

        def get_user_code() -> str:
            return provider.wait_for_user_code(after, timeout=timeout)

    approver = Approver(provider, get_user_code, login, deny, timeout)
    approver.start()
    return approver


class Approver(threading.Thread):
    def __init__(self, provider: OIDCProvider, get_user_code, login: str, deny: bool, timeout: float):
        super().__init__(name="oidc-approver", daemon=True)
        self.provider, self.get_user_code, self.login, self.deny, self.timeout = provider, get_user_code, login, deny, timeout
        self.user_code: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while self.user_code is None:
                self.user_code = self.get_user_code()
                if self.user_code is None:
                    if time.monotonic() > deadline:
                        raise OIDCTestError(f"no user_code within {self.timeout}s")
                    time.sleep(0.05)
            if self.deny:
                self.provider.deny(self.user_code, login=self.login)
            else:
                self.provider.approve(self.user_code, login=self.login)
        except BaseException as exc:  # handed to join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(self.timeout if timeout is None else timeout)
        if self.is_alive():
            raise OIDCTestError("the approver thread is still running")
        if self.error is not None:
            raise self.error


# ---- process management ---------------------------------------------------------------------


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def ensure_node_modules() -> None:
    """`npm ci` in tests/oidc_provider when its node_modules is missing (once, under a lock)."""
    if (PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: the OIDC tests need Node.js 20+ and npm", pytrace=False)
    import fcntl

    with open(Path(tempfile.gettempdir()) / "hoop-oidc-provider-npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
            return
        try:
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PROVIDER_DIR,
                                  capture_output=True, text=True, timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {PROVIDER_DIR} took more than {NPM_TIMEOUT}s", pytrace=False)
        if done.returncode != 0:
            pytest.fail(f"npm ci in {PROVIDER_DIR} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}",
                        pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    if proc.stdin:
        with contextlib.suppress(OSError):
            proc.stdin.close()


@contextlib.contextmanager
def start_oidc_provider(
    id_token_ttl: int = 300,
    access_token_ttl: int | None = None,
    device_code_ttl: int = 600,
    device_interval: int = 1,
    startup_timeout: float = STARTUP_TIMEOUT,
) -> Iterator[OIDCProvider]:
    """Run one provider on a free 127.0.0.1 port for the duration of the block."""
    ensure_node_modules()
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the OIDC tests need Node.js 20+", pytrace=False)
    access_token_ttl = id_token_ttl if access_token_ttl is None else access_token_ttl
    env = {
        **os.environ,
        "ID_TOKEN_TTL": str(id_token_ttl),
        "ACCESS_TOKEN_TTL": str(access_token_ttl),
        "DEVICE_CODE_TTL": str(device_code_ttl),
        "DEVICE_INTERVAL": str(device_interval),
        "EXIT_ON_STDIN_CLOSE": "1",  # the pipe closes when pytest dies, however it dies
        "NODE_ENV": "test",
    }
    fd, log_name = tempfile.mkstemp(prefix="hoop-oidc-provider-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            [node, str(PROVIDER_DIR / "server.js"), "--port", "0"],
            cwd=PROVIDER_DIR, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        issuer = _wait_until_ready(proc, log_path, startup_timeout)
        yield OIDCProvider(
            issuer=issuer,
            log_path=log_path,
            id_token_ttl=id_token_ttl,
            access_token_ttl=access_token_ttl,
            device_code_ttl=device_code_ttl,
            device_interval=device_interval,
        )
    finally:
        _stop(proc)
        with contextlib.suppress(OSError):
            log_path.unlink()


def _wait_until_ready(proc: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    issuer = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the OIDC provider exited with {proc.returncode} while starting:\n{_tail(log_path, 40)}",
                        pytrace=False)
        if issuer is None:
            for line in log_path.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"listening"' in line:
                    issuer = json.loads(line)["issuer"]
                    break
        if issuer is not None:
            with contextlib.suppress(requests.RequestException), direct_session() as http:
                resp = http.get(issuer + "/.well-known/openid-configuration", timeout=2)
                if resp.status_code == 200 and resp.json().get("issuer") == issuer:
                    return issuer
        time.sleep(0.05)
    _stop(proc)
    pytest.fail(f"the OIDC provider did not answer discovery within {timeout}s:\n{_tail(log_path, 40)}", pytrace=False)


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oidc_provider_factory() -> Iterator[Callable[..., OIDCProvider]]:
    """factory(**settings) -> OIDCProvider: one provider per distinct settings for the session
    (settings are start_oidc_provider's keyword arguments, e.g. id_token_ttl=5)."""
    with contextlib.ExitStack() as stack:
        started: dict[tuple, OIDCProvider] = {}

        def factory(**settings) -> OIDCProvider:
            key = tuple(sorted(settings.items()))
            if key not in started:
                started[key] = stack.enter_context(start_oidc_provider(**settings))
            return started[key]

        yield factory


@pytest.fixture(scope="session")
def oidc_provider(oidc_provider_factory) -> OIDCProvider:
    """The session's provider: id_token and access token TTL 300 s, device code TTL 600 s, interval 1 s."""
    return oidc_provider_factory()
