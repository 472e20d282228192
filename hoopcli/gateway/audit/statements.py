"""The statement record in transit, and the writer's fast way from it to a stored row.

The session recorder hands each statement to the writer as a tuple, not a 20-field dict:

    (session, started, statement, duration_ms, outcome, tag, code, message, details)

`session` is one dict per session (kind "statement", who, where; checked when it was made)
shared by all of that session's statements, so the event loop builds 9 slots instead of
copying 20, and pickle sends the session's fields once per batch instead of once per
statement. `statement_record` turns a tuple back into a record for the general path
(normalize, then chain.link and store.to_row encode it field by field).

`StatementNormalizer` is the common case's short cut, made once per batch: each session's
fields are normalized and JSON-encoded once, and each statement comes out as a
`chain.Preencoded` record that already holds its canonical text and its row around the
three fields the store assigns. The writer's Python work per pgbench statement fell from
24–28 to ~18 µs on the bench machine (link 11–14 → 5–6, row 4–5 → 1.2–1.8;
`bench/audit_writer_cpu.py`). Same records, same bytes hashed, same rows:
tests/test_audit_statement_tuple.py holds the two paths equal.
"""

from __future__ import annotations

import math
from typing import Callable

from .chain import Preencoded, encode_canonical, encode_text
from .record import _UNIX_MAX, _format_unix, normalize
from .store import details_text

STATEMENT_SLOTS = ("started_at", "statement", "duration_ms", "outcome", "tag", "code", "message", "details")


def statement_record(item: tuple) -> dict:
    """The record a statement tuple stands for (its `ts` is when the statement started)."""
    session, started = item[0], item[1]
    record = dict(session)
    record.update(zip(STATEMENT_SLOTS, item[1:]))
    record["ts"] = started
    return record


class _Session:
    """One session's normalized fields and their canonical JSON, in the pieces a statement's
    canonical text is assembled from (keys sorted: code, connection, database, db_user,
    details, duration_ms, email, issuer, kind, message, outcome, prev_hash, seq, session_id,
    started_at, statement, sub, tag, ts)."""

    __slots__ = ("session", "template", "before_details", "before_outcome", "before_started", "before_tag", "row")

    def __init__(self, session: dict):
        self.session = session  # kept so that its id() stays unique while the batch lives
        template = normalize({**session, "ts": 0.0})
        template["ts"] = None
        template["code"] = template["message"] = None  # a statement's own, never its session's
        self.template = template
        text = {name: encode_text(template[name]) for name in template if name != "details"}
        self.before_details = (
            f'{{"code":null,"connection":{text["connection"]},"database":{text["database"]},'
            f'"db_user":{text["db_user"]},"details":'
        )
        self.before_outcome = f',"email":{text["email"]},"issuer":{text["issuer"]},"kind":{text["kind"]},"message":null,"outcome":'
        self.before_started = f',"session_id":{text["session_id"]},"started_at":'
        self.before_tag = f',"sub":{text["sub"]},"tag":'
        t = template
        self.row = (t["kind"], t["session_id"], t["sub"], t["email"], t["issuer"], t["connection"], t["db_user"], t["database"])


class StatementNormalizer:
    """normalize(statement_record(item)), as a `Preencoded` record, for one batch. Anything
    unusual (non-ASCII or NUL text, an odd timestamp or type, an error's code and message)
    gets None: the caller takes the general path, which comes out the same."""

    __slots__ = ("_mask", "_sessions", "_details", "_texts")

    def __init__(self, mask: Callable[[str], str]) -> None:
        self._mask = mask  # the statement's secrets masked (audit/masking.py)
        self._sessions: dict[int, _Session] = {}
        self._details: dict[int, tuple] = {}
        self._texts: dict[str, str] = {}  # outcome and tag texts as JSON: a handful per batch

    def __call__(self, item: tuple) -> Preencoded | None:
        session, started, statement, duration, outcome, tag, code, message, details = item
        if not (
            type(started) is float
            and 0 <= started < _UNIX_MAX
            and type(duration) is float
            and math.isfinite(duration)
            and type(statement) is str
            and type(outcome) is str
            and (tag is None or type(tag) is str)
            and code is None
            and message is None
            and type(details) is dict
        ):
            return None
        texts = statement + outcome + tag if tag is not None else statement + outcome
        if not texts.isascii() or "\x00" in texts:
            return None
        encoded_details = self._encoded_details(details)
        _, flat, canonical_details, stored_details = encoded_details
        if flat is None:
            return None
        known = self._sessions.get(id(session))
        if known is None:
            known = self._sessions[id(session)] = _Session(session)
        ts = _format_unix(started)
        statement = self._mask(statement)
        duration = round(duration, 3) + 0.0  # + 0.0: no -0.0 (see record.normalize)
        outcome_json = self._text(outcome)
        tag_json = "null" if tag is None else self._text(tag)

        out = Preencoded(known.template)
        out["ts"] = out["started_at"] = ts
        out["statement"] = statement
        out["duration_ms"] = duration
        out["outcome"] = outcome
        out["tag"] = tag
        out["details"] = flat.copy()
        out.canonical_head = (
            f'{known.before_details}{canonical_details},"duration_ms":{float.__repr__(duration)}'
            f'{known.before_outcome}{outcome_json},'
        )
        out.canonical_tail = f'{known.before_started}"{ts}","statement":{encode_text(statement)}{known.before_tag}{tag_json},"ts":"{ts}"}}'
        out.row_values = (ts, *known.row, statement, ts, duration, outcome, tag, None, None, stored_details)
        return out

    def _text(self, text: str) -> str:
        encoded = self._texts.get(text)
        if encoded is None:
            encoded = self._texts[text] = encode_text(text)
        return encoded

    def _encoded_details(self, details: dict) -> tuple:
        """(details, a flat copy, canonical JSON, stored JSON) when its keys and values are all
        clean ASCII text (what normalize would keep as they are), else (details, None, None,
        None). Cached by id: the recorder shares one details dict per statement kind, which
        pickle keeps as one object per batch; the entry holds the dict so its id stays unique."""
        key = id(details)
        entry = self._details.get(key)
        if entry is not None:
            return entry
        entry = (details, None, None, None)
        try:
            joined = "".join(details) + "".join(details.values())
        except TypeError:
            joined = None
        if joined is not None and joined.isascii() and "\x00" not in joined:
            flat = dict(details)
            entry = (details, flat, encode_canonical(flat), details_text(flat))
        self._details[key] = entry
        return entry
