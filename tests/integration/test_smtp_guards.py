"""SMTP session guards on both listeners, over real sockets: connection caps and
rates per client address, idle and whole-session limits, commands pipelined
behind STARTTLS. Each test connects from its own loopback address (127.0.0.x), so
the per-address counters of one test never touch another's."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest


@pytest.fixture(scope="module")
def guarded(ray_cluster, tmp_path_factory):
    from conftest import start_app

    app = start_app(tmp_path_factory.mktemp("guards"), limits={
        "smtp_connections_per_ip": 2, "smtp_connects_per_minute": 5,
        "smtp_idle_timeout_s": 1.0, "smtp_session_max_s": 3.0,
    })
    yield app
    app.deployment.stop()


class Client:
    """A raw SMTP connection from a chosen loopback address."""

    def __init__(self, port: int, source_ip: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source_ip, 0))
        self.f = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply; b"" at end of stream."""
        lines = b""
        while True:
            line = self.f.readline()
            lines += line
            if not line or line[3:4] != b"-":
                return lines

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        return self.reply()

    def closed(self) -> bool:
        return self.f.readline() == b""

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def _ports(app) -> list[int]:
    return [app.deployment.smtp_port, app.deployment.submission_port]


@pytest.mark.parametrize("listener", [0, 1], ids=["mx", "submission"])
async def test_concurrent_connections_per_address_are_capped(guarded, listener):
    def run() -> None:
        port, ip = _ports(guarded)[listener], f"127.0.0.{11 + listener}"
        first, second = Client(port, ip), Client(port, ip)
        assert first.reply().startswith(b"220") and second.reply().startswith(b"220")
        third = Client(port, ip)
        assert third.reply().startswith(b"421 4.7.0 Too many connections")
        assert third.closed()
        third.close()
        other = Client(port, "127.0.0.99")  # another address is not affected
        assert other.reply().startswith(b"220")
        other.close()
        assert first.cmd(b"QUIT\r\n").startswith(b"221")
        first.close()
        time.sleep(0.2)  # the server notices the close
        again = Client(port, ip)
        assert again.reply().startswith(b"220")
        for c in (second, again):
            c.close()

    await asyncio.to_thread(run)


async def test_new_connections_per_minute_are_capped(guarded):
    def run() -> None:
        port = guarded.deployment.smtp_port
        for _ in range(5):
            c = Client(port, "127.0.0.21")
            assert c.reply().startswith(b"220")
            assert c.cmd(b"QUIT\r\n").startswith(b"221")
            c.close()
        c = Client(port, "127.0.0.21")
        assert c.reply().startswith(b"421 4.7.0 Too many new connections")
        assert c.closed()
        c.close()

    await asyncio.to_thread(run)


async def test_idle_session_is_closed_with_421(guarded):
    def run() -> None:
        c = Client(guarded.deployment.smtp_port, "127.0.0.31")
        assert c.reply().startswith(b"220")
        assert c.cmd(b"EHLO client.test\r\n").startswith(b"250")
        started = time.monotonic()
        assert c.reply().startswith(b"421 4.4.2 Idle")
        assert 0.8 < time.monotonic() - started < 5
        assert c.closed()
        c.close()

    await asyncio.to_thread(run)


async def test_busy_session_is_closed_at_the_session_limit(guarded):
    def run() -> None:
        c = Client(guarded.deployment.smtp_port, "127.0.0.41")
        assert c.reply().startswith(b"220")
        started = time.monotonic()
        while True:  # never idle, yet the session ends
            reply = c.cmd(b"NOOP\r\n")
            if not reply.startswith(b"250"):
                break
            assert time.monotonic() - started < 8, "the session limit never came"
            time.sleep(0.3)
        assert reply.startswith(b"421 4.4.2 Session time limit")
        assert time.monotonic() - started > 2.5
        assert c.closed()
        c.close()

    await asyncio.to_thread(run)


@pytest.mark.parametrize("listener", [0, 1], ids=["mx", "submission"])
async def test_commands_pipelined_after_starttls_are_refused(guarded, listener):
    def run() -> None:
        c = Client(_ports(guarded)[listener], f"127.0.0.{51 + listener}")
        assert c.reply().startswith(b"220")
        assert c.cmd(b"EHLO client.test\r\n").startswith(b"250")
        # Plaintext behind STARTTLS would otherwise be read as if it came over TLS.
        reply = c.cmd(b"STARTTLS\r\nMAIL FROM:<injected@elsewhere.test>\r\n")
        assert reply.startswith(b"554 5.5.1"), reply
        assert c.closed()
        c.close()

    await asyncio.to_thread(run)


PATHS = [
    (b"<ann@elsewhere.test>", b"250"), (b"<ann@elsewhere.test> SIZE=100", b"250"), (b"<>", b"250"),
    (b"<ann@elsewhere.>", b"553"), (b"<ann@.elsewhere.test>", b"553"), (b"<ann@else..where.test>", b"553"),
    (b"<ann@elsewhere.test>(comment)", b"250"), (b'<"ann smith"@elsewhere.test>', b"250"),
]


async def test_mail_from_paths(guarded):
    """The plain-path shortcut answers as aiosmtpd's full parser does."""
    def run() -> list[bytes]:
        c = Client(guarded.deployment.smtp_port, "127.0.0.61")
        try:
            assert c.reply().startswith(b"220")
            assert c.cmd(b"EHLO client.test\r\n").startswith(b"250")
            got = []
            for path, _ in PATHS:
                got.append(c.cmd(b"MAIL FROM:" + path + b"\r\n")[:3])
                assert c.cmd(b"RSET\r\n").startswith(b"250")
            return got
        finally:
            c.close()

    assert await asyncio.to_thread(run) == [code for _, code in PATHS]
