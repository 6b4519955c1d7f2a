"""raymail/skeleton.py: messages stored with their attachment bodies cut out into blobs."""

from __future__ import annotations

import base64
import hashlib
import quopri
import random
from dataclasses import replace

import msgpack
import pytest

from raymail import compose, skeleton
from raymail.model import Address, AttachmentRef
from raymail.skeleton import CHUNK_BYTES, LINE_BYTES, MAGIC, BlobRef

BOUNDARY = b"==b0undary=="


def data_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + n).randbytes(n)


class Blobs:
    """A dict-backed blob store with the ``read(key, start, length)`` iter_raw wants."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.reads: list[tuple[str, int, int]] = []

    def put(self, data: bytes) -> str:
        key = "att/" + hashlib.sha256(data).hexdigest()
        self.data[key] = data
        return key

    def read(self, key: str, start: int, length: int) -> bytes:
        self.reads.append((key, start, length))
        if len(self.reads) > 1000:
            raise AssertionError("iter_raw keeps reading: it does not stop at the end of the blob")
        return self.data[key][start : start + length]

    def rebuild(self, segments) -> bytes:
        return b"".join(skeleton.iter_raw(segments, self.read))


# -- encoded_size / encode_lines -----------------------------------------------

LARGE_SIZES = [LINE_BYTES * 1000, LINE_BYTES * 1000 + 1, LINE_BYTES * 1000 - 1, 1_000_000, CHUNK_BYTES, CHUNK_BYTES + 1]


@pytest.mark.parametrize("size", [*range(301), *LARGE_SIZES])
def test_encoded_size_matches_encode_lines(size):
    assert skeleton.encoded_size(size) == len(skeleton.encode_lines(bytes(size)))


LAYOUTS = [(76, b"\r\n"), (76, b"\n"), (64, b"\r\n"), (72, b"\n"), (4, b"\r\n"), (1000, b"\n")]


@pytest.mark.parametrize("line_chars, eol", LAYOUTS)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 47, 48, 49, 54, 57, 58, 749, 750, 751, 5000])
def test_other_layouts_encode_to_lines_of_their_length(line_chars, eol, size):
    data = data_of(size)
    text = skeleton.encode_lines(data, line_chars, eol)
    assert len(text) == skeleton.encoded_size(size, line_chars, eol)
    assert base64.b64decode(text) == data
    if size:
        lines = text[: -len(eol)].split(eol)
        assert all(len(line) == line_chars for line in lines[:-1]) and 0 < len(lines[-1]) <= line_chars


@pytest.mark.parametrize("size", [0, 1, 2, 3, 56, 57, 58, 113, 114, 115, 1000, 57 * 40 + 5])
def test_encode_lines_is_canonical_mime_base64(size):
    data = data_of(size)
    text = skeleton.encode_lines(data)
    assert base64.b64decode(text) == data
    if size == 0:
        assert text == b""
        return
    assert text.endswith(b"\r\n")
    lines = text[:-2].split(b"\r\n")
    assert all(len(line) == 76 for line in lines[:-1])
    assert 0 < len(lines[-1]) <= 76
    assert b"\n" not in text.replace(b"\r\n", b"")
    # what the stdlib MIME encoder writes, with CRLF line ends
    assert text == base64.encodebytes(data).replace(b"\n", b"\r\n")


# -- pack / unpack / raw_size / text_view ------------------------------------


@pytest.mark.parametrize(
    "segments",
    [
        [],
        [b""],
        [b"whole message\r\n"],
        [BlobRef("att/aa/" + "a" * 64, 0)],
        [b"head\r\n", BlobRef("att/aa/" + "a" * 64, 5000), b"\r\n--b--\r\n"],
        [b"h", BlobRef("k1", 1), b"m", BlobRef("k2", 2**40), b"t"],
        [BlobRef("k\u00fc\u65e5", 3), BlobRef("k", 4)],
        [b"\x00\xff" * 5000, BlobRef("", 7)],
        [MAGIC, b"nested magic"],
        [b"h", BlobRef("k1", 10, 64, b"\n"), BlobRef("k2", 10, 72, b"\r\n"), BlobRef("k3", 10)],
    ],
)
def test_pack_unpack_round_trip(segments):
    packed = skeleton.pack(segments)
    assert packed.startswith(MAGIC)
    assert skeleton.unpack(packed) == segments


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n",
        MAGIC[:-1],
        MAGIC.rstrip(b"\n") + b"\r\n" + b"\x90",
        b" " + MAGIC + b"\x90",
        b"rmskel1\n\x90",
    ],
)
def test_unpack_of_a_plain_message_is_none(data):
    assert skeleton.unpack(data) is None


def test_a_skeleton_of_the_canonical_layout_packs_as_it_always_did():
    """Skeletons stored before other layouts were cut out still read, and the
    canonical layout (most of them) takes no more room than it did."""
    old = MAGIC + msgpack.packb([b"head", ["att/aa/k", 5000], b"tail"], use_bin_type=True)
    assert skeleton.unpack(old) == [b"head", BlobRef("att/aa/k", 5000, 76, b"\r\n"), b"tail"]
    assert skeleton.pack(skeleton.unpack(old)) == old


def test_raw_size_and_text_view():
    segments = [b"head\r\n", BlobRef("k1", 100), b"mid\r\n", BlobRef("k2", 0), BlobRef("k3", 57), b"tail"]
    assert skeleton.text_view(segments) == b"head\r\nmid\r\ntail"
    assert skeleton.raw_size(segments) == 6 + skeleton.encoded_size(100) + 5 + 0 + 78 + 4
    assert skeleton.raw_size([]) == 0
    assert skeleton.text_view([]) == b""


# -- iter_raw ------------------------------------------------------------------


def test_iter_raw_equals_the_full_source():
    blobs = Blobs()
    d1, d2, d3 = data_of(5000, 1), data_of(1, 2), data_of(57 * 3, 3)
    segments = [b"head\r\n\r\n", BlobRef(blobs.put(d1), len(d1)), b"--mid--\r\n", BlobRef(blobs.put(d2), 1),
                BlobRef(blobs.put(d3), len(d3)), b"tail\r\n"]
    expected = (b"head\r\n\r\n" + skeleton.encode_lines(d1) + b"--mid--\r\n" + skeleton.encode_lines(d2)
                + skeleton.encode_lines(d3) + b"tail\r\n")
    out = blobs.rebuild(segments)
    assert out == expected
    assert len(out) == skeleton.raw_size(segments)


@pytest.mark.parametrize("size", [CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES + LINE_BYTES + 7])
def test_iter_raw_reads_large_blobs_in_bounded_chunks(size):
    blobs = Blobs()
    data = data_of(size)
    key = blobs.put(data)
    out = blobs.rebuild([BlobRef(key, size)])
    assert out == skeleton.encode_lines(data)
    assert len(out) == skeleton.encoded_size(size)
    assert all(length <= CHUNK_BYTES for _, _, length in blobs.reads)
    assert [start for _, start, _ in blobs.reads] == list(range(0, size, CHUNK_BYTES))
    assert sum(length for _, _, length in blobs.reads) == size


@pytest.mark.parametrize("line_chars, eol", LAYOUTS)
def test_iter_raw_rebuilds_other_layouts_across_chunks(line_chars, eol):
    """Each chunk read is whole lines of its layout, so the chunks' encodings join
    into the body as it came."""
    blobs = Blobs()
    size = 2 * CHUNK_BYTES + 1001
    data = data_of(size, 7)
    key = blobs.put(data)
    segments = [b"head\n", BlobRef(key, size, line_chars, eol), b"tail"]
    out = blobs.rebuild(segments)
    assert out == b"head\n" + skeleton.encode_lines(data, line_chars, eol) + b"tail"
    assert len(out) == skeleton.raw_size(segments)
    assert len(blobs.reads) == 3 and all(length <= CHUNK_BYTES for _, _, length in blobs.reads)


def test_iter_raw_of_an_empty_blob_reads_nothing():
    blobs = Blobs()
    assert blobs.rebuild([b"a", BlobRef("never-read", 0), b"b"]) == b"ab"
    assert blobs.reads == []


@pytest.mark.parametrize(
    "stored, declared",
    [(0, 1), (100, 200), (CHUNK_BYTES, CHUNK_BYTES + 1), (CHUNK_BYTES + 5, 2 * CHUNK_BYTES)],
)
def test_iter_raw_raises_eof_when_the_blob_is_shorter_than_declared(stored, declared):
    blobs = Blobs()
    key = blobs.put(data_of(stored))
    with pytest.raises(EOFError, match=f"after {stored} of {declared}"):
        blobs.rebuild([b"head", BlobRef(key, declared), b"tail"])


def test_iter_raw_ignores_bytes_beyond_the_declared_size():
    blobs = Blobs()
    data = data_of(500)
    key = blobs.put(data)
    assert blobs.rebuild([BlobRef(key, 300)]) == skeleton.encode_lines(data[:300])


def test_iter_raw_is_lazy():
    calls = []

    def read(key, start, length):
        calls.append(key)
        return b"x" * length

    it = skeleton.iter_raw([b"a", BlobRef("k1", 3), BlobRef("k2", 3)], read)
    assert next(it) == b"a"
    assert calls == []
    next(it)
    assert calls == ["k1"]


# -- extract on messages built by compose.build --------------------------------


def compose_with(blobs: Blobs, files: list[tuple[bytes, str, str]], html: str | None = None) -> compose.Composed:
    refs = []
    for i, (data, filename, content_type) in enumerate(files):
        key = blobs.put(data)
        refs.append(AttachmentRef(id=f"a{i}", sha256=key[4:], size=len(data), content_type=content_type,
                                  filename=filename, blob=key))
    return compose.build(
        sender=Address("sender@example.com", "Sender"), to=(Address("to@example.com"),), cc=(), bcc=(),
        subject="files", body="see attached\nthanks", html=html, hostname="mail.example.test",
        date=1_700_000_000.0, attachments=tuple(refs),
    )


FILES = [
    (data_of(5000, 1), "report.pdf", "application/pdf"),
    (data_of(100, 2), "tiny.txt", "text/plain"),
    (data_of(2000, 3), "Grüße 日本.png", "image/png"),
    (data_of(1024, 4), "exactly-min.bin", "application/octet-stream"),
    (data_of(1023, 5), "one-below-min.bin", "application/octet-stream"),
    (data_of(5000, 1), "same-bytes-again.pdf", "application/pdf"),
]


def refill(segments, found, blobs: Blobs):
    """Store each body cut out and put its key into its placeholder, as the caller does."""
    keys = iter([blobs.put(f.data) for f in found if f.cut])
    return [replace(s, key=next(keys)) if isinstance(s, BlobRef) else s for s in segments]


@pytest.mark.parametrize("html", [None, "<p>see attached</p>"], ids=["text", "text+html"])
def test_extract_cuts_out_exactly_the_large_attachments_and_rebuilds_exactly(html):
    blobs = Blobs()
    composed = compose_with(blobs, FILES, html=html)
    raw = blobs.rebuild(composed.segments)
    assert len(raw) == composed.size

    segments, found = skeleton.extract(raw, min_bytes=1024)

    big = [f for f in FILES if len(f[0]) >= 1024]
    assert [(f.data, f.filename, f.content_type) for f in found] == FILES  # every attachment, decoded
    assert [f.cut for f in found] == [len(f[0]) >= 1024 for f in FILES]
    refs = [s for s in segments if isinstance(s, BlobRef)]
    assert [r.size for r in refs] == [len(f[0]) for f in big]
    assert all(r.key == "" for r in refs)
    assert all(s for s in segments)  # no empty byte segments
    assert not any(isinstance(a, bytes) and isinstance(b, bytes) for a, b in zip(segments, segments[1:]))
    # the small attachments stayed inline
    text = skeleton.text_view(segments)
    for data, _, _ in FILES:
        body = skeleton.encode_lines(data)
        assert (body in text) == (len(data) < 1024)

    fresh = Blobs()
    filled = refill(segments, found, fresh)
    assert skeleton.raw_size(filled) == len(raw)
    assert fresh.rebuild(filled) == raw
    assert fresh.rebuild(skeleton.unpack(skeleton.pack(filled))) == raw
    assert len(fresh.data) == 3  # the repeated file is one blob


def test_extract_finds_the_same_cuts_compose_made():
    blobs = Blobs()
    composed = compose_with(blobs, FILES)
    raw = blobs.rebuild(composed.segments)
    segments, found = skeleton.extract(raw, min_bytes=1)
    assert [s for s in segments if isinstance(s, bytes)] == [s for s in composed.segments if isinstance(s, bytes)]
    assert [s.size for s in segments if isinstance(s, BlobRef)] == [len(f[0]) for f in FILES]
    assert [f.data for f in found] == [f[0] for f in FILES]


def test_extract_of_a_message_without_attachments_keeps_it_whole():
    blobs = Blobs()
    raw = compose_with(blobs, []).raw
    assert skeleton.extract(raw, min_bytes=0) == ([raw], [])


# -- extract keeps unusual bodies inline ---------------------------------------


def part(headers: list[bytes], body: bytes) -> bytes:
    return b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


def mixed(*parts: bytes, eol: bytes = b"\r\n") -> bytes:
    out = [b"From: a@example.com", b"To: b@example.com", b"Subject: x", b"MIME-Version: 1.0",
           b'Content-Type: multipart/mixed; boundary="' + BOUNDARY + b'"', b"", b"preamble"]
    text = eol.join(out) + eol
    for p in parts:
        text += b"--" + BOUNDARY + eol + p
    text += b"--" + BOUNDARY + b"--" + eol
    return text if eol == b"\r\n" else text.replace(b"\r\n", eol)


TEXT = part([b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 7bit"], b"hello\r\n")
BIG = data_of(4000, 9)


def b64_lines(data: bytes, width: int) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + width] + b"\r\n" for i in range(0, len(text), width))


def attachment(body: bytes, cte: bytes = b"base64", disposition: bytes | None = b'attachment; filename="f.bin"',
               ctype: bytes = b"application/octet-stream") -> bytes:
    headers = [b"Content-Type: " + ctype]
    if disposition is not None:
        headers.append(b"Content-Disposition: " + disposition)
    headers.append(b"Content-Transfer-Encoding: " + cte)
    return part(headers, body)


QP_DATA = BIG.replace(b"\r", b"").replace(b"\n", b"")  # no line breaks: decoded as they were
QP_BODY = quopri.encodestring(QP_DATA).replace(b"\n", b"\r\n") + b"\r\n"

# Attachments whose bodies iter_raw could not regenerate exactly: left in the
# message as they came, and found all the same (decoded, for their own blobs).
KEPT_INLINE = {
    "base64-no-line-breaks": (mixed(TEXT, attachment(base64.b64encode(BIG) + b"\r\n")), BIG),
    "base64-lines-of-several-lengths": (
        mixed(TEXT, attachment(b64_lines(BIG[:1200], 64) + b64_lines(BIG[1200:], 76))), BIG),
    "base64-lines-not-a-multiple-of-4": (mixed(TEXT, attachment(b64_lines(BIG, 70))), BIG),
    "quoted-printable-attachment": (mixed(TEXT, attachment(QP_BODY, cte=b"quoted-printable")), QP_DATA),
    "8bit-attachment": (mixed(TEXT, attachment(b"x" * 4000 + b"\r\n", cte=b"8bit")), b"x" * 4000),
    "7bit-text-attachment": (
        mixed(TEXT, attachment(b"line one\r\nline two\r\n", cte=b"7bit", ctype=b"text/plain")),
        b"line one\r\nline two"),
    "tiny-attachment": (mixed(TEXT, attachment(skeleton.encode_lines(b"tiny file"))), b"tiny file"),
    "just-below-min": (mixed(TEXT, attachment(skeleton.encode_lines(BIG[:1023]))), BIG[:1023]),
    "non-ascii-in-body": (
        mixed(TEXT, attachment(skeleton.encode_lines(BIG)[:-2] + "é".encode() + b"\r\n")), None),
    "invalid-base64": (mixed(TEXT, attachment(b"!!!!" * 1000 + b"\r\n")), None),
}


@pytest.mark.parametrize("raw, data", list(KEPT_INLINE.values()), ids=list(KEPT_INLINE))
def test_extract_keeps_unusual_bodies_inline_and_finds_them(raw, data):
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert segments == [raw]
    (f,) = found
    assert (f.filename, f.cut) == ("f.bin", False)
    if data is not None:  # what the mail's own decoder makes of it
        assert f.data == data


NOT_ATTACHMENTS = {
    "inline-image": mixed(
        TEXT,
        attachment(skeleton.encode_lines(BIG), disposition=b'inline; filename="logo.png"', ctype=b"image/png"),
    ),
    "base64-body-without-filename": mixed(attachment(skeleton.encode_lines(BIG), disposition=None)),
    "text-only": mixed(TEXT),
}


@pytest.mark.parametrize("raw", list(NOT_ATTACHMENTS.values()), ids=list(NOT_ATTACHMENTS))
def test_extract_leaves_parts_that_are_not_attachments(raw):
    assert skeleton.extract(raw, min_bytes=1024) == ([raw], [])


@pytest.mark.parametrize("line_chars, eol", [(64, b"\r\n"), (72, b"\r\n"), (76, b"\n"), (64, b"\n"), (4, b"\r\n")])
def test_extract_cuts_out_base64_in_other_regular_layouts(line_chars, eol):
    """Other mailers wrap base64 at 64 or 72 characters, and a message saved to a
    file has LF line ends: cut out all the same, and rebuilt byte for byte."""
    body = skeleton.encode_lines(BIG, line_chars, eol)
    raw = mixed(TEXT.replace(b"\r\n", eol), attachment(body).replace(b"\r\n", eol) if eol == b"\n"
                else attachment(body), eol=eol)
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert [(f.data, f.cut) for f in found] == [(BIG, True)]
    (ref,) = [s for s in segments if isinstance(s, BlobRef)]
    assert (ref.size, ref.line_chars, ref.eol) == (len(BIG), line_chars, eol)
    blobs = Blobs()
    filled = refill(segments, found, blobs)
    assert skeleton.raw_size(filled) == len(raw)
    assert blobs.rebuild(filled) == raw
    assert blobs.rebuild(skeleton.unpack(skeleton.pack(filled))) == raw


@pytest.mark.parametrize(
    "disposition, ctype",
    [
        (b'attachment; filename="f.bin"', b"application/octet-stream"),
        (b"attachment", b"application/octet-stream"),
        (b'ATTACHMENT; filename="f.bin"', b"application/octet-stream"),
        (None, b'image/png; name="photo.png"'),
    ],
    ids=["attachment", "attachment-without-name", "upper-case", "named-without-disposition"],
)
def test_extract_takes_canonical_attachments_written_by_other_mailers(disposition, ctype):
    raw = mixed(TEXT, attachment(skeleton.encode_lines(BIG), disposition=disposition, ctype=ctype))
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert [f.data for f in found] == [BIG]
    assert [s.size for s in segments if isinstance(s, BlobRef)] == [len(BIG)]
    blobs = Blobs()
    assert blobs.rebuild(refill(segments, found, blobs)) == raw


def test_extract_mixes_kept_and_cut_parts_and_rebuilds_exactly():
    other = data_of(3000, 11)
    raw = mixed(
        TEXT,
        attachment(b64_lines(BIG, 64)),
        attachment(skeleton.encode_lines(other), disposition=b'attachment; filename="b.bin"'),
        attachment(skeleton.encode_lines(BIG), disposition=b'inline; filename="i.png"', ctype=b"image/png"),
        attachment(skeleton.encode_lines(b"small"), disposition=b'attachment; filename="s.txt"'),
    )
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert [(f.data, f.filename, f.cut) for f in found] == [(BIG, "f.bin", True), (other, "b.bin", True),
                                                            (b"small", "s.txt", False)]  # the inline image is none
    blobs = Blobs()
    assert blobs.rebuild(refill(segments, found, blobs)) == raw


def test_extract_of_a_single_part_attachment_message():
    raw = part([b"From: a@example.com", b"MIME-Version: 1.0", b"Content-Type: application/pdf",
                b'Content-Disposition: attachment; filename="only.pdf"', b"Content-Transfer-Encoding: base64"],
               skeleton.encode_lines(BIG))
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert [(f.data, f.filename, f.content_type) for f in found] == [(BIG, "only.pdf", "application/pdf")]
    assert isinstance(segments[-1], BlobRef)  # nothing after the body
    blobs = Blobs()
    assert blobs.rebuild(refill(segments, found, blobs)) == raw


@pytest.mark.parametrize(
    "raw",
    [
        data_of(3000, 42),
        b"\x00\xff" * 1000,
        b"not an email at all",
        b"\r\n\r\n\r\n",
        b"--" + BOUNDARY + b"\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        bytes(range(256)) * 20,
    ],
    ids=["random", "nul-ff", "text", "blank-lines", "bare-boundary", "broken-multipart", "all-bytes"],
)
def test_extract_of_garbage_keeps_it_whole(raw):
    assert skeleton.extract(raw) == ([raw], [])


# -- hostile and unusual structures ------------------------------------------------


def test_a_base64_body_starting_with_a_blank_line_stays_inline():
    """Its first line end is at once: no layout of 0-character lines (that crashed)."""
    raw = mixed(TEXT, attachment(b"\r\n" + skeleton.encode_lines(BIG)))
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert segments == [raw] and [(f.data, f.cut) for f in found] == [(BIG, False)]


def test_at_most_max_attachments_are_found_the_rest_stay_in_the_message():
    parts = [attachment(skeleton.encode_lines(bytes([i]) * 10), disposition=b'attachment; filename="f%d"' % i)
             for i in range(30)]
    raw = mixed(TEXT, *parts)
    segments, found = skeleton.extract(raw, min_bytes=1024, max_attachments=20)
    assert segments == [raw] and [f.filename for f in found] == [f"f{i}" for i in range(20)]
    assert skeleton.MAX_ATTACHMENTS == 100


def test_a_text_body_with_an_attachment_s_bytes_is_not_cut_for_it():
    """The text part's base64 equals the attachment's: the attachment's own body is
    cut out, and the text stays readable in the text view."""
    text = (b"hello world " * 200)[:2400]
    body = part([b"Content-Type: text/plain", b"Content-Transfer-Encoding: base64"], skeleton.encode_lines(text))
    raw = mixed(body, attachment(skeleton.encode_lines(text)))
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert [(f.data, f.cut) for f in found] == [(text, True)]
    assert compose.parse(skeleton.text_view(segments)).text.startswith("hello world")
    blobs = Blobs()
    assert blobs.rebuild(refill(segments, found, blobs)) == raw


def test_a_forwarded_message_is_one_attachment_not_looked_into():
    inner = mixed(TEXT, attachment(skeleton.encode_lines(BIG), disposition=b'attachment; filename="inner.bin"')
                  ).replace(BOUNDARY, b"inner-boundary")
    fwd = part([b"Content-Type: message/rfc822", b'Content-Disposition: attachment; filename="fwd.eml"'], inner)
    raw = mixed(TEXT, fwd)
    segments, found = skeleton.extract(raw, min_bytes=1024)
    assert [(f.filename, f.content_type, f.cut) for f in found] == [("fwd.eml", "message/rfc822", False)]
    assert segments == [raw]
    assert b"inner.bin" in found[0].data and found[0].data.count(b"\r\n") == found[0].data.count(b"\n")
    listed = compose.parse(raw).attachments
    assert [(a["filename"], a["content_type"]) for a in listed] == [("fwd.eml", "message/rfc822")]


def test_a_message_forwarded_inline_is_looked_into():
    inner = mixed(TEXT, attachment(skeleton.encode_lines(BIG), disposition=b'attachment; filename="inner.bin"')
                  ).replace(BOUNDARY, b"inner-boundary")
    raw = mixed(TEXT, part([b"Content-Type: message/rfc822"], inner))
    _, found = skeleton.extract(raw, min_bytes=1024)
    assert [(f.filename, f.data, f.cut) for f in found] == [("inner.bin", BIG, True)]


@pytest.mark.parametrize("raw, expected", [
    (b"Subject: the attachment you asked for\r\n\r\nsee the attachment and the filename= in it\r\n", False),
    (b'Content-Type: text/html\r\n\r\n<meta name="viewport"><a name=x>\r\n', False),
    (mixed(TEXT, attachment(b"x", disposition=b'inline; filename="i.png"')), True),
    (mixed(TEXT, attachment(b"x", disposition=b"attachment")), True),
    (mixed(TEXT, attachment(b"x", disposition=None, ctype=b'application/pdf; name = "s.pdf"')), True),
    (mixed(TEXT, attachment(b"x", disposition=None, ctype=b"application/pdf;\r\n\tname*0=s.pdf")), True),
    (mixed(TEXT, attachment(b"x", disposition=b"ATTACHMENT")), True),
])
def test_may_have_attachments_looks_at_the_headers_that_make_one(raw, expected):
    assert skeleton.may_have_attachments(raw) is expected
    if not expected:  # and then extract, which it lets skip the parse, would have found none anyway
        msg = skeleton.BytesParser(policy=skeleton.policy.compat32).parsebytes(raw)
        assert not list(skeleton.attachments(msg))
