"""How a fleet names idempotency keys in Redis (issue 18, point 3): distinct (user, key) pairs
never share a name, a key never lands on a user's hash, every user id can record keyed calls on a
cluster, and a key an older worker recorded under the older name still replays. With real
`redis-server` processes: one node, and the 3-node cluster of `redis_support`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fleet_workers import fleet_cost_map
from redis_support import RedisCluster, RedisServer
from usagemeter import Actor, MeteringService, Policy, StoreCorruptedError, StoreUnavailableError

ALLOWANCE = 100_000  # µ¢ a month per user
DAY_MS = "86400000"  # an idempotency key's default window, as an older worker set it


class Shared:
    """A shared ledger to open workers on, and raw Redis commands on it (as an older worker)."""

    def __init__(
        self, url: str, backend: str | None, command: Callable[..., str], nodes: list[Callable[..., str]]
    ) -> None:
        self.url, self.backend, self.command, self.nodes = url, backend, command, nodes
        self.opened: list[MeteringService] = []

    def worker(self) -> MeteringService:
        options: dict[str, Any] = {"snapshot_interval": 0.1, "policies": [Policy("temp_free", ALLOWANCE)]}
        if self.backend:
            options["store_backend"] = self.backend
        service = MeteringService(fleet_cost_map(), store=self.url, **options)
        self.opened.append(service)
        return service


@pytest.fixture(params=["single", "cluster"])
def shared(request: pytest.FixtureRequest) -> Iterator[Shared]:
    if request.param == "single":
        server: RedisServer = request.getfixturevalue("redis_server")
        ledger = Shared(server.url, None, server.command, [server.command])
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        ledger = Shared(cluster.url, "redis-cluster", cluster.command, [n.command for n in cluster.nodes])
    try:
        yield ledger
    finally:
        for service in ledger.opened:
            service.close()


def prefix(name: str) -> str:
    """Unique per test (the cluster is shared by the module), and without braces or colons."""
    return f"{name}-{uuid.uuid4().hex[:8]}-"


def usage(service: MeteringService, user: str) -> dict[str, Any]:
    service.flush()
    details: Any = service.get_actor_current_month_usage_details(Actor(user))
    result: dict[str, Any] = details["usage"]
    return result


def test_pairs_that_shared_a_redis_key_no_longer_meet(shared: Shared) -> None:
    first, second = shared.worker(), shared.worker()
    p = prefix("meet")
    # `x{y}` with key `a:k:b` and `x{y}:k:a` with key `b` were one Redis key.
    a, b = f"{p}x{{y}}", f"{p}x{{y}}:k:a"
    assert first.increment_usage(Actor(a), "fleet:int", 8, idempotency_key="a:k:b") == 1_000
    # B's first call records (it replayed A's total, or raised IdempotencyKeyReused)...
    assert second.increment_usage(Actor(b), "fleet:int", 16, idempotency_key="b") == 2_000
    # ...and A's retry, on the worker that has not seen it, replays A's.
    assert second.increment_usage(Actor(a), "fleet:int", 8, idempotency_key="a:k:b") == 1_000
    assert first.increment_usage(Actor(b), "fleet:int", 16, idempotency_key="b") == 2_000
    # `p{q}` with key `kk` wrote its key over the hash of user `p{q}:k:kk`.
    owner, other = f"{p}p{{q}}:k:kk", f"{p}p{{q}}"
    first.increment_usage(Actor(owner), "fleet:int", 8)
    first.flush()
    assert second.increment_usage(Actor(other), "fleet:int", 8, idempotency_key="kk") == 1_000
    first.increment_usage(Actor(owner), "fleet:int", 8)
    first.flush()  # raised WRONGTYPE before, for ever after
    assert shared.command("TYPE", f"usagemeter:u:{owner}") == "hash"
    for service in (first, second):
        assert usage(service, owner)["fleet:int"] == {"units": 16, "cost": 2_000, "count": 2}
        assert usage(service, other)["fleet:int"] == {"units": 8, "cost": 1_000, "count": 1}
        assert usage(service, a)["fleet:int"]["count"] == 1
        assert usage(service, b)["fleet:int"] == {"units": 16, "cost": 2_000, "count": 1}
    for service in (first, second):
        service.close()


USER_IDS = ["a{b}c", "a:b:k:c", "nul\0id{\0}", "}{", "{}", "a}b{c", "🦀{🦀}:k:🦀", "{", "}", "%3A{x}:k:"]


def test_every_user_id_records_keyed_calls_on_a_cluster(redis_cluster: RedisCluster) -> None:
    nodes = [node.command for node in redis_cluster.nodes]
    ledger = Shared(redis_cluster.url, "redis-cluster", redis_cluster.command, nodes)
    try:
        first, second = ledger.worker(), ledger.worker()
        p = prefix("ids")
        for user in (p + user_id for user_id in USER_IDS):
            actor = Actor(user)
            assert first.increment_usage(actor, "fleet:int", 8, idempotency_key="key:{1}") == 1_000, user
            assert second.increment_usage(actor, "fleet:int", 8, idempotency_key="key:{1}") == 1_000, user
            assert second.update_addon_credit(user, 500, idempotency_key="buy") == 500
            assert first.update_addon_credit(user, 500, idempotency_key="buy") == 500
        for user in (p + user_id for user_id in USER_IDS):
            assert usage(first, user)["fleet:int"] == {"units": 8, "cost": 1_000, "count": 1}, user
            assert first.get_actor_addons(Actor(user))["purchased_credits"] == 500
    finally:
        for service in ledger.opened:
            service.close()


def older_name(user: str, key: str) -> str:
    """The name a worker before issue 18 gave a key of a user whose id holds a `{tag}`."""
    return f"usagemeter:u:{user}:k:{key}"


def test_a_key_recorded_by_an_older_worker_still_replays(shared: Shared) -> None:
    worker, retrying = shared.worker(), shared.worker()
    p = prefix("older")
    user = f"{p}x{{y}}"
    # An older name that two pairs shared is whose, nobody can tell: never replayed to either.
    # The older worker recorded `x{y}` with `a:k:b` (its value taken from a user whose key names
    # did not change); `x{y}:k:a` with `b` records its own call.
    donor = f"{p}donor"
    worker.increment_usage(Actor(donor), "fleet:int", 8)
    assert worker.increment_usage(Actor(donor), "fleet:int", 8, idempotency_key="a:k:b") == 2_000
    value = shared.command("GET", f"{{usagemeter:u:{donor}}}:k:a:k:b")
    shared.command("SET", older_name(user, "a:k:b"), value, "PX", DAY_MS)
    other = f"{p}x{{y}}:k:a"
    assert retrying.increment_usage(Actor(other), "fleet:int", 8, idempotency_key="b") == 1_000
    assert usage(worker, other)["fleet:int"] == {"units": 8, "cost": 1_000, "count": 1}
    # An older worker's record of a call: the charge in the user's hash, the key beside it under
    # the older name. A worker of today writes the charge; the key is then moved to that name.
    assert worker.increment_usage(Actor(user), "fleet:int", 8, idempotency_key="old-1") == 1_000
    worker.flush()
    (name,) = [n for n in keys_of(shared, "usagemeter:{*") if n.endswith(":old-1") and user in n]
    shared.command("RENAME", name, older_name(user, "old-1"))
    # A worker that never saw the call: the key is read in Redis, under its older name.
    assert retrying.increment_usage(Actor(user), "fleet:int", 8, idempotency_key="old-1") == 1_000
    assert usage(retrying, user)["fleet:int"] == {"units": 8, "cost": 1_000, "count": 1}


def keys_of(shared: Shared, pattern: str) -> list[str]:
    """Every key matching `pattern`, on every node."""
    return [name for node in shared.nodes for name in node("KEYS", pattern).splitlines()]


def test_a_user_record_of_another_type_is_named_as_damage(redis_server: RedisServer) -> None:
    first = MeteringService(fleet_cost_map(), store=redis_server.url, snapshot_interval=60)
    user = prefix("damaged") + "w{x}"
    hash_key = f"usagemeter:u:{user}"
    try:
        first.increment_usage(Actor(user), "fleet:int", 8)
        first.flush()
        redis_server.command("DEL", hash_key)
        redis_server.command("SET", hash_key, "written over")
        first.increment_usage(Actor(user), "fleet:int", 8)
        failures = []
        with pytest.raises(StoreCorruptedError) as flushed:
            first.flush()
        failures.append(flushed.value)
        with pytest.raises(StoreCorruptedError) as keyed:
            first.increment_usage(Actor(user), "fleet:int", 8, idempotency_key="k")
        failures.append(keyed.value)
        with pytest.raises(StoreCorruptedError) as opened:
            MeteringService(fleet_cost_map(), store=redis_server.url)
        failures.append(opened.value)
        for failure in failures:
            message = str(failure)
            assert f"record of user {user!r}".replace("'", '"') in message, message
            assert "is not a hash" in message and "(WRONGTYPE)" in message, message
            assert "written over it" in message, message
            assert "cannot be reached" not in message, message
        assert "is not a hash but a string" in str(failures[0])
        # Deleted, the user is a record the ledger lost: the worker adopts nothing and starts a
        # restore from its copies (the ledger identity's rule, tests/test_fleet_ledger_identity.py).
        redis_server.command("DEL", hash_key)
        with pytest.raises(StoreUnavailableError, match="lost data"):
            first.flush()
        assert redis_server.command("TYPE", hash_key) == "none"
    finally:
        # The restore ends after 3 snapshot intervals (3 minutes here): stop the thread anyway.
        with contextlib.suppress(StoreUnavailableError):
            first.close()
        with contextlib.suppress(StoreUnavailableError):
            first._close_at_exit()
