"""Replaying the journal of a gateway that stopped without storing everything, exactly once.

Every batch the writer takes is marked: its last record carries `details.journal` =
"<run>:<last ticket>", stored in the same transaction as the batch. Batches are stored in
ticket order, so the store holds a prefix of a run's tickets, and a batch is stored exactly
when its marker is. A batch whose fate is unknown (sent to a writer process that died, or
found in a journal at start) is "in doubt": the storer looks for its marker first and skips
it when found; the first one not found, and everything after it, is stored without asking.

A leftover run replays as the batches its writer took (the journal's "b" boundaries, so the
markers are the ones that may be stored), then the records it never took, then a record for
each statement that started and has no outcome, in fixed-size batches: a replay that is
itself cut short replays the same batches with the same markers next time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .journal import read_frames

log = logging.getLogger("hoopcli.audit")

REPLAY_BATCH = 500
NO_OUTCOME = "the gateway stopped before the statement's outcome was recorded"


def marker_of(run: str, last_ticket: int) -> str:
    return f"{run}:{last_ticket}"


def run_of(marker: str) -> str:
    return marker.rpartition(":")[0]


def mark(record, marker: str) -> dict:
    """The record (a dict or a statement tuple) with the batch marker in its details."""
    from .statements import statement_record

    record = statement_record(record) if type(record) is tuple else dict(record)
    details = record.get("details")
    details = dict(details) if isinstance(details, dict) else ({} if details is None else {"value": details})
    details["journal"] = marker
    record["details"] = details
    return record


def already_stored(store, record: dict, marker: str) -> bool:
    """Does the store hold the (prepared) record carrying `marker`? Asked by session and
    time (both indexed), so it reads a handful of rows, not the trail."""
    rows = store.query(session_id=record.get("session_id"), since=record["ts"], kind=record["kind"])
    return any(isinstance(r.get("details"), dict) and r["details"].get("journal") == marker for r in rows)


def leftover_runs(directory: Path, own_run: str) -> dict[str, list[Path]]:
    runs: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("*.journal")):
        run = path.name.split(".", 1)[0]
        if run != own_run:
            runs.setdefault(run, []).append(path)
    return runs


def run_batches(run: str, segments: list[Path]) -> list[tuple[list, str]]:
    """(records, marker) for everything a run's journal holds, in ticket order."""
    sessions: dict[int, dict] = {}
    starts: dict[int, tuple] = {}
    records: dict[int, object] = {}
    boundaries: list[int] = []
    for path in segments:
        for entry in read_frames(path):
            tag = entry[0]
            if tag == "s":
                _, start_id, number, started, text, kind, params = entry
                starts[start_id] = (sessions.get(number), started, text, kind, params)
            elif tag == "o":
                _, ticket, start_id, *outcome = entry
                start = starts.pop(start_id, None)
                if start is None:  # cannot happen: a segment carries the starts still running
                    log.warning("audit journal: run %s: an outcome (ticket %d) without its start", run, ticket)
                    continue
                session, started, text, kind, params = start
                records[ticket] = (session, started, text, *outcome)
            elif tag == "t":
                _, ticket, start_id, number, *rest = entry
                starts.pop(start_id, None)
                records[ticket] = (sessions.get(number), *rest)
            elif tag == "d":
                records[entry[1]] = entry[2]
            elif tag == "S":
                sessions[entry[1]] = entry[2]
            elif tag == "b":
                boundaries.append(entry[1])
    tickets = sorted(records)
    newest = tickets[-1] if tickets else 0
    for start_id in sorted(starts):  # started, never finished: recorded without an outcome
        session, started, text, kind, params = starts[start_id]
        if session is None:
            continue  # cannot happen: a segment writes a session before its statements
        newest += 1
        details = {"kind": kind} if params is None else {"kind": kind, "params": list(params)}
        records[newest] = (session, started, text, None, "error", None, None, NO_OUTCOME, details)
        tickets.append(newest)
    return _batches(run, tickets, records, boundaries)


def _batches(run: str, tickets: list[int], records: dict, boundaries: list[int]) -> list[tuple[list, str]]:
    out: list[tuple[list, str]] = []
    at = 0
    for boundary in sorted(set(boundaries)):
        batch = []
        while at < len(tickets) and tickets[at] <= boundary:
            batch.append(records[tickets[at]])
            at += 1
        if batch:
            out.append((batch, marker_of(run, boundary)))
    while at < len(tickets):
        chunk = tickets[at:at + REPLAY_BATCH]
        out.append(([records[t] for t in chunk], marker_of(run, chunk[-1])))
        at += len(chunk)
    return out


def replay_leftovers(directory: Path, own_run: str, storer) -> int:
    """Store what earlier runs' journals hold and their stores do not; delete those journals.
    Returns the number of records stored now."""
    total = 0
    for run, segments in leftover_runs(directory, own_run).items():
        batches = run_batches(run, segments)
        count = sum(len(records) for records, _ in batches)
        log.warning("audit journal: replaying run %s (%d records in %d segment(s))", run, count, len(segments))
        stored = 0
        for records, marker in batches:
            stored += len(storer.store_batch(records, marker=marker, in_doubt=True) or ())
        total += stored
        log.warning("audit journal: run %s replayed: %d record(s) were missing from the store", run, stored)
        for path in segments:
            path.unlink()
    return total
