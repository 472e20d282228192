"""The `hoop` console script: answers `--version`, and runs `hoop exec NAME -- CMD…`, before
the CLI framework is imported (start-up time is part of the product: agents run exec for
every command); everything else goes to `hoopcli.cli.main`."""

import os
import sys

# Commands that end by leaving the process at once (see _leave): everything they hold (the
# tunnel, the child, leased credentials) is closed by the command itself before it returns.
_LEAVE_AT_ONCE = frozenset({"exec", "connect"})


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from hoopcli import __version__

        sys.stdout.write(f"hoop {__version__}\n")
        sys.exit(0)
    if _is_plain_exec(sys.argv[1:]) and not os.environ.get("_HOOP_COMPLETE"):
        _leave(_plain_exec(sys.argv[2], sys.argv[4:]))
    from hoopcli.cli import main as cli_main

    if not (sys.argv[1:2] and sys.argv[1] in _LEAVE_AT_ONCE):
        cli_main()
        return
    try:
        cli_main()
    except SystemExit as exc:
        _leave(exc.code)
    _leave(0)


def _is_plain_exec(args: list[str]) -> bool:
    """`exec NAME -- …` and nothing else: no global option before it, no exec option before
    `--` (those take the typer path, which parses them)."""
    return len(args) >= 3 and args[0] == "exec" and args[2] == "--" and not args[1].startswith("-")


def _plain_exec(name: str, child_args: list[str]) -> int:
    """What `hoop exec NAME -- CMD…` does through typer (the same function, the same error
    rendering), without typer's ~40 ms of imports and ~15 ms building its command tree."""
    from hoopcli import logs
    from hoopcli.errors import report

    try:
        logs.setup(False)
        from hoopcli.config import load_profile
        from hoopcli.errors import use_profile
        from hoopcli.launch import exec_through_gateway

        use_profile(os.environ.get("HOOP_PROFILE"))  # as typer reads --profile's envvar
        profile = load_profile(os.environ.get("HOOP_PROFILE") or None)
        return exec_through_gateway(profile, name, child_args)
    except (KeyboardInterrupt, Exception) as exc:
        return report(exc, as_json=False)


def _leave(code) -> None:
    """Exit without tearing the interpreter down: after `hoop exec`, finalizing ~200 modules
    costs 35–60 ms of a ~300 ms run on a slow 2-core host (min/median of 20 runs; see
    bench/RESULTS.md, session 4), paid by every command an agent runs. Output and log handlers
    are flushed first; nothing of ours waits for atexit."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): what the interpreter would do
        sys.stderr.write(f"{code}\n")
        code = 1
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    os._exit(code & 0xFF)  # as the OS would truncate sys.exit(code)
