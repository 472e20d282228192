"""The `hoop` console script: answers `--version` before the CLI framework is imported
(start-up time is part of the product), then hands over to `hoopcli.cli.main`."""

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from hoopcli import __version__

        sys.stdout.write(f"hoop {__version__}\n")
        sys.exit(0)
    from hoopcli.cli import main as cli_main

    cli_main()
