"""raymail/compose.py: build(..., attachments=...) and Composed.stored/segments/size."""

from __future__ import annotations

import hashlib
import random
from email import policy
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value

import pytest

from raymail import compose, skeleton
from raymail.attachments import sanitize_filename
from raymail.model import Address, AttachmentRef
from raymail.skeleton import BlobRef

SENDER = Address("sender@example.com", "Sënder")
TO = (Address("to@example.com", "To Person"),)
DATE = 1_700_000_000.0
BODY = "Hello,\nthe files are attached.\n"


class Blobs:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def ref(self, data: bytes, filename: str, content_type: str = "application/octet-stream") -> AttachmentRef:
        sha = hashlib.sha256(data).hexdigest()
        key = f"att/{sha[:2]}/{sha}"
        self.data[key] = data
        return AttachmentRef(id=sha[:16], sha256=sha, size=len(data), content_type=content_type,
                             filename=filename, blob=key)

    def read(self, key: str, start: int, length: int) -> bytes:
        return self.data[key][start : start + length]

    def rebuild(self, composed: compose.Composed) -> bytes:
        return b"".join(skeleton.iter_raw(composed.segments, self.read))


def data_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 7919 + n).randbytes(n)


def build(attachments=(), **kw) -> compose.Composed:
    args = dict(sender=SENDER, to=TO, cc=(), bcc=(), subject="Files", body=BODY, html=None,
                hostname="mail.example.test", date=DATE, attachments=tuple(attachments))
    args.update(kw)
    return compose.build(**args)


def parse(raw: bytes):
    return BytesParser(policy=policy.default).parsebytes(raw)


FILES = [
    (data_of(5000, 1), "report.pdf", "application/pdf"),
    (data_of(1, 2), "one-byte.bin", "application/octet-stream"),
    (data_of(57, 3), "Grüße aus Köln.txt", "text/plain"),
    (data_of(3000, 4), "日本語のファイル名.png", "image/png"),
    (data_of(100, 5), 'quote " and \\ backslash.csv', "text/csv"),
    (data_of(0, 6), "empty.dat", "application/octet-stream"),
    (data_of(222, 7), sanitize_filename("long name " * 40 + ".docx"),
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (data_of(300, 8), sanitize_filename("ü" * 400 + ".zip"), "application/zip"),
    (data_of(10, 9), "semi;colon=and,comma (1).txt", "text/plain"),
]


@pytest.mark.parametrize("html", [None, "<p>Hello, the files are <b>attached</b>.</p>"], ids=["text", "alternative"])
def test_rebuilt_source_parses_into_multipart_mixed_with_every_attachment(html):
    blobs = Blobs()
    refs = [blobs.ref(*f) for f in FILES]
    composed = build(refs, html=html)
    raw = blobs.rebuild(composed)
    msg = parse(raw)

    assert msg.get_content_type() == "multipart/mixed"
    assert msg["Subject"] == "Files"
    assert msg["MIME-Version"] == "1.0"
    parts = msg.get_payload()
    assert len(parts) == 1 + len(FILES)
    body = parts[0]
    if html is None:
        assert body.get_content_type() == "text/plain"
    else:
        assert body.get_content_type() == "multipart/alternative"
        assert msg.get_body(preferencelist=("html",)).get_content().replace("\r\n", "\n").rstrip("\n") == html
    assert msg.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n") == BODY

    attachments = list(msg.iter_attachments())
    assert len(attachments) == len(FILES)
    for att, (data, filename, content_type) in zip(attachments, FILES, strict=True):
        assert att.get_content_disposition() == "attachment"
        assert att.get_filename() == filename
        assert collapse_rfc2231_value(att.get_param("name")) == filename
        assert att.get_content_type() == content_type
        assert att["Content-Transfer-Encoding"] == "base64"
        assert att.get_payload(decode=True) == data
        if not content_type.startswith("text/"):
            assert att.get_content() == data


def test_non_ascii_filename_uses_rfc2231():
    blobs = Blobs()
    name = "Grüße 日本.txt"
    composed = build([blobs.ref(b"x" * 10, name, "text/plain")])
    raw = blobs.rebuild(composed)
    assert raw.isascii()
    assert b"filename*=utf-8''Gr%C3%BC%C3%9Fe%20%E6%97%A5%E6%9C%AC.txt" in raw
    assert b"name*=utf-8''Gr%C3%BC%C3%9Fe%20%E6%97%A5%E6%9C%AC.txt" in raw
    (att,) = parse(raw).iter_attachments()
    assert att.get_filename() == name


@pytest.mark.parametrize("sizes", [[5000], [0], [1, 2, 3], [57, 58, 56], [100_000, 10, 100_000]])
def test_size_is_the_length_of_the_rebuilt_source(sizes):
    blobs = Blobs()
    refs = [blobs.ref(data_of(n, i), f"f{i}.bin") for i, n in enumerate(sizes)]
    composed = build(refs)
    raw = blobs.rebuild(composed)
    assert composed.size == len(raw)
    assert composed.size == skeleton.raw_size(composed.segments)
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_raw_is_the_small_text_view_without_attachment_bodies():
    blobs = Blobs()
    big = data_of(200_000, 1)
    composed = build([blobs.ref(big, "big.bin"), blobs.ref(data_of(50_000, 2), "b.bin")])
    raw = blobs.rebuild(composed)
    assert composed.raw == skeleton.text_view(composed.segments)
    assert len(composed.raw) < 2000
    assert composed.size > 250_000
    assert skeleton.encode_lines(big) not in composed.raw
    assert skeleton.encode_lines(big) in raw
    assert b"RAYMAIL-ATTACHMENT" not in raw and b"RAYMAIL-ATTACHMENT" not in composed.raw
    # the text view still has the headers and the text for listing and reading
    view = compose.parse(composed.raw)
    assert view.subject == "Files"
    assert view.text.replace("\r\n", "\n") == BODY
    assert [a["filename"] for a in view.attachments] == ["big.bin", "b.bin"]


def test_segments_reference_each_attachment_blob_in_order():
    blobs = Blobs()
    refs = [blobs.ref(data_of(n, n), f"f{n}.bin") for n in (10, 5000, 10)]
    composed = build(refs)
    assert [s for s in composed.segments if isinstance(s, BlobRef)] == [BlobRef(r.blob, r.size) for r in refs]
    assert all(isinstance(s, bytes) and s for s in composed.segments[::2])
    assert len(composed.segments) == 2 * len(refs) + 1


def test_stored_is_the_packed_skeleton():
    blobs = Blobs()
    composed = build([blobs.ref(data_of(4000, 1), "a.bin")])
    stored = composed.stored
    assert stored.startswith(skeleton.MAGIC)
    assert skeleton.unpack(stored) == composed.segments
    assert b"".join(skeleton.iter_raw(skeleton.unpack(stored), blobs.read)) == blobs.rebuild(composed)
    assert len(stored) < 2000


@pytest.mark.parametrize("html", [None, "<p>x</p>"])
def test_a_message_without_attachments_has_no_segments(html):
    composed = build((), html=html)
    assert composed.segments is None
    assert composed.stored == composed.raw
    assert not composed.stored.startswith(skeleton.MAGIC)
    assert skeleton.unpack(composed.stored) is None
    assert composed.size == len(composed.raw)
    assert parse(composed.raw).get_content_type() != "multipart/mixed"


def test_the_same_attachment_twice_is_two_parts():
    blobs = Blobs()
    ref = blobs.ref(data_of(1000, 1), "twice.bin")
    composed = build([ref, ref])
    raw = blobs.rebuild(composed)
    atts = list(parse(raw).iter_attachments())
    assert [a.get_payload(decode=True) for a in atts] == [blobs.data[ref.blob]] * 2
    assert composed.size == len(raw)


def test_extract_of_the_rebuilt_source_matches_compose_segments():
    blobs = Blobs()
    refs = [blobs.ref(data_of(n, n), f"f{n}.bin") for n in (2000, 3000)]
    composed = build(refs)
    segments, found = skeleton.extract(blobs.rebuild(composed), min_bytes=1024)
    assert [s for s in segments if isinstance(s, bytes)] == [s for s in composed.segments if isinstance(s, bytes)]
    assert [f.data for f in found] == [blobs.data[r.blob] for r in refs]


def test_message_headers_come_before_the_mime_headers():
    blobs = Blobs()
    composed = build([blobs.ref(b"abc", "a.txt", "text/plain")], message_id="<fixed@example.test>")
    head = composed.raw.split(b"\r\n\r\n", 1)[0].decode()
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if line and not line[0].isspace()]
    assert names[:5] == ["Message-ID", "Date", "From", "To", "Subject"]
    assert names.index("Content-Type") > names.index("Subject")
    assert names.count("MIME-Version") == 1
    assert composed.message_id == "<fixed@example.test>"
    assert composed.raw.count(b"MIME-Version") == 1  # not repeated in the parts
