"""Which category a message belongs to, and which IP pool carries that category."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from raymail.config import Pool

KNOWN_CATEGORIES = ("transactional", "marketing")
_BULK_PRECEDENCE = {"bulk", "list", "junk"}


def category_of(requested: str | None, headers: Iterable[tuple[str, str]], sender_email: str,
                sender_categories: Mapping[str, str], default: str) -> str:
    """The API's ``category`` wins; then bulk headers (RFC 2076 Precedence, RFC 2369
    List-* headers mark list mail); then the sender's configured class (address,
    then domain); then ``default``."""
    if requested:
        return requested
    for name, value in headers:
        key = name.lower()
        if key in ("list-unsubscribe", "list-id") or (key == "precedence" and value.strip().lower() in _BULK_PRECEDENCE):
            return "marketing"
    email = sender_email.lower()
    domain = email.rpartition("@")[2]
    return sender_categories.get(email) or sender_categories.get(domain) or default


def pool_for(category: str, pools: tuple[Pool, ...]) -> Pool:
    """The first pool that carries ``category``; mail of a category no pool names goes
    to the first pool (a configuration with one pool needs no category lists)."""
    if not pools:
        raise ValueError("no outbound pools are configured")
    for pool in pools:
        if category in pool.categories:
            return pool
    return pools[0]
