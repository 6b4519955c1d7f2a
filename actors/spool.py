"""OutboundSpool: the durable truth of outbound mail, and the dispatcher of its work.

Work flows: gateways ``enqueue`` -> the spool puts due recipients, grouped by
destination domain, into one Ray queue per IP pool -> a pool's sender actors take
entries, ``claim`` them (warm-up quota and lease) -> ``report`` the SMTP outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from typing import Any

from gateway.events import EventSink
from raymail import codec, compose
from raymail.config import Config
from raymail.errors import StorageError
from raymail.link import LinkServer
from raymail.model import Address, Deliver, EmailMeta
from raymail.outbound import dsn, retry, suppression, warmup
from raymail.outbound.dispatch import Dispatcher, Key, domain_of
from raymail.outbound.records import (
    Attempt,
    DsnDone,
    OutboundMessage,
    QuotaUse,
    Requeue,
    SpoolState,
    Status,
    Suppress,
    Unsuppress,
)
from raymail.outbound.retry import Action
from raymail.store.blobs import BlobStore
from raymail.store.log import DurableLog

log = logging.getLogger(__name__)

SPOOL_NAME = "outbound-spool"
_TICK_S = 0.05
_SCAN_EVERY_S = 0.5
_DSN_TRIES = 12
_SUPPRESSION_CHANGES_KEPT = 10_000
_GATEWAY_SYNC_WAIT_S = 2.0

def _dsn_status(code: int, text: str) -> str:
    # A bounce with a 4xx code is one that ran out of time (RFC 3463 4.4.7).
    return "4.4.7" if 400 <= code < 500 else retry.enhanced_status(code, text)


def queue_name(pool: str) -> str:
    return f"outq-{pool}"


class OutboundSpool:
    """One per deployment.

    Guarantees:
    - ``enqueue``, ``claim``, ``report`` and the admin changes return only after
      their log records are fsync'd (group commit). The log replays into exactly
      the acknowledged state: unfinished recipients, suppressions, warm-up counters.
    - Queues hold copies: on start every unfinished recipient goes into fresh
      queues; a queue entry nobody claimed within ``lease_s`` is put again.
    - A recipient is leased to one sender IP at a time. A live sender ``renew``s
      the leases of everything it holds, however long it holds it, and sends only
      what the spool confirms is still its own; a lease neither renewed nor
      reported within ``lease_s`` (its sender died, or lost touch with the spool)
      returns to the queue, and ``hello`` after a restart drops the restarted IP's
      leases at once. So a message is delivered at least once, and twice only if
      a sender died (or could not reach the spool for ``lease_s``) between the
      destination's 250 and its report.
    - ``claim`` never grants an IP more than its warm-up cap for the UTC day.
    """

    def __init__(self, config: Config, shard_names: list[str], namespace: str) -> None:
        self.config = config
        self.ob = config.outbound
        self.namespace = namespace
        self.shard_names = shard_names
        started = time.perf_counter()
        self.log = DurableLog(config.data_path / "outbound" / "spool")
        rec = self.log.recover()
        self.state = SpoolState.load(codec.decode(rec.snapshot)) if rec.snapshot else SpoolState()
        for record in rec.records:
            for r in codec.decode(record):
                self.state.apply(r)
        self.blobs = BlobStore(config.storage_url, config.storage.options)
        self.events = EventSink(namespace)
        self.pool_of_ip = {ip: p.name for p in self.ob.pools for ip in p.ips}
        self.work = Dispatcher(self.state, self.ob.pools, self.ob.lease_s, self.ob.batch_size)
        self.queues: dict[str, Any] = {}
        self._router: Any = None
        self._wake = asyncio.Event()
        self._snapshotting = False
        self._bouncing: set[str] = set()
        # Gateways keep a copy of the suppression list, kept current by polling
        # ``suppression_since``: changes since a version of this incarnation.
        self.sup_epoch = uuid.uuid4().hex
        self.sup_version = 0
        self.sup_base = 0  # the version before the oldest change kept
        self.sup_changes: list[tuple[int, bool, str, str, str]] = []  # (version, added, scope, address, why)
        self.gateway_acks: dict[str, tuple[int, float]] = {}  # gateway -> (version it holds, when it asked)
        now = time.time()
        for msg, rcpt, st in self.state.pending():
            self._schedule(msg, rcpt, st.next_s, now)
        counts = self.work.counts()
        self.recovered = {"pending": sum(counts["ready"].values()) + counts["later"],
                          "snapshot": rec.snapshot is not None, "records": len(rec.records),
                          "seconds": round(time.perf_counter() - started, 3)}
        log.info("outbound spool recovered: %s", self.recovered)
        self._make_queues()
        for mid in list(self.state.bounces):  # reports a crash kept from their senders
            self._report_bounces(mid)
        self._task = asyncio.get_event_loop().create_task(self._dispatch_loop())
        # Gateways on this host hand over their outbound records here rather than through Ray.
        self._link = LinkServer({"enqueue": self._enqueue_from_link, "report_batch": self._report_from_link}, "spool")
        self._link.start_soon()

    # -- queues ---------------------------------------------------------------
    def _make_queues(self) -> None:
        for pool in self.ob.pools:
            self.queues[pool.name] = self._new_queue(pool.name)

    def _new_queue(self, pool: str) -> Any:
        import ray
        from ray.util.queue import Queue

        name = queue_name(pool)
        try:  # a queue left by an earlier incarnation (or a broken one) holds stale copies
            ray.kill(ray.get_actor(name, namespace=self.namespace))
            for _ in range(100):  # the name is free once the old actor is gone
                ray.get_actor(name, namespace=self.namespace)
                time.sleep(0.05)
        except ValueError:
            pass
        return Queue(actor_options={"name": name, "namespace": self.namespace, "num_cpus": 0,
                                    "max_concurrency": 1000})

    async def queue(self, pool: str, broken: bool = False) -> Any:
        """The pool's queue. A sender whose queue calls fail says ``broken``: if the
        queue does not answer, a new one replaces it and what the old one held is
        queued again."""
        if broken:
            try:
                await asyncio.wait_for(self.queues[pool].actor.qsize.remote(), 5.0)
            except Exception:  # noqa: BLE001 - dead or hung: replace it
                log.warning("outbound: the queue of pool %s does not answer; making a new one", pool)
                self._recreate(pool)
        return self.queues[pool]

    def _schedule(self, msg: OutboundMessage, rcpt: str, next_s: float, now: float) -> None:
        self.work.schedule(msg, rcpt, next_s, now)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        last_scan = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), _SCAN_EVERY_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                now = time.time()
                if now - last_scan >= _SCAN_EVERY_S:
                    last_scan = now
                    for key, ip in self.work.expire(now):
                        log.warning("outbound: the lease of %s by %s expired; queued again", key, ip)
                await self._dispatch()
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("outbound spool: dispatch failed")
            await asyncio.sleep(_TICK_S)  # a burst of enqueues gathers into larger entries

    async def _dispatch(self) -> None:
        now = time.time()
        for pool in self.ob.pools:
            entries = self.work.take(pool, now)
            if not entries:
                continue
            try:
                await self.queues[pool.name].actor.put_nowait_batch.remote([codec.encode(e) for e in entries])
            except Exception:  # noqa: BLE001 - a lost queue: a new one, and everything in it goes again
                log.exception("outbound: the queue of pool %s failed; making a new one", pool.name)
                self._recreate(pool.name)

    def _recreate(self, pool: str) -> None:
        self.work.lost_queue(pool)
        self._wake.set()
        self.queues[pool] = self._new_queue(pool)

    async def _append(self, records: list) -> None:
        """Log ``records`` (already applied to the state); returns once durable."""
        try:
            await self.log.append(codec.encode(records))
        except StorageError:
            # Memory holds what the disk may not: restart from the log; calls are re-sent.
            log.critical("outbound spool cannot write its log; restarting")
            os._exit(70)
        if self.log.bytes_since_snapshot > self.ob.snapshot_every_bytes and not self._snapshotting:
            asyncio.ensure_future(self._snapshot())

    async def _snapshot(self) -> None:
        self._snapshotting = True
        try:
            await self.log.snapshot(lambda: codec.encode(self.state.dump()))
        except Exception:  # noqa: BLE001
            log.exception("outbound spool: snapshot failed; the log keeps growing until the next try")
        finally:
            self._snapshotting = False

    # -- from gateways ----------------------------------------------------------
    async def link_endpoint(self) -> tuple[str, str]:
        """(node id, socket address) of this spool's same-host path for ``enqueue`` and ``report_batch``."""
        return await self._link.endpoint()

    async def _enqueue_from_link(self, encoded: bytes) -> bytes:
        return str(await self.enqueue(encoded)).encode()

    async def enqueue(self, encoded: bytes) -> int:
        """Codec-encoded ``[OutboundMessage, ...]``; returns once they are durable.
        Idempotent: a message id already known is not queued twice."""
        msgs = [m for m in codec.decode(encoded) if not self.state.known(m.id)]
        if not msgs:
            await self.log.wait_durable()
            return 0
        now = time.time()
        # The gateway checked its copy of the suppression list; this is the last word
        # (a bounce may have landed meanwhile): such a recipient bounces, with a report.
        refused = [Attempt(m.id, r, Action.BOUNCED.value, 550,
                           f"5.7.1 not sent: {r} is suppressed after an earlier hard bounce ({why})", "", now)
                   for m in msgs for r in dict.fromkeys(m.recipients)
                   if (why := self.state.is_suppressed(suppression.scope_for(self.ob.suppression, m.sender_uid), r))
                   is not None]
        for rec in (*msgs, *refused):
            self.state.apply(rec)
        await self._append([*msgs, *refused])
        skip = {(a.message, a.rcpt) for a in refused}
        for m in msgs:
            for rcpt in dict.fromkeys(m.recipients):
                event = "suppressed" if (m.id, rcpt) in skip else "queued"
                self.events.record(event, smtp_code=550 if event == "suppressed" else 0, message_id=m.message_id,
                                   sender=m.sender_email, recipient_domain=domain_of(rcpt), pool=m.pool, detail=m.id)
                if event == "queued":
                    self._schedule(m, rcpt, 0.0, now)
        for mid in {a.message for a in refused}:
            self._report_bounces(mid)
        return len(msgs)

    async def suppressed(self, requests: list[tuple[str, str, list[str]]]) -> list[list[tuple[str, str]]]:
        """For each (sender uid, sender email, addresses): the suppressed ones and why
        (for a gateway that has no copy of the list yet)."""
        await self.log.wait_durable()  # answer from durable state only
        out = []
        for uid, _, addrs in requests:
            scope = suppression.scope_for(self.ob.suppression, uid)
            out.append([(a, why) for a in addrs if (why := self.state.is_suppressed(scope, a)) is not None])
        return out

    def suppression_since(self, gateway: str, epoch: str, version: int) -> tuple:
        """What changed in the suppression list since ``version``: (epoch, version, the
        full list or None, changes). A gateway of another incarnation gets the full list."""
        if epoch == self.sup_epoch:
            self.gateway_acks[gateway] = (version, time.monotonic())
        if epoch != self.sup_epoch or version < self.sup_base:
            full = [(s, a, why) for (s, a), why in self.state.suppressed.items()]
            return self.sup_epoch, self.sup_version, full, []
        return self.sup_epoch, self.sup_version, None, [c for c in self.sup_changes if c[0] > version]

    def _suppression_changed(self, added: bool, scope: str, address: str, why: str) -> None:
        self.sup_version += 1
        self.sup_changes.append((self.sup_version, added, scope, address.lower(), why))
        if len(self.sup_changes) > _SUPPRESSION_CHANGES_KEPT:
            self.sup_base = self.sup_changes.pop(0)[0]

    async def _gateways_caught_up(self) -> None:
        """Wait (a little) until every gateway that polls holds the current suppression
        list, so a sender who sees a bounce report is refused when sending again."""
        deadline = time.monotonic() + _GATEWAY_SYNC_WAIT_S
        target = self.sup_version
        while time.monotonic() < deadline:
            now = time.monotonic()
            behind = [g for g, (v, seen) in self.gateway_acks.items() if v < target and now - seen < 3.0]
            if not behind:
                return
            await asyncio.sleep(0.05)

    # -- from senders -------------------------------------------------------------
    def hello(self, ip: str) -> int:
        """A sender (re)started: the leases its earlier incarnation held go back to the queue."""
        n = self.work.release_ip(ip, self.pool_of_ip.get(ip, ""))
        if n:
            log.warning("outbound: sender %s (re)started; %d leased or queued recipients queued again", ip, n)
            self._wake.set()
        return n

    def quota(self, ip: str) -> int | None:
        return self.state.remaining(ip, time.time(), self.ob.warmup_daily_caps, ip in self.ob.warmed_ips)

    async def claim(self, ip: str, keys: list[Key]) -> tuple[list[Key], int | None]:
        """Lease what ``ip`` may send now out of a queue entry it took; the rest goes
        back to the ready set for another IP (or tomorrow). Returns the granted keys
        and the IP's quota left today (None: no cap)."""
        now = time.time()
        left = self.quota(ip)
        granted = self.work.claim(ip, [tuple(k) for k in keys], left, now)
        if len(granted) < len(keys):
            self._wake.set()  # what this IP may not send is ready for another
        if granted and (left is not None or ip not in self.state.ips) and ip not in self.ob.warmed_ips:
            # Counted while the IP is in its schedule (and once, to record its first day).
            use = QuotaUse(ip, warmup.day_of(now), len(granted))
            self.state.apply(use)
            await self._append([use])
        return granted, None if left is None else left - len(granted)

    def renew(self, ip: str, keys: list[Key]) -> list[Key]:
        """``ip`` still holds ``keys`` (everything it claimed and has not reported):
        their leases run ``lease_s`` from now. Returns those it no longer holds, which
        it must not send. Leases live in memory only, so nothing is logged."""
        lost = self.work.renew(ip, [tuple(k) for k in keys], time.time())
        if lost:
            log.warning("outbound: %s renewed %d leases it no longer holds; it drops them", ip, len(lost))
        return lost

    async def _report_from_link(self, encoded: bytes) -> bytes:
        return str(await self.report_batch(encoded)).encode()

    async def report_batch(self, encoded: bytes) -> int:
        """``report`` with a codec-encoded ``(ip, results)``: what senders call (over
        this spool's link when they share its host)."""
        ip, results = codec.decode(encoded)
        return await self.report(ip, [tuple(r) for r in results])

    async def report(self, ip: str, results: list[tuple[str, str, int, str]]) -> int:
        """Outcomes from a sender: (message id, recipient, SMTP code, text). Returns once
        they are durable; then events, suppressions and bounce reports follow."""
        now = time.time()
        pool = self.pool_of_ip.get(ip, "")
        records: list = []
        bounced: set[str] = set()
        deferred = []
        for mid, rcpt, code, text in results:
            msg = self.work.settle(ip, (mid, rcpt))
            if msg is None:
                continue  # finished already, or the lease moved on (its new holder reports)
            st = self.state.rcpts[mid][rcpt]
            d = retry.decide(code, st.attempts + 1, msg.created_s, now, self.ob.retry_backoff_s, self.ob.retry_max_age_s)
            if d.expired:
                text = f"gave up after {st.attempts + 1} attempts; last reply: {code} {text}"
            att = Attempt(mid, rcpt, d.action.value, code, text[:1000], ip, now, d.next_s)
            records.append(att)
            event = d.action.value
            if d.action is Action.BOUNCED:
                bounced.add(mid)
                if not d.expired and suppression.suppresses(code, text):  # the address is bad: not mailed again
                    records.append(Suppress(suppression.scope_for(self.ob.suppression, msg.sender_uid), rcpt,
                                            f"{code} {text}"[:300], now))
            elif d.action is Action.DEFERRED:
                deferred.append((msg, rcpt, d.next_s))
            self.events.record(event, smtp_code=code, message_id=msg.message_id, sender=msg.sender_email,
                               recipient_domain=domain_of(rcpt), pool=pool or msg.pool, ip=ip, detail=text)
        for r in records:
            self.state.apply(r)
        if records:
            await self._append(records)
        for r in records:
            if isinstance(r, Suppress):
                self._suppression_changed(True, r.scope, r.address, r.reason)
        for msg, rcpt, next_s in deferred:
            self._schedule(msg, rcpt, next_s, now)
        for mid in bounced:
            self._report_bounces(mid)
        return len(records)

    # -- bounces ------------------------------------------------------------------
    def _shards(self) -> Any:
        if self._router is None:
            import ray

            from gateway.router import ShardRouter

            g = self.config.gateway
            handles = [ray.get_actor(n, namespace=self.namespace) for n in self.shard_names]
            self._router = ShardRouter(handles, max_ops=g.batch_max_ops, max_inflight=g.max_inflight_batches,
                                       timeout_s=g.request_timeout_s)
        return self._router

    def _report_bounces(self, mid: str) -> None:
        if mid not in self._bouncing:
            self._bouncing.add(mid)
            asyncio.ensure_future(self._bounce(mid))

    async def _bounce(self, mid: str) -> None:
        """Bounce reports into the sender's Inbox (the shard pushes them to their
        sockets), until none is pending for ``mid``. The report's id derives from the
        message and its recipients, so one re-sent after a restart lands once."""
        try:
            for attempt in range(_DSN_TRIES):
                hit = self.state.bounces.get(mid)
                if hit is None:
                    return
                msg, failures = hit
                try:
                    await self._gateways_caught_up()
                    await self._deliver_dsn(msg, failures)
                except Exception:  # noqa: BLE001 - retried; pending in the log across restarts
                    log.exception("outbound: the bounce report for %s could not be delivered to %s (try %d)",
                                  mid, msg.sender_email, attempt + 1)
                    await asyncio.sleep(min(60.0, 2.0**attempt))
                    continue
                done = DsnDone(mid, tuple(f[0] for f in failures))
                self.state.apply(done)
                await self._append([done])
        finally:
            self._bouncing.discard(mid)

    async def _deliver_dsn(self, msg: OutboundMessage, failures: list[tuple[str, int, str]]) -> None:
        from actors.sender import read_message

        now = time.time()
        try:
            original = await asyncio.to_thread(read_message, self.blobs, msg.blob)
        except StorageError:
            original = f"Message-ID: {msg.message_id}\r\n".encode()
        headers = dsn.original_headers(original)
        hostname = self.config.server.hostname
        raw, dsn_id = dsn.build(
            reporting_mta=hostname, to=msg.sender_email, original_message_id=msg.message_id,
            original_subject=compose.parse(headers + b"\r\n").subject, headers=headers,
            failures=[dsn.Failure(r, _dsn_status(code, text), code, text) for r, code, text in failures],
            arrival_s=msg.created_s, now_s=now)
        blob = await asyncio.to_thread(self.blobs.put, "msg", raw)
        parsed = compose.parse(raw)
        email_id = hashlib.sha256("\x00".join((msg.id, *sorted(f[0] for f in failures))).encode()).hexdigest()[:32]
        meta = EmailMeta(
            id=email_id, uid=msg.sender_uid, message_id=dsn_id, folder="inbox",
            sender=Address(f"MAILER-DAEMON@{hostname}", "Mail Delivery System"), to=(Address(msg.sender_email),),
            cc=(), bcc=(), subject=parsed.subject, snippet=compose.snippet_of(parsed.text), date=now,
            size=len(raw), unread=True, has_attachments=False, blob=blob,
        )
        (res,) = await self._shards().apply([Deliver(msg.sender_uid, meta, now, parsed.text)])
        if not res.ok:
            raise RuntimeError(res.message)

    # -- operators ------------------------------------------------------------------
    async def summary(self) -> dict:
        """Queued, deferred, in flight and dead recipients per pool and destination domain."""
        await self.log.wait_durable()
        out: dict[str, dict[str, dict[str, int]]] = {}
        for mid, states in self.state.rcpts.items():
            msg = self.state.messages[mid]
            for rcpt, st in states.items():
                if st.status in (Status.DELIVERED, Status.BOUNCED):
                    continue
                state = st.status.value
                if (mid, rcpt) in self.work.leased:
                    state = "sending"
                counts = out.setdefault(msg.pool, {}).setdefault(domain_of(rcpt), {})
                counts[state] = counts.get(state, 0) + 1
        quotas = {ip: self.quota(ip) for ip in self.pool_of_ip}
        return {"pools": out, "quota_left_today": quotas, "finished": self.state.finished,
                "suppressed": len(self.state.suppressed)}

    async def dead(self) -> list[dict]:
        await self.log.wait_durable()
        return [{"id": mid, "recipient": r, "pool": self.state.messages[mid].pool,
                 "sender": self.state.messages[mid].sender_email, "code": st.code, "text": st.text,
                 "attempts": st.attempts}
                for mid, states in self.state.rcpts.items() for r, st in states.items() if st.status is Status.DEAD]

    async def retry_dead(self, message_id: str = "") -> int:
        """Send dead recipients (all, or one message's) back to the queue."""
        now = time.time()
        recs = [Requeue(mid, r, now) for mid, states in self.state.rcpts.items() for r, st in states.items()
                if st.status is Status.DEAD and (not message_id or mid == message_id)]
        for r in recs:
            self.state.apply(r)
        if recs:
            await self._append(recs)
        for r in recs:
            self._schedule(self.state.messages[r.message], r.rcpt, 0.0, now)
        return len(recs)

    async def unsuppress(self, address: str, sender_uid: str = "") -> int:
        scopes = {s for (s, a) in self.state.suppressed if a == address.lower()
                  and (not sender_uid or s in (sender_uid, suppression.GLOBAL))}
        recs = [Unsuppress(s, address) for s in scopes]
        for r in recs:
            self.state.apply(r)
        if recs:
            await self._append(recs)
        for r in recs:
            self._suppression_changed(False, r.scope, r.address, "")
        return len(recs)

    def stats(self) -> dict:
        return {"pid": os.getpid(), "recovered": self.recovered, "messages": len(self.state.messages),
                "link_calls": self._link.served,
                **self.work.counts(), "finished": self.state.finished, "bounces_pending": len(self.state.bounces)}

    async def flush(self) -> bool:
        await self.log.wait_durable()
        self.events.flush()
        return True
