"""SenderActor: delivers one pool's mail from one source IP over SMTP."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from raymail import codec, skeleton
from raymail.config import Config
from raymail.dns import DnsTempError, NullMx, Resolver
from raymail.errors import ConnectionLost, SmtpClientError, StorageError
from raymail.link import ActorLink
from raymail.outbound import retry
from raymail.outbound.dispatch import Held, Key
from raymail.outbound.records import OutboundMessage
from raymail.outbound.smtp_client import SmtpClient
from raymail.store.blobs import BlobMissing, BlobStore

log = logging.getLogger(__name__)

_IDLE_POLL_S = 1.0
_CAP_POLL_S = 5.0
_CONN_IDLE_S = 2.0  # an idle connection is kept this long for the next batch to the domain


INLINE_READ_BYTES = 256 * 1024  # smaller local messages are read on the event loop


def read_message(blobs: BlobStore, key: str) -> bytes:
    """The message's RFC 5322 bytes (a stored skeleton is filled from its attachment blobs)."""
    stored = blobs.get(key)
    segments = skeleton.unpack(stored)
    return stored if segments is None else b"".join(skeleton.iter_raw(segments, blobs.read_range))


def sender_name(pool: str, ip: str) -> str:
    return f"sender-{pool}-{ip}"


@dataclass
class _Conn:
    smtp: SmtpClient
    where: str
    sent: int = 0
    idle_since: float = 0.0


@dataclass
class _Job:
    msg: OutboundMessage
    rcpts: tuple[str, ...]


class _Reporter:
    """Coalesces results from every connection into few ``report`` calls; each caller
    waits until the spool has its result on disk before its connection sends more.
    On the spool's host the calls go over its link (a Ray call costs several times
    more CPU on both sides); reports are idempotent, so one resent through Ray after
    a broken link changes nothing twice."""

    def __init__(self, spool: Any, ip: str) -> None:
        self.ip = ip
        self.link = ActorLink(spool, "report_batch")
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.running = False

    async def report(self, results: list[tuple[str, str, int, str]]) -> None:
        if not results:
            return
        fut = asyncio.get_running_loop().create_future()
        self.pending.extend((r, fut) for r in results)
        if not self.running:
            asyncio.ensure_future(self._run())
        await fut

    async def _run(self) -> None:
        self.running = True
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    await self.link.call(codec.encode((self.ip, [r for r, _ in batch])))
                except Exception as exc:  # noqa: BLE001 - the leases expire and the work goes again
                    log.warning("sender %s: report failed: %r", self.ip, exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        finally:
            self.running = False


class SenderActor:
    """Delivers work from its pool's queue, with ``source_address`` = its IP.

    Guarantees:
    - It sends only what the spool leased to it, never more than the IP's warm-up
      quota. It renews the leases of everything it holds (one call every
      ``lease_s`` / 3), so work waiting for a connection or on a slow destination
      stays its own however long it waits; just before a message goes out it
      checks that its leases are still its own (asking the spool when renewals
      have been failing) and drops the recipients it lost to another IP.
    - It reports every outcome and waits for the spool to have it on disk before
      the same connection sends again, so a sender killed at any moment leaves at
      most one message per open connection delivered but unreported; a dead
      sender renews nothing, so its leases expire after ``lease_s``.
    - At most ``per_domain_connections`` connections to a destination domain and
      ``max_connections`` in all; one connection carries up to
      ``messages_per_connection`` messages, across batches: an idle connection is
      kept for a moment for the next batch to that domain.
    - STARTTLS whenever offered (without certificate checks, as opportunistic TLS
      is, RFC 7435); plain otherwise.
    - A message is read from storage just before it is sent: memory holds one
      message per connection.
    """

    def __init__(self, config: Config, pool: str, ip: str, spool_name: str, namespace: str) -> None:
        import ray

        self.config = config
        self.ob = config.outbound
        self.pool, self.ip = pool, ip
        self.spool = ray.get_actor(spool_name, namespace=namespace)
        self.blobs = BlobStore(config.storage_url, config.storage.options)
        self.resolver = Resolver.from_config(config.dns)
        self.reporter = _Reporter(self.spool, ip)
        self.held = Held(self.ob.lease_s)  # claimed, neither reported nor given up
        self.conns = asyncio.Semaphore(self.ob.max_connections)
        self.per_domain: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.ob.per_domain_connections))
        # Work taken but not finished: bounded, so the queue's entries stay with IPs that have room.
        self.inflight = asyncio.Semaphore(self.ob.max_connections * 2)
        self.idle: dict[str, list[_Conn]] = defaultdict(list)
        self.sent = 0
        self.connections = 0
        loop = asyncio.get_event_loop()
        self._task = loop.create_task(self._run())
        self._reaper = loop.create_task(self._reap())
        self._renewer = loop.create_task(self._renew_loop())

    # -- the work loop ------------------------------------------------------------
    async def _run(self) -> None:
        from ray.util.queue import Empty

        queue, left = await self._start()
        while True:
            try:
                if left == 0:
                    await asyncio.sleep(_CAP_POLL_S)
                    left = await self.spool.quota.remote(self.ip)
                    continue
                await self.inflight.acquire()
                try:
                    entry = await queue.get_async(timeout=_IDLE_POLL_S)
                except Empty:
                    self.inflight.release()
                    continue
                except BaseException:
                    self.inflight.release()
                    raise
                try:
                    jobs = [_Job(m, tuple(r)) for m, r in codec.decode(entry)]
                    keys = [(j.msg.id, r) for j in jobs for r in j.rcpts]
                    asked_at = time.monotonic()
                    granted, left = await self.spool.claim.remote(self.ip, keys)
                except BaseException:
                    self.inflight.release()  # unclaimed: the spool puts the entry back after lease_s
                    raise
                ok = set(map(tuple, granted))
                claim = self.held.add(list(ok), asked_at)
                jobs = [_Job(j.msg, g) for j in jobs if (g := tuple(r for r in j.rcpts if (j.msg.id, r) in ok))]
                task = asyncio.ensure_future(self._deliver_entry(jobs, claim))
                task.add_done_callback(self._entry_done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never die silently; a lost queue is fetched again
                log.warning("sender %s: %r; fetching the queue again", self.ip, exc)
                await asyncio.sleep(0.5)
                try:
                    queue = await self.spool.queue.remote(self.pool, broken=True)
                    left = await self.spool.quota.remote(self.ip)
                except Exception:  # noqa: BLE001
                    pass

    async def _start(self) -> tuple[Any, int | None]:
        """Tell the spool this IP (re)started, then take its queue and today's quota."""
        while True:
            try:
                await self.spool.hello.remote(self.ip)
                return await self.spool.queue.remote(self.pool), await self.spool.quota.remote(self.ip)
            except Exception as exc:  # noqa: BLE001 - the spool may be restarting: try again
                log.warning("sender %s: the spool did not answer: %r", self.ip, exc)
                await asyncio.sleep(1.0)

    def _entry_done(self, task: asyncio.Future) -> None:
        self.inflight.release()
        if not task.cancelled() and task.exception() is not None:
            # Unreported work goes back when its lease expires.
            log.error("sender %s: a batch failed: %r", self.ip, task.exception())

    async def _deliver_entry(self, jobs: list[_Job], claim: int) -> None:
        by_domain: dict[str, dict[str, _Job]] = defaultdict(dict)
        for job in jobs:
            for rcpt in job.rcpts:  # recipients of one message at one domain share a transaction
                j = by_domain[rcpt.rpartition("@")[2].lower()].setdefault(job.msg.id, _Job(job.msg, ()))
                j.rcpts += (rcpt,)
        try:
            await asyncio.gather(*(self._deliver_domain(d, list(js.values())) for d, js in by_domain.items()))
        finally:
            # Whatever a failure left unreported is no longer renewed: its leases expire and it goes again.
            self.held.done([(j.msg.id, r) for j in jobs for r in j.rcpts], claim)

    async def _report(self, results: list[tuple[str, str, int, str]]) -> None:
        # Out of the renewals first: once the spool has the outcome, a retry may lease it anew.
        self.held.done([(mid, rcpt) for mid, rcpt, _, _ in results])
        await self.reporter.report(results)

    # -- leases -------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        """Renew everything held, in one call, every ``lease_s`` / 3."""
        while True:
            await asyncio.sleep(self.held.renew_every_s)
            try:
                await self._renew(self.held.keys())
            except Exception:  # noqa: BLE001 - never die silently; the next round tries again
                log.exception("sender %s: renewing leases failed", self.ip)

    async def _renew(self, keys: list[Key]) -> None:
        if not keys:
            return
        asked_at, last_claim = time.monotonic(), self.held.claims
        try:
            lost = await self.spool.renew.remote(self.ip, keys)
        except Exception as exc:  # noqa: BLE001 - unconfirmed leases are confirmed again before sending
            log.warning("sender %s: the spool did not renew %d leases: %r", self.ip, len(keys), exc)
            return
        self.held.renewed(keys, [tuple(k) for k in lost], asked_at, last_claim)

    async def _still_mine(self, job: _Job, rest: list[_Job]) -> _Job | None:
        """``job`` cut to the recipients whose leases are surely still this IP's, just
        before it is sent (None: none is). When renewals have been failing, the leases
        of the lane's remaining work are confirmed with the spool first, in one call;
        what cannot be confirmed is given up (it expires and goes to another IP)."""
        keys = [(job.msg.id, r) for r in job.rcpts]
        safe, doubtful = self.held.check(keys, time.monotonic())
        if doubtful:
            _, unsure = self.held.check([(j.msg.id, r) for j in rest for r in j.rcpts], time.monotonic())
            await self._renew(unsure)
            safe, doubtful = self.held.check(keys, time.monotonic())
            self.held.done(doubtful)
        if len(safe) == len(keys):
            return job
        ok = set(safe)
        rcpts = tuple(r for r in job.rcpts if (job.msg.id, r) in ok)
        return _Job(job.msg, rcpts) if rcpts else None

    async def _deliver_domain(self, domain: str, work: list[_Job]) -> None:
        try:
            targets = await self._route(domain)
        except _Fail as f:
            await self._report([(j.msg.id, r, f.code, f.text) for j in work for r in j.rcpts
                                if (j.msg.id, r) in self.held])
            return
        lanes = min(self.ob.per_domain_connections, len(work))
        await asyncio.gather(*(self._lane(domain, targets, work[i::lanes]) for i in range(lanes)))

    async def _route(self, domain: str) -> list[tuple[str, int]]:
        static = self.ob.routes.get(domain)
        if static:
            host, _, port = static.rpartition(":")
            return [(host.strip("[]"), int(port))]
        try:
            mxs = await self.resolver.mx(domain)
            targets = []
            for _, host in mxs:
                targets += [(a, 25) for a in await self.resolver.addresses(host) if ":" not in a or ":" in self.ip]
        except NullMx as exc:
            raise _Fail(556, f"5.1.10 {exc}") from None
        except DnsTempError as exc:
            raise _Fail(retry.DNS_TEMP, f"4.4.3 {exc}") from None
        if not mxs:
            raise _Fail(retry.NO_ROUTE, f"5.1.2 {domain}: no such domain (no MX and no address)")
        if not targets:
            raise _Fail(retry.DNS_TEMP, f"4.4.3 no address found for the mail exchangers of {domain}")
        return targets

    async def _read(self, job: _Job) -> bytes | None:
        """The bytes to send; None when they cannot be read (reported: dead when the
        stored message is gone, deferred when storage is down)."""
        try:
            if self.blobs.local and 0 < job.msg.size <= INLINE_READ_BYTES:
                raw = read_message(self.blobs, job.msg.blob)  # a page-cache read: cheaper than a thread hop
            else:
                raw = await asyncio.to_thread(read_message, self.blobs, job.msg.blob)
            return job.msg.dkim_header.encode("ascii") + raw
        except BlobMissing as exc:
            code, text = retry.INTERNAL, f"the stored message is gone: {exc}"
        except StorageError as exc:
            code, text = 451, f"4.3.0 local storage unavailable: {exc}"
        await self._report([(job.msg.id, r, code, text) for r in job.rcpts])
        return None

    async def _lane(self, domain: str, targets: list[tuple[str, int]], work: list[_Job]) -> None:
        """Messages one after the other on one connection (reused, or new when needed);
        each is read just before it is sent, so memory holds one message per lane."""
        async with self.per_domain[domain], self.conns:
            conn: _Conn | None = None
            try:
                for i, planned in enumerate(work):
                    job = await self._still_mine(planned, work[i:])
                    if job is None:
                        continue
                    raw = await self._read(job)
                    if raw is None:
                        continue
                    if conn is not None and conn.sent >= self.ob.messages_per_connection:
                        await conn.smtp.quit()
                        conn = None
                    if conn is None:
                        conn = self._cached(domain)
                    if conn is None:
                        smtp, where, why = await self._connect(targets)
                        if smtp is None:
                            await self._report([(j.msg.id, r, retry.CONNECT_FAILED, why)
                                                for j in [job, *work[i + 1:]] for r in j.rcpts
                                                if (j.msg.id, r) in self.held])
                            return
                        conn = _Conn(smtp, where)
                    results, alive = await self._send(conn.smtp, job, raw, conn.where)
                    conn.sent += 1
                    await self._report(results)
                    if not alive:  # the next message gets a fresh connection
                        await conn.smtp.quit()
                        conn = None
            except BaseException:
                if conn is not None:
                    conn.smtp.close()  # possibly mid-transaction: never reused
                raise
            if conn is not None:
                if conn.smtp.is_connected and conn.sent < self.ob.messages_per_connection:
                    conn.idle_since = time.monotonic()
                    self.idle[domain].append(conn)
                else:
                    await conn.smtp.quit()

    def _cached(self, domain: str) -> _Conn | None:
        """An idle connection to the domain from an earlier batch (Postfix's connection cache)."""
        idle = self.idle.get(domain)
        while idle:
            conn = idle.pop()
            if conn.smtp.is_connected and time.monotonic() - conn.idle_since < _CONN_IDLE_S:
                return conn
            conn.smtp.close()
        return None

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(_CONN_IDLE_S / 2)
            now = time.monotonic()
            for domain, idle in list(self.idle.items()):
                stale = [c for c in idle if now - c.idle_since >= _CONN_IDLE_S]
                self.idle[domain] = [c for c in idle if now - c.idle_since < _CONN_IDLE_S]
                if not self.idle[domain]:
                    del self.idle[domain]
                for c in stale:
                    await c.smtp.quit()

    async def _connect(self, targets: list[tuple[str, int]]) -> tuple[SmtpClient | None, str, str]:
        why = "4.4.1 no mail exchanger reachable"
        for host, port in targets:
            try:
                smtp = await SmtpClient.connect(host, port, source_ip=self.ip, tls_context=_OPPORTUNISTIC,
                                                local_hostname=self.config.server.hostname,
                                                timeout_s=self.ob.smtp_timeout_s)
                self.connections += 1
                return smtp, f"{host}:{port}", ""
            except SmtpClientError as exc:
                why = f"4.4.1 connect to {host}:{port} from {self.ip} failed: {exc}"
        return None, "", why

    async def _send(self, smtp: SmtpClient, job: _Job, raw: bytes,
                    where: str) -> tuple[list[tuple[str, str, int, str]], bool]:
        """One transaction; returns per-recipient results and whether the connection is usable."""
        lost = ""
        try:
            replies = await smtp.send(job.msg.sender_email, job.rcpts, raw)
        except ConnectionLost as exc:  # the recipients refused before it broke keep their refusal
            replies, lost = exc.replies, f"4.4.2 connection to {where} lost: {exc!r}"
        if any(reply.ok for reply in replies.values()):
            self.sent += 1
        results = [(job.msg.id, r, reply.code, f"{reply.text} (from {where})") if (reply := replies.get(r))
                   else (job.msg.id, r, retry.CONNECT_FAILED, lost) for r in job.rcpts]
        return results, not lost and smtp.is_connected

    def stats(self) -> dict:
        return {"pool": self.pool, "ip": self.ip, "pid": os.getpid(), "sent": self.sent,
                "connections": self.connections, "running": not self._task.done(), "ts": time.time(),
                "report_link_calls": self.reporter.link.link_calls, "report_ray_calls": self.reporter.link.ray_calls}


class _Fail(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def _opportunistic_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_OPPORTUNISTIC = _opportunistic_context()
