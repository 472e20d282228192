"""The gateway's audit writer for its durability level (journal.py says what each survives).

    writer = start_writer(store_url, store, exporter_specs, durability="process",
                          journal_dir=Path("audit-journal"), in_subprocess=True)

Before the writer takes new records, whatever an earlier run left in the journal directory
and the store lacks is stored (replay.py), so a gateway killed mid-stream loses nothing
and stores nothing twice once it is started again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .journal import LEVELS, Journal, lock_directory
from .replay import replay_leftovers
from .writer import AuditWriter, BatchStorer

log = logging.getLogger("hoopcli.audit")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"gateway.durability must be one of {', '.join(LEVELS)}, not {level!r}")
    return level


def default_journal_dir(store, base_dir: Path | str = ".") -> Path:
    """Beside a SQLite store's file (same owner, same disk); otherwise `audit-journal` in
    `base_dir` (the gateway config's folder, never wherever the gateway was started from)."""
    path = getattr(store, "path", None)
    if isinstance(path, str) and path != ":memory:" and not path.startswith("file:"):
        return Path(path + ".journal")
    return Path(base_dir) / "audit-journal"


def start_writer(
    store_url: str,
    store,
    exporter_specs: list[tuple[str, str]],
    *,
    durability: str = "process",
    journal_dir: Path | str = "",
    in_subprocess: bool = True,
) -> AuditWriter:
    """The writer for `durability`, after replaying any earlier run's journal into `store`."""
    from .export import build_exporters

    check_level(durability)
    directory = Path(journal_dir or default_journal_dir(store))
    journal = Journal(directory, durability) if durability != "async" else None
    if directory.is_dir():
        lock = None if journal is not None else lock_directory(directory)  # not a live gateway's journal
        storer = BatchStorer(store, build_exporters(exporter_specs))
        try:
            replay_leftovers(directory, journal.run if journal else "", storer)
        finally:
            storer.close_exporters()
            if lock is not None:
                lock.close()
    if in_subprocess:
        return AuditWriter.in_subprocess(store_url, exporter_specs, journal=journal)
    return AuditWriter(store, exporters=build_exporters(exporter_specs), journal=journal)
