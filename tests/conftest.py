"""Shared fixtures and the Hypothesis profiles.

`HYPOTHESIS_PROFILE=ci` runs every property with many more examples; the default profile keeps a
local `make test` fast. No deadline: the first call of a test may pay for loading a cost map.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from redis_support import redis_cluster, redis_server, redis_url
from support import FakeClock, small_cost_map
from usagemeter import CostMap, MeteringService

# Real Redis servers for every test module (see `redis_support`): pytest finds fixtures by name here.
__all__ = ["redis_cluster", "redis_server", "redis_url"]

settings.register_profile("default", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def default_cost_map() -> CostMap:
    """The 1,105 shipped prices (immutable, so one instance serves every test)."""
    return CostMap.default()


@pytest.fixture(scope="session")
def small_map() -> CostMap:
    """A handful of prices, integral and fractional (see `support.SMALL_PRICES`)."""
    return small_cost_map()


@pytest.fixture
def clock() -> FakeClock:
    """Stands still at 2026-10-15T12:00:00Z until a test moves it."""
    return FakeClock()


@pytest.fixture
def service(small_map: CostMap, clock: FakeClock) -> MeteringService:
    return MeteringService(small_map, clock=clock)


@pytest.fixture
def default_service(clock: FakeClock) -> MeteringService:
    """A service on the shipped prices (`cost_map=None` means `CostMap.default()`)."""
    return MeteringService(None, clock=clock)
