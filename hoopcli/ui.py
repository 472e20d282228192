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
