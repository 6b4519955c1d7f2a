"""Fixtures shared by the unit and the integration tests."""

from __future__ import annotations

import pytest
from s3server import MotoServer


@pytest.fixture(scope="session")
def moto():
    """One S3-compatible server for the session; each user makes its own bucket."""
    server = MotoServer()
    yield server
    server.stop()
