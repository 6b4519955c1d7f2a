"""Unit-test guard rails: unit tests never start Ray.

A unit test must not import ray at all; the autouse fixture catches the worst case
(a cluster started by a test or by the code under test) and fails that test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


@pytest.fixture(autouse=True)
def no_ray_cluster():
    if _ray_running():
        pytest.fail("Ray is initialized before a unit test; unit tests must run without Ray")
    yield
    if _ray_running():
        pytest.fail("a unit test (or the code it ran) initialized Ray; unit tests must run without Ray")


def pytest_collection_modifyitems(config, items):
    """Run the unit tests first when one session also collects the integration tests.

    The integration suite keeps a session-scoped Ray cluster up until the session
    ends; unit tests ordered after it would all trip the guard above. The relative
    order inside each group is unchanged.
    """
    unit = [i for i in items if _HERE in Path(str(i.path)).resolve().parents]
    if unit and len(unit) != len(items):
        rest = [i for i in items if _HERE not in Path(str(i.path)).resolve().parents]
        items[:] = unit + rest
