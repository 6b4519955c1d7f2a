"""Attachment rules without I/O: filenames, content types, dispositions, byte ranges,
digests."""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from urllib.parse import quote

MAX_FILENAME_CHARS = 200
DEFAULT_FILENAME = "attachment"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE_RE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_DIGEST_RE = re.compile(r"^:([A-Za-z0-9+/]*={0,2}):$")
# Bidirectional overrides and isolates can make "evil\u202egnp.exe" read as "evilexe.png".
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


class AttachmentError(ValueError):
    """An attachment request is unacceptable; the message says why."""


def sanitize_filename(name: str | None) -> str:
    """A filename safe to show and to offer for download; never a path.

    NFC-normalised; control, bidi and path characters removed; no leading dots;
    at most 200 characters, keeping the extension. Storage keys never derive
    from it.
    """
    if not name:
        return DEFAULT_FILENAME
    text = unicodedata.normalize("NFC", name)
    text = text.replace("\\", "/").split("/")[-1]  # the last path component only
    cleaned = []
    for ch in text:
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            continue
        cleaned.append(ch)
    # NFC again: removing a format character can leave a decomposable sequence.
    text = unicodedata.normalize("NFC", "".join(cleaned))
    text = re.sub(r"^[\s.]+", "", text).strip()  # no leading dots, even behind spaces
    text = re.sub(r"\s+", " ", text)
    if not text or text in (".", ".."):
        return DEFAULT_FILENAME
    if len(text) > MAX_FILENAME_CHARS:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            text = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            text = text[:MAX_FILENAME_CHARS]
    return text


def normalize_content_type(value: str | None) -> str:
    """``type/subtype`` in lower case, parameters dropped; AttachmentError if malformed."""
    if not value:
        raise AttachmentError("send the file's type in Content-Type (application/octet-stream if unknown)")
    main = value.split(";", 1)[0].strip().lower()
    if not _CONTENT_TYPE_RE.match(main):
        raise AttachmentError(f"Content-Type {value[:80]!r} is not a media type like image/png")
    if main.startswith("multipart/"):
        raise AttachmentError("upload the file itself (or one multipart/form-data field), not a multipart body")
    return main


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the RFC 6266 / RFC 5987 UTF-8 form."""
    ascii_name = "".join(c for c in filename if " " <= c <= "~" and c not in '"\\') or DEFAULT_FILENAME
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, as (start, end inclusive); None: send it all.

    Raises AttachmentError for a range that cannot be satisfied (HTTP 416).
    Several ranges are answered with the whole body (RFC 9110 section 14.2 lets
    a server ignore Range).
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise AttachmentError(f"range {header} is empty")
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise AttachmentError(f"range {header} is outside the {size} bytes of the file")
    return start, min(end, size - 1)


def declared_sha256(*headers: str | None) -> bytes | None:
    """The SHA-256 a client declared for its body in ``Content-Digest`` or
    ``Repr-Digest`` (RFC 9530: ``sha-256=:<base64>:``, among other algorithms that
    are ignored); None when there is none.

    Raises AttachmentError for a sha-256 value that is not 32 bytes of base64, or
    for two that differ.
    """
    found: set[bytes] = set()
    for header in headers:
        for member in (header or "").split(","):
            name, eq, value = member.partition("=")
            if not eq or name.strip().lower() != "sha-256":
                continue
            m = _DIGEST_RE.match(value.split(";", 1)[0].strip())
            try:
                digest = base64.b64decode(m.group(1), validate=True) if m else b""
            except binascii.Error:
                digest = b""
            if len(digest) != 32:
                raise AttachmentError("the sha-256 digest must be 32 bytes in base64 between colons "
                                      "(RFC 9530), as in sha-256=:<base64>:")
            found.add(digest)
    if len(found) > 1:
        raise AttachmentError("the body declares two different sha-256 digests")
    return found.pop() if found else None


def repr_digest(sha256_hex: str) -> str:
    """The ``Repr-Digest`` header value (RFC 9530) for a SHA-256 given in hex."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode('ascii')}:"
