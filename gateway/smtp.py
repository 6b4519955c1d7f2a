"""The SMTP MX listener (aiosmtpd), served by each gateway process on the shared port.

aiosmtpd owns the protocol; this handler only asks ``raymail.smtp_rules`` and
stores mail through the same intake as ``POST /v1/import``. A message is answered
250 only after every recipient's mailbox has it on stable storage; a storage
failure answers 451 and the sender retries.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway import intake
from gateway.app import search_text
from gateway.services import Services
from raymail import addresses, smtp_rules
from raymail.errors import ApiError, StorageError
from raymail.model import Deliver

log = logging.getLogger(__name__)


class MxHandler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.svc.config.limits.max_recipients:
            return "452 4.5.3 Too many recipients"
        directory = self.svc.directory
        reply = smtp_rules.rcpt_reply(address, directory.is_local_domain,
                                      lambda a: self.svc.user_for_email(a) is not None)
        if reply.startswith("250"):
            envelope.rcpt_tos.append(addresses.parse_addr_spec(address))
        else:
            self.svc.metrics.error("smtp_rcpt_" + reply[:3])
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        if smtp_rules.bare_line_ending(raw):
            self.svc.metrics.error("smtp_bare_line_ending")
            return smtp_rules.BARE_LINE_ENDING
        users = []
        for rcpt in dict.fromkeys(envelope.rcpt_tos):
            user = self.svc.user_for_email(rcpt)
            if user is not None:
                users.append((rcpt, user))
        if not users:
            return "554 5.5.1 No valid recipients"
        queue_id = uuid.uuid4().hex[:16]
        now = time.time()
        trace = smtp_rules.trace_headers(
            mail_from=envelope.mail_from or "", helo=session.host_name or "", peer_ip=str(session.peer[0]),
            hostname=self.svc.config.server.hostname, queue_id=queue_id,
            recipient=users[0][0] if len(users) == 1 else None, now_s=now, tls=bool(session.ssl),
        )
        try:
            stored = await intake.store_raw(self.svc, trace + raw)
            text = search_text(stored.parsed.text, stored.parsed.html)
            ops = [Deliver(u.uid, intake.meta_for(stored, u.uid, "inbox", unread=True, received_s=now), now, text)
                   for _, u in users]
            results = await self.svc.router.apply(ops)
        except (StorageError, ApiError) as exc:
            log.warning("mx %s: not stored: %s", queue_id, exc)
            return "451 4.3.0 Temporary storage failure; please retry"
        if not all(r.ok for r in results):
            return "451 4.3.0 Temporary failure; please retry"
        self.svc.metrics.accepted(len(users))
        log.info("mx %s: accepted from <%s> for %d recipient(s), %d bytes", queue_id, envelope.mail_from,
                 len(users), len(raw))
        return f"250 2.0.0 OK queued as {queue_id}"


def mx_factory(svc: Services) -> Any:
    handler = MxHandler(svc)
    limits = svc.config.limits

    def make() -> SMTP:
        return SMTP(handler, hostname=svc.config.server.hostname, ident="raymail ESMTP",
                    data_size_limit=limits.max_message_bytes, enable_SMTPUTF8=True, decode_data=False,
                    timeout=300)

    return make
