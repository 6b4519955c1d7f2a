"""Messages whose attachment bodies live in their own blobs.

A message with attachments is stored as a *skeleton*: its bytes with each
attachment body cut out and replaced by a reference to the attachment's
content-addressed blob. The same file in a thousand messages is stored once.
Bodies are cut out only where the base64 text is exactly what we regenerate
(76-character lines, CRLF), so the RFC 5322 source is rebuilt byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

import msgpack

MAGIC = b"RMSKEL1\n"
LINE_BYTES = 57  # decoded bytes per 76-character base64 line
CHUNK_BYTES = LINE_BYTES * 18396  # about 1 MiB per read


@dataclass(frozen=True, slots=True)
class BlobRef:
    key: str
    size: int  # decoded bytes


Segment = bytes | BlobRef


def encoded_size(size: int) -> int:
    full, rem = divmod(size, LINE_BYTES)
    return full * 78 + ((rem + 2) // 3 * 4 + 2 if rem else 0)


def encode_lines(data: bytes) -> bytes:
    """base64 in 76-character lines, each ending CRLF (``len(data)`` a multiple of 57 but the last)."""
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


def pack(segments: list[Segment]) -> bytes:
    return MAGIC + msgpack.packb([s if isinstance(s, bytes) else [s.key, s.size] for s in segments], use_bin_type=True)


def unpack(data: bytes) -> list[Segment] | None:
    """The segments of a skeleton; None when ``data`` is a plain message."""
    if not data.startswith(MAGIC):
        return None
    return [s if isinstance(s, bytes) else BlobRef(s[0], s[1]) for s in msgpack.unpackb(data[len(MAGIC) :], raw=False)]


def raw_size(segments: list[Segment]) -> int:
    return sum(len(s) if isinstance(s, bytes) else encoded_size(s.size) for s in segments)


def text_view(segments: list[Segment]) -> bytes:
    """The message with attachment bodies left empty: enough to read headers and text."""
    return b"".join(s for s in segments if isinstance(s, bytes))


def iter_raw(segments: list[Segment], read: Callable[[str, int, int], bytes]) -> Iterator[bytes]:
    """The full RFC 5322 source, streamed; ``read(key, start, length)`` reads a blob."""
    for seg in segments:
        if isinstance(seg, bytes):
            yield seg
            continue
        pos = 0
        while pos < seg.size:
            chunk = read(seg.key, pos, min(CHUNK_BYTES, seg.size - pos))
            if not chunk:
                raise EOFError(f"blob {seg.key} ended after {pos} of {seg.size} bytes")
            yield encode_lines(chunk)
            pos += len(chunk)


@dataclass(frozen=True, slots=True)
class Extracted:
    data: bytes
    filename: str | None
    content_type: str


def may_have_attachments(raw: bytes) -> bool:
    """False when ``raw`` has no base64 part at all, so ``extract`` finds nothing."""
    return b"base64" in raw.lower()  # a case-insensitive regex scan is ten times slower


def extract(raw: bytes, min_bytes: int = 1024) -> tuple[list[Segment], list[Extracted]]:
    """Cut canonical base64 attachment bodies out of ``raw``.

    Returns the segments, with a ``BlobRef(key="", size)`` placeholder for each
    extracted body in order, and the bodies; the caller stores each body and
    fills in the keys. Anything unusual stays inline, so rebuilding is exact.
    """
    if len(raw) < min_bytes or not may_have_attachments(raw):
        return [raw], []  # nothing to cut out: skip the parse
    try:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw)
        parts = [p for p in msg.walk() if _is_attachment(p)]
    except Exception:  # noqa: BLE001 - an unparsable message is kept whole
        return [raw], []
    segments: list[Segment] = []
    found: list[Extracted] = []
    pos = 0
    for part in parts:
        body = part.get_payload()
        if not isinstance(body, str):
            continue
        if not body.isascii():
            continue
        # The parser leaves out the CRLF that ends the body (it belongs to the
        # boundary line); the regenerated text ends with it, so cut it out too.
        body_bytes = body.encode("ascii").rstrip(b"\r\n") + b"\r\n"
        try:
            data = base64.b64decode(body_bytes, validate=False)
        except (binascii.Error, ValueError):
            continue
        if len(data) < min_bytes or encode_lines(data) != body_bytes:
            continue  # small, or not our canonical form: keep inline
        at = raw.find(body_bytes, pos)
        if at < 0:
            continue
        segments.append(raw[pos:at])
        segments.append(BlobRef("", len(data)))
        found.append(Extracted(data, part.get_filename(), part.get_content_type()))
        pos = at + len(body_bytes)
    segments.append(raw[pos:])
    return [s for s in segments if not (isinstance(s, bytes) and not s)], found


def _is_attachment(part: Message) -> bool:
    if part.is_multipart():
        return False
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() != "base64":
        return False
    disposition = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
    return disposition == "attachment" or (disposition != "inline" and part.get_filename() is not None)
