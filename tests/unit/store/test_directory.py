"""raymail/store/directory.py: users, domains and hashed tokens in SQLite."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from raymail.store.directory import Directory, DirectoryError, hash_token


@pytest.fixture
def directory(tmp_path: Path) -> Directory:
    return Directory(tmp_path / "data")


def test_add_user_returns_user_and_rm_token(directory: Directory):
    user, token = directory.add_user("Alice@Example.COM", name="  Alice  ", profile_url="https://x.test/a.png")
    assert re.fullmatch(r"rm_[A-Za-z0-9_-]{40,}", token)
    assert user.email == "Alice@example.com"  # domain lowercased, local part kept
    assert user.name == "Alice"
    assert user.profile_url == "https://x.test/a.png"
    assert re.fullmatch(r"[0-9a-f-]{36}", user.uid)
    assert user.created_at > 0
    assert directory.user_count() == 1


def test_tokens_are_unique(directory: Directory):
    _, t1 = directory.add_user("a@example.com")
    _, t2 = directory.add_user("b@example.com")
    assert t1 != t2


def test_token_is_stored_only_hashed(directory: Directory):
    _, token = directory.add_user("a@example.com")
    blob = b"".join(p.read_bytes() for p in directory.path.parent.iterdir() if p.is_file())
    assert token.encode() not in blob
    assert token[3:].encode() not in blob
    assert hashlib.sha256(token.encode()).hexdigest().encode() in blob
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()


def test_user_by_token(directory: Directory):
    user, token = directory.add_user("a@example.com", name="A")
    assert directory.user_by_token(token) == user
    assert directory.user_by_token(token + "x") is None
    assert directory.user_by_token("") is None
    assert directory.user_by_token(hash_token(token)) is None  # the stored hash is not a token


@pytest.mark.parametrize("lookup", ["a@example.com", "A@EXAMPLE.COM", "a@Example.com"])
def test_user_by_email_is_case_insensitive(directory: Directory, lookup: str):
    user, _ = directory.add_user("a@example.com")
    assert directory.user_by_email(lookup) == user


def test_user_by_email_unknown(directory: Directory):
    directory.add_user("a@example.com")
    assert directory.user_by_email("b@example.com") is None


@pytest.mark.parametrize("again", ["a@example.com", "A@example.com", "a@EXAMPLE.com"])
def test_duplicate_email_refused(directory: Directory, again: str):
    directory.add_user("a@example.com")
    with pytest.raises(DirectoryError, match="already exists"):
        directory.add_user(again)
    assert directory.user_count() == 1
    # the connection is usable after the rollback
    directory.add_user("b@example.com")
    assert directory.user_count() == 2


@pytest.mark.parametrize(
    "email, name",
    [("not-an-address", ""), ("a@nodot", ""), ("a b@example.com", ""), ("a@example.com", "Bad\nName")],
)
def test_invalid_user_refused(directory: Directory, email: str, name: str):
    with pytest.raises(DirectoryError):
        directory.add_user(email, name=name)
    assert directory.user_count() == 0
    assert directory.domains() == []


def test_add_user_adds_the_domain(directory: Directory):
    assert not directory.is_local_domain("example.com")
    directory.add_user("a@Example.com")
    directory.add_user("b@example.com")
    assert directory.domains() == ["example.com"]
    assert directory.is_local_domain("example.com")
    assert directory.is_local_domain("EXAMPLE.com")
    assert not directory.is_local_domain("other.com")


@pytest.mark.parametrize(
    "domain, stored",
    [("example.com", "example.com"), ("  Example.COM. ", "example.com"), ("sub.x-y.test", "sub.x-y.test")],
)
def test_add_domain_normalizes_and_is_idempotent(directory: Directory, domain: str, stored: str):
    assert directory.add_domain(domain) == stored
    assert directory.add_domain(domain) == stored
    assert directory.add_domain(stored) == stored
    assert directory.domains() == [stored]


@pytest.mark.parametrize("domain", ["", "localhost", "-bad.com", "a..b", "under_score.com", "sp ace.com"])
def test_invalid_domain_refused(directory: Directory, domain: str):
    with pytest.raises(DirectoryError, match="not a valid domain"):
        directory.add_domain(domain)
    assert directory.domains() == []


def test_a_second_instance_sees_the_same_data(tmp_path: Path):
    d1 = Directory(tmp_path)
    user, token = d1.add_user("a@example.com")
    d2 = Directory(tmp_path)
    assert d2.user_by_token(token) == user
    assert d2.domains() == ["example.com"]
