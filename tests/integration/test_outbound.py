"""Outbound delivery end to end: POST /v1/send -> spool -> Ray queues -> sender actors ->
real receiving MTAs on loopback addresses, with the faults of DESIGN.md "Outbound"."""

from __future__ import annotations

import asyncio
import email
import json
import subprocess
import sys
import uuid
from email import policy
from pathlib import Path

import pytest
import ray
from conftest import start_app, storage_of
from dnsserver import NsdServer
from helpers import recv_until
from peers import Receiver, free_port, wait_for

from actors.sender import sender_name
from actors.spool import SPOOL_NAME
from raymail.store.tls import ensure_certificate, server_context

ROOT = Path(__file__).resolve().parents[2]

POOLS = [
    {"name": "tx", "ips": ["127.0.0.2", "127.0.0.3"], "categories": ["transactional"]},
    {"name": "mk", "ips": ["127.0.0.4"], "categories": ["marketing"]},
    {"name": "capped", "ips": ["127.0.0.5"], "categories": ["capped"]},
    {"name": "mixed", "ips": ["127.0.0.6", "127.0.0.7"], "categories": ["mixed"]},
    {"name": "solo", "ips": ["127.0.0.8"], "categories": ["solo"]},
]
RECEIVERS = {
    "ok.test": {},
    "flaky.test": {"script": ["451 4.3.0 Try again later"]},
    "reject.test": {"refuse": {"gone@reject.test": "550 5.1.1 <gone@reject.test>: no such user"}},
    "drop.test": {"script": ["drop"]},
    "capped.test": {},
    "mixed.test": {},
    "solo.test": {"delay_s": 0.03},
    "tls.test": {},  # offers STARTTLS (set up in the fixture)
    "slow.test": {"delay_s": 0.2},
    "policy.test": {"script": ["554 5.7.1 Message rejected as spam"]},
}

# Destinations reached through DNS (port 25 on the address of their MX); any other
# name under test. does not exist.
DESTINATIONS_ZONE = """$ORIGIN test.
$TTL 60
@\tIN\tSOA\tns.test. hostmaster.test. 1 3600 600 86400 60
@\tIN\tNS\tns.test.
ns\tIN\tA\t127.0.0.1
mx\tIN\tMX\t10 mx1.mx.test.
mx1.mx\tIN\tA\t127.0.0.30
nullmx\tIN\tMX\t0 .
deadmx\tIN\tMX\t10 mx.deadmx.test.
mx.deadmx\tIN\tA\t127.0.0.50
fallback\tIN\tMX\t10 mx1.fallback.test.
fallback\tIN\tMX\t20 mx2.fallback.test.
mx1.fallback\tIN\tA\t127.0.0.51
mx2.fallback\tIN\tA\t127.0.0.30
"""


@pytest.fixture(scope="module")
def world(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outbound")
    cert, key = ensure_certificate(tmp / "peer-tls", "mx.tls.test")
    RECEIVERS["tls.test"]["tls_context"] = server_context(cert, key)
    peers = {d: Receiver(f"127.0.0.{10 + i}", **kw).start() for i, (d, kw) in enumerate(RECEIVERS.items())}
    mx = Receiver("127.0.0.30", port=25).start()  # reached through DNS: MX records, port 25
    dns = NsdServer({"test": DESTINATIONS_ZONE})  # a real authoritative server for the MX lookups
    dead_port = free_port("127.0.0.31")
    routes = {d: r.route for d, r in peers.items()}
    routes.update({"nolisten.test": f"127.0.0.31:{free_port('127.0.0.31')}", "later.test": f"127.0.0.31:{dead_port}"})
    app = start_app(
        tmp,
        outbound={
            "pools": POOLS, "routes": routes, "lease_s": 3.0, "batch_size": 20,
            "warmup": {"daily_caps": [2], "warmed_ips": ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.7",
                                                          "127.0.0.8"]},
            "retry": {"backoff_s": [1], "max_age_s": 3600},
            "sender_categories": {"capped@example.test": "capped", "mixed@example.test": "mixed",
                                  "solo@example.test": "solo"},
        },
        dns={"servers": ["127.0.0.1"], "port": dns.port, "timeout_s": 2.0},
    )
    yield app, peers, mx, dead_port
    app.deployment.stop()
    for r in [*peers.values(), mx]:
        r.stop()
    dns.stop()


_NAMED: dict[tuple[str, str], dict] = {}


def named(app, local: str) -> dict:
    """The user local@example.test (its address picks its pool via sender_categories)."""
    key = (app.config.cluster.namespace, local)
    if key not in _NAMED:
        _NAMED[key] = app.user(local)
    return _NAMED[key]


def spool(app):
    return ray.get_actor(SPOOL_NAME, namespace=app.config.cluster.namespace)


async def send(app, user, recipients, **extra):
    async with app.client(user["token"]) as c:
        return await c.post("/v1/send", json={"recipients": recipients, "subject": extra.pop("subject", "hi"),
                                              "body": "hello", **extra})


async def inbox(app, user, folder="inbox"):
    async with app.client(user["token"]) as c:
        return (await c.get("/v1/emails", params={"folder": folder})).json()["emails"]


async def test_remote_and_local_in_one_send_leave_from_the_pool_ips(world):
    app, peers, _, _ = world
    alice, bob = app.user(), app.user()
    r = await send(app, alice, ["carol@ok.test", bob["email"], "dave@ok.test"], subject="mixed")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "queued"
    assert [e["subject"] for e in await inbox(app, bob)] == ["mixed"]  # local delivery in the same call
    assert [e["subject"] for e in await inbox(app, alice, "sent")] == ["mixed"]
    got = await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == body["message_id"]])
    assert len(got) == 1 and sorted(got[0].rcpts) == ["carol@ok.test", "dave@ok.test"]  # one transaction
    assert got[0].peer_ip in ("127.0.0.2", "127.0.0.3") and got[0].mail_from == alice["email"]
    r = await send(app, alice, ["erin@ok.test"], category="marketing", subject="promo")
    mid = r.json()["message_id"]
    got = await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == mid])
    assert [m.peer_ip for m in got] == ["127.0.0.4"]  # the marketing pool's IP, exactly


async def test_starttls_when_offered_plain_otherwise(world):
    app, peers, _, _ = world
    alice = app.user()
    ids = [(await send(app, alice, [f"x@{d}"])).json()["message_id"] for d in ("tls.test", "ok.test")]
    tls = await wait_for(lambda: [m for m in peers["tls.test"].received if m.message_id == ids[0]])
    plain = await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == ids[1]])
    assert tls[0].tls is True and plain[0].tls is False


async def test_connections_per_destination_domain_are_limited(world):
    app, peers, _, _ = world
    solo = named(app, "solo")  # one sender IP
    recv = peers["slow.test"]
    ids = [(await send(app, solo, [f"n{i}@slow.test"])).json()["message_id"] for i in range(24)]
    await wait_for(lambda: set(ids) <= set(recv.ids()), timeout=30)
    assert 2 <= recv.max_active <= app.config.outbound.per_domain_connections


async def test_local_only_send_is_still_delivered(world):
    app, _, _, _ = world
    alice, bob = app.user(), app.user()
    r = await send(app, alice, [bob["email"]])
    assert r.status_code == 201 and r.json()["status"] == "delivered"


async def test_mx_lookup_routes_through_dns(world):
    app, _, mx, _ = world
    alice = app.user()
    r = await send(app, alice, ["x@mx.test"])
    mid = r.json()["message_id"]
    got = await wait_for(lambda: [m for m in mx.received if m.message_id == mid])
    assert got[0].peer_ip in ("127.0.0.2", "127.0.0.3")


async def test_a_second_mx_takes_the_mail_when_the_first_does_not_answer(world):
    app, _, mx, _ = world
    alice = app.user()
    r = await send(app, alice, ["x@fallback.test"])  # MX 10 has no listener, MX 20 is up
    mid = r.json()["message_id"]
    got = await wait_for(lambda: [m for m in mx.received if m.message_id == mid])
    assert len(got) == 1 and got[0].rcpts == ["x@fallback.test"]


async def dsn_of(app, user, timeout=20.0):
    async def find():
        for e in await inbox(app, user):
            if e["from"]["email"].startswith("MAILER-DAEMON@"):
                return e
        return None

    deadline = asyncio.get_running_loop().time() + timeout
    while (found := await find()) is None:
        assert asyncio.get_running_loop().time() < deadline, "no bounce report arrived"
        await asyncio.sleep(0.2)
    async with app.client(user["token"]) as c:
        raw = (await c.get(f"/v1/emails/{found['id']}/raw")).content
    return email.message_from_bytes(raw, policy=policy.default)


@pytest.mark.parametrize("rcpt, status", [("x@nowhere.test", "5.1.2"), ("x@nullmx.test", "5.1.10")])
async def test_unresolvable_domain_bounces(world, rcpt, status):
    app, _, _, _ = world
    alice = app.user()
    assert (await send(app, alice, [rcpt])).status_code == 201
    report = await dsn_of(app, alice)
    fields = report.get_payload()[1].as_string()
    assert f"Final-Recipient: rfc822; {rcpt}" in fields and f"Status: {status}" in fields


async def test_4xx_then_success_is_delivered_once(world):
    app, peers, _, _ = world
    alice = app.user()
    r = await send(app, alice, ["x@flaky.test"])
    mid = r.json()["message_id"]
    await wait_for(lambda: mid in peers["flaky.test"].ids())
    await asyncio.sleep(1.5)
    assert peers["flaky.test"].ids().count(mid) == 1 and peers["flaky.test"].attempts == 2


async def test_connection_dropped_mid_data_is_retried(world):
    app, peers, _, _ = world
    alice = app.user()
    mid = (await send(app, alice, ["x@drop.test"])).json()["message_id"]
    await wait_for(lambda: mid in peers["drop.test"].ids())
    assert peers["drop.test"].attempts == 2 and peers["drop.test"].ids().count(mid) == 1


async def test_5xx_bounces_with_a_dsn_and_suppresses(world):
    app, _, _, _ = world
    alice, other = app.user(), app.user()
    async with app.ws(alice["token"]) as ws:
        r = await send(app, alice, ["gone@reject.test"], subject="to the void")
        assert r.status_code == 201
        push = await recv_until(ws, lambda m: m["type"] == "email.new" and m["email"]["folder"] == "inbox")
        assert push["email"]["subject"].startswith("Undelivered Mail Returned to Sender")
    report = await dsn_of(app, alice)
    assert report.get_content_type() == "multipart/report"
    text, status, headers = report.get_payload()
    fields = " ".join(status.as_string().split())  # unfolded
    assert "Final-Recipient: rfc822; gone@reject.test" in fields and "Status: 5.1.1" in fields
    assert "Diagnostic-Code: smtp; 550 5.1.1" in fields and "Action: failed" in fields
    assert "Subject: to the void" in headers.as_string()
    again = await send(app, alice, ["gone@reject.test", "fine@ok.test"])
    assert again.status_code == 422 and again.json()["error"]["code"] == "suppressed_recipient"
    assert "gone@reject.test" in again.json()["error"]["message"]
    assert len(await inbox(app, alice, "sent")) == 1  # nothing of the refused send was kept
    # suppression is per sender account by default
    assert (await send(app, other, ["gone@reject.test"])).status_code == 201


@pytest.mark.parametrize("domain", ["nolisten.test", "deadmx.test"])  # a static route; an MX from DNS
async def test_no_listener_is_deferred(world, domain):
    app, _, _, _ = world
    alice = app.user()
    assert (await send(app, alice, [f"x@{domain}"])).status_code == 201

    def deferred():
        s = ray.get(spool(app).summary.remote())
        return s["pools"].get("tx", {}).get(domain, {}).get("deferred")

    await wait_for(deferred, timeout=15)
    assert await inbox(app, alice) == []  # no bounce: it is retried


async def test_warmup_cap_holds_mail_and_warmed_ip_takes_over(world):
    app, peers, _, _ = world
    capped = named(app, "capped")
    for i in range(4):
        assert (await send(app, capped, [f"c{i}@capped.test"])).status_code == 201
    await wait_for(lambda: len(peers["capped.test"].received) == 2)
    await asyncio.sleep(2.0)
    assert len(peers["capped.test"].received) == 2  # the only IP is at its cap: the rest waits
    s = ray.get(spool(app).summary.remote())
    assert s["pools"]["capped"]["capped.test"] == {"queued": 2} and s["quota_left_today"]["127.0.0.5"] == 0

    mixed = named(app, "mixed")
    for i in range(8):
        assert (await send(app, mixed, [f"m{i}@mixed.test"])).status_code == 201
    await wait_for(lambda: len(peers["mixed.test"].received) == 8)
    peers_used = [m.peer_ip for m in peers["mixed.test"].received]
    assert peers_used.count("127.0.0.6") <= 2 and set(peers_used) <= {"127.0.0.6", "127.0.0.7"}


async def test_sender_killed_mid_batch_loses_nothing(world):
    app, peers, _, _ = world
    solo = named(app, "solo")
    recv = peers["solo.test"]
    ids = []
    for i in range(120):
        r = await send(app, solo, [f"s{i}@solo.test"])
        ids.append(r.json()["message_id"])
    await wait_for(lambda: len(recv.received) >= 15, timeout=30)
    ray.kill(ray.get_actor(sender_name("solo", "127.0.0.8"), namespace=app.config.cluster.namespace),
             no_restart=False)
    await wait_for(lambda: set(ids) <= set(recv.ids()), timeout=60)
    got = recv.ids()
    dupes = len(got) - len(set(got))
    assert dupes <= app.config.outbound.per_domain_connections  # at most the one in flight per connection
    assert {m.peer_ip for m in recv.received} == {"127.0.0.8"}


async def test_dead_letter_and_queue_retry(world):
    app, _, _, dead_port = world
    alice = app.user()
    r = await send(app, alice, ["x@later.test"], subject=f"dead {uuid.uuid4().hex}")
    sent = (await inbox(app, alice, "sent"))[0]
    async with app.client(alice["token"]) as c:
        raw = (await c.get(f"/v1/emails/{sent['id']}/raw")).content
    store = storage_of(app)
    key = store.put("msg", raw)
    store.delete(key)  # the stored message is gone: no retry can fix that
    sp = spool(app)
    await wait_for(lambda: ray.get(sp.dead.remote()), timeout=15)
    shown = cli(app, "queue", "--json")
    assert shown.returncode == 0, shown.stderr
    dead = json.loads(shown.stdout)["dead"]
    assert dead[0]["recipient"] == "x@later.test" and "gone" in dead[0]["text"]
    table = cli(app, "queue").stdout
    assert "later.test" in table and "dead" in table
    store.put("msg", raw)
    receiver = Receiver("127.0.0.31", port=dead_port).start()
    try:
        out = cli(app, "queue", "retry")
        assert out.returncode == 0 and json.loads(out.stdout) == {"requeued": 1}, out.stderr
        mid = r.json()["message_id"]
        await wait_for(lambda: mid in receiver.ids(), timeout=15)
    finally:
        receiver.stop()


def cli(app, *args: str) -> subprocess.CompletedProcess:
    config_file = app.config.data_path / "cli.toml"
    config_file.write_text(f'[cluster]\nnamespace = "{app.config.cluster.namespace}"\n')
    sub = [*args[:1], *args[1:2]] if len(args) > 1 and not args[1].startswith("-") else [*args[:1]]
    rest = list(args[len(sub):])
    return subprocess.run([sys.executable, "-m", "cluster.cli", *sub, "--config", str(config_file), "--data-dir",
                           str(app.config.data_path), "--address", ray.get_runtime_context().gcs_address, *rest],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


async def test_domain_add_makes_a_dkim_key_and_mail_is_signed(world):
    import dkim

    app, peers, _, _ = world
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "domain", "add", "example.test", "--data-dir",
                          str(app.config.data_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)["dkim"]
    assert key["txt_name"] == "raymail._domainkey.example.test" and key["txt_value"].startswith("v=DKIM1;")
    assert key["txt_value"] in out.stderr  # the record to publish, printed for the operator
    alice = app.user()
    mid = (await send(app, alice, ["signed@ok.test"], subject="signed")).json()["message_id"]
    got = await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == mid])
    data = got[0].data
    assert data.startswith(b"DKIM-Signature:")

    def txt(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"raymail._domainkey.example.test."
        return key["txt_value"].encode()

    assert dkim.verify(data, dnsfunc=txt)


async def test_spool_restart_requeues_unfinished_work(world):
    app, peers, _, _ = world
    capped = peers["capped.test"]
    sp = spool(app)
    if ray.get(sp.quota.remote("127.0.0.5")):  # make the capped IP's counter non-trivial
        n = len(capped.received)
        await send(app, named(app, "capped"), ["warm@capped.test"])
        await wait_for(lambda: len(capped.received) > n)
    quota = ray.get(sp.summary.remote())["quota_left_today"]
    assert quota["127.0.0.5"] < app.config.outbound.warmup_daily_caps[0]
    before = len(capped.received)
    alice = app.user()
    ids = [(await send(app, alice, [f"r{i}@nolisten.test"])).json()["message_id"] for i in range(3)]
    pid = ray.get(sp.stats.remote())["pid"]
    ray.kill(sp, no_restart=False)
    stats = await wait_for(lambda: _stats_after_restart(app, pid), timeout=60)
    assert stats["recovered"]["pending"] >= 3  # replayed from the log, queued again
    s = ray.get(spool(app).summary.remote())
    counts = s["pools"]["tx"]["nolisten.test"]
    assert sum(counts.values()) >= len(ids)
    assert s["quota_left_today"] == quota  # warm-up counters survived
    r = await send(app, alice, ["after@ok.test"])  # gateways and senders found the new spool and queues
    mid = r.json()["message_id"]
    await wait_for(lambda: mid in peers["ok.test"].ids(), timeout=30)
    assert len(capped.received) == before
    # The gateway hands records over on the spool's same-host socket, also to the new
    # incarnation (after the lost link it waits a second, then connects again).
    for i in range(100):
        r = await send(app, alice, [f"again{i}@ok.test"])
        assert r.status_code == 201, r.text
        if ray.get(spool(app).stats.remote())["link_calls"] >= 1:
            break
        await asyncio.sleep(0.2)
    assert ray.get(spool(app).stats.remote())["link_calls"] >= 1
    # The senders' reports, too, go over the new incarnation's link.
    tx = next(p for p in app.config.outbound.pools if p.name == "tx")
    senders = [ray.get_actor(sender_name("tx", ip), namespace=app.config.cluster.namespace) for ip in tx.ips]

    def link_reports() -> int:
        return sum(ray.get(s.stats.remote())["report_link_calls"] for s in senders)

    before = link_reports()
    for i in range(100):
        mid = (await send(app, alice, [f"late{i}@ok.test"])).json()["message_id"]
        await wait_for(lambda m=mid: m in peers["ok.test"].ids(), timeout=30)
        if link_reports() > before:
            break
        await asyncio.sleep(0.2)
    assert link_reports() > before


def _stats_after_restart(app, old_pid):
    try:
        st = ray.get(spool(app).stats.remote(), timeout=5)
    except Exception:  # noqa: BLE001 - still restarting
        return None
    return st if st["pid"] != old_pid else None


async def test_every_step_is_in_the_event_log(world):
    from helpers import event_rows


    app, peers, _, _ = world
    alice = app.user()
    mid = (await send(app, alice, ["log@ok.test"])).json()["message_id"]
    await send(app, alice, ["log@nolisten.test"])  # deferred
    await send(app, alice, ["gone@reject.test"])  # bounced...
    await dsn_of(app, alice)
    assert (await send(app, alice, ["gone@reject.test"])).status_code == 422  # ...then suppressed
    await wait_for(lambda: mid in peers["ok.test"].ids())
    # The spool hands its events over about once a second, fire and forget.
    everything = await event_rows(app, lambda r: r["message_id"] == mid and r["event"] == "delivered")
    rows = [r for r in everything if r["message_id"] == mid]
    assert [r["event"] for r in rows] == ["queued", "delivered"]
    delivered = rows[1]
    assert delivered["smtp_code"] == 250 and delivered["pool"] == "tx" and delivered["ip"] in ("127.0.0.2", "127.0.0.3")
    assert delivered["sender"] == alice["email"] and delivered["recipient_domain"] == "ok.test"
    rows = await event_rows(app, lambda r: r["sender"] == alice["email"] and r["event"] == "suppressed")
    events = {r["event"] for r in rows if r["sender"] == alice["email"]}
    assert events == {"queued", "delivered", "deferred", "bounced", "suppressed"}
    from actors.catalog import day_partition, list_parts

    assert any(f"/events/{day_partition(delivered['ts'])}/" in k for k in list_parts(storage_of(app), "events").live)


def submission(app, user):
    """An authenticated submission session (STARTTLS, then AUTH with the user's token)."""
    import smtplib
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the server's certificate is self-signed
    s = smtplib.SMTP("127.0.0.1", app.deployment.submission_port, timeout=10)
    s.starttls(context=ctx)
    s.login(user["email"], user["token"])
    return s


async def test_submission_takes_the_same_path(world):
    app, peers, _, _ = world
    alice, bob = app.user(), app.user()
    mid = f"<sub-{uuid.uuid4().hex}@example.test>"
    msg = (f"From: {alice['email']}\r\nTo: far@ok.test, {bob['email']}\r\nSubject: via submission\r\n"
           f"List-Unsubscribe: <mailto:unsub@example.test>\r\nMessage-ID: {mid}\r\n\r\nnewsletter\r\n").encode()
    with submission(app, alice) as s:
        assert s.sendmail(alice["email"], ["far@ok.test", bob["email"]], msg) == {}
    got = await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == mid])
    assert got[0].peer_ip == "127.0.0.4"  # List-Unsubscribe: marketing, the marketing pool's IP
    head = got[0].data[: -len(msg)]
    assert got[0].data.endswith(msg) and b"\r\nReceived: " in b"\r\n" + head and b"Return-Path" not in head
    assert [e["subject"] for e in await inbox(app, bob)] == ["via submission"]
    # a suppressed address is refused at RCPT
    r = await send(app, alice, ["gone@reject.test"])
    assert r.status_code == 201
    await dsn_of(app, alice)
    with submission(app, alice) as s:
        s.mail(alice["email"])
        code, text = s.rcpt("gone@reject.test")
        assert code == 550 and b"suppressed" in text


@pytest.fixture(scope="module")
def short_lived(ray_cluster, tmp_path_factory):
    """Retries give up after 2 s; a hard bounce suppresses the address for every sender."""
    app = start_app(tmp_path_factory.mktemp("outbound-expiry"), outbound={
        "pools": [{"name": "only", "ips": ["127.0.0.40"], "categories": ["transactional"]}],
        "routes": {"down.test": f"127.0.0.41:{free_port('127.0.0.41')}"},
        "retry": {"backoff_s": [1], "max_age_s": 2}, "suppression": "global",
    })
    yield app
    app.deployment.stop()


async def test_4xx_until_the_maximum_age_then_bounce_without_suppression(short_lived):
    app = short_lived
    alice, bob = app.user(), app.user()
    assert (await send(app, alice, ["x@down.test"], subject="never arrives")).status_code == 201
    report = await dsn_of(app, alice)
    fields = " ".join(report.get_payload()[1].as_string().split())
    assert "Final-Recipient: rfc822; x@down.test" in fields and "Status: 4.4.7" in fields
    assert "Action: failed" in fields and "gave up after" in fields
    # a transient failure is no reason to block the address, for anyone
    assert (await send(app, alice, ["x@down.test"])).status_code == 201
    assert (await send(app, bob, ["x@down.test"])).status_code == 201


async def test_a_retried_send_with_an_idempotency_key_goes_out_once(world):
    app, peers, _, _ = world
    alice = app.user()
    body = {"recipients": ["once@ok.test"], "subject": "once", "body": "hello"}
    async with app.client(alice["token"]) as c:
        first = await c.post("/v1/send", json=body, headers={"Idempotency-Key": "k-1"})
        mid = first.json()["message_id"]
        await wait_for(lambda: mid in peers["ok.test"].ids())
        again = await c.post("/v1/send", json=body, headers={"Idempotency-Key": "k-1"})  # after delivery
    assert again.status_code == 201 and again.json()["message_id"] == mid
    await asyncio.sleep(1.5)
    assert peers["ok.test"].ids().count(mid) == 1


async def test_a_bounce_report_survives_a_spool_restart_and_arrives_once(world):
    app, _, _, _ = world
    alice = app.user()
    sp = spool(app)
    pid = ray.get(sp.stats.remote())["pid"]
    assert (await send(app, alice, ["gone@reject.test"], subject="bounce then crash")).status_code == 201
    await asyncio.sleep(0.3)  # about when the sender reports the 550
    ray.kill(sp, no_restart=False)
    await wait_for(lambda: _stats_after_restart(app, pid), timeout=60)
    await dsn_of(app, alice, timeout=30)
    await asyncio.sleep(2.0)
    reports = [e for e in await inbox(app, alice) if e["from"]["email"].startswith("MAILER-DAEMON@")]
    assert len(reports) == 1
    assert ray.get(spool(app).stats.remote())["bounces_pending"] == 0


async def test_the_spool_refuses_a_suppressed_recipient_the_gateway_let_through(world):
    """A bounce may land between the gateway's check and the enqueue: the spool has the last word."""
    from raymail import codec
    from raymail.outbound.records import OutboundMessage

    app, peers, _, _ = world
    alice = app.user()
    assert (await send(app, alice, ["gone@reject.test"])).status_code == 201
    await dsn_of(app, alice)  # hard bounce: suppressed for alice
    raw = b"From: a@example.test\r\nTo: gone@reject.test\r\nSubject: raced\r\nMessage-ID: <raced@x>\r\n\r\nhi\r\n"
    blob = storage_of(app).put("msg", raw)
    msg = OutboundMessage(uuid.uuid4().hex, "<raced@x>", alice["uid"], alice["email"], blob, "transactional", "tx",
                          ("gone@reject.test",), 1.0)
    tried = peers["reject.test"].rcpt_log.count("gone@reject.test")
    assert ray.get(spool(app).enqueue.remote(codec.encode([msg]))) == 1

    async def reports():
        return [e for e in await inbox(app, alice) if e["from"]["email"].startswith("MAILER-DAEMON@")]

    deadline = asyncio.get_running_loop().time() + 15
    while len(await reports()) < 2:
        assert asyncio.get_running_loop().time() < deadline, "no second bounce report"
        await asyncio.sleep(0.2)
    async with app.client(alice["token"]) as c:
        raw_report = (await c.get(f"/v1/emails/{(await reports())[0]['id']}/raw")).content
    assert b"suppressed" in raw_report and b"raced" in raw_report
    assert peers["reject.test"].rcpt_log.count("gone@reject.test") == tried  # never attempted


async def test_attachments_leave_whole_and_exactly_as_stored(world):
    import base64
    import os

    import dkim

    from raymail.outbound.dkim import create_key

    app, peers, _, _ = world
    _, txt = create_key(app.config.data_path, "example.test").txt_record()
    alice = app.user()
    data = os.urandom(300_000)  # stored apart from the message (a skeleton references it)
    async with app.client(alice["token"]) as c:
        up = await c.post("/v1/attachments", content=data,
                          headers={"Content-Type": "application/octet-stream", "X-Filename": "blob.bin"})
        assert up.status_code == 201, up.text
        r = await c.post("/v1/send", json={"recipients": ["att@ok.test"], "subject": "with attachment",
                                           "body": "see attached", "attachments": [up.json()["id"]]})
        assert r.status_code == 201 and r.json()["status"] == "queued"
        raw = (await c.get(f"/v1/emails/{r.json()['id']}/raw")).content
    mid = r.json()["message_id"]
    got = await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == mid])
    # Byte for byte what the Sent copy holds, after a DKIM-Signature that signs exactly it.
    assert got[0].data.endswith(raw) and got[0].data.startswith(b"DKIM-Signature:")
    assert dkim.verify(got[0].data, dnsfunc=lambda name, timeout=5: txt.encode())
    part = email.message_from_bytes(got[0].data, policy=policy.default).get_payload()[1]
    assert base64.b64decode(part.get_payload()) == data


async def test_a_lost_queue_is_replaced_and_its_work_queued_again(world):
    from actors.spool import queue_name

    app, peers, _, _ = world
    alice = app.user()
    ray.kill(ray.get_actor(queue_name("tx"), namespace=app.config.cluster.namespace), no_restart=True)
    mid = (await send(app, alice, ["after-queue-loss@ok.test"])).json()["message_id"]
    await wait_for(lambda: mid in peers["ok.test"].ids(), timeout=30)


async def test_spool_restart_from_a_snapshot(ray_cluster, tmp_path):
    """With a tiny snapshot threshold the spool compacts its log while it works; a
    restart then loads the snapshot and replays the rest: unfinished mail goes out,
    finished mail is not sent again, and the suppression list survives."""
    good = Receiver("127.0.0.41", refuse={"gone@snap.test": "550 5.1.1 no such user"}).start()
    dead = f"127.0.0.42:{free_port('127.0.0.42')}"
    app = start_app(tmp_path, outbound={
        "pools": [{"name": "tx", "ips": ["127.0.0.9"], "categories": ["transactional"]}],
        "routes": {"snap.test": good.route, "later.test": dead}, "snapshot_every_bytes": 2048,
        "retry": {"backoff_s": [1], "max_age_s": 3600}, "lease_s": 3.0,
        "warmup": {"warmed_ips": ["127.0.0.9"]},
    })
    try:
        alice = app.user()
        delivered = [(await send(app, alice, [f"d{i}@snap.test"])).json()["message_id"] for i in range(8)]
        await wait_for(lambda: set(delivered) <= set(good.ids()), timeout=30)
        assert (await send(app, alice, ["gone@snap.test"])).status_code == 201  # 5xx: suppressed
        waiting = [(await send(app, alice, [f"w{i}@later.test"])).json()["message_id"] for i in range(4)]
        sp = spool(app)
        await wait_for(lambda: ray.get(sp.summary.remote())["pools"].get("tx", {}).get("later.test"), timeout=15)
        await asyncio.sleep(0.5)  # the snapshot runs beside the work
        assert ray.get(sp.stats.remote())["recovered"]["records"] == 0  # a fresh spool, so far
        pid = ray.get(sp.stats.remote())["pid"]
        ray.kill(sp, no_restart=False)
        stats = await wait_for(lambda: _stats_after_restart(app, pid), timeout=60)
        assert stats["recovered"]["snapshot"] is True
        assert stats["recovered"]["pending"] >= len(waiting)  # the deferred mail is still owed
        received_before = len(good.received)
        good_route_back = await send(app, alice, ["again@snap.test"])  # a new spool takes new work too
        mid = good_route_back.json()["message_id"]
        await wait_for(lambda: mid in good.ids(), timeout=30)
        assert len(good.received) == received_before + 1  # nothing finished went out twice
        r = await send(app, alice, ["gone@snap.test"])
        assert r.status_code == 422 and r.json()["error"]["code"] == "suppressed_recipient"
    finally:
        app.deployment.stop()
        good.stop()


async def test_a_sender_holding_work_past_lease_s_sends_it_once(ray_cluster, tmp_path):
    """A live sender keeps its leases however long its work waits (here on one
    connection to a destination taking 1 s per message, with a 3 s lease): the other
    IP of the pool never gets a copy, so every message arrives exactly once."""
    slow = Receiver("127.0.0.62", delay_s=1.0).start()
    app = start_app(tmp_path, outbound={
        "pools": [{"name": "tx", "ips": ["127.0.0.60", "127.0.0.61"], "categories": ["transactional"]}],
        "routes": {"slow.test": slow.route}, "lease_s": 3.0, "per_domain_connections": 1,
        "warmup": {"warmed_ips": ["127.0.0.60", "127.0.0.61"]},
    })
    try:
        alice = app.user()
        ids = [(await send(app, alice, [f"r{i}@slow.test"])).json()["message_id"] for i in range(8)]
        await wait_for(lambda: set(ids) <= set(slow.ids()), timeout=40)
        await asyncio.sleep(4.0)  # past another lease_s: an expired lease would have sent a copy by now
        got = slow.ids()
        assert sorted(got) == sorted(ids)  # each once, nothing else
        assert slow.attempts == len(ids)  # and no second DATA for any of them
    finally:
        app.deployment.stop()
        slow.stop()


async def test_a_policy_refusal_bounces_without_suppressing_the_address(world):
    """5.7.1 at DATA says nothing about the mailbox: a bounce report, no suppression."""
    app, peers, _, _ = world
    alice = app.user()
    assert (await send(app, alice, ["someone@policy.test"])).status_code == 201
    report = await dsn_of(app, alice)
    assert "5.7.1" in report.as_string()
    again = await send(app, alice, ["someone@policy.test"])
    assert again.status_code == 201, again.text  # not on the suppression list


async def test_a_repeated_submission_lands_once(world):
    """A client that sends the same message again (same Message-ID and recipients:
    it retried after a lost reply or a late 451) gets 250 and nothing is doubled:
    not the remote copy, not the local recipient's, not the Sent copy."""
    app, peers, _, _ = world
    alice, bob = app.user(), app.user()
    mid = f"<again-{uuid.uuid4().hex}@example.test>"
    msg = (f"From: {alice['email']}\r\nTo: far@ok.test, {bob['email']}\r\nSubject: twice\r\n"
           f"Message-ID: {mid}\r\n\r\nonce, please\r\n").encode()
    for _ in range(2):
        with submission(app, alice) as s:
            assert s.sendmail(alice["email"], ["far@ok.test", bob["email"]], msg) == {}
    await wait_for(lambda: [m for m in peers["ok.test"].received if m.message_id == mid])
    await asyncio.sleep(1.0)  # room for a second copy to show up, were there one
    assert len([m for m in peers["ok.test"].received if m.message_id == mid]) == 1
    assert [e["subject"] for e in await inbox(app, bob)] == ["twice"]
    async with app.client(alice["token"]) as c:
        sent = (await c.get("/v1/emails", params={"folder": "sent"})).json()
    assert [e["subject"] for e in sent["emails"]] == ["twice"]
