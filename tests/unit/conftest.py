"""Unit-test guard rails: unit tests never start Ray.

A unit test must not import ray at all; this fixture catches the worst case (a
cluster started by a test or by code under test) and fails that test.
"""

from __future__ import annotations

import sys

import pytest


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
