"""Idempotency keys (issue 12, point 2): a retried call with the same key records once and returns
the first call's result; another payload under the key is an error; keys are kept for a window,
bounded, and stored with the user's records so that a retry after a restart is recognised."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisServer
from support import FakeClock
from usagemeter import (
    REFUND,
    Actor,
    CostMap,
    IdempotencyKeyLimitError,
    IdempotencyKeyReused,
    MeteringService,
    Policy,
    RefundEvent,
)
from usagemeter.aio import AsyncMeteringService

PRICES = CostMap.from_dict(
    {
        "llm:output": 2,
        "llm:input": "0.5",
        "kv:write": 125,
        "openai:gpt-x:prompt_tokens": 1,
        "openai:gpt-x:completion_tokens": 3,
    }
)
ALLOWANCE = 1_000


def new_service(**options: Any) -> MeteringService:
    options.setdefault("clock", FakeClock())
    return MeteringService(PRICES, policies=[Policy("temp_free", ALLOWANCE)], **options)


def usage(service: MeteringService, actor: Actor) -> dict[str, Any]:
    return dict(service.get_actor_current_month_usage_details(actor)["usage"])


def test_a_retried_increment_records_once_and_returns_the_first_total() -> None:
    service = new_service()
    alice = Actor("alice")
    assert service.increment_usage(alice, "kv:write", 1, idempotency_key="req-1") == 125
    assert service.increment_usage(alice, "kv:write", 2) == 375  # another call in between
    # The retry returns what the first call returned, not today's total, and records nothing.
    assert service.increment_usage(alice, "kv:write", 1, idempotency_key="req-1") == 125
    assert usage(service, alice)["kv:write"] == {"units": 3, "cost": 375, "count": 2}
    # A key is the user's: another user may use the same one.
    assert service.increment_usage(Actor("bob"), "kv:write", 1, idempotency_key="req-1") == 125
    assert usage(service, Actor("bob"))["total"] == 125


def test_each_keyed_method_replays_its_first_result() -> None:
    service = new_service()
    carol = Actor("carol", "chat-app")
    assert service.try_increment_usage(carol, "llm:output", 10, idempotency_key="t") == 20
    assert service.try_increment_usage(carol, "llm:output", 10, idempotency_key="t") == 20
    batch: list[tuple[str, int] | tuple[str, int, int | None]] = [("llm:input", 10), ("llm:output", 5, 7)]
    assert service.batch_increment_usages(carol, batch, idempotency_key="b") == 32
    assert service.batch_increment_usages(carol, iter(batch), idempotency_key="b") == 32
    payload = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert service.record_usage_object(payload, carol, "openai:gpt-x", idempotency_key="r") == 42
    assert service.record_usage_object(payload, carol, "openai:gpt-x", idempotency_key="r") == 42
    assert service.try_record_usage_object(payload, carol, "openai:gpt-x", idempotency_key="tr") == 52
    assert service.try_record_usage_object(payload, carol, "openai:gpt-x", idempotency_key="tr") == 52
    assert service.update_addon_credit("carol", 500, idempotency_key="pay-1") == 500
    assert service.update_addon_credit("carol", 500, idempotency_key="pay-1") == 500
    assert service.get_actor_addons(carol)["purchased_credits"] == 500
    details = usage(service, carol)
    assert details["total"] == 52
    assert details["llm:output"]["count"] == 2  # the try and the batch, once each


def test_a_retried_refund_books_once_and_sends_one_event() -> None:
    service = new_service()
    dave = Actor("dave")
    events: list[RefundEvent] = []
    service.events.on(REFUND, events.append)
    service.increment_usage(dave, "llm:output", 50)
    assert service.refund(dave, "llm:output", units=10, idempotency_key="refund-1") == 80
    service.increment_usage(dave, "llm:output", 1)
    assert service.refund(dave, "llm:output", units=10, idempotency_key="refund-1") == 80
    assert usage(service, dave)["refund:llm:output"] == {"units": 10, "cost": -20, "count": 1}
    assert len(events) == 1
    with pytest.raises(IdempotencyKeyReused):
        service.refund(dave, "llm:output", units=11, idempotency_key="refund-1")


def test_another_payload_under_a_live_key_is_refused_and_changes_nothing() -> None:
    service = new_service()
    erin = Actor("erin", "app-1")
    service.increment_usage(erin, "kv:write", 1, idempotency_key="k")
    before = usage(service, erin)
    calls: tuple[Callable[[], object], ...] = (
        lambda: service.increment_usage(erin, "kv:write", 2, idempotency_key="k"),
        lambda: service.increment_usage(erin, "llm:output", 1, idempotency_key="k"),
        lambda: service.increment_usage(erin, "kv:write", 1, 99, idempotency_key="k"),
        lambda: service.increment_usage(Actor("erin", "app-2"), "kv:write", 1, idempotency_key="k"),
        lambda: service.try_increment_usage(erin, "kv:write", 1, idempotency_key="k"),
        lambda: service.batch_increment_usages(erin, [("kv:write", 1), ("kv:write", 0)], idempotency_key="k"),
        lambda: service.refund(erin, "kv:write", units=1, idempotency_key="k"),
    )
    for call in calls:
        with pytest.raises(IdempotencyKeyReused, match="another payload"):
            call()
    assert issubclass(IdempotencyKeyReused, ValueError)
    assert usage(service, erin) == before
    # One usage and a batch of that one usage are the same charge: the batch replays.
    assert service.batch_increment_usages(erin, [("kv:write", 1)], idempotency_key="k") == 125


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ("", ValueError, "non-empty"),
        ("x" * 256, ValueError, "at most 255 bytes"),
        ("é" * 128, ValueError, "at most 255 bytes"),
        ("usagemeter:monthly:2026-10", ValueError, "reserved"),
        (7, TypeError, "must be a str or None, not int"),
        (b"bytes", TypeError, "not bytes"),
    ],
)
def test_a_bad_key_is_refused_and_changes_nothing(key: object, error: type[Exception], message: str) -> None:
    service = new_service()
    frank = Actor("frank")
    calls: tuple[Callable[[], object], ...] = (
        lambda: service.increment_usage(frank, "kv:write", 1, idempotency_key=key),  # type: ignore[arg-type]
        lambda: service.try_increment_usage(frank, "kv:write", 1, idempotency_key=key),  # type: ignore[arg-type]
        lambda: service.batch_increment_usages(frank, [("kv:write", 1)], idempotency_key=key),  # type: ignore[arg-type]
        lambda: service.update_addon_credit("frank", 5, idempotency_key=key),  # type: ignore[arg-type]
    )
    for call in calls:
        with pytest.raises(error, match=message):
            call()
    assert usage(service, frank)["total"] == 0
    assert service.get_actor_addons(frank)["purchased_credits"] == 0
    assert service._idempotency_key_count() == 0
    assert service.increment_usage(frank, "kv:write", 1, idempotency_key="x" * 255) == 125


def test_a_refused_try_keeps_no_key_so_its_retry_is_decided_again() -> None:
    service = new_service()
    gina = Actor("gina")
    assert service.try_increment_usage(gina, "llm:output", 600, idempotency_key="big") is None
    assert service._idempotency_key_count() == 0
    service.update_addon_credit("gina", 200)
    assert service.try_increment_usage(gina, "llm:output", 600, idempotency_key="big") == 1200
    assert service.try_increment_usage(gina, "llm:output", 600, idempotency_key="big") == 1200
    assert usage(service, gina)["llm:output"]["count"] == 1
    # A failed call (an unpriced type) keeps no key either.
    with pytest.raises(KeyError):
        service.increment_usage(gina, "no:such:type", 1, idempotency_key="bad")
    assert service.increment_usage(gina, "kv:write", 1, idempotency_key="bad") == 1325


def test_keys_are_kept_for_the_window_on_the_service_clock() -> None:
    clock = FakeClock()
    service = new_service(clock=clock, idempotency_window=3600)
    henry = Actor("henry")
    service.increment_usage(henry, "kv:write", 1, idempotency_key="k")
    clock.advance(3599.9)
    assert service.increment_usage(henry, "kv:write", 1, idempotency_key="k") == 125
    assert service._idempotency_key_count() == 1
    clock.advance(0.1)
    # Forgotten: the same key is a new call (with any payload).
    assert service.increment_usage(henry, "kv:write", 2, idempotency_key="k") == 375
    assert usage(service, henry)["kv:write"]["count"] == 2
    # The default window is a day.
    day = new_service(clock=clock)
    day.increment_usage(henry, "kv:write", 1, idempotency_key="d")
    clock.advance(86_399)
    assert day.increment_usage(henry, "kv:write", 1, idempotency_key="d") == 125
    clock.advance(1)
    assert day.increment_usage(henry, "kv:write", 1, idempotency_key="d") == 250


def test_keys_are_bounded_per_user_and_in_all_and_a_full_bound_refuses_new_keys() -> None:
    clock = FakeClock()
    service = new_service(
        clock=clock, idempotency_window=60, max_idempotency_keys=5, max_idempotency_keys_per_user=3
    )
    ivy = Actor("ivy")
    for n in range(3):
        service.increment_usage(ivy, "kv:write", 1, idempotency_key=f"k{n}")
    with pytest.raises(IdempotencyKeyLimitError, match="max_idempotency_keys_per_user"):
        service.increment_usage(ivy, "kv:write", 1, idempotency_key="k3")
    assert isinstance(IdempotencyKeyLimitError("x"), RuntimeError)
    # The keys held still replay, and a call without a key is never refused.
    assert service.increment_usage(ivy, "kv:write", 1, idempotency_key="k0") == 125
    assert service.increment_usage(ivy, "kv:write", 1) == 500
    for user in ("jo", "kim"):
        service.increment_usage(Actor(user), "kv:write", 1, idempotency_key="a")
    with pytest.raises(IdempotencyKeyLimitError, match="max_idempotency_keys"):
        service.increment_usage(Actor("lee"), "kv:write", 1, idempotency_key="a")
    assert usage(service, Actor("lee"))["total"] == 0
    # Once the window is over, keys of users who never call again are swept: new keys fit.
    clock.advance(60)
    service.increment_usage(Actor("lee"), "kv:write", 1, idempotency_key="a")
    assert service._idempotency_key_count() == 1
    with pytest.raises(ValueError, match="idempotency_window"):
        new_service(idempotency_window=0)
    with pytest.raises(TypeError, match="max_idempotency_keys"):
        new_service(max_idempotency_keys=1.5)


def test_threads_racing_with_one_key_record_once() -> None:
    service = new_service()
    mia = Actor("mia")
    barrier = threading.Barrier(16)
    results: list[int] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        total = service.increment_usage(mia, "kv:write", 1, idempotency_key="the-one")
        with lock:
            results.append(total)

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [125] * 16
    assert usage(service, mia)["kv:write"] == {"units": 1, "cost": 125, "count": 1}


def test_threads_with_distinct_keys_all_record() -> None:
    service = new_service()
    ned = Actor("ned")

    def charge(worker: int) -> None:
        for n in range(200):
            key = f"{worker}-{n % 100}"  # every key twice: the second is a retry
            service.increment_usage(ned, "llm:output", 1, idempotency_key=key)

    threads = [threading.Thread(target=charge, args=(worker,)) for worker in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert usage(service, ned)["llm:output"]["count"] == 1600
    assert service._idempotency_key_count() == 1600


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_a_retry_after_a_restart_is_recognised(tmp_path: Path, backend: str) -> None:
    clock = FakeClock()
    path = tmp_path / "ledger"
    olga = Actor("olga")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        assert service.increment_usage(olga, "kv:write", 1, idempotency_key="k1") == 125
        assert service.refund(olga, "kv:write", cost=25, idempotency_key="r1") == 100
        service.update_addon_credit("olga", 7, idempotency_key="p1")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        assert service._idempotency_key_count() == 3
        assert service.increment_usage(olga, "kv:write", 1, idempotency_key="k1") == 125
        assert service.refund(olga, "kv:write", cost=25, idempotency_key="r1") == 100
        assert service.update_addon_credit("olga", 7, idempotency_key="p1") == 7
        with pytest.raises(IdempotencyKeyReused):
            service.increment_usage(olga, "kv:write", 2, idempotency_key="k1")
        assert usage(service, olga)["total"] == 100
        clock.advance(86_400)
        # Expired keys are dropped from the store at the user's next snapshot.
        service.increment_usage(olga, "kv:write", 1, idempotency_key="k2")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        assert service._idempotency_key_count() == 1
        assert service.increment_usage(olga, "kv:write", 1, idempotency_key="k1") == 350


def test_a_key_and_its_charge_are_written_in_the_same_snapshot(tmp_path: Path) -> None:
    """Whatever a flush covered holds both; and keys of a user reach the store only with the
    charge they guard (one batch), so a reopened store never holds one without the other."""
    path = tmp_path / "ledger"
    pia = Actor("pia")
    service = new_service(store=path, snapshot_interval=3600)
    service.increment_usage(pia, "kv:write", 1, idempotency_key="k")
    service.flush()
    service.increment_usage(pia, "kv:write", 1, idempotency_key="lost")
    service._forked()  # as a crash: no last snapshot is written
    del service
    with new_service(store=path) as reopened:
        assert usage(reopened, pia)["kv:write"]["count"] == 1
        assert reopened._idempotency_key_count() == 1
        # "lost" was lost with its charge: its retry records it now, once.
        assert reopened.increment_usage(pia, "kv:write", 1, idempotency_key="lost") == 250
        assert reopened.increment_usage(pia, "kv:write", 1, idempotency_key="k") == 125


def test_the_system_actor_is_not_metered_with_a_key_either() -> None:
    service = new_service()
    assert service.increment_usage(Actor.system(), "kv:write", 1, idempotency_key="s") == 0
    with pytest.raises(ValueError, match="non-empty"):
        service.increment_usage(Actor.system(), "kv:write", 1, idempotency_key="")
    assert service._idempotency_key_count() == 0


def test_the_async_service_passes_keys() -> None:
    async def main() -> None:
        service = AsyncMeteringService(new_service())
        quinn = Actor("quinn")

        async def plan_listener(event: Any) -> None:  # an async plan listener: the slow path
            event.user_subscription_id = "temp_free"

        service.events.on("metering:getUserSubscription", plan_listener)
        assert await service.increment_usage(quinn, "kv:write", 1, idempotency_key="a") == 125
        assert await service.increment_usage(quinn, "kv:write", 1, idempotency_key="a") == 125
        assert await service.try_increment_usage(quinn, "kv:write", 1, idempotency_key="b") == 250
        assert await service.try_increment_usage(quinn, "kv:write", 1, idempotency_key="b") == 250
        assert await service.batch_increment_usages(quinn, [("kv:write", 1)], idempotency_key="c") == 375
        assert await service.batch_increment_usages(quinn, [("kv:write", 1)], idempotency_key="c") == 375
        assert await service.update_addon_credit("quinn", 3, idempotency_key="d") == 3
        assert await service.update_addon_credit("quinn", 3, idempotency_key="d") == 3
        assert await service.refund(quinn, "kv:write", units=1, idempotency_key="e") == 250
        assert await service.refund(quinn, "kv:write", units=1, idempotency_key="e") == 250
        assert usage(service.sync, quinn)["kv:write"]["count"] == 3

    asyncio.run(main())


def test_a_fleet_honours_keys_on_the_shared_ledger(redis_server: RedisServer) -> None:
    """On a fleet, keys are kept in Redis with the charge (test_fleet_keys.py has the races)."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with new_service(store=url) as service:
        rob = Actor("rob")
        assert service.increment_usage(rob, "kv:write", 1, idempotency_key="k") == 125
        assert service.increment_usage(rob, "kv:write", 1, idempotency_key="k") == 125
        assert service.update_addon_credit("rob", 1, idempotency_key="k2") == 1
        assert service.update_addon_credit("rob", 1, idempotency_key="k2") == 1
        assert usage(service, rob)["kv:write"]["count"] == 1
