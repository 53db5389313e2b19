"""A wiped or replaced shared ledger (issue 18, point 5): a fleet notices that the Redis it writes
is not the ledger it opened, raises a ``ledger_lost`` alarm, never adopts an empty ledger, and
restores it from the workers' replicas; another fleet's ledger behind the same address is never
written. Real `redis-server` processes and real worker processes (`fleet_workers.py`), no mocks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_workers import fleet_cost_map
from redis_support import RedisCluster, RedisServer
from test_fleet import Spawn, close_anyway, spawn, start_together, units_of, wait_until  # noqa: F401  (the fixture)
from usagemeter import (
    ALARM,
    Actor,
    AlarmEvent,
    MeteringService,
    Policy,
    StoreUnavailableError,
)
from usagemeter.store import copy_store

INTERVAL = 0.1  # seconds between two syncs
COST = 1_000  # µ¢ per strict call
BUDGET_CALLS = 60  # strict calls each budget user can afford in a month
ALLOWANCE = BUDGET_CALLS * COST
LEDGER_KEY = "usagemeter:ledger"


def prefix(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}-"


def service_on(url: str, **options: Any) -> MeteringService:
    options.setdefault("snapshot_interval", INTERVAL)
    options.setdefault("policies", [Policy("temp_free", ALLOWANCE)])
    return MeteringService(fleet_cost_map(), store=url, **options)


class Alarms:
    """The alarms a service raised, by kind."""

    def __init__(self, service: MeteringService) -> None:
        self.seen: list[AlarmEvent] = []
        service.events.on(ALARM, self.seen.append)

    def of(self, kind: str) -> list[str]:
        return [alarm.message for alarm in self.seen if alarm.kind == kind]


@pytest.fixture
def volatile_server() -> Iterator[RedisServer]:
    """A server without persistence: a restart comes back empty."""
    with RedisServer(appendonly=False) as server:
        yield server


def cost_of(service: MeteringService, user: str, usage_type: str) -> int:
    details: Any = service.get_actor_current_month_usage_details(Actor(user))
    entry = details["usage"].get(usage_type)
    return 0 if entry is None else int(entry["cost"])


def meter_through(
    spawn: Spawn,  # noqa: F811
    server: RedisServer,
    fault: Callable[[], object],
) -> None:
    """Two workers meter plain and strict traffic, `fault` strikes once the budgets are spent,
    they go on for a while: afterwards every figure in Redis is what the workers' calls returned
    (all of them lived: nothing may be lost), no budget was spent twice, and each worker raised
    `ledger_lost`."""
    own = prefix("own")
    budget = prefix("budget")
    workers = [
        spawn(
            f"metered-{index}",
            mode="strict_steady",
            url=server.url,
            prefix=f"{own}{index}-",
            users=20,
            budget_prefix=budget,
            budget_users=3,
            cost=COST,
            allowance=ALLOWANCE,
        )
        for index in range(2)
    ]
    start_together(workers)
    time.sleep(1.5)  # the budgets are spent (60 calls each) long before
    fault()
    time.sleep(4.0)  # the restore (3 rounds, at least 1 s) and metering after it
    for worker in workers:
        worker.send("stop")
    reports = [worker.finish() for worker in workers]
    made = surviving = 0
    wrong: list[str] = []
    accepted: dict[str, int] = {}
    with service_on(server.url) as fresh:
        for report in reports:
            for user, units in report["units"].items():
                saved = units_of(fresh, user, "fleet:int")
                made += units
                surviving += saved
                if saved != units:
                    wrong.append(f"{user}: {saved} in Redis, {units} returned")
            for user, cost in report["accepted"].items():
                accepted[user] = accepted.get(user, 0) + cost
        spent = {user: cost_of(fresh, user, "fleet:call") for user in accepted}
    print(f"{made} increments made, {surviving} in Redis; strict µ¢ accepted {accepted}")
    print(f"(budget {ALLOWANCE} µ¢ each)")
    for worker, report in zip(workers, reports, strict=True):
        assert report["errors"] == [], report["errors"]
        kinds = [alarm["kind"] for alarm in report["alarms"]]
        assert "ledger_lost" in kinds, f"{worker.name} raised no ledger_lost alarm: {report['alarms'][:5]}"
    assert not wrong, f"{len(wrong)} users wrong:\n" + "\n".join(wrong[:20])
    assert spent == accepted, "the strict charges in Redis are not what the workers accepted"
    overspent = {user: cost for user, cost in accepted.items() if cost > ALLOWANCE}
    assert not overspent, f"strict spending above the budget of {ALLOWANCE} µ¢: {overspent}"


@pytest.mark.timeout(180)
def test_a_flushall_under_workers_is_restored_from_their_replicas(
    spawn: Spawn,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    meter_through(spawn, redis_server, lambda: redis_server.command("FLUSHALL"))


@pytest.mark.timeout(180)
def test_a_restart_without_persistence_is_restored_from_the_workers(
    spawn: Spawn,  # noqa: F811
    volatile_server: RedisServer,
) -> None:
    def restart_empty() -> None:
        volatile_server.kill()
        volatile_server.start()
        assert volatile_server.command("DBSIZE") == "0"

    meter_through(spawn, volatile_server, restart_empty)


def spend_then_wipe(
    url: str, wipe: Callable[[], object], identity: Callable[[], str], **options: Any
) -> None:
    """The issue's reproduction: a spent budget, a wipe, and strict charges: refused during the
    restore (the offline rules) and after it (the budget is restored); plain usage kept."""
    user = prefix("spent") + "u"
    plain = prefix("plain") + "u"
    first = service_on(url, **options)
    second = service_on(url, **options)
    alarms = Alarms(first)
    try:
        actor = Actor(user)
        while first.try_increment_usage(actor, "fleet:call", 1, COST) is not None:
            pass
        second.increment_usage(Actor(plain), "fleet:int", 9)
        first.flush()
        second.flush()
        wait_until(lambda: cost_of(second, user, "fleet:call") == ALLOWANCE, 10)
        wipe()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            assert first.try_increment_usage(actor, "fleet:call", 1, ALLOWANCE - COST) is None
            assert second.try_increment_usage(actor, "fleet:call", 1, COST) is None
            time.sleep(0.05)
        wait_until(lambda: bool(alarms.of("ledger_lost")), 5)
        for service in (first, second):
            assert cost_of(service, user, "fleet:call") == ALLOWANCE
            assert units_of(service, plain, "fleet:int") == 9
        assert identity().endswith(":ready"), identity()
    finally:
        first.close()
        second.close()
    with service_on(url, **options) as fresh:
        assert cost_of(fresh, user, "fleet:call") == ALLOWANCE
        assert units_of(fresh, plain, "fleet:int") == 9


@pytest.mark.timeout(120)
def test_spent_budget_is_not_granted_again_after_a_flushall(redis_server: RedisServer) -> None:
    spend_then_wipe(
        redis_server.url,
        lambda: redis_server.command("FLUSHALL"),
        lambda: redis_server.command("GET", LEDGER_KEY),
    )


@pytest.mark.timeout(180)
def test_spent_budget_is_not_granted_again_after_a_flushall_of_a_cluster(redis_cluster: RedisCluster) -> None:
    def flush_every_node() -> None:
        for node in redis_cluster.nodes:
            node.command("FLUSHALL")

    spend_then_wipe(
        ",".join(redis_cluster.urls),
        flush_every_node,
        lambda: redis_cluster.command("GET", LEDGER_KEY),
        store_backend="redis-cluster",
    )


@pytest.mark.timeout(120)
def test_a_worker_opened_during_a_restore_is_offline_until_it_ends(redis_server: RedisServer) -> None:
    """It loads what is there, says so (`ledger_lost`), refuses strict spending, and reads every
    user again when the restore ends."""
    user = prefix("during") + "u"
    first = service_on(redis_server.url)
    try:
        first.increment_usage(Actor(user), "fleet:int", 5)
        first.flush()
        redis_server.command("FLUSHALL")
        wait_until(lambda: ":restoring:" in redis_server.command("GET", LEDGER_KEY), 5)
        late = service_on(redis_server.url)
        try:
            alarms = Alarms(late)
            assert late.try_increment_usage(Actor(user), "fleet:call", 1, COST) is None
            wait_until(lambda: bool(alarms.of("ledger_lost")), 5)
            assert "being restored" in alarms.of("ledger_lost")[0]
            wait_until(lambda: redis_server.command("GET", LEDGER_KEY).endswith(":ready"), 10)
            wait_until(lambda: units_of(late, user, "fleet:int") == 5, 5)
            wait_until(lambda: late.try_increment_usage(Actor(user), "fleet:call", 1, COST) is not None, 5)
        finally:
            late.close()
    finally:
        first.close()


@pytest.mark.timeout(120)
def test_a_keyed_call_retried_on_another_worker_after_a_wipe_is_recorded_once(
    redis_server: RedisServer,
) -> None:
    """The worker that recorded a keyed call writes its key back with the ledger: a retry on
    another worker replays it."""
    user = prefix("keyed") + "u"
    first = service_on(redis_server.url)
    second = service_on(redis_server.url)
    try:
        total = first.increment_usage(Actor(user), "fleet:int", 8, idempotency_key="once")
        first.flush()
        redis_server.command("FLUSHALL")
        # While the ledger is restored, a keyed call records nothing and says so.
        wait_until(lambda: redis_server.command("GET", LEDGER_KEY).find(":restoring:") > 0, 5)
        with pytest.raises(StoreUnavailableError, match="being restored"):
            second.increment_usage(Actor(user), "fleet:int", 8, idempotency_key="once")
        wait_until(lambda: redis_server.command("GET", LEDGER_KEY).endswith(":ready"), 10)
        retried = None
        deadline = time.monotonic() + 5
        while retried is None:
            try:
                retried = second.increment_usage(Actor(user), "fleet:int", 8, idempotency_key="once")
            except StoreUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert retried == total
        second.flush()
        assert units_of(second, user, "fleet:int") == 8
    finally:
        first.close()
        second.close()
    with service_on(redis_server.url) as fresh:
        assert units_of(fresh, user, "fleet:int") == 8


@pytest.mark.timeout(180)
def test_another_ledger_behind_the_same_address_is_never_written(
    spawn: Spawn,  # noqa: F811
    volatile_server: RedisServer,
) -> None:
    """The server is replaced by another fleet's (its own identity, its own users): the workers
    raise `ledger_lost`, write nothing into it, adopt nothing of it, and refuse strict spending."""
    ours = prefix("ours")
    theirs_user = prefix("theirs") + "u"
    # The other fleet's ledger, made on another server and kept in its append-only file.
    with RedisServer(appendonly=True) as other:
        with service_on(other.url) as their_service:
            their_service.increment_usage(Actor(theirs_user), "fleet:int", 3)
        their_identity = other.command("GET", LEDGER_KEY)
        other.stop()
        workers = [
            spawn(
                f"replaced-{index}",
                mode="strict_steady",
                url=volatile_server.url,
                prefix=f"{ours}{index}-",
                users=10,
                budget_prefix=f"{ours}budget-",
                budget_users=2,
                cost=COST,
                allowance=10_000 * COST,
                close_may_fail=True,
            )
            for index in range(2)
        ]
        mine = service_on(volatile_server.url, policies=[Policy("temp_free", 10_000 * COST)])
        alarms = Alarms(mine)
        replaced: RedisServer | None = None
        try:
            start_together(workers)
            actor = Actor(ours + "mine")
            assert mine.try_increment_usage(actor, "fleet:call", 1, COST) is not None
            time.sleep(1.0)
            our_identity = volatile_server.command("GET", LEDGER_KEY)
            assert our_identity != their_identity
            volatile_server.kill()
            replaced = RedisServer(
                port=volatile_server.port, appendonly=True, extra_args=("--dir", str(other.directory))
            )
            assert replaced.command("GET", LEDGER_KEY) == their_identity
            wait_until(lambda: bool(alarms.of("ledger_lost")), 10)
            assert "not the one this worker opened" in alarms.of("ledger_lost")[0]
            # Offline for good: strict spending refused, keyed calls raise, plain calls metered.
            time.sleep(0.5)
            for _ in range(20):
                assert mine.try_increment_usage(actor, "fleet:call", 1, COST) is None
            with pytest.raises(StoreUnavailableError):
                mine.increment_usage(actor, "fleet:int", 1, idempotency_key="k")
            mine.increment_usage(actor, "fleet:int", 2)
            assert units_of(mine, ours + "mine", "fleet:int") == 2
            time.sleep(1.0)
            for worker in workers:
                worker.send("stop")
            reports = [worker.finish() for worker in workers]
            for worker, report in zip(workers, reports, strict=True):
                assert "not the one this worker opened" in report["close_error"]
                assert report["errors"] == [], report["errors"]
                lost = [alarm["message"] for alarm in report["alarms"] if alarm["kind"] == "ledger_lost"]
                assert lost, f"{worker.name} raised no ledger_lost alarm"
                assert "not the one this worker opened" in lost[0]
            # Nothing of ours in their ledger; theirs as they left it.
            assert replaced.command("GET", LEDGER_KEY) == their_identity
            assert replaced.command("SMEMBERS", "usagemeter:users") == theirs_user
            assert replaced.command("KEYS", f"*{ours}*") == ""
        finally:
            close_anyway(mine)
            for worker in workers:
                worker.close()
            if replaced is not None:
                with service_on(replaced.url) as them:
                    assert units_of(them, theirs_user, "fleet:int") == 3
                replaced.close()


@pytest.mark.timeout(60)
def test_a_ledger_from_before_identities_is_adopted_with_its_figures(redis_server: RedisServer) -> None:
    """A fleet of the previous version (users, no identity) keeps working: the first worker of
    this version gives the ledger its identity and keeps every figure."""
    user = prefix("old") + "u"
    with service_on(redis_server.url) as old:
        old.increment_usage(Actor(user), "fleet:int", 7)
    redis_server.command("DEL", LEDGER_KEY)  # as the previous version left it
    assert redis_server.command("SMEMBERS", "usagemeter:users") == user
    with service_on(redis_server.url) as new:
        alarms = Alarms(new)
        assert units_of(new, user, "fleet:int") == 7
        identity = redis_server.command("GET", LEDGER_KEY)
        assert identity.startswith("usagemeter-ledger:1:"), identity
        new.increment_usage(Actor(user), "fleet:int", 1)
        new.flush()
        time.sleep(0.3)
        assert alarms.of("ledger_lost") == []
        assert redis_server.command("GET", LEDGER_KEY) == identity
    with service_on(redis_server.url) as again:
        assert units_of(again, user, "fleet:int") == 8


@pytest.mark.timeout(60)
def test_a_store_copied_into_redis_gets_an_identity(tmp_path: Path, redis_server: RedisServer) -> None:
    user = prefix("copied") + "u"
    directory = tmp_path / "store"
    with MeteringService(fleet_cost_map(), store=str(directory)) as embedded:
        embedded.increment_usage(Actor(user), "fleet:int", 4)
    copy_store(str(directory), redis_server.url)
    identity = redis_server.command("GET", LEDGER_KEY)
    assert identity.startswith("usagemeter-ledger:1:"), identity
    with service_on(redis_server.url) as worker:
        assert units_of(worker, user, "fleet:int") == 4
    assert redis_server.command("GET", LEDGER_KEY) == identity


@pytest.mark.timeout(60)
def test_a_user_older_than_a_worker_read_it_starts_a_restore(redis_server: RedisServer) -> None:
    """A ledger that went back in time with its identity intact (a restart from an old snapshot):
    a worker that finds a user at an older version than it read raises `ledger_lost` and the
    restore writes its newer copy back (here the version alone is put back, as a stand-in)."""
    user = prefix("older") + "u"
    worker = service_on(redis_server.url)
    alarms = Alarms(worker)
    try:
        for _ in range(3):
            worker.increment_usage(Actor(user), "fleet:int", 5)
            worker.flush()
        key = f"usagemeter:u:{user}"
        version = int(redis_server.command("HGET", key, "v"))
        assert version >= 3
        redis_server.command("HSET", key, "v", "1")
        worker.increment_usage(Actor(user), "fleet:int", 5)
        wait_until(lambda: bool(alarms.of("ledger_lost")), 5)
        assert "older than the version" in alarms.of("ledger_lost")[0]
        wait_until(lambda: redis_server.command("GET", LEDGER_KEY).endswith(":ready"), 10)
        worker.flush()
        assert int(redis_server.command("HGET", key, "v")) > version
    finally:
        close_anyway(worker)
    with service_on(redis_server.url) as fresh:
        assert units_of(fresh, user, "fleet:int") == 20
