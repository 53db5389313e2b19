"""`usagemeter.aio.AsyncMeteringService`: the same ledger as coroutines, never blocking the loop.

Every test runs its coroutine under `run_checked`: asyncio's debug mode with a slow-callback
threshold of 10 ms, and a handler on the `asyncio` logger that collects each "Executing ... took"
warning. A test fails if a step of the loop took longer than that in each of 5 runs of its
scenario: a call that blocks does so every time, while this shared machine's scheduler may stall
any one step now and then (the control test shows the checker catching a listener that blocks).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from redis_support import RedisServer
from usagemeter import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    MONTHLY_CHARGES,
    SERVICE_METHODS,
    Actor,
    AlarmEvent,
    AsyncListenerError,
    CostMap,
    GetUserSubscriptionEvent,
    MeteringService,
    MonthlyCharge,
    Policy,
    StoreClosedError,
)
from usagemeter.aio import AsyncMeter, AsyncMeteringService
from usagemeter.types import ActorBudget

T = TypeVar("T")

SLOW_CALLBACK_SECONDS = 0.010
PRICES = CostMap.from_dict({"llm:input": 2, "llm:output": 8, "egress:bytes": "0.5"})
PRO = Policy("pro", 1_000_000)


class _SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode warnings about steps that blocked the loop."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing"):
            self.messages.append(message)


@pytest.fixture
def slow_callbacks() -> Iterator[_SlowCallbacks]:
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


ATTEMPTS = 5


def run_checked(main: Callable[[], Awaitable[T]], slow: _SlowCallbacks) -> T:
    """Run `main` in a debug loop; fail if a step blocked the loop for more than 10 ms in each of
    `ATTEMPTS` runs (`main` builds everything it uses, so each run starts afresh)."""

    async def checked() -> T:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
        return await main()

    blocked: list[list[str]] = []
    for _ in range(ATTEMPTS):
        slow.messages.clear()
        result = asyncio.run(checked(), debug=True)
        if not slow.messages:
            return result
        blocked.append(list(slow.messages))
    raise AssertionError(f"the event loop was blocked in {ATTEMPTS} runs of {ATTEMPTS}: {blocked}")


async def ticks_during(work: Awaitable[T]) -> tuple[T, int]:
    """Await `work` while a task ticks every millisecond; return its result and the ticks."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await work
    finally:
        done.set()
        await task
    return result, ticks


def test_the_async_service_has_every_method_of_the_service_as_a_coroutine() -> None:
    for name in SERVICE_METHODS:
        method = getattr(AsyncMeteringService, name)
        assert inspect.iscoroutinefunction(method), name
        assert method.__doc__, name
        sync_parameters = list(inspect.signature(getattr(MeteringService, name)).parameters)
        async_parameters = list(inspect.signature(method).parameters)
        assert async_parameters == sync_parameters, name


def test_an_async_listener_decides_the_plan_without_blocking_the_loop(
    slow_callbacks: _SlowCallbacks,
) -> None:
    looked_up: list[str] = []

    async def plan_from_database(event: GetUserSubscriptionEvent) -> None:
        await asyncio.sleep(0.05)  # an async database driver
        looked_up.append(event.actor.user_id)
        event.user_subscription_id = "pro"

    async def main() -> tuple[int, int, int, str, int]:
        looked_up.clear()
        service = AsyncMeteringService(MeteringService(PRICES, policies=[PRO]))
        service.events.on(GET_USER_SUBSCRIPTION, plan_from_database)
        actor = Actor("alice")
        total, ticks = await ticks_during(service.increment_usage(actor, "llm:input", 100))
        again = await service.increment_usage(actor, "llm:output", 10)  # the plan is cached now
        remaining = await service.get_remaining_usage(actor)
        plan = await service.get_actor_subscription(actor)
        return total, again, remaining, plan.id, ticks

    total, again, remaining, plan_id, ticks = run_checked(main, slow_callbacks)
    assert (total, again, remaining, plan_id) == (200, 280, 1_000_000 - 280, "pro")
    assert looked_up == ["alice"]  # once: cached for subscription_ttl
    assert ticks >= 10  # the loop ran other tasks while the plan was looked up


def test_the_checker_sees_a_listener_that_blocks_the_loop(slow_callbacks: _SlowCallbacks) -> None:
    """The control: a plain listener that sleeps blocks the loop, and `run_checked` says so."""

    def blocking_plan(event: GetUserSubscriptionEvent) -> None:
        time.sleep(0.05)
        event.user_subscription_id = "pro"

    async def main() -> int:
        service = AsyncMeteringService(MeteringService(PRICES, policies=[PRO]))
        service.events.on(GET_USER_SUBSCRIPTION, blocking_plan)
        return await service.increment_usage(Actor("bob"), "llm:input", 1)

    with pytest.raises(AssertionError, match="the event loop was blocked"):
        run_checked(main, slow_callbacks)


def test_a_sync_call_that_meets_an_async_listener_raises_and_records_nothing() -> None:
    service = MeteringService(PRICES, policies=[PRO])

    async def plan(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = "pro"

    service.events.on(GET_USER_SUBSCRIPTION, plan)
    actor = Actor("carol")
    with pytest.raises(AsyncListenerError, match="AsyncMeteringService"):
        service.increment_usage(actor, "llm:input", 5)
    assert service.get_actor_current_month_usage_details(actor)["usage"] == {"total": 0}
    # The async service decides it, after which the sync service reads the cached plan.
    assert asyncio.run(AsyncMeteringService(service).increment_usage(actor, "llm:input", 5)) == 10
    assert service.get_actor_subscription(actor).id == "pro"


def test_a_listener_that_is_not_declared_async_but_returns_a_coroutine_is_refused_too() -> None:
    service = MeteringService(PRICES, policies=[PRO])

    async def plan(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = "pro"

    service.events.on(GET_USER_SUBSCRIPTION, lambda event: plan(event))
    with pytest.raises(AsyncListenerError):
        service.get_remaining_usage(Actor("dan"))
    # No "coroutine was never awaited" warning either (warnings are errors in this suite).
    assert asyncio.run(AsyncMeteringService(service).get_remaining_usage(Actor("dan"))) == 1_000_000


def test_concurrent_tasks_of_new_users_each_record_once(slow_callbacks: _SlowCallbacks) -> None:
    lookups = 0

    async def plan(event: GetUserSubscriptionEvent) -> None:
        nonlocal lookups
        await asyncio.sleep(0.001)
        lookups += 1
        event.user_subscription_id = "pro"

    async def main() -> AsyncMeteringService:
        nonlocal lookups
        lookups = 0
        service = AsyncMeteringService(MeteringService(PRICES, policies=[PRO]))
        service.events.on(GET_USER_SUBSCRIPTION, plan)
        tasks = []
        for i in range(100):
            tasks.append(
                asyncio.create_task(service.increment_usage(Actor(f"user-{i % 20}"), "llm:input", 1))
            )
            if i % 10 == 9:
                await asyncio.sleep(0)  # debug mode makes creating a task slow: not in one step
        await asyncio.gather(*tasks)
        return service

    service = run_checked(main, slow_callbacks).sync
    for i in range(20):
        details = service.get_actor_current_month_usage_details(Actor(f"user-{i}"))
        assert details["usage"]["llm:input"] == {"units": 5, "cost": 10, "count": 5}
    # Tasks that started before a user's plan was cached each looked it up; never more than one each.
    assert 20 <= lookups <= 100


def test_try_increment_and_the_budget_under_asyncio(slow_callbacks: _SlowCallbacks) -> None:
    async def main() -> tuple[list[int | None], int, bool, bool]:
        service = AsyncMeteringService(MeteringService(PRICES, policies=[Policy("temp_free", 100)]))
        actor = Actor("erin")
        results = [await service.try_increment_usage(actor, "llm:output", 5) for _ in range(4)]
        remaining = await service.get_remaining_usage(actor)
        enough = await service.has_enough_credits_for_usages(actor, [("llm:input", 10)])
        any_left = await service.has_any_usage(actor)
        return results, remaining, enough, any_left

    results, remaining, enough, any_left = run_checked(main, slow_callbacks)
    assert results == [40, 80, None, None]
    assert (remaining, enough, any_left) == (20, True, True)


def test_a_meter_and_a_batch_through_the_async_service(slow_callbacks: _SlowCallbacks) -> None:
    async def plan(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = "pro"

    async def main() -> tuple[int, int, ActorBudget]:
        service = AsyncMeteringService(MeteringService(PRICES, policies=[PRO]))
        service.events.on(GET_USER_SUBSCRIPTION, plan)
        meter = await service.meter(Actor("fay"), "llm:output")
        assert isinstance(meter, AsyncMeter)
        assert (meter.actor, meter.usage_type) == (Actor("fay"), "llm:output")
        first = await meter.add(3)
        # A generator of items is consumed once, even when the plan must be looked up first.
        listed: list[tuple[str, int] | tuple[str, int, int | None]] = [
            ("llm:input", 10),
            ("llm:output", 1, 100),
        ]
        items = (item for item in listed)
        total = await service.batch_increment_usages(Actor("gus"), items)
        return first, total, await service.get_actor_budget(Actor("gus"))

    first, total, budget = run_checked(main, slow_callbacks)
    assert (first, total) == (24, 120)
    assert budget["monthly_allowance"] == 1_000_000 and budget["remaining"] == 1_000_000 - 120


def test_flush_close_and_open_of_a_store_run_off_the_loop(
    tmp_path: Path, slow_callbacks: _SlowCallbacks
) -> None:
    runs = iter(range(ATTEMPTS))

    async def main() -> Path:
        store = tmp_path / f"ledger-{next(runs)}"
        service = await AsyncMeteringService.open(PRICES, store=store)
        async with service:
            for i in range(2_000):
                await service.increment_usage(Actor(f"user-{i}"), "llm:input", 1)
                if i % 20 == 0:
                    await asyncio.sleep(0)  # calls that never wait never yield: a server's requests do
            await service.flush()
        assert service.closed
        with pytest.raises(StoreClosedError):
            await service.increment_usage(Actor("late"), "llm:input", 1)
        return store

    store = run_checked(main, slow_callbacks)
    with MeteringService(PRICES, store=store) as reopened:
        assert len(reopened.get_actors_usage()) == 2_000


def test_an_async_alarm_listener_runs_on_the_loop(slow_callbacks: _SlowCallbacks) -> None:
    heard: list[str] = []

    async def on_alarm(event: AlarmEvent) -> None:
        await asyncio.sleep(0)
        heard.append(event.kind)

    async def main() -> None:
        heard.clear()
        service = AsyncMeteringService(MeteringService(PRICES, unmapped="free"))
        service.events.on(ALARM, on_alarm)
        await service.increment_usage(Actor("hal"), "not:priced", 3)
        for _ in range(10):
            if heard:
                break
            await asyncio.sleep(0.01)

    run_checked(main, slow_callbacks)
    assert heard == ["unmapped_usage"]


def test_a_lease_request_to_the_fleet_runs_off_the_loop(
    redis_server: RedisServer, slow_callbacks: _SlowCallbacks
) -> None:
    """Redis is paused for 300 ms while a worker without a lease asks for one: the loop goes on."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    runs = iter(range(ATTEMPTS))

    async def main() -> tuple[list[int | None], int, int]:
        service = await AsyncMeteringService.open(
            PRICES, store=url, policies=[Policy("temp_free", 1_000)], snapshot_interval=0.05
        )
        async with service:
            actor = Actor(f"ivy-{next(runs)}")  # a user of its own in each run
            # (redis-cli runs as a subprocess: off the loop, so that the checker judges the service)
            await asyncio.to_thread(redis_server.command, "CLIENT", "PAUSE", "300", "ALL")
            first, ticks = await ticks_during(service.try_increment_usage(actor, "llm:output", 10))
            rest = [await service.try_increment_usage(actor, "llm:output", 10) for _ in range(20)]
            stats = service.sync._sync_stats()
            assert stats is not None
        return [first, *rest], ticks, stats["lease_requests"]

    results, ticks, lease_requests = run_checked(main, slow_callbacks)
    accepted = [r for r in results if r is not None]
    assert accepted == [80 * (i + 1) for i in range(12)]  # 1,000 µ¢ buys 12 calls of 80
    assert lease_requests >= 1
    assert ticks >= 20  # the loop ran while the paused server held the lease request


def test_keyed_calls_and_monthly_charges_on_a_fleet_run_off_the_loop(
    redis_server: RedisServer, slow_callbacks: _SlowCallbacks
) -> None:
    """Redis is paused for 300 ms before a keyed call, then before a user's first charge of the
    month (which writes the month's seat fee to the shared ledger): the loop goes on both times."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    runs = iter(range(ATTEMPTS))

    async def main() -> tuple[int, int, int, int, int]:
        service = await AsyncMeteringService.open(
            PRICES, store=url, policies=[Policy("temp_free", 10**9)], snapshot_interval=0.05
        )
        service.events.on(MONTHLY_CHARGES, lambda event: [MonthlyCharge("seat", 7_000, 1)])
        async with service:
            run = next(runs)
            keyed, seat = Actor(f"kim-{run}"), Actor(f"lee-{run}")
            await service.increment_usage(keyed, "llm:output", 1)  # the month's seat fee: 7,000
            await asyncio.to_thread(redis_server.command, "CLIENT", "PAUSE", "300", "ALL")
            first, keyed_ticks = await ticks_during(
                service.increment_usage(keyed, "llm:output", 1, idempotency_key="k-1")
            )
            again = await service.increment_usage(keyed, "llm:output", 1, idempotency_key="k-1")
            await asyncio.to_thread(redis_server.command, "CLIENT", "PAUSE", "300", "ALL")
            total, seat_ticks = await ticks_during(service.increment_usage(seat, "llm:output", 1))
        return first, again, keyed_ticks, total, seat_ticks

    first, again, keyed_ticks, total, seat_ticks = run_checked(main, slow_callbacks)
    assert first == again == 7_000 + 2 * 8  # the seat fee, then two units at 8 µ¢
    assert total == 7_000 + 8
    assert keyed_ticks >= 20 and seat_ticks >= 20  # the loop ran while the server was paused


def test_a_refund_on_a_fleet_runs_off_the_loop(
    redis_server: RedisServer, slow_callbacks: _SlowCallbacks
) -> None:
    """Issue 18: a refund on a fleet is decided on the shared ledger (a round trip); with Redis
    paused for 300 ms the loop goes on, and the refund is given once."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    runs = iter(range(ATTEMPTS))

    async def main() -> tuple[int, int, int]:
        service = await AsyncMeteringService.open(
            PRICES, store=url, policies=[Policy("temp_free", 10**9)], snapshot_interval=0.05
        )
        async with service:
            actor = Actor(f"rey-{next(runs)}")
            charged = await service.increment_usage(actor, "llm:output", 10)
            await asyncio.to_thread(redis_server.command, "CLIENT", "PAUSE", "300", "ALL")
            total, ticks = await ticks_during(service.refund(actor, "llm:output", units=4))
        return charged, total, ticks

    charged, total, ticks = run_checked(main, slow_callbacks)
    assert (charged, total) == (80, 48)  # 10 units at 8 µ¢, 4 of them given back
    assert ticks >= 20  # the loop ran while the paused server held the refund


def test_under_trio_through_anyio(tmp_path: Path) -> None:
    store = tmp_path / "ledger"

    async def main() -> tuple[int, int | None]:
        service = await AsyncMeteringService.open(PRICES, store=store)
        async with service:
            total = await service.increment_usage(Actor("jo"), "llm:input", 7)
            await service.flush()
            refused = await service.try_increment_usage(Actor("jo"), "llm:output", 10**9)
        return total, refused

    assert trio.run(main) == (14, None)
    with MeteringService(PRICES, store=store) as reopened:
        assert reopened.get_actor_current_month_usage_details(Actor("jo"))["usage"]["llm:input"]["units"] == 7


def test_the_wrapper_refuses_anything_but_a_service() -> None:
    with pytest.raises(TypeError, match="expected a MeteringService"):
        AsyncMeteringService(object())  # type: ignore[arg-type]


def test_bad_input_raises_as_in_the_sync_service_and_records_nothing() -> None:
    async def main() -> None:
        service = AsyncMeteringService(MeteringService(PRICES))
        actor = Actor("kim")
        with pytest.raises(ValueError):
            await service.increment_usage(actor, "llm:input", -1)
        with pytest.raises(TypeError):
            await service.try_increment_usage(actor, "llm:input", 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await service.increment_usage("kim", "llm:input", 1)  # type: ignore[arg-type]
        assert await service.has_usage_this_month(actor) is False

    asyncio.run(main())
