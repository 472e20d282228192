"""Per-session bookkeeping: prepared statements and commands awaiting their answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import _FIRST


@dataclass(slots=True)
class _Stmt:
    text: str
    num_params: int | None = None
    types: bytes | None = None
    long_data: set[int] = field(default_factory=set)
    grant: str | None = None  # the request id when the prepare was allowed on an approval
    used: bool = False  # ... and it has been executed once


_BLOCKED_STMT = _Stmt("")  # marker: the last prepare was refused


@dataclass(slots=True)
class _Pending:
    """One command awaiting its server response (or a refusal queued behind others)."""

    kind: str  # greeting, auth, result, prepare, simple, fields, fetch, synthetic
    statement: bool = False  # emits StatementFinished / StatementFailed
    state: int = _FIRST
    left: int = 0  # definitions still to come
    rows: int = 0
    tags: list[str] = field(default_factory=list)
    stmt: _Stmt | None = None
    cursor: bool = False
    reply: bytes = b""  # kind == "synthetic": the ERR packet to send when this is the head
