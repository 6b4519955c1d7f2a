"""aiosmtpd's SMTP protocol with the session guards a public MX needs.

aiosmtpd owns the grammar; this subclass adds what it leaves out: per-address
connection caps (``raymail.smtp_admission``), a limit on the whole session's
length, a 421 before closing an idle session (RFC 5321 section 4.5.3.2 asks the
server to say why it closes), and a refusal of commands pipelined behind STARTTLS
(RFC 3207 section 4.2 / RFC 2920 section 3.1: STARTTLS must end a pipeline group;
plaintext sent behind it is the command-injection attack of CVE-2011-0411).

It also reads DATA in large pieces instead of line by line (the same grammar:
the message ends only at CRLF.CRLF, dots are unstuffed per RFC 5321 section
4.5.2, lines over the limit answer 500 and oversized mail 552), which is most of
what an MX spends per message in the protocol layer.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP

from raymail.smtp_admission import (
    IDLE_TIMEOUT,
    PIPELINED_AFTER_STARTTLS,
    SESSION_TOO_LONG,
    Admission,
)

log = logging.getLogger(__name__)

READ_LIMIT_BYTES = 64 * 1024  # stream buffer per connection (aiosmtpd's is one line: 1,001 bytes)
# <local@domain> with only atom characters and dots, a domain of non-empty labels and nothing
# glued to the '>': nothing to unquote. Anything else takes aiosmtpd's full parser.
_SIMPLE_PATH = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(\s.*)?\Z", re.DOTALL)
_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
_TOO_MUCH = "552 Error: Too much mail data"


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
        if self._reader is not None:
            # A one-line buffer pauses the socket every 2 KB of DATA. Command lines keep
            # their own limits (aiosmtpd checks command_size_limits on each line).
            self._reader._limit = READ_LIMIT_BYTES  # type: ignore[attr-defined]

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

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's version builds a typing.Protocol class on every MAIL and RCPT, and
        # the RFC 5322 parser it calls is slow; a plain <local@domain> needs neither.
        if not arg:
            return "", ""
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None:
            addr = simple.group(1)
            if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return addr, (simple.group(2) or "").lstrip()
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr = address.addr_spec
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        got = await self._read_data()
        if got is None:
            return  # the connection is gone
        refusal, content = got
        if refusal is not None:
            await self.push(refusal)
            self._set_post_data_state()
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[str | None, bytes] | None:
        """The message up to CRLF.CRLF, dot-unstuffed; (refusal, b"") past the limits."""
        reader = self._reader
        limit = self.data_size_limit
        pieces: list[bytes] = []
        size = 0
        too_much = False
        tail = b"\r\n"  # the 354 reply ended a line: a dot first thing starts a line
        while True:
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.IncompleteReadError:
                return None
            except asyncio.LimitOverrunError as exc:  # no ".\r\n" in a full buffer yet
                chunk = await reader.read(exc.consumed)
                ended = False
            else:
                # ".\r\n" ends the message only where the dot starts a line.
                before = chunk[-5:-3] if len(chunk) >= 5 else (tail + chunk)[-5:-3]
                ended = before == b"\r\n"
                if ended:
                    chunk = chunk[:-3]
            size += len(chunk)
            if limit and size > limit:
                too_much = True
                pieces.clear()
            elif not too_much:
                pieces.append(chunk)
            if ended:
                break
            tail = (tail + chunk)[-2:]
        if too_much:
            return _TOO_MUCH, b""
        data = b"".join(pieces)
        if max(map(len, data.split(b"\r\n")), default=0) + 2 > self.line_length_limit:
            return _TOO_LONG, b""
        if data.startswith(b".") or b"\r\n." in data:
            data = (b"\r\n" + data).replace(b"\r\n.", b"\r\n")[2:]  # RFC 5321 section 4.5.2
        return None, data
