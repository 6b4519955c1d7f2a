"""The user and domain directory: a SQLite file shared by the CLI and the servers.

``raymail user add`` writes it while the server runs; gateways read it on a cache
miss, so a new user is usable at once without a restart. Tokens are random and
only their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from raymail import addresses
from raymail.model import User

_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    name TEXT NOT NULL DEFAULT '',
    profile_url TEXT NOT NULL DEFAULT '',
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""

TOKEN_PREFIX = "rm_"


class DirectoryError(ValueError):
    """A directory change was refused; the message says why."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Directory:
    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "directory.sqlite3"
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    # -- domains -----------------------------------------------------------
    def add_domain(self, domain: str) -> str:
        d = domain.strip().lower().rstrip(".")
        if not addresses.valid_domain(d):
            raise DirectoryError(f"{domain!r} is not a valid domain name (like example.com)")
        self._conn().execute("INSERT OR IGNORE INTO domains(name, created_at) VALUES (?, ?)", (d, time.time()))
        return d

    def is_local_domain(self, domain: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM domains WHERE name = ?", (domain.lower(),)).fetchone()
        return row is not None

    def domains(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM domains ORDER BY name")]

    # -- users -------------------------------------------------------------
    def add_user(self, email: str, name: str = "", profile_url: str = "") -> tuple[User, str]:
        """Create a user and return it with its token (shown once, stored hashed)."""
        try:
            addr = addresses.parse_addr_spec(email)
        except addresses.AddressError as exc:
            raise DirectoryError(str(exc)) from None
        if addresses.has_line_break(name):
            raise DirectoryError("the name must not contain control characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        user = User(uid=str(uuid.uuid4()), email=addr, name=name.strip(), profile_url=profile_url, created_at=time.time())
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR IGNORE INTO domains(name, created_at) VALUES (?, ?)",
                (addresses.domain_of(addr), user.created_at),
            )
            conn.execute(
                "INSERT INTO users(uid, email, name, profile_url, token_sha256, created_at) VALUES (?,?,?,?,?,?)",
                (user.uid, user.email, user.name, user.profile_url, hash_token(token), user.created_at),
            )
            conn.execute("COMMIT")
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            raise DirectoryError(f"a user with the address {addr} already exists") from None
        return user, token

    def user_by_token(self, token: str) -> User | None:
        row = self._conn().execute(
            "SELECT uid, email, name, profile_url, created_at FROM users WHERE token_sha256 = ?", (hash_token(token),)
        ).fetchone()
        return User(*row) if row else None

    def user_by_email(self, email: str) -> User | None:
        row = self._conn().execute(
            "SELECT uid, email, name, profile_url, created_at FROM users WHERE email = ?", (email,)
        ).fetchone()
        return User(*row) if row else None

    def user_count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM users").fetchone()[0]
