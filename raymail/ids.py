"""Random identifiers for hot paths."""

from __future__ import annotations

import os


def new_id() -> str:
    """128 random bits as 32 hex digits, like ``uuid.uuid4().hex`` at a third of its cost
    (no UUID object; the version bits are random too)."""
    return os.urandom(16).hex()
