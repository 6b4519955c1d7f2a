"""Search queries without I/O: the Gmail-style syntax, tokenizing, and matching.

``parse("from:alice has:attachment is:unread in:inbox before:2026-01-01 \\"exact phrase\\" report")``
returns a ``SearchQuery``. Words are tokenized by the index's own analyzer
(tantivy's default: runs of letters and digits, lower-cased, under 40 bytes), so the
in-memory part of the index and the committed part agree in every script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import tantivy

MAX_QUERY_CHARS = 512
MAX_CLAUSES = 32
TEXT_FIELDS = ("from_", "to", "cc", "subject", "body", "filenames")
_FIELD_OPERATORS = {"from": "from_", "to": "to", "cc": "cc", "subject": "subject", "filename": "filenames"}
# tantivy's "default" tokenizer is the simple tokenizer (runs of Rust
# ``char::is_alphanumeric``, which keeps combining vowel signs inside a word), then
# tokens of 40 bytes or more dropped (measured before lower-casing), then lower-casing.
# The same steps run here, with the length taken from the token as split.
_SPLIT = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).build()
_SPLIT_LOWER = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.lowercase()).build()
MAX_TOKEN_BYTES = 39
_FORBIDDEN = set("()[]{}^~*\\")
_FOLDERS = ("inbox", "sent", "archive", "trash", "junk")


class QueryError(ValueError):
    """The query cannot be understood; the message says what to change."""


def tokenize(text: str, keep_gaps: bool = False) -> list[str | None]:
    """The index's tokens: runs of letters and digits, lower-cased, under 40 bytes.

    With ``keep_gaps`` a dropped (over-long) token leaves a None, so positions,
    and with them phrase matches, agree with the index.
    """
    lowered = _SPLIT_LOWER.analyze(text)
    # A character is at most 4 bytes and lower-casing never shortens a token, so
    # with no token over 9 characters none was dropped: the usual case, one call.
    if all(len(t) <= MAX_TOKEN_BYTES // 4 for t in lowered):
        return list(lowered)
    out: list[str | None] = []
    for split, low in zip(_SPLIT.analyze(text), lowered, strict=True):
        if len(split.encode()) <= MAX_TOKEN_BYTES:
            out.append(low)
        elif keep_gaps:
            out.append(None)
    return out


@dataclass(frozen=True)
class Clause:
    """Words that must appear in ``fields`` (next to each other if ``phrase``)."""

    words: tuple[str, ...]
    fields: tuple[str, ...] = TEXT_FIELDS
    phrase: bool = False
    negated: bool = False


@dataclass(frozen=True)
class SearchQuery:
    clauses: tuple[Clause, ...] = ()
    folder: str | None = None
    unread: bool | None = None
    has_attachment: bool | None = None
    after_s: float | None = None  # inclusive
    before_s: float | None = None  # exclusive
    extra: dict = field(default_factory=dict)

    @property
    def has_text(self) -> bool:
        return any(not c.negated for c in self.clauses)


def parse_date(value: str, name: str) -> float:
    """``YYYY-MM-DD`` (UTC midnight), ``YYYY/MM/DD`` or epoch seconds."""
    v = value.strip()
    if re.fullmatch(r"\d{9,11}(\.\d+)?", v):
        return float(v)
    for fmt in ("%Y-%m-%d", "%Y/%m/%d"):
        try:
            return datetime.strptime(v, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise QueryError(f"{name}: {value!r} is not a date like 2026-01-31")


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise QueryError(f"{name} must be true or false, got {value!r}")


def _split(q: str) -> list[tuple[str, bool, bool]]:
    """Split into (piece, has quotes, is a quoted phrase) respecting double quotes."""
    out, i, n = [], 0, len(q)
    while i < n:
        if q[i].isspace():
            i += 1
            continue
        start = i
        buf = []
        quoted = False
        while i < n and not q[i].isspace():
            if q[i] == '"':
                end = q.find('"', i + 1)
                if end < 0:
                    raise QueryError(f"unbalanced quote at position {i + 1}: close the phrase with \"")
                buf.append(q[i + 1 : end])
                quoted = True
                i = end + 1
            else:
                buf.append(q[i])
                i += 1
        lead = 1 if q[start] == "-" and start + 1 < n and q[start + 1] == '"' else 0
        phrase = quoted and q[start + lead] == '"'
        piece = "".join(buf) if phrase else q[start:i]
        out.append(("-" + piece[1:] if lead and phrase else piece, quoted, phrase))
    return out


def parse(q: str | None, **filters: str | None) -> SearchQuery:
    """Parse the ``q`` syntax plus the explicit filter parameters of ``GET /v1/search``."""
    q = q or ""
    if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    clauses: list[Clause] = []
    state: dict = {}

    def set_once(key: str, value: object) -> None:
        if key in state and state[key] != value:
            raise QueryError(f"{key} is given twice with different values")
        state[key] = value

    for piece, _quoted, phrase in _split(q):
        negated = piece.startswith("-") and len(piece) > 1
        if negated:
            piece = piece[1:]
        op, colon, value = piece.partition(":")
        if colon and not phrase:
            value = value.replace('"', "")
            op = op.lower()
            if op in _FIELD_OPERATORS:
                words = tokenize(value)
                if not words:
                    raise QueryError(f"{op}: needs a word, like {op}:alice")
                clauses.append(Clause(tuple(words), (_FIELD_OPERATORS[op],), phrase=len(words) > 1, negated=negated))
            elif op == "has" and value.lower() in ("attachment", "attachments"):
                set_once("has_attachment", not negated)
            elif op == "is" and value.lower() in ("unread", "read"):
                set_once("unread", (value.lower() == "unread") != negated)
            elif op == "in" and value.lower() in _FOLDERS and not negated:
                set_once("folder", value.lower())
            elif op in ("before", "after", "older", "newer") and not negated:
                key = "before_s" if op in ("before", "older") else "after_s"
                set_once(key, parse_date(value, op))
            elif op in ("has", "is", "in"):
                raise QueryError(f"{op}:{value} is not supported; use has:attachment, is:unread, is:read, "
                                 f"in:{'|'.join(_FOLDERS)}")
            else:
                raise QueryError(f"unknown operator {op}: (known: from, to, cc, subject, filename, has, is, in, "
                                 "before, after)")
            continue
        if not phrase:
            bad = _FORBIDDEN.intersection(piece)
            if bad:
                raise QueryError(f"the character {sorted(bad)[0]!r} is not supported in a search; "
                                 "put the text in double quotes")
        words = tokenize(piece)
        if not words:
            continue
        clauses.append(Clause(tuple(words), phrase=len(words) > 1, negated=negated))
    if len(clauses) > MAX_CLAUSES:
        raise QueryError(f"at most {MAX_CLAUSES} search terms")

    for name in ("from", "to"):
        value = filters.get(name)
        if value:
            words = tokenize(value)
            if words:
                clauses.append(Clause(tuple(words), (_FIELD_OPERATORS[name],), phrase=len(words) > 1))
    if filters.get("folder"):
        folder = filters["folder"].lower()  # type: ignore[union-attr]
        if folder not in _FOLDERS:
            raise QueryError(f"folder must be one of {', '.join(_FOLDERS)}")
        set_once("folder", folder)
    if filters.get("has_attachment") not in (None, ""):
        set_once("has_attachment", _bool(filters["has_attachment"], "has_attachment"))  # type: ignore[arg-type]
    if filters.get("unread") not in (None, ""):
        set_once("unread", _bool(filters["unread"], "unread"))  # type: ignore[arg-type]
    if filters.get("after"):
        set_once("after_s", parse_date(filters["after"], "after"))  # type: ignore[arg-type]
    if filters.get("before"):
        set_once("before_s", parse_date(filters["before"], "before"))  # type: ignore[arg-type]
    return SearchQuery(clauses=tuple(clauses), **state)


def matches(clause: Clause, doc: dict[str, list[str]]) -> bool:
    """Does ``doc`` (field -> token list) satisfy ``clause``? (The in-memory side.)"""
    for f in clause.fields:
        tokens = doc.get(f, ())
        if not clause.phrase:
            if all(w in tokens for w in clause.words):
                return True
            continue
        n = len(clause.words)
        for i in range(len(tokens) - n + 1):
            if tuple(tokens[i : i + n]) == clause.words:
                return True
    return False
