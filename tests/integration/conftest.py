"""Integration fixtures: one real local Ray cluster per test session, real
deployments of raymail on it (each in its own namespace and data directory),
real HTTP and WebSocket clients."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import dnsserver
import httpx
import pytest
import ray
import websockets
from s3server import MotoServer  # noqa: F401 - the tests import it from here too

from cluster.deploy import Deployment
from raymail import config as config_mod
from raymail.store.directory import Directory


@pytest.fixture(scope="session")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace="raymail-tests", logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@dataclasses.dataclass
class App:
    deployment: Deployment
    config: config_mod.Config
    directory: Directory
    backend: str = "file"

    @property
    def port(self) -> int:
        return self.deployment.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/connect"

    def user(self, name: str | None = None) -> dict:
        local = name or f"u{uuid.uuid4().hex[:10]}"
        user, token = self.directory.add_user(f"{local}@example.test", name=local.title())
        return {"uid": user.uid, "email": user.email, "token": token, "name": user.name}

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)

    def ws(self, token: str, since: int | None = None, **kwargs):
        url = self.ws_url + (f"?since={since}" if since is not None else "")
        return websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _deployments_use_test_dns(dns_server):
    """Every deployment resolves through the session's NSD, never through the system
    resolver (the network is closed to tests; lookups there would hang). The port is
    kept in the ``dnsserver`` module: tests import this file as a second module."""
    dnsserver.deployment_port = dns_server.port
    yield
    dnsserver.deployment_port = None


def make_config(tmp: Path, **sections) -> config_mod.Config:
    assert dnsserver.deployment_port is not None, "the dns_server fixture starts before any deployment"
    raw = {
        "server": {"data_dir": str(tmp), "http_port": 0, "smtp_port": 0, "submission_port": 0},
        "cluster": {"namespace": f"rm-{uuid.uuid4().hex[:8]}", "shards": 2},
        "gateway": {"processes": 1},
        "limits": {"send_rate_per_s": 1000.0, "send_burst": 5000},
        "dns": {"servers": ["127.0.0.1"], "port": dnsserver.deployment_port, "timeout_s": 2.0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_mod.from_dict(raw)


def storage_of(app: App):
    from raymail.store.blobs import BlobStore

    return BlobStore(app.config.storage_url, app.config.storage.options)


def start_app(tmp: Path, **sections) -> App:
    cfg = make_config(tmp, **sections)
    Directory(cfg.data_path).add_domain("example.test")
    dep = Deployment(cfg).start()
    return App(dep, cfg, Directory(cfg.data_path))


@pytest.fixture(scope="session")
def app(ray_cluster, tmp_path_factory):
    """The shared deployment: 2 shards, 2 gateway processes on one port."""
    a = start_app(tmp_path_factory.mktemp("app"), gateway={"processes": 2})
    yield a
    a.deployment.stop()


@pytest.fixture(scope="module", params=["file", "s3"])
def storage_app(request, ray_cluster, tmp_path_factory):
    """A deployment per storage backend: the same tests run on file:// and s3://."""
    tmp = tmp_path_factory.mktemp(f"storage-{request.param}")
    storage = {"url": ""}
    if request.param == "s3":
        server = request.getfixturevalue("moto")
        storage = {"url": server.bucket(f"b{uuid.uuid4().hex[:10]}"), "options": server.options}
    a = start_app(tmp, storage=storage, limits={"max_attachment_bytes": 2 * 1024 * 1024,
                                                "max_message_bytes": 3 * 1024 * 1024})
    a.backend = request.param
    yield a
    a.deployment.stop()
