"""aiosmtpd's SMTP protocol with the session guards a public MX needs.

aiosmtpd owns the grammar; this subclass adds what it leaves out: per-address
connection caps (``raymail.smtp_admission``), a limit on the whole session's
length, a 421 before closing an idle session (RFC 5321 section 4.5.3.2 asks the
server to say why it closes), and a refusal of commands pipelined behind STARTTLS
(RFC 3207 section 4.2 / RFC 2920 section 3.1: STARTTLS must end a pipeline group;
plaintext sent behind it is the command-injection attack of CVE-2011-0411).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiosmtpd.smtp import SMTP

from raymail.smtp_admission import (
    IDLE_TIMEOUT,
    PIPELINED_AFTER_STARTTLS,
    SESSION_TOO_LONG,
    Admission,
)

log = logging.getLogger(__name__)


class GuardedSMTP(SMTP):
    def __init__(self, handler: Any, *, admission: Admission, session_max_s: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._admission = admission
        self._session_max_s = session_max_s
        self._admitted_ip: str | None = None
        self._refused = False
        self._session_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and not self._refused:  # a new connection, not the switch to TLS
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if peer else "?"
            refusal = self._admission.admit(ip, time.monotonic())
            if refusal is not None:
                # Refused before aiosmtpd sets the session up: say why at greeting and close.
                self._refused = True
                log.info("refused SMTP connection from %s: %s", ip, refusal)
                transport.write(refusal.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._admitted_ip = ip
            self._session_timer = self.loop.call_later(self._session_max_s, self._close_with, SESSION_TOO_LONG)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._session_timer is not None:
            self._session_timer.cancel()
        if self._admitted_ip is not None:
            self._admission.release(self._admitted_ip)
            self._admitted_ip = None
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        return False if self._refused else super().eof_received()

    def _close_with(self, reply: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        log.info("%r: %s", self.session.peer if self.session else "?", reply)
        self.transport.write(reply.encode("ascii") + b"\r\n")  # type: ignore[attr-defined]
        self.transport.close()

    def _timeout_cb(self) -> None:
        self._close_with(IDLE_TIMEOUT)

    async def smtp_STARTTLS(self, arg: str) -> None:
        buffered = getattr(self._reader, "_buffer", b"")  # bytes the client sent behind STARTTLS
        if not arg and self.tls_context is not None and buffered:
            await self.push(PIPELINED_AFTER_STARTTLS)
            self.transport.close()
            return
        await super().smtp_STARTTLS(arg)
