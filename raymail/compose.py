"""Build and read RFC 5322 messages with the stdlib ``email`` package."""

from __future__ import annotations

import quopri
import re
import uuid
from dataclasses import dataclass
from email import policy
from email.header import Header, decode_header, make_header
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import formataddr, formatdate, getaddresses, make_msgid

from raymail import skeleton
from raymail.model import Address, AttachmentRef

SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class Composed:
    raw: bytes  # the source; for a message with attachments, its skeleton's text view
    message_id: str
    snippet: str
    segments: list | None = None  # raymail.skeleton segments when there are attachments
    size: int = 0  # bytes of the full RFC 5322 source

    @property
    def stored(self) -> bytes:
        """What goes to blob storage: the source, or the packed skeleton."""
        return skeleton.pack(self.segments) if self.segments is not None else self.raw


class _FastFold(Compat32):
    """compat32 with a shortcut: a short plain-ASCII header needs no folding.

    The stock fold builds a ``Header`` object for every header, which was most of
    the cost of building a message; long or non-ASCII values still take that path.
    """

    def _fold(self, name, value, sanitize):  # type: ignore[no-untyped-def]
        if isinstance(value, str) and value.isascii() and len(name) + len(value) + 2 <= self.max_line_length:
            return f"{name}: {value}{self.linesep}"
        return super()._fold(name, value, sanitize)


_GENERATE = _FastFold(linesep="\r\n", max_line_length=78)


def _header_text(value: str, name: str) -> str | Header:
    """RFC 2047-encode a header value when it is not plain ASCII."""
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name=name)


def _address_text(a: Address) -> str:
    return formataddr((a.name, a.email), charset="utf-8") if a.name else a.email


def _address_list(addrs: tuple[Address, ...]) -> str:
    return ", ".join(_address_text(a) for a in addrs)


def snippet_of(text: str) -> str:
    """The first SNIPPET_CHARS characters with whitespace runs collapsed; only as
    much of a long body is scanned as the snippet needs."""
    window = SNIPPET_CHARS * 4
    while True:
        snippet = " ".join(text[:window].split())  # str.split: the same whitespace as \s, in C
        if len(snippet) >= SNIPPET_CHARS or window >= len(text):
            return snippet[:SNIPPET_CHARS]
        window *= 4


def build(
    *,
    sender: Address,
    to: tuple[Address, ...],
    cc: tuple[Address, ...],
    bcc: tuple[Address, ...],
    subject: str,
    body: str,
    html: str | None,
    hostname: str,
    date: float,
    message_id: str | None = None,
    include_bcc: bool = False,
    attachments: tuple[AttachmentRef, ...] = (),
) -> Composed:
    """The RFC 5322 source with CRLF line endings.

    Values must already be validated (no CR/LF in any header value). ``include_bcc``
    is for the sender's own copy only; delivered copies never carry Bcc (RFC 5322
    section 3.6.3). Built with the stdlib's ``email.mime`` classes: the
    header-registry API of ``EmailMessage`` costs several times more CPU per message.
    """
    if not html and not attachments:
        fast = _build_plain(sender, to, cc, bcc if include_bcc else (), subject, body or "", hostname, date, message_id)
        if fast is not None:
            return fast
    text_part = _text_part(body or "", "plain")
    if html:
        msg: Message = MIMEMultipart("alternative", _subparts=[text_part, _text_part(html, "html")])
    else:
        msg = text_part
    tokens: dict[bytes, AttachmentRef] = {}
    if attachments:
        parts = [msg]
        for ref in attachments:
            token = f"RAYMAIL-ATTACHMENT-{uuid.uuid4().hex}"
            tokens[token.encode() + b"\r\n"] = ref
            parts.append(_attachment_part(ref, token))
        msg = MIMEMultipart("mixed", _subparts=parts)
    mid = message_id or make_msgid(domain=hostname)
    headers: list[tuple[str, str | Header]] = [
        (name, _header_text(value, name) if name == "Subject" else value)
        for name, value in _own_headers(mid, date, sender, to, cc, bcc if include_bcc else (), subject)]
    # Our headers first, then the MIME ones the parts set.
    mime_headers = list(msg.items())
    for name in list(msg.keys()):
        del msg[name]
    for name, value in headers + mime_headers:
        msg[name] = value
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    raw = msg.as_bytes(policy=_GENERATE)
    snippet = snippet_of(body or "")
    if not tokens:
        return Composed(raw=raw, message_id=mid, snippet=snippet, size=len(raw))
    segments: list[skeleton.Segment] = []
    pos = 0
    for token, ref in tokens.items():
        at = raw.index(token, pos)
        segments += [raw[pos:at], skeleton.BlobRef(ref.blob, ref.size)]
        pos = at + len(token)
    segments.append(raw[pos:])
    return Composed(raw=skeleton.text_view(segments), message_id=mid, snippet=snippet, segments=segments,
                    size=skeleton.raw_size(segments))


def _own_headers(mid: str, date: float, sender: Address, to: tuple[Address, ...], cc: tuple[Address, ...],
                 bcc: tuple[Address, ...], subject: str) -> list[tuple[str, str]]:
    """The headers a composed message starts with, in order, values as given."""
    headers = [("Message-ID", mid), ("Date", formatdate(date, usegmt=True)), ("From", _address_text(sender))]
    if to:
        headers.append(("To", _address_list(to)))
    if cc:
        headers.append(("Cc", _address_list(cc)))
    if bcc:
        headers.append(("Bcc", _address_list(bcc)))
    if not to and not cc:
        headers.append(("To", "undisclosed-recipients:;"))
    headers.append(("Subject", subject))
    return headers


_LINE_ENDS = re.compile(r"\r\n|\r|\n")


def _build_plain(sender: Address, to: tuple[Address, ...], cc: tuple[Address, ...], bcc: tuple[Address, ...],
                 subject: str, body: str, hostname: str, date: float, message_id: str | None) -> Composed | None:
    """What ``build`` makes of a text-only message, written directly (a tenth of the
    cost of the ``email`` generator): the same bytes, tested side by side. None when a
    header needs folding or encoding, which the generator then does."""
    mid = message_id or make_msgid(domain=hostname)
    headers = _own_headers(mid, date, sender, to, cc, bcc, subject)
    if not all(value.isascii() and len(name) + len(value) + 2 <= _GENERATE.max_line_length for name, value in headers):
        return None
    if body.isascii() and max(map(len, body.splitlines()), default=0) <= 998:
        cte, payload = "7bit", body
    else:
        cte, payload = "quoted-printable", quopri.encodestring(body.encode("utf-8")).decode("ascii")
    # Every line end becomes CRLF, as the generator writes them.
    payload = payload.replace("\n", "\r\n") if "\r" not in payload else _LINE_ENDS.sub("\r\n", payload)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    raw = (f'{head}Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n'
           f"MIME-Version: 1.0\r\n\r\n{payload}").encode("ascii")
    return Composed(raw=raw, message_id=mid, snippet=snippet_of(body), size=len(raw))


def _attachment_part(ref: AttachmentRef, token: str) -> MIMEBase:
    main, _, sub = ref.content_type.partition("/")
    part = MIMEBase(main, sub or "octet-stream")
    del part["MIME-Version"]
    name = ref.filename if ref.filename.isascii() else ("utf-8", "", ref.filename)  # RFC 2231
    part.set_param("name", name)
    part.add_header("Content-Disposition", "attachment", filename=name)
    part["Content-Transfer-Encoding"] = "base64"
    part.set_payload(token)  # replaced by the blob's base64 when the source is rebuilt
    return part


def _text_part(text: str, subtype: str) -> MIMEText:
    part = MIMEText("", subtype, "utf-8")
    del part["Content-Transfer-Encoding"]
    del part["MIME-Version"]
    # 7bit when it is plain short-lined ASCII, quoted-printable otherwise: readable
    # source and no 8BITMIME dependency when the message leaves over SMTP.
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        part.set_payload(text.replace("\r\n", "\n").replace("\n", "\r\n"))
        part["Content-Transfer-Encoding"] = "7bit"
    else:
        part.set_payload(quopri.encodestring(text.encode("utf-8")).decode("ascii"))
        part["Content-Transfer-Encoding"] = "quoted-printable"
    return part


@dataclass(frozen=True, slots=True)
class Parsed:
    subject: str
    text: str
    html: str | None
    headers: list[tuple[str, str]]
    attachments: list[dict]


def parse(raw: bytes) -> Parsed:
    """Read a message defensively: malformed parts become empty text, never an exception."""
    fast = _parse_plain(raw)
    return fast if fast is not None else _parse_full(raw)


def _parse_full(raw: bytes) -> Parsed:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    # raw_items() skips the structured-header parsers, which raise on some broken
    # values (``Message-ID: <``); each value is decoded on its own, safely.
    headers = [(k, _address_header(v) if k.lower() in ADDRESS_HEADERS else _header_value(v))
               for k, v in msg.raw_items()]
    subject = next((v for k, v in headers if k.lower() == "subject"), "")
    text, html, attachments = "", None, []
    try:
        text_part = msg.get_body(preferencelist=("plain",))
        html_part = msg.get_body(preferencelist=("html",))
        text = _content(text_part)
        html = _content(html_part) if html_part is not None else None
        for part in skeleton.attachments(msg):  # the parts skeleton.extract stores as attachments
            if part.get_content_type() == "message/rfc822":
                payload = skeleton.message_bytes(part)
            else:
                payload = part.get_payload(decode=True) or b""
            attachments.append(
                {"filename": _safe(part.get_filename) or "", "content_type": part.get_content_type(), "size": len(payload)}
            )
    except Exception:  # noqa: BLE001 - a hostile structure must not make the message unreadable
        if not text:
            text = raw.decode("utf-8", errors="replace")
    return Parsed(subject=subject, text=text, html=html, headers=headers, attachments=attachments)


ADDRESS_HEADERS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc"})

# A header line as the stdlib's parser takes it: a name of printable characters
# other than the colon, then a colon; continuation lines start with a space or tab.
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
# text/plain with simple parameters and nothing else.
_PLAIN_TYPE = re.compile(r'\s*text/plain\s*(?:;\s*[A-Za-z0-9_.-]+\s*=\s*(?:"[^"\\\r\n]*"|[^\s;"]+)\s*)*;?\s*', re.I)
_CHARSET = re.compile(r';\s*charset\s*=\s*"?([^\s;"]+)', re.I)
_NAMED = re.compile(r";\s*name\s*\*?\s*[0-9*]*=", re.I)
_PLAIN_CHARSETS = {"us-ascii": "ascii", "ascii": "ascii", "utf-8": "utf-8", "utf8": "utf-8"}


def _parse_plain(raw: bytes) -> Parsed | None:
    """The common simple case without the stdlib's parser (a tenth of its cost): an
    ASCII header block with CRLF line ends and a single text/plain body in 7bit or
    8bit, in US-ASCII or UTF-8. Gives exactly what the full parse gives (tested side
    by side); anything else returns None and takes the full parse."""
    end = raw.find(b"\r\n\r\n")
    if end <= 0:
        return None
    block = raw[:end]
    if not block.isascii() or block.count(b"\n") != block.count(b"\r") or block.count(b"\r\n") != block.count(b"\n"):
        return None
    lines = block.split(b"\r\n")
    items: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not items:
                return None
            items[-1].append(line)
        elif _HEADER_LINE.match(line) and not line.startswith(b"From "):
            items.append([line])
        else:
            return None
    headers: list[tuple[str, str]] = []
    ctype = cte = None
    for item in items:
        name, _, first = item[0].decode("ascii").partition(":")
        value = "".join([first.lstrip(" \t"), *(x.decode("ascii") for x in item[1:])])
        low = name.lower()
        if low == "content-disposition":
            return None  # perhaps the body is a file: the full parse says
        if low == "content-type":
            if ctype is not None:
                return None
            ctype = value
        elif low == "content-transfer-encoding":
            if cte is not None:
                return None
            cte = value
        headers.append((name, _address_header(value) if low in ADDRESS_HEADERS else _header_value(value)))
    charset = "ascii"
    if ctype is not None:
        if not _PLAIN_TYPE.fullmatch(ctype) or _NAMED.search(ctype):
            return None  # other than plain text, or a named file: the full parse says
        m = _CHARSET.search(ctype)
        if m is not None:
            charset = _PLAIN_CHARSETS.get(m.group(1).lower())
            if charset is None:
                return None
    if cte is not None and cte.strip().lower() not in ("7bit", "8bit"):
        return None
    body = raw[end + 4:]
    if b"\r" in body and body.count(b"\r") != body.count(b"\r\n"):
        return None
    subject = next((v for k, v in headers if k.lower() == "subject"), "")
    text = body.decode(charset, errors="replace").replace("\r\n", "\n")
    return Parsed(subject=subject, text=text, html=None, headers=headers, attachments=[])


def _address_header(value: str) -> str:
    """An address header for display: the addresses exactly as sent, only their
    display names decoded. RFC 2047 allows encoded-words in names, never in an
    address, so ``=?utf-8?q?ceo=40bank.test?=`` must not show as ceo@bank.test
    (sender authentication judges the address as sent, too)."""
    text = _header_value_raw(value)
    try:
        pairs = address_pairs(text)
    except Exception:  # noqa: BLE001 - unreadable: shown as received
        return text
    if not any(addr for _, addr in pairs):
        return text
    return ", ".join(_quoted(_header_value(name), addr) if name else addr for name, addr in pairs if addr)


def plain_address(value: str) -> str | None:
    """The address when ``value`` is one bare address (with or without angle brackets)."""
    plain = _PLAIN_ADDRESS.fullmatch(value)
    return None if plain is None else plain.group("addr")


def address_pairs(value: str) -> list[tuple[str, str]]:
    """``email.utils.getaddresses`` for one header value, with the bare-address shortcut."""
    plain = plain_address(value)
    return [("", plain)] if plain is not None else getaddresses([value])


def _quoted(name: str, addr: str) -> str:
    if not any(c in _SPECIALS for c in name):
        return f"{name} <{addr}>"
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}" <{addr}>'


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# One dot-atom address, in angle brackets or bare ((?(lt)>): a '>' only after a '<').
_PLAIN_ADDRESS = re.compile(
    rf"[ \t]*(?P<lt><)?(?P<addr>{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?(lt)>)[ \t]*")
_SPECIALS = frozenset('()<>[]:;@\\,."')


def _header_value_raw(value: str) -> str:
    text = str(value)
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text.replace("\r\n", "").replace("\n", "")


def _header_value(value: str) -> str:
    text = str(value)
    if not text.isascii():
        # 8-bit header bytes arrive surrogate-escaped: read them as UTF-8 (RFC 6532).
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in text:  # no encoded word: make_header would give the text back
        return text.replace("\r\n", "").replace("\n", "")
    try:
        return str(make_header(decode_header(text))).replace("\r\n", "").replace("\n", "")
    except Exception:  # noqa: BLE001 - undecodable: show it as received
        return text.replace("\r\n", "").replace("\n", "")


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return None


def _content(part: EmailMessage | None) -> str:
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", errors="replace")
    if not isinstance(content, str):
        content = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else str(content)
    return content.replace("\r\n", "\n")
