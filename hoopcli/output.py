"""Rendering: rich for people on a terminal, one JSON object per line for programs.

stdout carries results (and only JSON with --json); stderr carries progress and errors.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache


@lru_cache(maxsize=None)
def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@lru_cache(maxsize=None)
def out_console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    err_console().print(message, markup=False)


def table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    """A rich table on a terminal, tab-separated lines otherwise (easy to grep and cut)."""
    if not sys.stdout.isatty():
        for row in rows:
            sys.stdout.write("\t".join(_cell(row.get(c)) for c in columns) + "\n")
        return
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*(_cell(row.get(c)) for c in columns))
    out_console().print(t)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def key_values(data: dict) -> None:
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        sys.stdout.write(f"{key.ljust(width)}  {_cell(value)}\n")
