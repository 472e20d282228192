"""What a person sees while the device code waits: code, link, time left; JSON for programs."""

from __future__ import annotations

import sys


def device_prompt(json_out: bool):
    """Returns (show_code, on_wait, done) callbacks for `auth.login.device_login`."""
    from hoopcli.output import emit_json, err_console

    status = None

    def show(code) -> None:
        nonlocal status
        if json_out:
            emit_json(code.public())
        console = err_console()
        console.print(f"To log in, open {code.verification_uri} and enter the code: {code.user_code}", markup=False, highlight=False)
        if code.verification_uri_complete:
            console.print(f"Or open directly: {code.verification_uri_complete}", markup=False, highlight=False)
            if sys.stdout.isatty() and not json_out:
                _print_qr(code.verification_uri_complete)
        if console.is_terminal:
            status = console.status("Waiting for approval…")
            status.start()

    def on_wait(seconds_left: float) -> None:
        if status is not None:
            minutes, seconds = divmod(int(seconds_left), 60)
            status.update(f"Waiting for approval… ({minutes}:{seconds:02d} left, Ctrl-C to cancel)")

    def done() -> None:
        if status is not None:
            status.stop()

    return show, on_wait, done


def _print_qr(url: str) -> None:
    try:
        import segno
    except ImportError:  # optional nicety
        return
    segno.make(url, error="l").terminal(out=sys.stderr, compact=True)


class TunnelStatus:
    """`hoop connect`'s screen: what to connect with, then a live count of clients and plain
    words when the gateway refuses or the session can no longer be refreshed."""

    def __init__(self, json_out: bool):
        self.json_out = json_out
        self.active = 0
        self.status = None

    def ready(self, summary: dict) -> None:
        from hoopcli.output import emit_json, err_console, key_values

        if self.json_out:
            emit_json({"event": "ready", **summary})
            return
        creds = summary.pop("credentials")
        key_values({k: v for k, v in summary.items() if v is not None})
        if creds.get("expires_in"):
            sys.stdout.write(f"credentials  {creds['broker']}, expire in {creds['expires_in']} s\n")
        if "password" in creds:
            sys.stdout.write(f"password     {creds['password']}\n")
        sys.stdout.flush()
        console = err_console()
        if console.is_terminal:
            self.status = console.status("0 client connections — Ctrl-C to close the tunnel")
            self.status.start()
        else:
            console.print("Tunnel open — Ctrl-C to close it.", markup=False)

    def event(self, kind: str, detail: dict) -> None:
        """Refusals and errors always reach stderr in words; --json also gets an event line."""
        from hoopcli.output import emit_json, info

        if "active" in detail:
            self.active = detail["active"]
        message = None
        if kind == "refused":
            message = self._refusal(detail)
        elif kind == "error":
            message = self._error(detail["error"])
        if message:
            info(message)
        if self.json_out:
            emit_json({"event": kind, "active": self.active, **({"message": message} if message else {})})
        if self.status is not None:
            self.status.update(f"{self.active} client connection{'s' if self.active != 1 else ''} — Ctrl-C to close the tunnel")

    @staticmethod
    def _refusal(detail: dict) -> str:
        status, reason = detail["status"], detail["reason"]
        if status == 407:
            return f"hoop: the gateway refused the session ({reason}). Run `hoop login` in another terminal; this tunnel carries on."
        return f"hoop: the gateway refused a client connection: {status} {reason}"

    @staticmethod
    def _error(exc) -> str:
        from hoopcli.errors import HoopError, NotLoggedIn

        if isinstance(exc, NotLoggedIn):
            return f"hoop: {exc.message}. Run `hoop login` in another terminal; this tunnel carries on without a restart."
        if isinstance(exc, HoopError):
            return f"hoop: {exc.message}"
        return f"hoop: could not reach the gateway ({type(exc).__name__}: {exc})"

    def wait_forever(self) -> None:
        import time

        try:
            while True:
                time.sleep(3600)
        finally:
            if self.status is not None:
                self.status.stop()


class ExecTunnelEvents:
    """`hoop exec`'s view of its tunnel: say once, on stderr, why the gateway refused a client
    connection, and remember it, so that a child that failed because of it gets hoop's own
    exit code (502 → unreachable, 407 → not logged in, …) instead of the client's."""

    EXIT_FOR_STATUS = {401: 3, 407: 3, 403: 4, 404: 7, 502: 6, 503: 6}

    def __init__(self):
        self.connected = 0
        self.exit_code: int | None = None
        self._said: set[str] = set()

    def event(self, kind: str, detail: dict) -> None:
        from hoopcli.errors import ExitCode, HoopError

        if kind == "connected":
            self.connected += 1
            return
        if kind == "refused":
            message = f"hoop: error: the gateway refused the connection: {detail['status']} {detail['reason']}"
            self.exit_code = self.EXIT_FOR_STATUS.get(detail["status"], int(ExitCode.ERROR))
        elif kind == "error":
            exc = detail["error"]
            message = TunnelStatus._error(exc)
            self.exit_code = int(exc.exit_code) if isinstance(exc, HoopError) else int(ExitCode.UNREACHABLE)
        else:
            return
        if message not in self._said:
            self._said.add(message)
            from hoopcli.output import info

            info(message)

    def exit_code_for(self, child_code: int) -> int:
        """The child's code, unless it failed and no connection through the tunnel ever worked."""
        if child_code != 0 and self.connected == 0 and self.exit_code is not None:
            return self.exit_code
        return child_code
