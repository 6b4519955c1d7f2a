"""Fixtures shared by the unit and the integration tests."""

from __future__ import annotations

import pytest
from dnsserver import TestDns
from s3server import MotoServer


@pytest.fixture(scope="session")
def moto():
    """One S3-compatible server for the session; each user makes its own bucket."""
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dns_server():
    """One real authoritative DNS server (NSD) serving the test sender zone."""
    server = TestDns()
    yield server
    server.stop()
