"""A statement reduced to what an approval request and a blocked statement's record keep: a
bounded prefix (cut on a character boundary, and before a word a secret could follow) with the
whole text's SHA-256 and size. Split from approvals.py, which re-exports it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

__all__ = ["PREFIX_BYTES", "StatementDigest", "digest_statement"]

PREFIX_BYTES = 4096  # what a request (and a blocked statement's record) keeps of a long statement
_HASH_CHUNK = 1 << 20  # characters encoded at a time: hashing 16 MiB never copies it whole


@dataclass(frozen=True, slots=True)
class StatementDigest:
    """A statement reduced to what can be kept for a long time: a prefix and proof of the rest."""

    prefix: str  # the first PREFIX_BYTES bytes of UTF-8 at most, whole characters only
    sha256: str  # hex, of the whole text as UTF-8 (lone surrogates encoded as themselves)
    chars: int
    size: int  # bytes of UTF-8

    @property
    def truncated(self) -> bool:
        return len(self.prefix) < self.chars


def digest_statement(text: str, keep: int = PREFIX_BYTES) -> StatementDigest:
    """Hash `text` in slices (no whole UTF-8 copy of a 16 MiB statement) and cut its prefix."""
    digest = hashlib.sha256()
    size = 0
    for start in range(0, len(text), _HASH_CHUNK):
        raw = text[start : start + _HASH_CHUNK].encode("utf-8", "surrogatepass")
        digest.update(raw)
        size += len(raw)
    return StatementDigest(_prefix(text, keep), digest.hexdigest(), len(text), size)


# A cut can fall inside the literal after one of these words, where no masking rule would
# find its end: a truncated prefix stops before the first of them.
_SECRET_WORD = re.compile(r"(?i)password|identified")


def _prefix(text: str, keep: int) -> str:
    head = text[:keep]  # never more than `keep` bytes are needed, and a character is >= 1 byte
    raw = head.encode("utf-8", "surrogatepass")
    if len(raw) > keep:
        cut = keep
        while raw[cut] & 0xC0 == 0x80:  # raw[cut] continues a character that began before the cut
            cut -= 1
        head = raw[:cut].decode("utf-8", "surrogatepass")
    if len(head) == len(text):
        return head
    secret = _SECRET_WORD.search(head)
    return head[: secret.start()] if secret else head
