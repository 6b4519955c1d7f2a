"""raymail/attachments.py: filenames, content types, Content-Disposition and byte ranges."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

import pytest

from raymail.attachments import (
    DEFAULT_FILENAME,
    MAX_FILENAME_CHARS,
    AttachmentError,
    content_disposition,
    normalize_content_type,
    parse_range,
    sanitize_filename,
)

BIDI_CONTROLS = [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
    "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
    "\u200e", "\u200f", "\u061c",  # marks
]

# -- sanitize_filename -------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("a/b/c.txt", "c.txt"),
        ("C:\\Users\\bob\\evil.exe", "evil.exe"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("\\\\server\\share\\doc.docx", "doc.docx"),
        ("mixed/..\\sep/name.txt", "name.txt"),
        ("nul\x00byte.txt", "nulbyte.txt"),
        ("bell\x07\x1b[31m.txt", "bell[31m.txt"),
        ("line\r\nbreak.txt", "linebreak.txt"),
        ("del\x7f.txt", "del.txt"),
        ("tab\there.txt", "tabhere.txt"),
        ("line\u2028sep\u2029para.txt", "lineseppara.txt"),
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("private\ue000use.txt", "privateuse.txt"),
        (".bashrc", "bashrc"),
        ("...hidden", "hidden"),
        ("  .  spaced.txt  ", "spaced.txt"),
        ("many    inner   spaces.txt", "many inner spaces.txt"),
        ("nbsp\u00a0\u00a0name.txt", "nbsp name.txt"),
        ("", DEFAULT_FILENAME),
        (None, DEFAULT_FILENAME),
        (".", DEFAULT_FILENAME),
        ("..", DEFAULT_FILENAME),
        ("....", DEFAULT_FILENAME),
        ("   ", DEFAULT_FILENAME),
        ("dir/", DEFAULT_FILENAME),
        ("../..", DEFAULT_FILENAME),
        ("\x00\x01\x02", DEFAULT_FILENAME),
        ("\u202e", DEFAULT_FILENAME),
        ("Grüße 日本語.txt", "Grüße 日本語.txt"),
        ("emoji 🎉.png", "emoji 🎉.png"),
    ],
)
def test_sanitize_filename(name, expected):
    assert sanitize_filename(name) == expected


@pytest.mark.parametrize("control", BIDI_CONTROLS, ids=[f"U+{ord(c):04X}" for c in BIDI_CONTROLS])
def test_sanitize_filename_removes_every_bidi_control(control):
    assert sanitize_filename(f"invoice{control}fdp.exe") == "invoicefdp.exe"


@pytest.mark.parametrize("code", [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)])
def test_sanitize_filename_removes_every_c0_and_c1_control(code):
    assert sanitize_filename(f"a{chr(code)}b.txt") == "ab.txt"


def test_sanitize_filename_normalises_to_nfc():
    decomposed = "cafe\u0301.txt"  # e + COMBINING ACUTE ACCENT
    assert len(decomposed) == 9
    out = sanitize_filename(decomposed)
    assert out == "caf\u00e9.txt"
    assert len(out) == 8
    assert unicodedata.is_normalized("NFC", out)


@pytest.mark.parametrize(
    "name, expected_ext",
    [
        ("a" * 9996 + ".txt", ".txt"),
        ("x" * 10_000 + ".tar.gz", ".gz"),
        ("ü" * 5000 + ".pdf", ".pdf"),
        ("b" * 300 + "." + "e" * 16, "." + "e" * 16),
    ],
    ids=["ascii", "double-ext", "non-ascii", "16-char-ext"],
)
def test_sanitize_filename_truncates_keeping_the_extension(name, expected_ext):
    out = sanitize_filename(name)
    assert len(out) == MAX_FILENAME_CHARS
    assert out.endswith(expected_ext)
    assert out[: -len(expected_ext)] == name[: MAX_FILENAME_CHARS - len(expected_ext)]


@pytest.mark.parametrize(
    "name",
    ["y" * 10_000, "z" * 300 + "." + "e" * 17],
    ids=["no-ext", "ext-too-long"],
)
def test_sanitize_filename_truncates_without_a_usable_extension(name):
    assert sanitize_filename(name) == name[:MAX_FILENAME_CHARS]


@pytest.mark.parametrize("length", [MAX_FILENAME_CHARS - 1, MAX_FILENAME_CHARS])
def test_sanitize_filename_keeps_names_up_to_the_limit(length):
    name = "n" * (length - 4) + ".txt"
    assert sanitize_filename(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "C:\\evil\\..\\x.exe",
        "a\x00b/c\u202ed.txt",
        "cafe\u0301/x\u0301.txt",
        "." * 50 + "/" + "q" * 500 + ".bin",
        "\u2066..\u2069.hidden",
    ],
)
def test_sanitize_filename_output_invariants(name):
    out = sanitize_filename(name)
    assert out
    assert "/" not in out and "\\" not in out
    assert not out.startswith(".")
    assert len(out) <= MAX_FILENAME_CHARS
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in out)
    assert unicodedata.is_normalized("NFC", out)
    assert sanitize_filename(out) == out  # idempotent


@pytest.mark.parametrize("name", [". .hidden", ".\u00a0.env", " . . .ssh"])
def test_sanitize_filename_never_returns_a_leading_dot(name):
    assert not sanitize_filename(name).startswith(".")


def test_sanitize_filename_is_nfc_after_removing_format_characters():
    out = sanitize_filename("cafe\u200d\u0301.txt")
    assert unicodedata.is_normalized("NFC", out)
    assert out == "caf\u00e9.txt"


# -- normalize_content_type --------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("Text/Plain; charset=UTF-8", "text/plain"),
        ("application/pdf;name=x.pdf; foo=bar", "application/pdf"),
        ("  application/octet-stream  ", "application/octet-stream"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("application/ld+json", "application/ld+json"),
        ("message/rfc822", "message/rfc822"),
    ],
)
def test_normalize_content_type(value, expected):
    assert normalize_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "; charset=utf-8",
        "text",
        "text/",
        "/plain",
        "text/plain/extra",
        "te xt/plain",
        "text/pl ain",
        "text/plain\r\nX-Injected: 1",
        "text/plain\x00",
        "téxt/plain",
        "image/png,image/gif",
        '"image/png"',
        "image/(png)",
    ],
)
def test_normalize_content_type_rejects_malformed(value):
    with pytest.raises(AttachmentError):
        normalize_content_type(value)


@pytest.mark.parametrize(
    "value",
    ["multipart/form-data; boundary=xyz", "multipart/mixed", "MULTIPART/Alternative", "Multipart/related;type=x"],
)
def test_normalize_content_type_refuses_multipart(value):
    with pytest.raises(AttachmentError, match="multipart"):
        normalize_content_type(value)


def test_attachment_error_is_a_value_error():
    assert issubclass(AttachmentError, ValueError)


# -- content_disposition -----------------------------------------------------

_DISPOSITION_RE = re.compile(r'^attachment; filename="([^"]*)"; filename\*=UTF-8\'\'(\S*)$')


def _disposition_parts(value: str) -> tuple[str, str]:
    m = _DISPOSITION_RE.match(value)
    assert m, value
    return m.group(1), m.group(2)


@pytest.mark.parametrize(
    "filename, fallback",
    [
        ("report.pdf", "report.pdf"),
        ("with space.txt", "with space.txt"),
        ('quo"ted".txt', "quoted.txt"),
        ("back\\slash.txt", "backslash.txt"),
        ("Grüße.txt", "Gre.txt"),
        ("日本語.pdf", ".pdf"),
        ("日本語", DEFAULT_FILENAME),
        ('"\\"', DEFAULT_FILENAME),
        ("", DEFAULT_FILENAME),
    ],
)
def test_content_disposition_ascii_fallback(filename, fallback):
    ascii_name, _ = _disposition_parts(content_disposition(filename))
    assert ascii_name == fallback


@pytest.mark.parametrize(
    "filename",
    ["report.pdf", "Grüße aus Köln.txt", "日本語 ファイル.pdf", 'a "b" \\c;d=e%f\'g.txt', "emoji 🎉.png", "caf\u00e9 & co?.doc"],
)
def test_content_disposition_filename_star_is_rfc5987(filename):
    value = content_disposition(filename)
    ascii_name, encoded = _disposition_parts(value)
    assert value.isascii()
    assert '"' not in ascii_name and "\\" not in ascii_name and ascii_name.isascii()
    # RFC 5987 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~" plus pct-encoded
    assert re.fullmatch(r"(?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-F]{2})*", encoded), encoded
    assert unquote(encoded, encoding="utf-8", errors="strict") == filename


def test_content_disposition_percent_encodes_utf8_bytes():
    _, encoded = _disposition_parts(content_disposition("é 日.txt"))
    assert encoded == "%C3%A9%20%E6%97%A5.txt"


@pytest.mark.parametrize(
    "filename",
    ["evil\r\nSet-Cookie: a=b.txt", "a\rb.txt", "a\nb.txt", "x\r\n\r\n<html>.txt"],
)
def test_content_disposition_of_a_sanitized_name_has_no_line_break(filename):
    value = content_disposition(sanitize_filename(filename))
    assert "\r" not in value and "\n" not in value


@pytest.mark.parametrize(
    "filename",
    ["evil\r\nSet-Cookie: a=b.txt", "a\rb.txt", "a\nb.txt"],
)
def test_content_disposition_never_contains_a_line_break(filename):
    value = content_disposition(filename)
    assert "\r" not in value and "\n" not in value


# -- parse_range -------------------------------------------------------------


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-0", 100, (0, 0)),
        ("bytes=0-99", 100, (0, 99)),
        ("bytes=10-19", 100, (10, 19)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=99-", 100, (99, 99)),
        ("bytes=-5", 100, (95, 99)),
        ("bytes=-100", 100, (0, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=-1", 1, (0, 0)),
        ("bytes=0-1000", 100, (0, 99)),
        ("bytes=50-100", 100, (50, 99)),
        ("bytes=5-5", 6, (5, 5)),
        ("  bytes=1-2  ", 10, (1, 2)),
        ("bytes=0-", 1, (0, 0)),
    ],
)
def test_parse_range_satisfiable(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header, size",
    [
        (None, 100),
        ("", 100),
        ("bytes=-", 100),
        ("bytes=0-1,3-4", 100),
        ("bytes=0-1, 3-4", 100),
        ("bytes=-5,-10", 100),
        ("garbage", 100),
        ("bytes", 100),
        ("bytes=", 100),
        ("bytes=abc-def", 100),
        ("bytes=1-2-3", 100),
        ("bytes=--5", 100),
        ("bytes=+1-2", 100),
        ("items=0-10", 100),
        ("bytes 0-10", 100),
        ("bytes=0x10-0x20", 100),
        ("bytes=1.5-2", 100),
        ("bytes = 0-1", 100),
        (None, 0),
        ("bytes=", 0),
        ("bytes=0-1,2-3", 0),
    ],
)
def test_parse_range_sends_everything(header, size):
    assert parse_range(header, size) is None


@pytest.mark.parametrize(
    "header, size",
    [
        ("bytes=-0", 100),
        ("bytes=5-2", 100),
        ("bytes=1-0", 100),
        ("bytes=100-", 100),
        ("bytes=100-200", 100),
        ("bytes=1000-", 100),
        ("bytes=0-0", 0),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=-0", 0),
    ],
)
def test_parse_range_unsatisfiable_raises_attachment_error(header, size):
    with pytest.raises(AttachmentError):
        parse_range(header, size)


@pytest.mark.parametrize("size", [1, 2, 57, 1000, 10**12])
def test_parse_range_result_is_always_inside_the_file(size):
    for header in ("bytes=0-", "bytes=-1", f"bytes=0-{size * 2}", f"bytes={size - 1}-", f"bytes=-{size + 7}"):
        start, end = parse_range(header, size)
        assert 0 <= start <= end <= size - 1, header
