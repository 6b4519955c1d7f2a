"""SmtpClient against real SMTP servers on loopback: aiosmtpd with a wiretap on what the
client writes, and a bare socket server for the replies aiosmtpd never gives. The
reply parser and the DATA encoding are tested on bytes alone."""

from __future__ import annotations

import asyncio
import copy
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from peers import free_port

from raymail.errors import ConnectFailed, ConnectionLost
from raymail.outbound.smtp_client import (
    MAX_REPLY_LINE_BYTES,
    Reply,
    ReplyParser,
    SmtpClient,
    data_bytes,
)
from raymail.store.tls import ensure_certificate, server_context

MESSAGE = b"Subject: test\r\nMessage-ID: <m1@a.test>\r\n\r\nthe body\r\n"
RCPTS = ["b@y.test", "c@y.test"]


@dataclass
class Got:
    peer_ip: str
    tls: bool
    mail_from: str
    mail_options: list[str]
    rcpts: list[str]
    content: bytes


class _Wiretap(SMTP):
    """aiosmtpd's server, noting every read of what the client wrote (so a test sees
    which commands arrived together) and answering DATA from a script when told to."""

    def data_received(self, data: bytes) -> None:
        self.event_handler.chunks.append(data)
        super().data_received(data)

    async def smtp_DATA(self, arg: str) -> None:
        if self.event_handler.data_cmd:
            await self.push(self.event_handler.data_cmd.pop(0))
            return
        await super().smtp_DATA(arg)


class _WiretapController(Controller):
    def factory(self) -> SMTP:
        return _Wiretap(self.handler, **self.SMTP_kwargs)


@dataclass
class Mx:
    """A receiving server. Scripts give one reply per use, then the normal answer:
    ``mail`` for MAIL, ``data_cmd`` for the DATA command, ``data`` after the message
    ("drop": close without a reply; "sleep": answer 3 s late). ``refuse`` maps an
    address to its RCPT reply, every time."""

    pipelining: bool = True
    ehlo: bool = True
    mail: list[str] = field(default_factory=list)
    data_cmd: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    tls_context: Any = None
    size_limit: int = 2**25
    chunks: list[bytes] = field(default_factory=list)
    received: list[Got] = field(default_factory=list)

    def start(self) -> Mx:
        self.port = free_port("127.0.0.1")
        self.controller = _WiretapController(self, hostname="127.0.0.1", port=self.port, ready_timeout=10,
                                             tls_context=self.tls_context, data_size_limit=self.size_limit)
        self.controller.start()
        return self

    @property
    def wire(self) -> bytes:
        return b"".join(self.chunks)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        if not self.ehlo:
            return ["502 5.5.1 EHLO not implemented"]
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = self.mail.pop(0) if self.mail else "250 OK"
        if reply.startswith("250"):
            envelope.mail_from, envelope.mail_options = address, list(options)
        return reply

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = self.refuse.get(address, "250 OK")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.data.pop(0) if self.data else "250 2.0.0 OK"
        if reply == "drop":
            server.transport.abort()
            return "421 closed"  # never reaches the client
        if reply == "sleep":
            await asyncio.sleep(3)
            reply = "250 2.0.0 late"
        if reply.startswith("250"):
            self.received.append(Got(session.peer[0], session.ssl is not None, envelope.mail_from,
                                     list(envelope.mail_options), list(envelope.rcpt_tos),
                                     envelope.original_content))
        return reply


@pytest.fixture
def mx():
    servers: list[Mx] = []

    def make(**options: Any) -> Mx:
        servers.append(Mx(**options).start())
        return servers[-1]

    yield make
    for server in servers:
        server.controller.stop()


async def connect(server: Mx, ip: str = "127.0.0.1", timeout_s: float = 5.0,
                  tls: ssl.SSLContext | None = None) -> SmtpClient:
    return await SmtpClient.connect("127.0.0.1", server.port, source_ip=ip, local_hostname="out.a.test",
                                    timeout_s=timeout_s, tls_context=tls)


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


# -- the transaction --------------------------------------------------------------
async def test_a_pipelined_transaction_sends_mail_rcpt_and_data_in_one_write(mx):
    server = mx()
    client = await connect(server)
    assert "PIPELINING" in client.extensions
    replies = await client.send("a@x.test", [*RCPTS, "d@y.test"], MESSAGE)
    assert replies == dict.fromkeys([*RCPTS, "d@y.test"], Reply(250, "2.0.0 OK"))
    group = next(c for c in server.chunks if c.startswith(b"MAIL FROM:"))
    assert group.split(b"\r\n")[1:] == [b"RCPT TO:<b@y.test>", b"RCPT TO:<c@y.test>", b"RCPT TO:<d@y.test>",
                                        b"DATA", b""]
    assert server.received[0].content == MESSAGE and server.received[0].mail_from == "a@x.test"
    assert client.is_connected
    await client.quit()
    assert not client.is_connected and server.wire.endswith(b"QUIT\r\n")


async def test_without_pipelining_each_command_waits_for_its_reply(mx):
    server = mx(pipelining=False)
    client = await connect(server)
    assert "PIPELINING" not in client.extensions
    assert await client.send("a@x.test", RCPTS, MESSAGE) == dict.fromkeys(RCPTS, Reply(250, "2.0.0 OK"))
    commands = server.chunks[: server.chunks.index(b"DATA\r\n") + 1]
    assert [c.split(b":")[0] for c in commands[1:]] == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA\r\n"]
    assert all(c.count(b"\r\n") == 1 for c in commands)
    assert server.received[0].rcpts == RCPTS


async def test_ehlo_refused_falls_back_to_helo(mx):
    server = mx(ehlo=False)
    client = await connect(server)
    assert client.extensions == {}
    assert await client.send("a@x.test", RCPTS, MESSAGE) == dict.fromkeys(RCPTS, Reply(250, "2.0.0 OK"))
    assert b"HELO out.a.test\r\n" in server.wire
    assert b"MAIL FROM:<a@x.test>\r\n" in server.chunks  # no parameters, no pipelining


async def test_multi_line_replies(mx):
    server = mx(refuse={"c@y.test": "550-5.1.1 no such user\r\n550 5.1.1 see the list"},
                data=["250-2.0.0 queued\r\n250 2.0.0 as 42"])
    client = await connect(server)
    assert {"PIPELINING", "SIZE", "8BITMIME"} <= set(client.extensions)  # EHLO is multi-line too
    assert await client.send("a@x.test", RCPTS, MESSAGE) == {
        "b@y.test": Reply(250, "2.0.0 queued\n2.0.0 as 42"),
        "c@y.test": Reply(550, "5.1.1 no such user\n5.1.1 see the list")}


OK = Reply(250, "2.0.0 OK")


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest.mark.parametrize("script, expect, body_sent", [
    ({"mail": ["451 4.3.0 busy"]}, dict.fromkeys(RCPTS, Reply(451, "4.3.0 busy")), False),
    ({"mail": ["550 5.7.1 sender refused"]}, dict.fromkeys(RCPTS, Reply(550, "5.7.1 sender refused")), False),
    ({"refuse": {"c@y.test": "450 4.2.0 mailbox busy"}}, {"b@y.test": OK, "c@y.test": Reply(450, "4.2.0 mailbox busy")},
     True),
    ({"refuse": {"b@y.test": "550 5.1.1 unknown"}}, {"b@y.test": Reply(550, "5.1.1 unknown"), "c@y.test": OK}, True),
    ({"refuse": dict.fromkeys(RCPTS, "550 5.1.1 unknown")}, dict.fromkeys(RCPTS, Reply(550, "5.1.1 unknown")),
     False),
    ({"data_cmd": ["451 4.3.2 not now"]}, dict.fromkeys(RCPTS, Reply(451, "4.3.2 not now")), False),
    ({"data_cmd": ["554 5.3.0 no data"], "refuse": {"c@y.test": "550 5.1.1 unknown"}},
     {"b@y.test": Reply(554, "5.3.0 no data"), "c@y.test": Reply(550, "5.1.1 unknown")}, False),
    ({"data": ["452 4.3.1 disk full"]}, dict.fromkeys(RCPTS, Reply(452, "4.3.1 disk full")), True),
    ({"data": ["554 5.7.1 spam"], "refuse": {"c@y.test": "550 5.1.1 unknown"}},
     {"b@y.test": Reply(554, "5.7.1 spam"), "c@y.test": Reply(550, "5.1.1 unknown")}, True),
], ids=["mail-4xx", "mail-5xx", "one-rcpt-4xx", "one-rcpt-5xx", "every-rcpt-5xx", "data-4xx", "data-5xx",
        "after-body-4xx", "after-body-5xx"])
async def test_refusals_reach_the_recipients_they_concern(mx, pipelining, script, expect, body_sent):
    server = mx(pipelining=pipelining, **copy.deepcopy(script))
    client = await connect(server)
    assert await client.send("a@x.test", RCPTS, MESSAGE) == expect
    assert (b"the body" in server.wire) == body_sent
    delivered = any(r.ok for r in expect.values())
    assert server.wire.endswith(b"RSET\r\n") != delivered  # a transaction that delivered nothing is reset
    # The session goes on: the next transaction is delivered.
    assert client.is_connected
    server.mail, server.data_cmd, server.data, server.refuse = [], [], [], {}
    assert await client.send("a@x.test", ["e@y.test"], MESSAGE) == {"e@y.test": OK}


async def test_every_rcpt_refused_but_data_accepted_gets_an_empty_message(mx):
    """RFC 2920 section 3.1: a server that answers 354 after refusing every recipient
    still needs the end of data; no message goes out."""
    server = mx(refuse=dict.fromkeys(RCPTS, "550 5.1.1 unknown"), data_cmd=["354 go ahead"])
    client = await connect(server)
    assert await client.send("a@x.test", RCPTS, MESSAGE) == dict.fromkeys(RCPTS, Reply(550, "5.1.1 unknown"))
    assert server.wire.endswith(b"DATA\r\n.\r\nRSET\r\n")
    assert b"the body" not in server.wire and client.is_connected


# -- broken sessions --------------------------------------------------------------
async def test_a_connection_dropped_mid_data_raises_with_the_replies_known(mx):
    server = mx(refuse={"c@y.test": "550 5.1.1 unknown"}, data=["drop"])
    client = await connect(server)
    with pytest.raises(ConnectionLost, match="closed") as info:
        await client.send("a@x.test", RCPTS, MESSAGE)
    assert info.value.replies == {"c@y.test": Reply(550, "5.1.1 unknown")}
    assert not client.is_connected
    with pytest.raises(ConnectionLost):
        await client.send("a@x.test", RCPTS, MESSAGE)


async def test_a_reply_that_does_not_come_times_out(mx):
    server = mx(data=["sleep"])
    client = await connect(server, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="no reply within 0.5 s") as info:
        await client.send("a@x.test", RCPTS, MESSAGE)
    assert time.monotonic() - started < 2.5
    assert info.value.replies == {} and not client.is_connected


async def test_connect_failures(mx):
    port = free_port("127.0.0.1")  # nobody listens
    with pytest.raises(ConnectFailed):
        await SmtpClient.connect("127.0.0.1", port, source_ip="127.0.0.1", local_hostname="out.a.test",
                                 timeout_s=2)


async def serve(script: list[bytes]) -> tuple[asyncio.Server, int, list[bytes]]:
    """A bare server: writes ``script`` item by item, one per line the client sends
    (the first at once), and keeps the connection open."""
    heard: list[bytes] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for item in script:
            writer.write(item)
            heard.append(await reader.readline())
        await reader.read()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], heard


@pytest.mark.parametrize("script, error", [
    ([b"554 5.7.1 go away\r\n"], "greeting 554 5.7.1 go away"),
    ([b"220 hi\r\n", b"250-hi\r\n250 " + b"x" * MAX_REPLY_LINE_BYTES + b"\r\n"], "not an SMTP reply"),
    ([b"220 hi\r\n", b"hello there\r\n"], "not an SMTP reply"),
    ([b"220 hi\r\n", b"421 4.3.2 shutting down\r\n"], "EHLO/HELO refused: 421"),
], ids=["greeting-5xx", "line-too-long", "not-smtp", "ehlo-4xx"])
async def test_a_server_that_gives_no_session(script, error):
    server, port, _ = await serve(script)
    async with server:
        with pytest.raises(ConnectFailed, match=error):
            await SmtpClient.connect("127.0.0.1", port, source_ip="127.0.0.1", local_hostname="out.a.test",
                                     timeout_s=2)


async def test_a_reply_nobody_asked_for_makes_the_session_unusable():
    server, port, _ = await serve([b"220 hi\r\n", b"250 hi\r\n421 4.4.2 idle too long\r\n"])
    async with server:
        client = await SmtpClient.connect("127.0.0.1", port, source_ip="127.0.0.1", local_hostname="out.a.test",
                                          timeout_s=2)
        for _ in range(50):  # the 421 comes with EHLO's reply, unasked; the connection stays open
            if not client.is_connected:
                break
            await asyncio.sleep(0.02)
        assert not client.is_connected
        client.close()


# -- TLS --------------------------------------------------------------------------
async def test_starttls_when_offered(mx, tmp_path):
    server = mx(tls_context=server_context(*ensure_certificate(tmp_path, "mx.y.test")))
    client = await connect(server, tls=client_tls())
    assert client.tls and "STARTTLS" not in client.extensions  # the second EHLO, over TLS
    assert await client.send("a@x.test", RCPTS, MESSAGE) == dict.fromkeys(RCPTS, OK)
    assert server.received[0].tls


async def test_starttls_offered_but_not_asked_for_stays_plain(mx, tmp_path):
    server = mx(tls_context=server_context(*ensure_certificate(tmp_path, "mx.y.test")))
    client = await connect(server)
    assert not client.tls and "STARTTLS" in client.extensions
    await client.send("a@x.test", RCPTS, MESSAGE)
    assert not server.received[0].tls


async def test_a_broken_starttls_goes_on_in_plain_text(mx):
    server = mx(tls_context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))  # no certificate: every handshake fails
    client = await connect(server, tls=client_tls())
    assert not client.tls
    assert await client.send("a@x.test", RCPTS, MESSAGE) == dict.fromkeys(RCPTS, OK)
    assert server.wire.count(b"EHLO out.a.test") == 2 and b"STARTTLS\r\n" in server.wire  # tried, then again
    assert not server.received[0].tls


# -- what goes on the wire --------------------------------------------------------
async def test_the_message_is_dot_stuffed_with_crlf_line_ends(mx):
    server = mx()
    client = await connect(server)
    message = b"Subject: dots\n\n.leading dot\nbare lf\r\n.\r\nbare cr\r..two\nend"
    await client.send("a@x.test", RCPTS, message)
    assert server.wire.endswith(b"DATA\r\nSubject: dots\r\n\r\n..leading dot\r\nbare lf\r\n..\r\nbare cr\r\n"
                                b"...two\r\nend\r\n.\r\n")
    assert server.received[0].content == b"Subject: dots\r\n\r\n.leading dot\r\nbare lf\r\n.\r\nbare cr\r\n..two\r\nend\r\n"


async def test_size_and_8bitmime_parameters(mx):
    server = mx()
    client = await connect(server)
    await client.send("a@x.test", RCPTS, MESSAGE)
    eight_bit = "Subject: café\r\n\r\nnaïve\r\n".encode()
    await client.send("a@x.test", RCPTS, eight_bit)
    assert server.received[0].mail_options == [f"SIZE={len(MESSAGE) + 3}"]
    assert server.received[1].mail_options == [f"SIZE={len(eight_bit) + 3}", "BODY=8BITMIME"]
    assert server.received[1].content == eight_bit


async def test_a_message_over_the_advertised_size_is_refused_locally(mx):
    server = mx(size_limit=1000)
    client = await connect(server)
    assert client.extensions["SIZE"] == "1000"
    replies = await client.send("a@x.test", RCPTS, b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
    assert {r.code for r in replies.values()} == {552} and "limit of 1000 bytes" in replies["b@y.test"].text
    assert b"MAIL FROM" not in server.wire and client.is_connected


@pytest.mark.parametrize("ip", ["127.0.0.2", "127.0.0.3"])
async def test_the_connection_leaves_from_the_source_address(mx, ip):
    server = mx()
    client = await connect(server, ip=ip)
    await client.send("a@x.test", RCPTS, MESSAGE)
    assert server.received[0].peer_ip == ip


# -- grammar on bytes alone -------------------------------------------------------
@pytest.mark.parametrize("data, expect", [
    (b"", b"\r\n.\r\n"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b"a\nb", b"a\r\nb\r\n.\r\n"),
    (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"x\n.\n..\n", b"x\r\n..\r\n...\r\n.\r\n"),
    (b"x.y\r\n a.\r\n", b"x.y\r\n a.\r\n.\r\n"),
])
def test_data_bytes(data, expect):
    assert data_bytes(data) == expect


WIRE = (b"220 mx ready\r\n250-mx.y.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
        b"250 OK\r\n550-5.1.1 no such user\n550 5.1.1 bye\r\n354\r\n")
REPLIES = [Reply(220, "mx ready"), Reply(250, "mx.y.test\nPIPELINING\nSIZE 1000"), Reply(250, "OK"),
           Reply(550, "5.1.1 no such user\n5.1.1 bye"), Reply(354, "")]


@pytest.mark.parametrize("step", [1, 2, 7, len(WIRE)])
def test_reply_parser_on_any_split(step):
    parser = ReplyParser()
    got = [r for i in range(0, len(WIRE), step) for r in parser.feed(WIRE[i:i + step])]
    assert got == REPLIES


@pytest.mark.parametrize("data", [b"25 short\r\n", b"250x\r\n", b"abc ok\r\n", b"2" * (MAX_REPLY_LINE_BYTES + 1),
                                  b"250-more\r\n" * 101])
def test_reply_parser_refuses_what_is_not_smtp(data):
    with pytest.raises(ConnectionLost):
        ReplyParser().feed(data)
