"""``raymail storage gc`` and ``raymail storage stats`` against a running deployment."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import ray
from conftest import start_app, storage_of

RAYMAIL = [sys.executable, "-m", "cluster.cli"]
ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
TXT = b"meeting notes\n" * 40


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RAYMAIL, *args], capture_output=True, text=True, cwd=ROOT, timeout=180)


@pytest.fixture(scope="module")
def world(ray_cluster, tmp_path_factory):
    """A deployment where alice uploaded two files and mailed the first to bob."""
    tmp = tmp_path_factory.mktemp("storage-cli")
    app = start_app(tmp / "data")
    alice, bob = app.user("alice"), app.user("bob")
    uploads = []
    with httpx.Client(base_url=app.base_url, headers={"Authorization": f"Bearer {alice['token']}"}, timeout=30) as c:
        for data, ctype, name in ((PNG, "image/png", "photo.png"), (TXT, "text/plain", "notes.txt")):
            r = c.post("/v1/attachments", content=data, headers={"Content-Type": ctype, "X-Filename": name})
            assert r.status_code == 201, r.text
            uploads.append(r.json())
        r = c.post("/v1/send", json={"recipients": [bob["email"]], "subject": "photo", "body": "see attached",
                                     "attachments": [uploads[0]["id"]]})
        assert r.status_code == 201, r.text
    config_file = tmp / "raymail.toml"
    config_file.write_text(f'[cluster]\nnamespace = "{app.config.cluster.namespace}"\n'
                           f"shards = {app.config.cluster.shards}\n")
    args = ["--config", str(config_file), "--data-dir", str(app.config.data_path)]
    yield app, alice, bob, uploads, args
    app.deployment.stop()


def att_key(meta: dict) -> str:
    return f"att/{meta['sha256'][:2]}/{meta['sha256']}"


def test_gc_deletes_only_old_unreferenced_blobs(world, ray_cluster):
    app, alice, bob, uploads, args = world
    store = storage_of(app)
    old = time.time() - 3600
    orphan = store.put("att", b"uploaded, never recorded " + os.urandom(16))
    orphan_size = store.size(orphan)
    young_orphan = store.put("att", b"an upload in flight " + os.urandom(16))
    stale_tmp = f"tmp/{uuid.uuid4().hex}"
    for key in (orphan, stale_tmp):
        path = Path(store.root) / key
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)  # small uploads never make tmp/
            path.write_bytes(b"half an upload")
        os.utime(path, (old, old))
    before = {k for p in ("att/", "msg/", "tmp/", "catalog/") for k, _, _ in store.list(p)}
    msg_keys = {k for k in before if k.startswith("msg/")}
    assert msg_keys, "the send stored its message"

    dry = run("storage", "gc", "--grace-s", "120", "--address", ray_cluster, "--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    summary = json.loads(dry.stdout)
    assert summary["dry_run"] is True and summary["deleted"] == 2
    assert {k for p in ("att/", "msg/", "tmp/") for k, _, _ in store.list(p)} >= {
        k for k in before if not k.startswith("catalog/")
    }

    out = run("storage", "gc", "--grace-s", "120", "--address", ray_cluster, *args)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["deleted"] == 2 and summary["errors"] == 0 and summary["skipped_young"] >= 1
    assert summary["referenced"] >= 2 + len(msg_keys)
    assert summary["catalogued"] == 1  # the attachment blob, for the statistics; not tmp/
    assert "recorded 1 removed attachment blobs in the catalog" in out.stderr
    after = {k for p in ("att/", "msg/", "tmp/", "catalog/") for k, _, _ in store.list(p)}
    assert orphan not in after and stale_tmp not in after
    assert {att_key(u) for u in uploads} | msg_keys | {young_orphan} <= after
    assert {k for k in before if k.startswith("catalog/")} <= after
    with httpx.Client(base_url=app.base_url, headers={"Authorization": f"Bearer {bob['token']}"}, timeout=30) as c:
        assert c.get(f"/v1/attachments/{uploads[0]['id']}").content == PNG

    stats = run("storage", "stats", "--json", *args)
    assert stats.returncode == 0, stats.stderr
    got = json.loads(stats.stdout)
    assert {"unique_blobs", "physical_bytes", "logical_bytes", "dedup_ratio", "top_users",
            "content_types"} <= set(got)
    assert (got["collected_blobs"], got["collected_bytes"]) == (1, orphan_size)
    report = run("storage", "stats", *args).stdout
    assert "dedup ratio" in report and "removed by gc    1 blobs" in report


@pytest.mark.parametrize("grace", ["119", "0", "-1", "nan"])
def test_gc_refuses_a_grace_period_too_short_to_be_safe(world, ray_cluster, grace):
    app, _, _, _, args = world
    before = {k for k, _, _ in storage_of(app).list("att/")}
    out = run("storage", "gc", "--grace-s", grace, "--address", ray_cluster, *args)
    assert out.returncode == 2 and "--grace-s must be at least 120 seconds" in out.stderr and out.stdout == ""
    assert {k for k, _, _ in storage_of(app).list("att/")} == before


def test_gc_refuses_a_wrong_shard_count(world, ray_cluster, tmp_path):
    app, _, _, _, args = world
    cfg = tmp_path / "one-shard.toml"
    cfg.write_text(f'[cluster]\nnamespace = "{app.config.cluster.namespace}"\nshards = 1\n')
    out = run("storage", "gc", "--grace-s", "120", "--address", ray_cluster,
              "--config", str(cfg), "--data-dir", str(app.config.data_path))
    assert out.returncode == 1 and "shard-1 exists" in out.stderr and out.stdout == ""
    assert all(k in {k for k, _, _ in storage_of(app).list("att/")} for k in map(att_key, world[3]))


def test_stats_count_uploads_and_references(world):
    app, alice, bob, uploads, args = world
    from pipelines.catalog import storage_stats

    deadline = time.monotonic() + 20
    rows = {}
    while time.monotonic() < deadline:
        try:
            ray.get(ray.get_actor("catalog", namespace=app.config.cluster.namespace).flush.remote(), timeout=30)
        except ValueError:
            pass  # no catalog actor deployed
        rows = {k: v for k, v in storage_stats(app.config)["rows"].items() if k in ("blobs", "refs")}
        if rows == {"blobs": 2, "refs": 2}:
            break
        time.sleep(0.5)
    assert rows == {"blobs": 2, "refs": 2}, "the shards fed the catalog: 2 uploads, 2 mailboxes holding the photo"

    out = run("storage", "stats", "--json", *args)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    png, txt = len(PNG), len(TXT)
    assert (stats["unique_blobs"], stats["physical_bytes"]) == (2, png + txt)
    assert stats["logical_bytes"] == png + txt + 2 * png  # uploads + alice's sent copy + bob's inbox
    assert stats["dedup_ratio"] == pytest.approx((3 * png + txt) / (png + txt))
    assert stats["top_users"] == [
        {"uid": alice["uid"], "logical_bytes": 2 * png + txt, "attachments": 3},
        {"uid": bob["uid"], "logical_bytes": png, "attachments": 1},
    ]
    assert stats["content_types"] == [
        {"content_type": "image/png", "count": 1, "bytes": png},
        {"content_type": "text/plain", "count": 1, "bytes": txt},
    ]


def test_query_runs_sql_over_the_catalog(world):
    app, alice, _, _, args = world
    ray.get(ray.get_actor("catalog", namespace=app.config.cluster.namespace).flush.remote(), timeout=30)
    sql = "SELECT content_type, count(*) AS n, sum(size) AS bytes FROM blobs GROUP BY 1 ORDER BY 1"
    out = run("storage", "query", sql, "--json", *args)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"content_type": "image/png", "n": 1, "bytes": len(PNG)},
                                      {"content_type": "text/plain", "n": 1, "bytes": len(TXT)}]
    table = run("storage", "query", sql, *args).stdout.splitlines()
    assert table[0].split() == ["content_type", "n", "bytes"] and table[1].split() == ["image/png", "1", str(len(PNG))]
    many = run("storage", "query", "SELECT * FROM range(10001)", "--json", *args)
    assert many.returncode == 0 and len(json.loads(many.stdout)) == 10_000
    assert "only the first 10000 rows are shown" in many.stderr
    bad = run("storage", "query", "SELECT * FROM mailboxes", *args)
    assert bad.returncode == 2 and "mailboxes" in bad.stderr and "blobs, refs" in bad.stderr and bad.stdout == ""


def test_gc_removes_what_only_deleted_mail_referenced(world, ray_cluster):
    """A received attachment shared by two mailboxes: kept while either holds the
    message, removed (with the message's own blob) once both deleted it. Last in
    this file: it changes what the statistics above count."""
    app, alice, bob, _, args = world
    store = storage_of(app)
    data = os.urandom(40_000)
    raw = (b"From: zed@elsewhere.test\r\nSubject: report\r\nMessage-ID: <r1@elsewhere.test>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nattached\r\n'
           b'--B\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="r.pdf"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data).replace(b"\n", b"\r\n")
           + b"--B--\r\n")
    msg_before = {k for k, _, _ in store.list("msg/")}
    ids = {}
    for user in (alice, bob):
        with httpx.Client(base_url=app.base_url, headers={"Authorization": f"Bearer {user['token']}"}) as c:
            r = c.post("/v1/import", content=raw, headers={"Content-Type": "message/rfc822"})
            assert r.status_code == 201, r.text
            ids[user["uid"]] = r.json()["id"]
    sha = hashlib.sha256(data).hexdigest()
    blobs = {f"att/{sha[:2]}/{sha}"} | ({k for k, _, _ in store.list("msg/")} - msg_before)
    assert len(blobs) == 2  # the attachment, and the message without it (the same for both)
    old = time.time() - 3600
    for key in blobs:
        os.utime(Path(store.root) / key, (old, old))

    def delete_and_collect(user: dict) -> dict:
        with httpx.Client(base_url=app.base_url, headers={"Authorization": f"Bearer {user['token']}"}) as c:
            assert c.delete(f"/v1/emails/{ids[user['uid']]}").status_code == 204
        out = run("storage", "gc", "--grace-s", "120", "--address", ray_cluster, *args)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    delete_and_collect(bob)
    assert all(store.exists(k) for k in blobs), "alice still holds the message"
    summary = delete_and_collect(alice)
    assert summary["deleted"] == 2 and summary["catalogued"] == 1
    assert not any(store.exists(k) for k in blobs)
