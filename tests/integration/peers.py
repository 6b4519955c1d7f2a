"""Real peers for outbound tests: receiving MTAs (aiosmtpd) on loopback addresses and a
small authoritative DNS server. Linux routes all of 127.0.0.0/8 to lo, so each peer
(and each sender IP) can have an address of its own."""

from __future__ import annotations

import asyncio
import email
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Received:
    peer_ip: str
    mail_from: str
    rcpts: list[str]
    data: bytes
    ts: float
    tls: bool = False

    @property
    def message_id(self) -> str:
        return email.message_from_bytes(self.data)["Message-ID"] or ""


@dataclass
class Receiver:
    """An MX that records every message with the address it came from.

    ``script`` holds replies for successive DATA commands (then 250 for ever):
    "250", "451 ...", "550 ...", or "drop" (close the connection mid-DATA, no reply).
    ``rcpt_script`` does the same for RCPT; ``refuse`` maps addresses to a RCPT reply
    given every time. ``delay_s`` slows every DATA."""

    host: str
    port: int = 0
    script: list[str] = field(default_factory=list)
    rcpt_script: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    tls_context: Any = None  # offers STARTTLS when set
    received: list[Received] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    attempts: int = 0
    rcpt_log: list[str] = field(default_factory=list)  # every RCPT TO address, accepted or not
    active: int = 0  # transactions in DATA right now, and the most ever at once
    max_active: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or free_port(self.host)
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname=self.host, port=self.port, ready_timeout=10,
                                     tls_context=self.tls_context)

    def start(self) -> Receiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def route(self) -> str:
        return f"{self.host}:{self.port}"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        with self._lock:
            self.rcpt_log.append(address.lower())
            reply = self.refuse.get(address.lower()) or (self.rcpt_script.pop(0) if self.rcpt_script else "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.attempts += 1
            self.peers.append(session.peer[0])
            reply = self.script.pop(0) if self.script else "250 2.0.0 OK"
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            with self._lock:
                self.active -= 1
        if reply == "drop":
            server.transport.abort()
            return "421 closed"  # never reaches the client
        if reply.startswith("250"):
            with self._lock:
                self.received.append(Received(session.peer[0], envelope.mail_from, list(envelope.rcpt_tos),
                                              envelope.original_content or envelope.content, time.time(),
                                              session.ssl is not None))
        return reply

    def ids(self) -> list[str]:
        with self._lock:
            return [r.message_id for r in self.received]


async def wait_for(pred, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)
