"""The SMTP MX listener (aiosmtpd), served by each gateway process on the shared port.

aiosmtpd owns the protocol; this handler only asks ``raymail.smtp_rules`` and
stores mail through the same intake as ``POST /v1/import``. A message is answered
250 only after every recipient's mailbox has it on stable storage; a storage
failure answers 451 and the sender retries.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway import intake
from gateway.app import search_text
from gateway.services import Services
from gateway.smtp_session import GuardedSMTP
from raymail import addresses, mailauth, smtp_rules
from raymail.errors import ApiError, StorageError
from raymail.ids import new_id
from raymail.model import AuthSummary, Deliver
from raymail.ratelimit import TokenBuckets
from raymail.smtp_admission import Admission
from raymail.store.tls import ensure_certificate, server_context

log = logging.getLogger(__name__)


def _accept_sender(envelope: Envelope, address: str, mail_options: list[str]) -> str:
    envelope.mail_from = address
    envelope.mail_options.extend(mail_options)
    return "250 2.1.0 OK"


def _recipient(svc: Services, envelope: Envelope, address: str, rule: Any) -> str:
    """Ask ``rule`` about one RCPT; an accepted address joins the envelope."""
    if len(envelope.rcpt_tos) >= svc.config.limits.max_recipients:
        return "452 4.5.3 Too many recipients"
    reply = rule(address, svc.directory.is_local_domain, lambda a: svc.user_for_email(a) is not None)
    if reply.startswith("250"):
        envelope.rcpt_tos.append(addresses.parse_addr_spec(address))
    return reply


class _Pipelining:
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        """Offer PIPELINING (RFC 2920): aiosmtpd reads the commands of a group in
        order from its buffer and answers each in turn, which is what a pipelining
        server must do; clients then send MAIL, RCPT and DATA in one packet and wait
        once instead of three times. DATA, STARTTLS and AUTH still end a group (the
        STARTTLS rule is enforced by GuardedSMTP)."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


class MxHandler(_Pipelining):
    """Mail from the world for local users. Per client address, messages are rate
    limited (``[limits] mx_messages_per_minute``): past it, 450 4.7.0 and the
    sending server retries later. SPF, DKIM and DMARC are checked at the end of
    DATA (``[mailauth]``): the verdict goes in an ``Authentication-Results``
    header and the message summary, and ``mailauth.decide`` picks the folder or
    the refusal."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        per_min = svc.config.limits.mx_messages_per_minute
        self.per_ip = TokenBuckets(rate_per_s=per_min / 60, burst=per_min)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        wait_s = self.per_ip.take(str(session.peer[0]), time.monotonic())
        if wait_s > 0:
            self.svc.metrics.error("smtp_rate_limited")
            return f"450 4.7.0 Too many messages from your address; retry in {max(1, int(wait_s))} s"
        return _accept_sender(envelope, address, mail_options)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = _recipient(self.svc, envelope, address, smtp_rules.rcpt_reply)
        if not reply.startswith(("250", "452")):
            self.svc.metrics.error("smtp_rcpt_" + reply[:3])
            self.svc.events.record("rejected", smtp_code=int(reply[:3]), sender=envelope.mail_from or "",
                                   recipient_domain=address.rpartition("@")[2][:253].lower(),
                                   ip=str(session.peer[0]), detail=reply)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        if smtp_rules.bare_line_ending(raw):
            self.svc.metrics.error("smtp_bare_line_ending")
            self.svc.events.record("rejected", smtp_code=550, sender=envelope.mail_from or "",
                                   ip=str(session.peer[0]), detail=smtp_rules.BARE_LINE_ENDING)
            return smtp_rules.BARE_LINE_ENDING
        users = []
        for rcpt in dict.fromkeys(envelope.rcpt_tos):
            user = self.svc.user_for_email(rcpt)
            if user is not None:
                users.append((rcpt, user))
        if not users:
            return "554 5.5.1 No valid recipients"
        folder, header, auth = "inbox", b"", None
        if self.svc.config.mailauth.enabled:
            res = await self._authenticate(session, envelope, raw)
            decision = mailauth.decide(res, self.svc.config.mailauth)
            if decision.reply:
                self.svc.metrics.error("smtp_auth_" + decision.reply[:3])
                self.svc.events.record("rejected" if decision.reply.startswith("5") else "tempfailed",
                                       smtp_code=int(decision.reply[:3]), sender=envelope.mail_from or "",
                                       recipient_domain=users[0][0].rpartition("@")[2].lower(),
                                       ip=str(session.peer[0]), detail=decision.reply)
                return decision.reply
            folder, auth = decision.folder, res.summary()
            cfg = self.svc.config
            header = mailauth.header(cfg.mailauth.authserv_id or cfg.server.hostname, res)
        targets = [(u.uid, folder, True) for _, u in users]
        return await store_and_deliver(self.svc, session, envelope, raw, targets,
                                       users[0][0] if len(users) == 1 else None, "mx", header, auth)

    async def _authenticate(self, session: Session, envelope: Envelope, raw: bytes) -> mailauth.AuthResults:
        started = time.perf_counter()
        try:
            res = await mailauth.authenticate(self.svc.resolver, raw, str(session.peer[0]), envelope.mail_from or "",
                                              session.host_name or "", self.svc.config.mailauth.max_dkim_signatures,
                                              random.random)
        except Exception as exc:  # noqa: BLE001 - a fault in the checks must not turn into a 5xx for the sender
            log.exception("mailauth failed; recording temperror")
            self.svc.metrics.error("smtp_auth_internal")
            return mailauth.unavailable(envelope.mail_from or "", session.host_name or "", f"internal error: {exc}")
        log.debug("mailauth %.2f ms: spf=%s dkim=%s dmarc=%s", (time.perf_counter() - started) * 1000,
                  res.spf.result, [d.result for d in res.dkim], res.dmarc.result)
        return res


async def store_and_deliver(svc: Services, session: Session, envelope: Envelope, raw: bytes,
                            targets: list[tuple[str, str, bool]], recipient: str | None, kind: str,
                            auth_header: bytes = b"", auth: AuthSummary | None = None, retry_key: str = "") -> str:
    """Store the message once (trace headers, our Authentication-Results, then the
    original bytes unchanged) and put it in every (uid, folder, unread) target; the
    reply says whether it is on stable storage. With ``retry_key`` the mailbox entries
    get ids derived from it, so a retried submission lands once (shards ignore an id
    they hold)."""
    queue_id = new_id()[:16]
    now = time.time()
    reverse_path = "" if envelope.mail_from in (None, "<>") else envelope.mail_from  # aiosmtpd: "<>" for null
    trace = smtp_rules.trace_headers(
        mail_from=reverse_path, helo=session.host_name or "", peer_ip=str(session.peer[0]),
        hostname=svc.config.server.hostname, queue_id=queue_id, recipient=recipient, now_s=now,
        tls=bool(session.ssl),
    )
    try:
        stored = await intake.store_raw(svc, trace + auth_header + raw)
        text = search_text(stored.parsed.text, stored.parsed.html)
        ops = [Deliver(uid, intake.meta_for(stored, uid, folder, unread=unread, received_s=now, auth=auth,
                                            email_id=smtp_rules.derived_id(retry_key, uid, folder) if retry_key
                                            else None), now, text)
               for uid, folder, unread in targets]
        results = await svc.router.apply(ops)
    except (StorageError, ApiError) as exc:
        log.warning("%s %s: not stored: %s", kind, queue_id, exc)
        svc.events.record("tempfailed", smtp_code=451, sender=envelope.mail_from or "", ip=str(session.peer[0]),
                          detail=f"{kind}: {exc}")
        return "451 4.3.0 Temporary storage failure; please retry"
    if not all(r.ok for r in results):
        svc.events.record("tempfailed", smtp_code=451, sender=envelope.mail_from or "", ip=str(session.peer[0]),
                          detail=f"{kind}: a mailbox refused the write")
        return "451 4.3.0 Temporary failure; please retry"
    message_id = next((v for k, v in stored.parsed.headers if k.lower() == "message-id"), "")
    for rcpt in dict.fromkeys(envelope.rcpt_tos):
        svc.events.record("accepted", smtp_code=250, message_id=message_id, sender=envelope.mail_from or "",
                          recipient_domain=rcpt.rpartition("@")[2], ip=str(session.peer[0]),
                          detail=f"{kind} {queue_id}")
    svc.metrics.accepted(len(targets))
    log.info("%s %s: accepted from <%s> for %d mailbox(es), %d bytes", kind, queue_id, envelope.mail_from,
             len(targets), len(raw))
    return f"250 2.0.0 OK queued as {queue_id}"


class SubmissionHandler(_Pipelining):
    """Authenticated clients (Thunderbird, swaks): only after STARTTLS, only as themselves."""

    def __init__(self, svc: Services, lockout: TokenBuckets) -> None:
        self.svc = svc
        self.lockout = lockout

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ip = str(session.peer[0])
        if self.lockout.exhausted(ip, time.monotonic()):
            return AuthResult(success=False, handled=False, message=smtp_rules.LOCKED_OUT)
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        user = self.svc.user_for_token(auth_data.password.decode("utf-8", "replace"))
        if user is None or user.email.lower() != login.strip().lower():
            self.lockout.take(ip, time.monotonic())  # one failure spent
            self.svc.metrics.error("smtp_auth_failed")
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        user = session.auth_data
        if user is None or address.strip().lower() != user.email.lower():
            return smtp_rules.NOT_YOUR_ADDRESS
        return _accept_sender(envelope, address, mail_options)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        svc = self.svc
        enabled = svc.outbound is not None

        def rule(a: str, is_local: Any, exists: Any) -> str:
            return smtp_rules.submission_rcpt_reply(a, is_local, exists, enabled)

        reply = _recipient(svc, envelope, address, rule)
        if reply.startswith("250") and enabled and not svc.directory.is_local_domain(addresses.domain_of(
                envelope.rcpt_tos[-1])):
            user = session.auth_data
            try:
                hits = await svc.outbound.suppressed(user.uid, user.email, [envelope.rcpt_tos[-1].lower()])
            except ApiError:
                envelope.rcpt_tos.pop()
                return "451 4.3.0 The outbound queue is unavailable; try again later"
            if hits:
                svc.events.record("suppressed", smtp_code=550, sender=user.email,
                                  recipient_domain=addresses.domain_of(envelope.rcpt_tos.pop()),
                                  detail=f"refused at RCPT: {hits[0][1]}")
                return smtp_rules.SUPPRESSED
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        if smtp_rules.bare_line_ending(raw):
            return smtp_rules.BARE_LINE_ENDING
        user = session.auth_data
        if smtp_rules.header_from_address(raw) != user.email.lower():
            return "553 5.7.1 The From header must be your own address"
        wait_s = self.svc.send_limiter.take(user.uid, time.monotonic())
        if wait_s > 0:
            return f"451 4.7.1 Sending too fast; retry in {wait_s:.0f} s"
        targets = [(user.uid, "sent", False)]
        remote = []
        for rcpt in dict.fromkeys(envelope.rcpt_tos):
            r = self.svc.user_for_email(rcpt)
            if r is not None:
                targets.append((r.uid, "inbox", True))
            elif not self.svc.directory.is_local_domain(addresses.domain_of(rcpt)):
                remote.append(rcpt.lower())
        key = smtp_rules.retry_key(user.uid, raw, list(envelope.rcpt_tos))
        outbound = None
        if remote:
            try:
                outbound = await self._outbound(session, envelope, raw, remote, key)
            except (StorageError, ApiError) as exc:
                log.warning("submission: outbound copy not stored: %s", exc)
                return "451 4.3.0 Temporary storage failure; please retry"
        reply = await store_and_deliver(self.svc, session, envelope, raw, targets, None, "submission",
                                        retry_key=key)
        if outbound is not None and reply.startswith("250"):
            try:
                await self.svc.outbound.enqueue(outbound)  # type: ignore[union-attr]
            except ApiError as exc:
                log.warning("submission: not queued: %s", exc)
                return "451 4.3.0 The outbound queue did not confirm; please retry"
        return reply

    async def _outbound(self, session: Session, envelope: Envelope, raw: bytes, remote: list[str],
                        key: str) -> Any:
        """The copy for other domains: stored with its own trace header, classified by its
        headers (List-Unsubscribe, Precedence), signed when the domain has a DKIM key."""
        from email.parser import BytesHeaderParser

        from gateway.app import outbound_message

        user = session.auth_data
        now = time.time()
        trace = smtp_rules.trace_headers(
            mail_from=envelope.mail_from or "", helo=session.host_name or "", peer_ip=str(session.peer[0]),
            hostname=self.svc.config.server.hostname, queue_id=uuid.uuid4().hex[:16], recipient=None, now_s=now,
            tls=bool(session.ssl))
        # Return-Path is the final delivery's to add, never a relay's (RFC 5321 section 4.4).
        full = trace.split(b"\r\n", 1)[1] + raw
        blob = await self.svc.blob_writer.put(full)  # group commit, as for every other message blob
        parsed = BytesHeaderParser().parsebytes(raw)
        headers = tuple((k, str(v)) for k, v in parsed.items())
        message_id = str(parsed.get("Message-ID", "")).strip()
        out_id = smtp_rules.derived_id(key, "outbound") if key else uuid.uuid4().hex  # the spool drops a repeat
        return await outbound_message(self.svc, user, full, blob, message_id, remote, None, headers, out_id, now)


def tls_context(svc: Services) -> ssl.SSLContext:
    server = svc.config.server
    if server.tls_cert_file:
        return server_context(Path(server.tls_cert_file), Path(server.tls_key_file or server.tls_cert_file))
    return server_context(*ensure_certificate(svc.config.data_path, server.hostname))


def _factory(svc: Services, handler: Any, ident: str, **extra: Any) -> Any:
    """A protocol factory for one listener: session guards, limits and TLS from config."""
    limits = svc.config.limits
    ctx = tls_context(svc)
    admission = Admission(limits.smtp_connections_per_ip, limits.smtp_connects_per_minute)

    def make() -> SMTP:
        return GuardedSMTP(handler, admission=admission, session_max_s=limits.smtp_session_max_s,
                           hostname=svc.config.server.hostname, ident=ident,
                           data_size_limit=limits.max_message_bytes, enable_SMTPUTF8=True, decode_data=False,
                           timeout=limits.smtp_idle_timeout_s, tls_context=ctx, **extra)

    return make


def mx_factory(svc: Services) -> Any:
    """The MX: anyone may deliver to local users; STARTTLS offered, not required."""
    return _factory(svc, MxHandler(svc), "raymail ESMTP")


def submission_factory(svc: Services) -> Any:
    """Submission: STARTTLS first, then AUTH PLAIN/LOGIN (email + token), then mail."""
    lockout = TokenBuckets(rate_per_s=1 / 60, burst=5)  # 5 failures, then one more a minute, per IP
    handler = SubmissionHandler(svc, lockout)
    return _factory(svc, handler, "raymail ESMTP submission", require_starttls=True, auth_required=True,
                    auth_require_tls=True, authenticator=handler.authenticate)
