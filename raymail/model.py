"""Wire and storage types: frozen dataclasses, encoded by ``raymail.codec``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Folder(StrEnum):
    INBOX = "inbox"
    SENT = "sent"
    ARCHIVE = "archive"
    TRASH = "trash"
    JUNK = "junk"


FOLDERS = frozenset(f.value for f in Folder)


class EventType(StrEnum):
    NEW = "email.new"
    UPDATED = "email.updated"
    DELETED = "email.deleted"


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "email": self.email}


@dataclass(frozen=True, slots=True)
class User:
    uid: str
    email: str
    name: str = ""
    profile_url: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AttachmentRef:
    """An attachment: the bytes are the content-addressed blob ``blob``."""

    id: str
    sha256: str
    size: int
    content_type: str
    filename: str
    blob: str

    def to_dict(self) -> dict:
        return {"id": self.id, "sha256": self.sha256, "size": self.size,
                "content_type": self.content_type, "filename": self.filename}


@dataclass(frozen=True, slots=True)
class AuthSummary:
    """Sender authentication of a message received on the MX (``raymail.mailauth``)."""

    spf: str  # pass | fail | softfail | neutral | none | temperror | permerror
    dkim: str  # the best result over the signatures; none when unsigned
    dmarc: str  # pass | fail | none | temperror | permerror
    policy: str = ""  # the From domain's DMARC policy (after pct sampling when DMARC failed); "" without one
    spf_domain: str = ""
    dkim_domains: tuple[str, ...] = ()  # d= of the signatures that verified
    from_domain: str = ""

    def to_dict(self) -> dict:
        return {"spf": self.spf, "dkim": self.dkim, "dmarc": self.dmarc, "policy": self.policy,
                "spf_domain": self.spf_domain, "dkim_domains": list(self.dkim_domains),
                "from_domain": self.from_domain}


@dataclass(frozen=True, slots=True)
class EmailMeta:
    """What a mailbox keeps about one message; the bytes live in blob storage."""

    id: str
    uid: str
    message_id: str
    folder: str
    sender: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    subject: str
    snippet: str
    date: float  # when this mailbox received it (epoch seconds); the sort key
    size: int
    unread: bool
    has_attachments: bool
    blob: str  # storage key of the RFC 5322 source (or of its skeleton, see raymail.skeleton)
    seq: int = 0  # arrival order inside the mailbox, assigned by the mailbox
    attachments: tuple[AttachmentRef, ...] = ()
    auth: AuthSummary | None = None  # set for mail received on the MX

    def summary(self) -> dict:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "folder": self.folder,
            "from": self.sender.to_dict(),
            "to": [a.to_dict() for a in self.to],
            "cc": [a.to_dict() for a in self.cc],
            "subject": self.subject,
            "snippet": self.snippet,
            "date": self.date,
            "size": self.size,
            "unread": self.unread,
            "has_attachments": self.has_attachments,
            "auth": self.auth.to_dict() if self.auth is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """One change in a user's mailbox; ``cursor`` increases by one per event."""

    cursor: int
    type: str
    email_id: str
    ts: float
    summary: dict | None  # None for email.deleted

    def to_dict(self) -> dict:
        out = {"type": self.type, "cursor": self.cursor, "ts": self.ts, "email_id": self.email_id}
        if self.summary is not None:
            out["email"] = self.summary
        return out


# Mailbox operations. They are logged as they are given, so they carry every value
# (ids, timestamps) needed for replay to rebuild exactly the same state.


@dataclass(frozen=True, slots=True)
class Deliver:
    uid: str
    email: EmailMeta
    ts: float
    text: str = ""  # the message's text for the search index (logged: the index catches up from it)


@dataclass(frozen=True, slots=True)
class Update:
    uid: str
    email_id: str
    ts: float
    unread: bool | None = None
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    uid: str
    email_id: str
    ts: float


@dataclass(frozen=True, slots=True)
class AddUpload:
    """A file the user uploaded, usable in their next sends."""

    uid: str
    attachment: AttachmentRef
    ts: float


@dataclass(frozen=True, slots=True)
class ExpireUploads:
    """Uploads older than ``mailbox.upload_ttl_s``: no longer named in sends (mail
    that carries one keeps it readable)."""

    uid: str
    ids: tuple[str, ...]
    ts: float


Op = Deliver | Update | Delete | AddUpload | ExpireUploads


@dataclass(frozen=True, slots=True)
class OpResult:
    """The outcome of one op: ``error`` is None on success."""

    ok: bool
    event: Event | None = None
    error: str | None = None  # "not_found" | "invalid"
    message: str = ""
    changed: bool = False  # state changed without an event (e.g. an upload): log it
