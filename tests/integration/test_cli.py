"""The ``raymail`` command: user and domain management while serving, ``up`` and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

RAYMAIL = [sys.executable, "-m", "cluster.cli"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RAYMAIL, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_user_add_while_serving(app):
    data = str(app.config.data_path)
    out = run("user", "add", "Zoe.Q@Example.test", "--name", "Zoe Q", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    zoe = json.loads(out.stdout)
    assert set(zoe) >= {"uid", "email", "token"} and zoe["email"] == "Zoe.Q@example.test"
    assert zoe["token"] not in (Path(data) / "directory.sqlite3").read_bytes().decode("latin-1")
    sender = app.user()
    async with app.client(sender["token"]) as c:
        r = await c.post("/v1/send", json={"recipients": ["zoe.q@example.test"], "body": "welcome"})
        assert r.status_code == 201, r.text
    async with app.client(zoe["token"]) as c:
        assert (await c.get("/v1/emails")).json()["total"] == 1

    dup = run("user", "add", "zoe.q@example.test", "--data-dir", data)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = run("user", "add", "not an address", "--data-dir", data)
    assert bad.returncode == 1 and "address" in bad.stderr


def test_domain_add_and_list(tmp_path):
    assert run("domain", "add", "Mail.Example.ORG", "--data-dir", str(tmp_path)).returncode == 0
    listed = json.loads(run("domain", "list", "--data-dir", str(tmp_path)).stdout)
    assert listed == {"domains": ["mail.example.org"]}
    bad = run("domain", "add", "--data-dir", str(tmp_path), "--", "-bad-.example")
    assert bad.returncode == 1 and "not a valid domain" in bad.stderr


def test_bad_config_names_the_subsystem(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[limits]\nmax_recipients = 0\n")
    out = run("user", "add", "a@example.test", "--config", str(cfg), "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "[limits] max_recipients" in out.stderr


def test_up_serves_and_stops_cleanly_on_sigterm(ray_cluster, tmp_path):
    port = free_port()
    cfg = tmp_path / "up.toml"
    cfg.write_text('[cluster]\nnamespace = "cli-up-test"\n')
    proc = subprocess.Popen(
        [*RAYMAIL, "up", "--config", str(cfg), "--data-dir", str(tmp_path / "var"), "--http-port", str(port),
         "--address", ray_cluster],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ},
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("raymail up did not serve within 90 s")
        user = json.loads(run("user", "add", "ann@example.test", "--data-dir", str(tmp_path / "var")).stdout)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/send", headers={"Authorization": f"Bearer {user['token']}"},
                       json={"recipients": ["ann@example.test"], "body": "note to self"})
        assert r.status_code == 201
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "raymail: stopped" in out
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
