"""The SMTP client of the senders: one session, one transaction at a time, pipelined.

The grammar is plain code: ``ReplyParser`` turns bytes into replies (RFC 5321
section 4.2) and ``data_bytes`` encodes a message for DATA (section 4.5.2).
``SmtpClient`` moves bytes over an ``asyncio.Protocol`` and writes MAIL, every
RCPT and DATA at once when the server offers PIPELINING (RFC 2920), so a message
costs two round trips instead of four or more. Failures reach the caller as
``ConnectFailed`` (no session) or ``ConnectionLost`` (it broke).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from raymail.errors import ConnectFailed, ConnectionLost, SmtpClientError

MAX_REPLY_LINE_BYTES = 4096  # RFC 5321 section 4.5.3.1.5 says 512; real servers go past it
MAX_REPLY_LINES = 100
QUIT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # the lines after their codes, joined by "\n"

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class _TlsFailed(ConnectFailed):
    """STARTTLS was offered but the upgrade, or the session over it, failed."""


class ReplyParser:
    """Bytes in, complete replies out. A line is "xyz-text" (more follow) or "xyz text"
    (the last); anything else, or a line over ``MAX_REPLY_LINE_BYTES``, is not SMTP."""

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[bytes] = []

    def feed(self, data: bytes) -> list[Reply]:
        buf = self._buf + data if self._buf else data
        replies, start = [], 0
        while (end := buf.find(b"\n", start)) >= 0:
            line, start = buf[start:end].rstrip(b"\r"), end + 1
            code, sep = line[:3], line[3:4]
            if len(line) > MAX_REPLY_LINE_BYTES or not (len(code) == 3 and code.isdigit() and sep in b" -"):
                raise ConnectionLost(f"not an SMTP reply: {line[:80]!r}")
            self._lines.append(line[4:].strip(b" \t"))
            if sep == b"-":
                if len(self._lines) > MAX_REPLY_LINES:
                    raise ConnectionLost(f"not an SMTP reply: over {MAX_REPLY_LINES} lines")
                continue
            replies.append(Reply(int(code), b"\n".join(self._lines).decode("utf-8", "replace")))
            self._lines = []
        self._buf = buf[start:]
        if len(self._buf) > MAX_REPLY_LINE_BYTES:
            raise ConnectionLost(f"not an SMTP reply: a line over {MAX_REPLY_LINE_BYTES} bytes")
        return replies


_LINE_END = re.compile(rb"\r\n|\r|\n")


def data_bytes(message: bytes) -> bytes:
    """``message`` as sent after DATA: CRLF line ends, a dot starting a line doubled,
    closed by CRLF.CRLF (RFC 5321 sections 2.3.8 and 4.5.2)."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LINE_END.sub(b"\r\n", message)
    if message.startswith(b"."):
        message = b"." + message
    if b"\n." in message:
        message = message.replace(b"\n.", b"\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


class _Wire(asyncio.Protocol):
    """Parses what arrives into a queue of replies and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ReplyParser()
        self.replies: deque[Reply] = deque()
        self.lost = ""  # why the session broke, once it has
        self._waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.replies.extend(self.parser.feed(data))
        except ConnectionLost as exc:
            self._break(str(exc))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.lost or "the server closed the connection" + (f": {exc}" if exc else "")
        self._wake()

    def _break(self, why: str) -> None:
        self.lost = why
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self, timeout_s: float) -> Reply:
        while not self.replies:
            if self.lost:
                raise ConnectionLost(self.lost)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                self._break(f"no reply within {timeout_s:g} s")
        return self.replies.popleft()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionLost(self.lost or "the connection is closed")
        self.transport.write(data)


class SmtpClient:
    """One SMTP session with one server; one transaction at a time.

    ``timeout_s`` bounds the connect, the TLS handshake and the wait for every reply;
    a session that timed out, closed or spoke something other than SMTP is closed and
    never reused (``is_connected`` turns False)."""

    def __init__(self, wire: _Wire, host: str, timeout_s: float) -> None:
        self._wire, self.host, self.timeout_s = wire, host, timeout_s
        self.extensions: dict[str, str] = {}  # EHLO keyword (upper case) -> its parameters
        self.tls = False

    @classmethod
    async def connect(cls, host: str, port: int, *, source_ip: str, local_hostname: str, timeout_s: float,
                      tls_context: ssl.SSLContext | None = None) -> SmtpClient:
        """Connect from ``source_ip``, read the greeting, say EHLO (HELO if EHLO is
        refused) and, given ``tls_context``, upgrade with STARTTLS when it is offered.
        When the upgrade fails, connect again and go on in plain text: opportunistic
        TLS (RFC 7435), so ``tls_context`` need not verify anything."""
        try:
            return await cls._open(host, port, source_ip, local_hostname, timeout_s, tls_context)
        except _TlsFailed:
            return await cls._open(host, port, source_ip, local_hostname, timeout_s, None)

    @classmethod
    async def _open(cls, host: str, port: int, source_ip: str, local_hostname: str, timeout_s: float,
                    tls_context: ssl.SSLContext | None) -> SmtpClient:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, wire = await loop.create_connection(_Wire, host, port, local_addr=(source_ip, 0))
        except TimeoutError:
            raise ConnectFailed(f"no connection within {timeout_s:g} s") from None
        except OSError as exc:
            raise ConnectFailed(str(exc)) from exc
        client = cls(wire, host, timeout_s)
        try:
            greeting = await client._read()
            if not greeting.ok:
                raise ConnectFailed(f"greeting {greeting.code} {greeting.text}")
            await client._hello(local_hostname)
            if tls_context is not None and "STARTTLS" in client.extensions:
                await client._starttls(tls_context, local_hostname)
        except BaseException as exc:
            client.close()
            if isinstance(exc, ConnectionLost):
                raise ConnectFailed(str(exc)) from exc
            raise
        return client

    @property
    def is_connected(self) -> bool:
        """Open and in step: a reply nobody asked for (a server ending an idle session
        with 421, say) makes the session unusable too."""
        transport = self._wire.transport
        return transport is not None and not transport.is_closing() and not self._wire.replies

    async def send(self, sender: str, rcpts: Sequence[str], message: bytes) -> dict[str, Reply]:
        """One transaction; returns each recipient's final reply: its RCPT refusal,
        MAIL's refusal, or the reply to DATA or to the message.

        With PIPELINING, MAIL, every RCPT and DATA leave in one write and their replies
        are read in order; the message follows only a 354. A transaction that delivers
        to nobody ends with RSET. Raises ``ConnectionLost`` (with the replies known so
        far) when the session breaks."""
        data = data_bytes(message)
        params, refusal = self._mail_params(data, [sender, *rcpts])
        if refusal is not None:
            return dict.fromkeys(rcpts, refusal)
        mail_cmd = b"MAIL FROM:<%s>%s\r\n" % (sender.encode(), params)
        rcpt_cmds = [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts]
        pipelined = "PIPELINING" in self.extensions
        if pipelined:
            self._wire.write(mail_cmd + b"".join(rcpt_cmds) + b"DATA\r\n")
        replies: dict[str, Reply] = {}
        accepted: list[str] = []
        try:
            mail = await self._ask(mail_cmd, pipelined)
            if not mail.ok:
                replies = dict.fromkeys(rcpts, mail)
            if mail.ok or pipelined:  # a pipelined group is answered in full
                for rcpt, cmd in zip(rcpts, rcpt_cmds):
                    reply = await self._ask(cmd, pipelined)
                    if mail.ok and reply.ok:
                        accepted.append(rcpt)
                    elif mail.ok:
                        replies[rcpt] = reply
            final = await self._ask(b"DATA\r\n", pipelined) if pipelined or accepted else None
            if final is not None and final.code == 354:
                # RFC 2920 section 3.1: a 354 after every RCPT failed still needs the end of data
                self._wire.write(data if accepted else b".\r\n")
                final = await self._read()
            if final is not None:
                replies.update(dict.fromkeys(accepted, final))
        except ConnectionLost as exc:
            raise ConnectionLost(str(exc), replies) from None
        if not (accepted and final is not None and final.ok):
            await self._reset()
        return replies

    def _mail_params(self, data: bytes, addresses: list[str]) -> tuple[bytes, Reply | None]:
        """MAIL FROM's parameters for ``data``, or the local refusal the server would give."""
        params = b""
        size = self.extensions.get("SIZE")
        if size is not None:  # RFC 1870
            limit = int(size) if size.isdigit() else 0
            if limit and len(data) > limit:
                return b"", Reply(552, f"5.3.4 the message ({len(data)} bytes) is over the server's limit "
                                       f"of {limit} bytes")
            params += b" SIZE=%d" % len(data)
        if "8BITMIME" in self.extensions and not data.isascii():  # RFC 6152
            params += b" BODY=8BITMIME"
        if not all(a.isascii() for a in addresses):  # RFC 6531
            if "SMTPUTF8" not in self.extensions:
                return b"", Reply(553, "5.6.7 a non-ASCII address and the server does not offer SMTPUTF8")
            params += b" SMTPUTF8"
        return params, None

    async def rset(self) -> Reply:
        return await self._command(b"RSET\r\n")

    async def quit(self) -> None:
        """QUIT, waiting at most ``QUIT_TIMEOUT_S`` for the answer, then close."""
        try:
            if self.is_connected:
                self._wire.write(b"QUIT\r\n")
                await self._wire.reply(QUIT_TIMEOUT_S)
        except ConnectionLost:
            pass
        self.close()

    def close(self) -> None:
        if self._wire.transport is not None:
            self._wire.transport.close()

    # -- steps --------------------------------------------------------------------
    async def _read(self) -> Reply:
        return await self._wire.reply(self.timeout_s)

    async def _command(self, line: bytes) -> Reply:
        self._wire.write(line)
        return await self._read()

    async def _ask(self, line: bytes, pipelined: bool) -> Reply:
        """The next reply; ``line`` is written first unless it left with its group."""
        if not pipelined:
            self._wire.write(line)
        return await self._read()

    async def _reset(self) -> None:
        """RSET after a transaction that delivered nothing; a session that cannot reset is closed."""
        try:
            if (await self.rset()).ok:
                return
        except ConnectionLost:
            pass
        self.close()

    async def _hello(self, name: str) -> None:
        reply = await self._command(b"EHLO %s\r\n" % name.encode())
        self.extensions = {}
        if 500 <= reply.code < 600:  # an old server: RFC 5321 section 3.2
            reply = await self._command(b"HELO %s\r\n" % name.encode())
        elif reply.ok:
            for line in reply.text.split("\n")[1:]:
                keyword, _, value = line.partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = value
        if not reply.ok:
            raise ConnectFailed(f"EHLO/HELO refused: {reply.code} {reply.text}")

    async def _starttls(self, context: ssl.SSLContext, name: str) -> None:
        """RFC 3207; whatever the server said before the handshake is forgotten (section 4.2)."""
        wire = self._wire
        try:
            reply = await self._command(b"STARTTLS\r\n")
            if reply.code != 220:
                raise _TlsFailed(f"STARTTLS refused: {reply.code} {reply.text}")
            wire.parser, wire.replies = ReplyParser(), deque()
            wire.transport = await asyncio.get_running_loop().start_tls(
                wire.transport, wire, context, server_hostname=self.host, ssl_handshake_timeout=self.timeout_s)
            self.tls = True
            await self._hello(name)
        except (OSError, SmtpClientError) as exc:  # ssl.SSLError is an OSError
            raise _TlsFailed(f"STARTTLS failed: {exc}") from exc
