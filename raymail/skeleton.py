"""Messages whose attachment bodies live in their own blobs.

A message with attachments is stored as a *skeleton*: its bytes with each
attachment body cut out and replaced by a reference to the attachment's
content-addressed blob. The same file in a thousand messages is stored once.
A body is cut out only where its base64 text is exactly what we regenerate from
the reference (lines of one length, a multiple of 4, each ending CRLF or LF), so
the RFC 5322 source is rebuilt byte for byte. Every other attachment (quoted-
printable, 8bit, irregular lines, a few bytes) stays in the skeleton as it came,
and its decoded bytes are stored as a blob too: the API serves each attachment
of a received message the same way, whatever its encoding.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

import msgpack

MAGIC = b"RMSKEL1\n"
LINE_CHARS = 76  # base64 characters per line as we write them (RFC 2045's most)
CRLF = b"\r\n"
LINE_BYTES = 57  # decoded bytes per 76-character base64 line
CHUNK_BYTES = LINE_BYTES * 18396  # about 1 MiB per read


@dataclass(frozen=True, slots=True)
class BlobRef:
    key: str
    size: int  # decoded bytes
    line_chars: int = LINE_CHARS  # the body's base64 line length (a multiple of 4) ...
    eol: bytes = CRLF  # ... and line end, as it came


Segment = bytes | BlobRef


def encoded_size(size: int, line_chars: int = LINE_CHARS, eol: bytes = CRLF) -> int:
    chars = (size + 2) // 3 * 4
    return chars + -(-chars // line_chars) * len(eol)


def encode_lines(data: bytes, line_chars: int = LINE_CHARS, eol: bytes = CRLF) -> bytes:
    """base64 in lines of ``line_chars`` characters, each ending ``eol`` (``len(data)`` a
    multiple of ``line_chars // 4 * 3`` but the last)."""
    text = base64.b64encode(data)
    return b"".join(text[i : i + line_chars] + eol for i in range(0, len(text), line_chars))


def pack(segments: list[Segment]) -> bytes:
    def item(s: BlobRef) -> list:
        if (s.line_chars, s.eol) == (LINE_CHARS, CRLF):
            return [s.key, s.size]
        return [s.key, s.size, s.line_chars, s.eol]

    return MAGIC + msgpack.packb([s if isinstance(s, bytes) else item(s) for s in segments], use_bin_type=True)


def unpack(data: bytes) -> list[Segment] | None:
    """The segments of a skeleton; None when ``data`` is a plain message."""
    if not data.startswith(MAGIC):
        return None
    return [s if isinstance(s, bytes) else BlobRef(*s) for s in msgpack.unpackb(data[len(MAGIC) :], raw=False)]


def raw_size(segments: list[Segment]) -> int:
    return sum(len(s) if isinstance(s, bytes) else encoded_size(s.size, s.line_chars, s.eol) for s in segments)


def text_view(segments: list[Segment]) -> bytes:
    """The message with attachment bodies left empty: enough to read headers and text."""
    return b"".join(s for s in segments if isinstance(s, bytes))


def iter_raw(segments: list[Segment], read: Callable[[str, int, int], bytes]) -> Iterator[bytes]:
    """The full RFC 5322 source, streamed; ``read(key, start, length)`` reads a blob."""
    for seg in segments:
        if isinstance(seg, bytes):
            yield seg
            continue
        per_line = seg.line_chars // 4 * 3
        chunk_bytes = max(1, CHUNK_BYTES // per_line) * per_line  # whole lines: each chunk encodes alone
        pos = 0
        while pos < seg.size:
            chunk = read(seg.key, pos, min(chunk_bytes, seg.size - pos))
            if not chunk:
                raise EOFError(f"blob {seg.key} ended after {pos} of {seg.size} bytes")
            yield encode_lines(chunk, seg.line_chars, seg.eol)
            pos += len(chunk)


@dataclass(frozen=True, slots=True)
class Extracted:
    data: bytes  # decoded
    filename: str | None
    content_type: str
    cut: bool = True  # cut out of the skeleton (a BlobRef placeholder stands for it), else left in


# A header that can make its part an attachment: a disposition of ``attachment`` or
# naming a file, or a Content-Type naming one (RFC 2231 forms too), over folded lines.
_MAYBE_ATTACHMENT = re.compile(
    rb"content-(?:disposition:[^\n]*(?:\n[ \t][^\n]*)*?(?:attachment|filename)"
    rb"|type:[^\n]*(?:\n[ \t][^\n]*)*?\bname[\s*0-9]*=)")

MAX_ATTACHMENTS = 100  # per message; more stay in it as they came, read from its source


def may_have_attachments(raw: bytes) -> bool:
    """False when no header of ``raw`` could make a part an attachment, so
    ``extract`` finds nothing (the text of a mail that says "attachment" is no
    reason to parse it)."""
    low = raw.lower()
    at = low.find(b"content-")  # a literal search, then the pattern only where one starts a line
    while at >= 0:
        if (at == 0 or low[at - 1] == 0x0A) and _MAYBE_ATTACHMENT.match(low, at):
            return True
        at = low.find(b"content-", at + 8)
    return False


def extract(raw: bytes, min_bytes: int = 1024,
            max_attachments: int = MAX_ATTACHMENTS) -> tuple[list[Segment], list[Extracted]]:
    """Every attachment of ``raw`` (up to ``max_attachments``), decoded, and its skeleton.

    Returns the segments, with a ``BlobRef(key="", size, ...)`` placeholder for each
    body cut out, and the attachments in order (``cut`` says which have a
    placeholder); the caller stores each one and fills in the keys. A body is cut
    out when it is base64 of at least ``min_bytes`` in a layout ``iter_raw``
    rebuilds exactly; anything else stays inline, so rebuilding is exact.
    """
    if not may_have_attachments(raw):
        return [raw], []  # nothing to find: skip the parse
    try:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw)
        leaves = list(leaf_parts(msg))
    except Exception:  # noqa: BLE001 - an unparsable message is kept whole
        return [raw], []
    segments: list[Segment] = []
    found: list[Extracted] = []
    pos = 0  # where in ``raw`` the next part's body can start
    kept = 0  # where the bytes not yet in ``segments`` start
    for part in leaves:
        body = part.get_payload()
        attachment = len(found) < max_attachments and is_attachment(part)
        if not isinstance(body, str):  # a forwarded message, attached whole
            if attachment:
                found.append(Extracted(message_bytes(part), _filename(part), "message/rfc822", cut=False))
            continue
        try:
            cut = _exact_base64(part, body, min_bytes) if attachment else None
        except Exception:  # noqa: BLE001 - a body we cannot judge stays inline
            cut = None
        if cut is None:
            # Passed over (a body that is not an attachment too), so that a later
            # attachment's identical text is never looked for in an earlier part.
            text = _as_bytes(body)
            at = raw.find(text, pos) if text else -1
            if at >= 0:
                pos = at + len(text)
            if attachment:
                found.append(Extracted(_decoded(part, body), _filename(part), part.get_content_type(), cut=False))
            continue
        ref, text, data = cut
        at = raw.find(text, pos)
        if at < 0:
            found.append(Extracted(data, _filename(part), part.get_content_type(), cut=False))
            continue
        segments.append(raw[kept:at])
        segments.append(ref)
        found.append(Extracted(data, _filename(part), part.get_content_type()))
        pos = kept = at + len(text)
    segments.append(raw[kept:])
    return [s for s in segments if not (isinstance(s, bytes) and not s)], found


def leaf_parts(msg: Message) -> Iterator[Message]:
    """The message's parts that are not multipart, in order; a forwarded message
    attached as a file (``message/rfc822`` with a disposition of attachment or a
    name) is one part, not looked into."""
    if msg.get_content_type() == "message/rfc822" and is_attachment(msg):
        yield msg
    elif msg.is_multipart():
        for sub in msg.get_payload():
            if isinstance(sub, Message):
                yield from leaf_parts(sub)
    else:
        yield msg


def attachments(msg: Message) -> Iterator[Message]:
    """The message's attachments, as ``extract`` finds them (the first
    ``MAX_ATTACHMENTS``)."""
    n = 0
    for part in leaf_parts(msg):
        if n < MAX_ATTACHMENTS and is_attachment(part):
            n += 1
            yield part


def _decoded(part: Message, body: str) -> bytes:
    try:
        return part.get_payload(decode=True) or b""
    except Exception:  # noqa: BLE001 - a body the parser cannot decode is served as it came
        return _as_bytes(body)


def _as_bytes(body: str) -> bytes:
    """A payload's bytes as they were in the message (the parser keeps bytes it
    cannot read as ASCII as surrogates; the rest as UTF-8 is the best guess)."""
    return body.encode("utf-8", "surrogateescape")


def message_bytes(part: Message) -> bytes:
    """The bytes of a forwarded message (a ``message/rfc822`` part) as a file, CRLF
    line ends as mail has them."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if not isinstance(inner, Message):
        return b""
    try:
        return inner.as_bytes(policy=policy.compat32.clone(linesep="\r\n"))
    except Exception:  # noqa: BLE001 - a message the generator cannot write is no file
        return b""


def _exact_base64(part: Message, body: str, min_bytes: int) -> tuple[BlobRef, bytes, bytes] | None:
    """(placeholder, the body's text in ``raw``, decoded bytes) when ``body`` is base64
    that ``iter_raw`` regenerates byte for byte from a placeholder; else None."""
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() != "base64" or not body.isascii():
        return None
    text = body.encode("ascii")
    lf = text.find(b"\n")
    if lf <= 0:
        return None  # one line, or none: not worth a layout of its own
    eol = CRLF if text[lf - 1 : lf] == b"\r" else b"\n"
    line_chars = lf - len(eol) + 1
    if line_chars < 4 or line_chars % 4:
        return None  # a blank first line, or lines that do not encode whole bytes
    # The parser leaves out the line end that ends the body (it belongs to the
    # boundary line); the regenerated text ends with it, so cut it out too.
    text = text.rstrip(b"\r\n") + eol
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None
    if len(data) < min_bytes or encode_lines(data, line_chars, eol) != text:
        return None  # small, or lines of other lengths: kept inline
    return BlobRef("", len(data), line_chars, eol), text, data


def _filename(part: Message) -> str | None:
    try:
        return part.get_filename()
    except Exception:  # noqa: BLE001 - a hostile parameter is no name
        return None


def is_attachment(part: Message) -> bool:
    """A part that is a file of its own: not multipart (a forwarded message may be
    one), and either ``Content-Disposition: attachment`` or named and not
    ``inline`` (an inline image that a body shows is part of the body)."""
    if part.is_multipart() and part.get_content_type() != "message/rfc822":
        return False
    disposition = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
    return disposition == "attachment" or (disposition != "inline" and _filename(part) is not None)
