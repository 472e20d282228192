"""The hash chain: canonical encoding, linking a batch onto the head, and verification.

canonical(record) = JSON of every field but `hash`, keys sorted, separators (",", ":"),
ensure_ascii=False, UTF-8.  hash = sha256(prev_hash_hex + canonical).  The first record's
prev_hash is GENESIS (64 zeros).  Editing, deleting, inserting or reordering records breaks
either a record's own hash or the next record's prev_hash; `verify_records` names the seq.

The chain alone cannot tell a truncated tail from a short trail. A `ChainHead` (seq, hash)
published outside the store (the exporters do, as the chain grows) can: `verify_records(...,
heads=[head])` fails, naming the missing range, when the store ends before a published head or
holds another record at its seq. Signed checkpoints sign the same head (`ChainHead.document`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from json.encoder import c_encode_basestring, c_make_encoder
from typing import Any, Callable, Iterable

from .record import FIELDS

GENESIS = "0" * 64
_HASHED = tuple(name for name in FIELDS if name != "hash")
_HASHED_SORTED = tuple(sorted(_HASHED))


def _reject(value):
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def sorted_json_encoder(item_separator: str, key_separator: str) -> Callable[[Any], str]:
    """json.dumps(value, sort_keys=True, ensure_ascii=False, separators=...) as one function
    made once: json.dumps builds its encoder anew on every call, which the audit writer pays
    for every statement. The C encoder when there is one, else the same options in Python."""
    if c_make_encoder is not None:
        encode = c_make_encoder(None, _reject, c_encode_basestring, None, key_separator, item_separator, True, False, True)
        return lambda value: "".join(encode(value, 0))
    return json.JSONEncoder(sort_keys=True, separators=(item_separator, key_separator), ensure_ascii=False, default=_reject).encode


_ENCODE = sorted_json_encoder(",", ":")  # the canonical form
encode_canonical = _ENCODE  # a value's canonical JSON text


class Preencoded(dict):
    """A normalized record that also carries its canonical text and its stored row, all but
    the three fields the store assigns (seq, prev_hash, hash): made by the writer's statement
    fast path (audit/statements.py), so that link() and to_row() need not encode it again.

    canonical(record) == canonical_head + '"prev_hash":…,"seq":…' + canonical_tail, and
    to_row(record) == (seq, *row_values, prev_hash, hash). Valid only while its other fields
    stay as made: link() fills in the three in place instead of copying the record."""

    __slots__ = ("canonical_head", "canonical_tail", "row_values")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)
    last_seq: int | None = None
    last_hash: str | None = None
    heads: tuple["ChainHead", ...] = ()  # the published heads the walk was checked against


HEAD_KEY = "chain_head"  # {"chain_head": {...}}: a head line in an export, never a record


@dataclass(frozen=True, slots=True)
class ChainHead:
    """A point of the chain published outside the store: the record `seq` has hash `hash`.
    A store that verifies against it holds every record up to `seq` as it was published."""

    seq: int
    hash: str

    def __post_init__(self):
        if type(self.seq) is not int or self.seq < 1:
            raise ValueError(f"a chain head's seq is a whole number from 1, not {self.seq!r}")
        if not (isinstance(self.hash, str) and len(self.hash) == 64 and all(c in "0123456789abcdef" for c in self.hash)):
            raise ValueError("a chain head's hash is 64 lowercase hex digits")

    @classmethod
    def parse(cls, text: str) -> "ChainHead":
        """`SEQ:HASH`, as `hoop audit verify --head` takes it."""
        seq, sep, digest = text.strip().partition(":")
        if not sep or not seq.isascii() or not seq.isdigit():
            raise ValueError(f"a chain head is SEQ:HASH (e.g. 1042:3fa9…), not {text[:80]!r}")
        return cls(int(seq), digest.lower())

    @classmethod
    def from_document(cls, doc) -> "ChainHead":
        if not isinstance(doc, dict):
            raise ValueError("a chain head is a JSON object")
        return cls(doc.get("seq"), doc.get("hash"))

    def document(self, ts: str) -> dict:
        """What an exporter publishes: one place, so a signer (checkpoints) signs this dict."""
        return {HEAD_KEY: {"seq": self.seq, "hash": self.hash, "ts": ts}}

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def canonical(record: dict) -> bytes:
    get = record.get
    return _ENCODE({name: get(name) for name in _HASHED_SORTED}).encode("utf-8")


def record_hash(record: dict) -> str:
    prev = record.get("prev_hash") or ""
    return hashlib.sha256(prev.encode("ascii", "replace") + canonical(record)).hexdigest()


def _text(value) -> str:
    return "null" if value is None else c_encode_basestring(value)  # TypeError unless str


encode_text = _text  # a text field's (or None's) canonical JSON


def _canonical_normalized(r: dict) -> bytes:
    """canonical(r) for a record as normalize() leaves it (text fields str or None, `seq` an
    int, `duration_ms` a finite float or None, `details` a dict or None), written out field
    by field in sorted order: half the cost of building and sorting a dict per record. Any
    other value raises TypeError and the caller falls back to canonical()."""
    seq, duration, details = r["seq"], r["duration_ms"], r["details"]
    if type(seq) is not int or not (duration is None or (type(duration) is float and math.isfinite(duration))):
        raise TypeError("not a normalized record")
    if details is not None and type(details) is not dict:
        raise TypeError("not a normalized record")
    return (
        f'{{"code":{_text(r["code"])},"connection":{_text(r["connection"])},"database":{_text(r["database"])},'
        f'"db_user":{_text(r["db_user"])},"details":{"null" if details is None else _ENCODE(details)},'
        f'"duration_ms":{"null" if duration is None else float.__repr__(duration)},"email":{_text(r["email"])},'
        f'"issuer":{_text(r["issuer"])},"kind":{_text(r["kind"])},"message":{_text(r["message"])},'
        f'"outcome":{_text(r["outcome"])},"prev_hash":{_text(r["prev_hash"])},"seq":{int.__repr__(seq)},'
        f'"session_id":{_text(r["session_id"])},"started_at":{_text(r["started_at"])},'
        f'"statement":{_text(r["statement"])},"sub":{_text(r["sub"])},"tag":{_text(r["tag"])},"ts":{_text(r["ts"])}}}'
    ).encode("utf-8")


# The fields _canonical_normalized writes out by hand: a field added to FIELDS must be added
# there too, or every new record would hash without it.
if _HASHED_SORTED != ("code", "connection", "database", "db_user", "details", "duration_ms", "email", "issuer", "kind",
                      "message", "outcome", "prev_hash", "seq", "session_id", "started_at", "statement", "sub", "tag", "ts"):
    raise ImportError("audit record fields changed: update chain._canonical_normalized")


def _linked_hash(record: dict, prev: str | None) -> str:
    try:
        body = _canonical_normalized(record)
    except (TypeError, KeyError):
        body = canonical(record)
    return hashlib.sha256((prev or "").encode("ascii", "replace") + body).hexdigest()


def link(records: Iterable[dict], head_seq: int, head_hash: str) -> list[dict]:
    """Give normalized records their seq, prev_hash and hash, continuing after the head."""
    linked = []
    seq, prev = head_seq, head_hash
    for record in records:
        seq += 1
        if type(record) is Preencoded:
            record["seq"] = seq
            record["prev_hash"] = prev
            body = f'{record.canonical_head}"prev_hash":{_text(prev)},"seq":{int.__repr__(seq)}{record.canonical_tail}'
            record["hash"] = prev = hashlib.sha256((prev or "").encode("ascii", "replace") + body.encode("utf-8")).hexdigest()
            linked.append(record)
            continue
        stored = dict(record)
        stored["seq"] = seq
        stored["prev_hash"] = prev
        stored["hash"] = prev = _linked_hash(stored, prev)
        linked.append(stored)
    return linked


def verify_records(records: Iterable[dict], *, from_genesis: bool = True, heads: Iterable[ChainHead] = ()) -> VerifyReport:
    """Walk records in the given order and report every break, naming the seq.

    With from_genesis=False (a slice, e.g. an export that starts mid-trail) the first
    record's seq and prev_hash are taken on trust. Each of `heads` (published outside the
    store) must be matched by the record at its seq: a store that ends before it was cut.
    """
    heads = tuple(dict.fromkeys(heads))
    expected: dict[int, list[ChainHead]] = {}
    for head in heads:
        expected.setdefault(head.seq, []).append(head)
    matched: set[int] = set()
    problems: list[str] = []
    checked = 0
    prev_seq: int | None = None
    prev_hash: str | None = None
    for record in records:
        checked += 1
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            problems.append(f"record #{checked} (after seq {prev_seq}): no valid seq ({seq!r})")
            continue
        if record.get("hash") != record_hash(record):
            problems.append(f"seq {seq}: hash mismatch, the record was changed after it was written")
        if prev_seq is None:
            if from_genesis:
                if seq != 1:
                    problems.append(f"seq {seq}: first record, seq 1..{seq - 1} missing (deleted)")
                elif record.get("prev_hash") != GENESIS:
                    problems.append("seq 1: prev_hash is not the genesis hash")
        elif seq <= prev_seq:
            problems.append(f"seq {seq}: comes after seq {prev_seq}, records reordered or duplicated")
        elif seq != prev_seq + 1:
            missing = str(prev_seq + 1) if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
            problems.append(f"seq {missing} missing before seq {seq} (deleted, or moved elsewhere)")
        elif record.get("prev_hash") != prev_hash:
            problems.append(
                f"seq {seq}: prev_hash does not match the hash of seq {prev_seq}, "
                f"a record was replaced, inserted or moved"
            )
        if seq in expected and seq not in matched:
            matched.add(seq)
            for head in expected[seq]:
                if record.get("hash") != head.hash:
                    problems.append(
                        f"seq {seq}: hash differs from the published head {head.seq}:{head.hash[:12]}…, "
                        f"the trail was rewritten at or before seq {seq}"
                    )
        prev_seq, prev_hash = seq, record.get("hash")
    problems += _heads_not_reached(heads, matched, prev_seq)
    return VerifyReport(not problems, checked, problems, prev_seq, prev_hash, heads)


def _heads_not_reached(heads: tuple[ChainHead, ...], matched: set[int], last_seq: int | None) -> list[str]:
    """A published head whose seq the walk never met: the tail after the store's last record
    was cut (the missing range named), or that very record is gone from the middle."""
    problems = []
    for seq in sorted({head.seq for head in heads}):
        head = next(h for h in heads if h.seq == seq)
        if head.seq in matched:
            continue
        if last_seq is None or last_seq < head.seq:
            first = 1 if last_seq is None else last_seq + 1
            missing = str(first) if first == head.seq else f"{first}..{head.seq}"
            ends = "is empty" if last_seq is None else f"ends at seq {last_seq}"
            problems.append(
                f"seq {missing} missing: the published head is seq {head.seq} but the store {ends} "
                f"(records deleted from the end of the trail)"
            )
        else:
            problems.append(f"seq {head.seq} missing: the record of the published head {head.seq} is not in the store")
    return problems
