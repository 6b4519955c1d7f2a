"""raymail/search.py: the Gmail-style query parser, tokenize() and matches()."""

from __future__ import annotations

import pytest

from raymail.search import (
    MAX_CLAUSES,
    MAX_QUERY_CHARS,
    TEXT_FIELDS,
    Clause,
    QueryError,
    SearchQuery,
    matches,
    parse,
    parse_date,
    tokenize,
)

JAN_31_2026 = 1769817600.0  # 2026-01-31T00:00:00Z
JAN_01_2026 = 1767225600.0  # 2026-01-01T00:00:00Z
LEAP_DAY_2024 = 1709164800.0  # 2024-02-29T00:00:00Z


def C(words, fields=TEXT_FIELDS, phrase=None, negated=False) -> Clause:
    """A clause; a single string is one word, ``phrase`` defaults to "more than one word"."""
    words = (words,) if isinstance(words, str) else tuple(words)
    if isinstance(fields, str):
        fields = (fields,)
    return Clause(words, tuple(fields), len(words) > 1 if phrase is None else phrase, negated)


# -- tokenize ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("", []),
        ("   \t\n", []),
        ("--- ... !!! ?", []),
        ("Hello, World!", ["hello", "world"]),
        ("foo_bar __x__", ["foo", "bar", "x"]),  # underscores separate words, as in tantivy
        ("don't O’Brien", ["don", "t", "o", "brien"]),
        ("alice@example.com", ["alice", "example", "com"]),
        ("abc123 3.14 x86-64", ["abc123", "3", "14", "x86", "64"]),
        ("Café NAÏVE Straße", ["café", "naïve", "straße"]),
        ("東京 タワー", ["東京", "タワー"]),
        ("Москва ÉCOLE", ["москва", "école"]),
        ("tabs\tand\r\nnewlines", ["tabs", "and", "newlines"]),
        ("a" * 39, ["a" * 39]),
        ("a" * 41, []),  # longer than 40 bytes: dropped
        ("é" * 19, ["é" * 19]),  # 38 bytes
        ("é" * 21, []),  # 21 characters but 42 bytes: the limit is in bytes
        ("short " + "x" * 50 + " kept", ["short", "kept"]),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


# -- parse: words, phrases, field operators --------------------------------------------


@pytest.mark.parametrize(
    "q, clauses",
    [
        (None, ()),
        ("", ()),
        ("   ", ()),
        ("-", ()),  # a lone dash is not a negation of nothing
        ("!!! ...", ()),  # no words at all
        ("a" * 41, ()),  # the only token is too long and dropped
        ("report", (C("report"),)),
        ("Quarterly REPORT", (C("quarterly"), C("report"))),
        ("café 東京", (C("café"), C("東京"))),
        ('"exact phrase"', (C(("exact", "phrase")),)),
        ('"Hello"', (C("hello"),)),  # one quoted word is not a phrase
        ('""', ()),
        ('"re: hello"', (C(("re", "hello")),)),  # a colon inside quotes is not an operator
        ('"(a)*[b]{c}^~\\"', (C(("a", "b", "c")),)),  # forbidden characters are fine inside quotes
        ('a"b c"d', (C(("a", "b", "c", "d")),)),
        ("e-mail", (C(("e", "mail")),)),  # hyphenated words become a phrase
        ("alice@example.com", (C(("alice", "example", "com")),)),
        ("-word", (C("word", negated=True),)),
        ("--word", (C("word", negated=True),)),
        ("-e-mail", (C(("e", "mail"), negated=True),)),
        ('-"two words"', (C(("two", "words"), negated=True),)),
        ("from:alice", (C("alice", "from_"),)),
        ("FROM:Alice", (C("alice", "from_"),)),
        ("to:bob", (C("bob", "to"),)),
        ("cc:carol", (C("carol", "cc"),)),
        ("subject:report", (C("report", "subject"),)),
        ("filename:report.pdf", (C(("report", "pdf"), "filenames"),)),
        ("from:alice@example.com", (C(("alice", "example", "com"), "from_"),)),
        ('subject:"two words"', (C(("two", "words"), "subject"),)),
        ('subject:"a*b"', (C(("a", "b"), "subject"),)),
        ("-from:x", (C("x", "from_", negated=True),)),
        ('-subject:"two words"', (C(("two", "words"), "subject", negated=True),)),
        (
            'from:bob "quarterly report" -draft budget',
            (C("bob", "from_"), C(("quarterly", "report")), C("draft", negated=True), C("budget")),
        ),
    ],
)
def test_parse_clauses(q, clauses):
    query = parse(q)
    assert query.clauses == clauses
    assert (query.folder, query.unread, query.has_attachment, query.after_s, query.before_s) == (None,) * 5


@pytest.mark.parametrize(
    "q, has_text",
    [("", False), ("-spam", False), ("-spam -from:x", False), ("report -spam", True), ("is:unread", False)],
)
def test_has_text(q, has_text):
    assert parse(q).has_text is has_text


# -- parse: flag, folder and date operators -------------------------------------------


@pytest.mark.parametrize(
    "q, state",
    [
        ("has:attachment", {"has_attachment": True}),
        ("has:attachments", {"has_attachment": True}),
        ("HAS:Attachment", {"has_attachment": True}),
        ("-has:attachment", {"has_attachment": False}),
        ("is:unread", {"unread": True}),
        ("is:read", {"unread": False}),
        ("-is:unread", {"unread": False}),
        ("-is:read", {"unread": True}),
        ("IS:UNREAD", {"unread": True}),
        ("is:unread -is:read", {"unread": True}),  # the same thing said twice
        ("is:unread is:unread", {"unread": True}),
        ("in:inbox", {"folder": "inbox"}),
        ("in:sent", {"folder": "sent"}),
        ("in:archive", {"folder": "archive"}),
        ("in:trash", {"folder": "trash"}),
        ("in:Junk", {"folder": "junk"}),
        ("before:2026-01-31", {"before_s": JAN_31_2026}),
        ("older:2026/01/31", {"before_s": JAN_31_2026}),
        ("after:2024-02-29", {"after_s": LEAP_DAY_2024}),
        ("newer:1767225600", {"after_s": JAN_01_2026}),
        ("after:1700000000.5", {"after_s": 1700000000.5}),
        ("after:2026-01-01 newer:1767225600", {"after_s": JAN_01_2026}),  # equal values agree
        (
            "has:attachment is:unread in:inbox after:2026-01-01 before:2026/01/31",
            {"has_attachment": True, "unread": True, "folder": "inbox", "after_s": JAN_01_2026,
             "before_s": JAN_31_2026},
        ),
    ],
)
def test_parse_operators(q, state):
    query = parse(q)
    assert query.clauses == ()
    expected = {"folder": None, "unread": None, "has_attachment": None, "after_s": None, "before_s": None, **state}
    got = {k: getattr(query, k) for k in expected}
    assert got == expected


def test_parse_operators_and_words_together():
    query = parse("from:alice invoice is:unread in:inbox -draft")
    assert query == SearchQuery(
        clauses=(C("alice", "from_"), C("invoice"), C("draft", negated=True)), folder="inbox", unread=True
    )


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("2026-01-31", JAN_31_2026),
        ("2026/01/31", JAN_31_2026),
        (" 2026-01-31 ", JAN_31_2026),
        ("2024-02-29", LEAP_DAY_2024),
        ("1767225600", JAN_01_2026),
        ("999999999", 999999999.0),  # 9 digits
        ("10000000000", 10000000000.0),  # 11 digits
        ("1700000000.25", 1700000000.25),
    ],
)
def test_parse_date(value, seconds):
    assert parse_date(value, "after") == seconds


@pytest.mark.parametrize(
    "value", ["", "yesterday", "2026-13-01", "2025-02-29", "2026-01-32", "12345678", "123456789012", "31/01/2026",
              "2026-01-31T00:00", "-1767225600"]
)
def test_parse_date_rejects(value):
    with pytest.raises(QueryError, match="^newer: "):
        parse_date(value, "newer")


# -- parse: explicit filter parameters ---------------------------------------------------


@pytest.mark.parametrize(
    "q, filters, expected",
    [
        ("report", {"from": "Bob Smith"},
         SearchQuery(clauses=(C("report"), C(("bob", "smith"), "from_")))),
        ("", {"to": "alice@example.com"}, SearchQuery(clauses=(C(("alice", "example", "com"), "to"),))),
        ("from:bob", {"from": "bob", "to": "Alice"},
         SearchQuery(clauses=(C("bob", "from_"), C("bob", "from_"), C("alice", "to")))),
        ("", {"from": "!!!", "to": ""}, SearchQuery()),  # no words: no clause
        ("", {"folder": "INBOX"}, SearchQuery(folder="inbox")),
        ("in:sent", {"folder": "sent"}, SearchQuery(folder="sent")),
        ("", {"has_attachment": "true"}, SearchQuery(has_attachment=True)),
        ("", {"has_attachment": "Yes"}, SearchQuery(has_attachment=True)),
        ("", {"has_attachment": "0"}, SearchQuery(has_attachment=False)),
        ("", {"has_attachment": ""}, SearchQuery()),
        ("", {"unread": "1"}, SearchQuery(unread=True)),
        ("", {"unread": "false"}, SearchQuery(unread=False)),
        ("is:read", {"unread": "no"}, SearchQuery(unread=False)),
        ("", {"after": "2026-01-01", "before": "2026/01/31"}, SearchQuery(after_s=JAN_01_2026, before_s=JAN_31_2026)),
        ("after:2026-01-01", {"after": "1767225600"}, SearchQuery(after_s=JAN_01_2026)),  # same instant
        ("x", {"from": None, "to": None, "folder": None, "has_attachment": None, "unread": None, "after": None,
               "before": None}, SearchQuery(clauses=(C("x"),))),
        ("-is:unread has:attachment", {"folder": "trash", "after": "2026-01-01"},
         SearchQuery(folder="trash", unread=False, has_attachment=True, after_s=JAN_01_2026)),
    ],
)
def test_parse_filters_merge_with_q(q, filters, expected):
    assert parse(q, **filters) == expected


# -- parse: errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "q, filters, message",
    [
        # conflicting duplicates
        ("is:unread is:read", {}, "unread is given twice"),
        ("is:unread -is:unread", {}, "unread is given twice"),
        ("has:attachment -has:attachment", {}, "has_attachment is given twice"),
        ("in:inbox in:sent", {}, "folder is given twice"),
        ("before:2026-01-01 older:2026-01-31", {}, "before_s is given twice"),
        ("after:2026-01-01 newer:2026-01-31", {}, "after_s is given twice"),
        ("in:inbox", {"folder": "sent"}, "folder is given twice"),
        ("is:unread", {"unread": "false"}, "unread is given twice"),
        ("has:attachment", {"has_attachment": "no"}, "has_attachment is given twice"),
        ("after:2026-01-01", {"after": "2026-01-02"}, "after_s is given twice"),
        ("before:2026-01-01", {"before": "2026-01-31"}, "before_s is given twice"),
        # dates name the operator (or the parameter)
        ("before:yesterday", {}, "^before: 'yesterday' is not a date"),
        ("after:2026-13-01", {}, "^after: "),
        ("older:12345678", {}, "^older: "),
        ("newer:", {}, "^newer: "),
        ("", {"after": "soon"}, "^after: 'soon'"),
        ("", {"before": "2026-02-30"}, "^before: "),
        # quotes
        ('"unbalanced', {}, "unbalanced quote at position 1"),
        ('report "open', {}, "unbalanced quote at position 8"),
        ('subject:"open', {}, "unbalanced quote at position 9"),
        ('a"b"c"', {}, "unbalanced quote at position 6"),
        # operators
        ("foo:bar", {}, "unknown operator foo:"),
        ("http://example.com", {}, "unknown operator http:"),
        ("label:work", {}, "unknown operator label:"),
        ("has:pdf", {}, "has:pdf is not supported"),
        ("is:starred", {}, "is:starred is not supported"),
        ("in:spam", {}, "in:spam is not supported"),
        ("-in:inbox", {}, "in:inbox is not supported"),
        ("from:", {}, "from: needs a word"),
        ("subject:!!!", {}, "subject: needs a word"),
        ('to:""', {}, "to: needs a word"),
        # filter values
        ("", {"folder": "spam"}, "folder must be one of inbox, sent, archive, trash, junk"),
        ("", {"has_attachment": "maybe"}, "has_attachment must be true or false"),
        ("", {"unread": "2"}, "unread must be true or false"),
    ],
)
def test_parse_errors(q, filters, message):
    with pytest.raises(QueryError, match=message):
        parse(q, **filters)


@pytest.mark.parametrize("q", ["a(b", "x)", "[x]", "{x}", "a^2", "a~b", "wild*", "a\\b", "-(x)"])
def test_parse_forbidden_characters_outside_quotes(q):
    with pytest.raises(QueryError, match="is not supported in a search; put the text in double quotes"):
        parse(q)


@pytest.mark.parametrize("q", ['"a(b"', '"x)"', '"[x]"', '"{x}"', '"a^2"', '"a~b"', '"wild*"', '"a\\b"'])
def test_parse_forbidden_characters_inside_quotes_are_allowed(q):
    assert parse(q).clauses  # no error, and the words are kept


@pytest.mark.parametrize(
    "q, clause",
    [('-"re: hello"', C(("re", "hello"), negated=True)), ('-"wild*card"', C(("wild", "card"), negated=True))],
)
def test_parse_negated_quoted_phrase_keeps_quoting(q, clause):
    assert parse(q).clauses == (clause,)


def test_query_length_limit():
    at_limit = "a" * MAX_QUERY_CHARS  # one over-long token: no clause, but no error either
    assert parse(at_limit).clauses == ()
    with pytest.raises(QueryError, match=f"longer than {MAX_QUERY_CHARS} characters"):
        parse(at_limit + "a")


@pytest.mark.parametrize("prefix", ["w", "-w", "from:w"])
def test_clause_count_limit(prefix):
    words = [f"{prefix}{i}" for i in range(MAX_CLAUSES + 1)]
    assert len(parse(" ".join(words[:MAX_CLAUSES])).clauses) == MAX_CLAUSES
    with pytest.raises(QueryError, match=f"at most {MAX_CLAUSES} search terms"):
        parse(" ".join(words))


def test_operators_without_words_do_not_count_as_clauses():
    q = " ".join([f"w{i}" for i in range(MAX_CLAUSES)] + ["is:unread", "has:attachment", "in:inbox"])
    assert len(parse(q).clauses) == MAX_CLAUSES


# -- matches ------------------------------------------------------------------------

DOC = {
    "subject": ["re", "quarterly", "report"],
    "body": ["the", "report", "is", "the", "report", "done", "a", "a", "b"],
    "from_": ["bob", "example", "com"],
    "to": [],
}


@pytest.mark.parametrize(
    "clause, expected",
    [
        (C(("re", "quarterly"), "subject"), True),  # phrase at the start
        (C(("quarterly", "report"), "subject"), True),  # at the end
        (C(("re", "quarterly", "report"), "subject"), True),  # the whole field
        (C(("report", "is"), "body"), True),  # in the middle
        (C(("re", "quarterly", "report", "x"), "subject"), False),  # longer than the field
        (C(("report", "quarterly"), "subject"), False),  # wrong order
        (C(("re", "report"), "subject"), False),  # not adjacent
        (C(("the", "report", "done"), "body"), True),  # the second occurrence matches
        (C(("report", "is", "the", "report"), "body"), True),
        (C(("report", "the", "report"), "body"), False),
        (C(("a", "b"), "body"), True),  # after a partial match on the first "a"
        (C(("a", "a", "b"), "body"), True),
        (C(("the", "the"), "body"), False),
        (C(("done", "a", "a", "b", "c"), "body"), False),  # runs past the end
        (C(("quarterly", "re"), "subject", phrase=False), True),  # plain words: any order
        (C(("bob", "quarterly"), phrase=False), False),  # plain words must share one field
        (C(("bob", "example"), phrase=False), True),
        (C(("report", "done"), ("subject", "body"), phrase=False), True),
        (C("bob"), True),
        (C("bob", ("subject", "from_")), True),  # multi-field: any field will do
        (C("bob", ("subject", "body")), False),
        (C(("example", "com"), ("to", "from_")), True),
        (C(("com", "example"), ("to", "from_")), False),
        (C("report", "cc"), False),  # a field the document does not have
        (C("x", "to"), False),  # an empty field
        (C("Report", "subject"), False),  # tokens are compared as they are
    ],
)
def test_matches(clause, expected):
    assert matches(clause, DOC) is expected


@pytest.mark.parametrize(
    "q, text, expected",
    [
        ('"quarterly report"', "The Quarterly Report, final", True),
        ('"quarterly report"', "report quarterly", False),
        ("e-mail", "send an E-Mail today", True),
        ("e-mail", "mail e", False),
        ('"東京 タワー"', "東京 タワー", True),
        ("café", "CAFÉ!", True),
    ],
)
def test_parse_and_matches_agree_on_tokenization(q, text, expected):
    (clause,) = parse(q).clauses
    assert matches(clause, {"body": tokenize(text)}) is expected
