"""Storing a message that arrives as RFC 5322 bytes (import now, SMTP later).

Each attachment is stored as a content-addressed blob exactly as an upload is,
and its body cut out of the message where it can be rebuilt exactly (see
``raymail.skeleton``): a parsed message and a composed one look the same to the
API, and the original bytes are rebuilt exactly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from email.utils import parseaddr

from gateway.services import Services
from raymail import addresses, attachments, compose, skeleton
from raymail.ids import new_id
from raymail.model import Address, AttachmentRef, AuthSummary, EmailMeta


@dataclass(frozen=True)
class Stored:
    blob: str
    size: int
    refs: tuple[AttachmentRef, ...]
    parsed: compose.Parsed


INLINE_PARSE_BYTES = 64 * 1024  # smaller messages are parsed on the event loop: a thread hop costs more


def _prepare(svc: Services, raw: bytes) -> tuple[bytes, tuple[AttachmentRef, ...], compose.Parsed]:
    """Store each attachment as its own blob, cut the ones that can be out of the
    message, and parse the text view; returns the bytes to store for the message."""
    segments, found = skeleton.extract(raw)
    refs = []
    keys = []
    stored = svc.blobs.put_many("att", [part.data for part in found]) if found else []  # one batch, durable
    for part, key in zip(found, stored, strict=True):
        sha = key.rsplit("/", 1)[1]
        try:
            ctype = attachments.normalize_content_type(part.content_type)
        except attachments.AttachmentError:
            ctype = "application/octet-stream"
        refs.append(AttachmentRef(id=uuid.uuid4().hex, sha256=sha, size=len(part.data), content_type=ctype,
                                  filename=attachments.sanitize_filename(part.filename), blob=key))
        if part.cut:
            keys.append(key)
    if not keys:  # every attachment (if any) stayed in the message: it is stored as it came
        return raw, tuple(refs), compose.parse(raw)
    it = iter(keys)
    out = [seg if isinstance(seg, bytes) else replace(seg, key=next(it)) for seg in segments]
    return skeleton.pack(out), tuple(refs), compose.parse(skeleton.text_view(out))


async def store_raw(svc: Services, raw: bytes) -> Stored:
    """Store ``raw`` durably (attachments, then the message through the gateway's
    group commit, as ``POST /v1/send`` does) and return what the mailbox entry needs."""
    if len(raw) <= INLINE_PARSE_BYTES and not skeleton.may_have_attachments(raw):
        stored, refs, parsed = _prepare(svc, raw)  # no attachment to write: nothing blocks
    else:
        stored, refs, parsed = await asyncio.to_thread(_prepare, svc, raw)
    blob = await svc.blob_writer.put(stored)
    return Stored(blob=blob, size=len(raw), refs=refs, parsed=parsed)


def _addr(value: str) -> Address:
    plain = compose.plain_address(value)
    if plain is not None:
        return Address(email=plain, name="")
    name, email = parseaddr(value)
    return Address(email=email, name=name)


def meta_for(stored: Stored, uid: str, folder: str, unread: bool, received_s: float | None = None,
             auth: AuthSummary | None = None, email_id: str | None = None) -> EmailMeta:
    """The mailbox entry for a stored message; header values are read defensively."""
    headers = {}
    for k, v in stored.parsed.headers:
        headers.setdefault(k.lower(), v)
    to = tuple(Address(email=e, name=n) for n, e in compose.address_pairs(headers.get("to", "")) if e)
    cc = tuple(Address(email=e, name=n) for n, e in compose.address_pairs(headers.get("cc", "")) if e)
    subject = stored.parsed.subject
    if addresses.has_line_break(subject):
        subject = " ".join(subject.split())
    return EmailMeta(
        id=email_id or new_id(), uid=uid, message_id=headers.get("message-id", "").strip()[:998], folder=folder,
        sender=_addr(headers.get("from", "")), to=to, cc=cc, bcc=(), subject=subject[:998],
        snippet=compose.snippet_of(stored.parsed.text), date=received_s or time.time(), size=stored.size,
        unread=unread, has_attachments=bool(stored.refs or stored.parsed.attachments), blob=stored.blob,
        attachments=stored.refs, auth=auth,
    )
