"""Mail events, handed to the catalog's ``events`` table in bulk: SMTP intake in each
gateway process, and every outbound step (queued, delivered, deferred, bounced,
suppressed) from the outbound spool. The catalog partitions the table by UTC day.

Recording never waits: rows are buffered and sent about once a second (or per
500 rows) in one fire-and-forget call; the event log is derived, best-effort data
(the mailboxes are the truth).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
FLUSH_ROWS = 500


class EventSink:
    def __init__(self, namespace: str, catalog_name: str = "catalog") -> None:
        self.namespace = namespace
        self.catalog_name = catalog_name
        self._rows: list[dict] = []
        self._handle: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0

    def record(self, event: str, *, smtp_code: int, message_id: str = "", sender: str = "",
               recipient_domain: str = "", ip: str = "", pool: str = "", detail: str = "") -> None:
        self._rows.append({"ts": time.time(), "event": event, "message_id": message_id[:998], "sender": sender[:320],
                           "recipient_domain": recipient_domain[:253], "pool": pool, "ip": ip,
                           "smtp_code": smtp_code, "detail": detail[:500]})
        if len(self._rows) >= FLUSH_ROWS:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY_S, self.flush)

    def flush(self) -> None:
        self._timer = None
        rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            if self._handle is None:
                import ray

                self._handle = ray.get_actor(self.catalog_name, namespace=self.namespace)
            self._handle.add.remote("events", rows)
            self.sent += len(rows)
        except Exception:  # noqa: BLE001 - the event log is best effort
            log.warning("could not hand %d events to the catalog", len(rows), exc_info=True)
