"""Holds (issue 12): reserve a worst case, settle the real usage; in memory, on the embedded
stores (restart, SIGKILL), against an exact model, and with real threads. The fleet's holds
(process races, a killed worker) are in test_fleet.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule
from support import FakeClock
from usagemeter import Actor, CostMap, Hold, HoldSettledError, MeteringService, Policy, UnknownUsageType
from usagemeter.aio import AsyncMeteringService

PRICES = CostMap.from_dict({"llm:output": 2, "llm:input": "0.5"})
ALLOWANCE = 1_000


def new_service(**options: Any) -> MeteringService:
    options.setdefault("clock", FakeClock())
    return MeteringService(PRICES, policies=[Policy("temp_free", ALLOWANCE)], **options)


def budget(service: MeteringService, actor: Actor) -> tuple[int, int, int]:
    """(allowance used, held, remaining)."""
    figures = service.get_actor_budget(actor)
    return figures["allowance_used"], figures["held"], figures["remaining"]


def test_a_hold_lowers_every_credit_check_but_no_allowance_figure() -> None:
    service = new_service()
    alice = Actor("alice")
    hold = service.reserve(alice, usages=[("llm:input", 400), ("llm:output", 200)])  # 600 µ¢
    assert isinstance(hold, Hold) and hold.amount == 600 and repr(hold).endswith(": held>")
    assert budget(service, alice) == (0, 600, 400)
    assert service.get_remaining_usage(alice) == 400
    assert service.get_allowed_usage(alice)["remaining"] == 400
    assert not service.has_enough_credits(alice, 401)
    assert not service.has_enough_credits_for(alice, "llm:output", 201)
    assert service.try_increment_usage(alice, "llm:output", 201) is None
    assert service.reserve(alice, cost=401) is None
    assert service.get_actor_current_month_usage_details(alice)["usage"]["total"] == 0
    assert service.try_increment_usage(alice, "llm:output", 200) == 400
    assert budget(service, alice) == (400, 600, 0)
    assert not service.has_any_usage(alice)
    assert hold.release() is True and hold.state == "released"
    assert budget(service, alice) == (400, 0, 600)


def test_settle_records_the_real_usage_and_frees_the_rest_atomically() -> None:
    service = new_service()
    bob = Actor("bob")
    hold = service.reserve(bob, usages=[("llm:input", 100), ("llm:output", 300)])  # 650 µ¢
    assert hold is not None
    assert hold.settle(usages=[("llm:input", 100), ("llm:output", 40)]) == 130
    assert hold.state == "settled"
    assert budget(service, bob) == (130, 0, 870)
    usage = service.get_actor_current_month_usage_details(bob)["usage"]
    assert usage["llm:output"] == {"units": 40, "cost": 80, "count": 1}
    with pytest.raises(ValueError, match="already settled"):
        hold.settle(usages=[("llm:output", 1)])
    # More than the hold is recorded too: the call ran. Past the budget it is overage.
    big = service.reserve(bob, cost=100)
    assert big is not None
    assert big.settle(cost=2_000, usage_type="llm:output") == 2_130
    figures = service.get_actor_budget(bob)
    assert (figures["allowance_used"], figures["overage"], figures["held"]) == (1_000, 1_130, 0)


def test_settle_by_cost_books_the_one_reserved_type_or_asks_for_one() -> None:
    service = new_service()
    carol = Actor("carol")
    one = service.reserve(carol, usages=[("llm:output", 10)])
    assert one is not None and one.settle(cost=7) == 7
    assert service.get_actor_current_month_usage_details(carol)["usage"]["llm:output"]["cost"] == 7
    two = service.reserve(carol, usages=[("llm:output", 10), ("llm:input", 10)])
    assert two is not None
    with pytest.raises(ValueError, match="usage_type"):
        two.settle(cost=7)
    assert two.state == "held"
    by_cost = service.reserve(carol, cost=50)
    assert by_cost is not None
    with pytest.raises(ValueError, match="usage_type"):
        by_cost.settle(cost=5)


def test_bad_settle_input_changes_nothing_and_keeps_the_hold() -> None:
    service = new_service()
    dave = Actor("dave")
    hold = service.reserve(dave, cost=300)
    assert hold is not None
    bad: list[dict[str, Any]] = [
        {"usages": [("not:priced", 1)]},
        {"usages": [("llm:output", -1)]},
        {"usages": [("llm:output", 1)], "cost": 5},
        {"cost": -5, "usage_type": "llm:output"},
        {"cost": 5, "usage_type": ""},
        {},
    ]
    for arguments in bad:
        with pytest.raises((ValueError, TypeError, UnknownUsageType)):
            hold.settle(**arguments)
    assert hold.state == "held"
    assert budget(service, dave) == (0, 300, 700)
    assert service.get_actor_current_month_usage_details(dave)["usage"]["total"] == 0


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, ValueError),
        ({"cost": 5, "usages": [("llm:output", 1)]}, ValueError),
        ({"cost": -1}, ValueError),
        ({"cost": 1.5}, TypeError),
        ({"cost": True}, TypeError),
        ({"cost": 10**30}, OverflowError),
        # Issue 18: usages costing more than 10^18 µ¢ raised ValueError.
        ({"usages": [("llm:output", 6 * 10**17)]}, OverflowError),
        ({"usages": [("llm:output", 3 * 10**17), ("llm:output", 3 * 10**17)]}, OverflowError),
        ({"usages": [("unknown:type", 1)]}, UnknownUsageType),
        ({"usages": [("refund:llm:output", 1)]}, ValueError),
        ({"usages": 5}, TypeError),
        ({"cost": 5, "ttl": 0}, ValueError),
        ({"cost": 5, "ttl": -1.0}, ValueError),
        ({"cost": 5, "ttl": float("nan")}, ValueError),
        ({"cost": 5, "ttl": float("inf")}, ValueError),
        ({"cost": 5, "ttl": True}, TypeError),
        ({"cost": 5, "ttl": "10"}, TypeError),
    ],
)
def test_bad_reserve_input_is_refused_and_holds_nothing(
    arguments: dict[str, Any], error: type[Exception]
) -> None:
    service = new_service()
    erin = Actor("erin")
    with pytest.raises(error):
        service.reserve(erin, **arguments)
    assert service.holds(erin) == []
    assert budget(service, erin) == (0, 0, ALLOWANCE)


def test_a_hold_expires_by_the_service_clock_and_is_not_revived() -> None:
    clock = FakeClock()
    service = new_service(clock=clock)
    frank = Actor("frank")
    hold = service.reserve(frank, cost=900, ttl=30)
    assert hold is not None and hold.expires_at == clock.now + 30
    clock.advance(29.999)
    assert service.get_remaining_usage(frank) == 100
    assert hold.extend(60) is True and hold.expires_at == clock.now + 60
    clock.advance(59.9)
    assert service.get_remaining_usage(frank) == 100
    clock.advance(0.1)
    assert service.get_remaining_usage(frank) == ALLOWANCE
    assert service.holds(frank) == []
    assert hold.extend(60) is False
    # Settling an expired hold still records the call's usage (losing it would be worse).
    assert hold.settle(cost=40, usage_type="llm:output") == 40
    assert budget(service, frank) == (40, 0, 960)


def test_the_context_manager_releases_a_hold_the_block_did_not_settle() -> None:
    service = new_service()
    gina = Actor("gina")
    with pytest.raises(RuntimeError):
        with service.reserve(gina, cost=500) as hold:  # type: ignore[union-attr]
            assert service.get_remaining_usage(gina) == 500
            raise RuntimeError("the provider failed")
    assert hold.state == "released" and service.get_remaining_usage(gina) == ALLOWANCE
    with service.reserve(gina, cost=500) as settled:  # type: ignore[union-attr]
        settled.settle(cost=120, usage_type="llm:output")
    assert settled.state == "settled" and service.get_remaining_usage(gina) == 880
    with service.reserve(gina, cost=500) as forgotten:  # type: ignore[union-attr]
        pass
    assert forgotten.state == "released" and service.get_remaining_usage(gina) == 880


def test_async_holds_settle_and_release_through_the_async_service() -> None:
    async def scenario() -> None:
        service = AsyncMeteringService(new_service())
        hana = Actor("hana")

        async def plan(event: Any) -> None:  # an async plan listener: awaited, not refused
            await asyncio.sleep(0)

        service.events.on("metering:overrideDefaultSubscription", plan)
        hold = await service.reserve(hana, usages=[("llm:output", 100)])
        assert hold is not None
        async with hold:
            assert await service.get_remaining_usage(hana) == 800
            assert await hold.asettle(usages=[("llm:output", 30)]) == 60
        with pytest.raises(RuntimeError):
            async with await service.reserve(hana, cost=300) as failing:  # type: ignore[union-attr]
                raise RuntimeError("stream broke")
        assert failing.state == "released"
        assert [h.id for h in await service.holds(hana)] == []
        assert await service.get_remaining_usage(hana) == 940

    asyncio.run(scenario())


def test_the_system_actor_holds_nothing_and_is_never_metered() -> None:
    service = new_service()
    hold = service.reserve(Actor.system(), cost=10**12)
    assert hold is not None and hold.id == 0
    assert hold.settle(cost=5, usage_type="llm:output") == 0
    with pytest.raises(UnknownUsageType):
        service.reserve(Actor.system(), usages=[("unknown:type", 1)])


def test_a_hold_and_an_app() -> None:
    """A hold is the user's: an app acting for the user shares the user's budget."""
    service = new_service()
    through_app = Actor("ivy", app_id="editor")
    hold = service.reserve(through_app, cost=700)
    assert hold is not None
    assert service.get_remaining_usage(Actor("ivy")) == 300
    hold.settle(usages=[("llm:output", 50)])
    assert service.get_actor_app_usage(Actor("ivy"), "editor")["total"] == 100


def test_a_user_has_at_most_1024_live_holds() -> None:
    service = new_service()
    jack = Actor("jack")
    holds = [service.reserve(jack, cost=0) for _ in range(1024)]
    assert all(hold is not None for hold in holds)
    with pytest.raises(ValueError, match="1024 holds"):
        service.reserve(jack, cost=0)
    assert holds[0] is not None and holds[0].release()
    assert service.reserve(jack, cost=0) is not None


# ---------------------------------------------------------------------------------------------
# Threads racing for the last credits.


def test_sixteen_threads_reserving_the_last_credits_never_exceed_the_budget() -> None:
    service = new_service()
    kim = Actor("kim")
    service.update_addon_credit("kim", 337)  # the budget: 1,000 allowance + 337 purchased
    settled: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker(seed: int) -> None:
        start.wait()
        for attempt in range(200):
            hold = service.reserve(kim, cost=7)
            if hold is None:
                continue
            if (seed + attempt) % 3 == 0:
                hold.release()
                continue
            real = 1 + (seed * 31 + attempt) % 7  # never more than held
            hold.settle(cost=real, usage_type="llm:output")
            with lock:
                settled.append(real)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = service.get_actor_current_month_usage_details(kim)["usage"]["total"]
    assert total == sum(settled)
    assert total <= 1_337
    assert service.get_actor_budget(kim)["held"] == 0
    # The racers ran the budget dry: what is left is at most what the last holds in flight of
    # the 16 threads freed (7 µ¢ each), after the last refusal.
    assert total >= 1_337 - 16 * 7


def test_threads_holding_and_spending_together_never_exceed_the_budget() -> None:
    service = new_service()
    leo = Actor("leo")
    accepted: list[int] = []
    lock = threading.Lock()

    def reserver() -> None:
        for _ in range(300):
            hold = service.reserve(leo, cost=5)
            if hold is not None:
                hold.settle(cost=5, usage_type="llm:output")
                with lock:
                    accepted.append(5)

    def spender() -> None:
        for _ in range(300):
            if service.try_increment_usage(leo, "llm:output", 2) is not None:
                with lock:
                    accepted.append(4)

    threads = [threading.Thread(target=f) for f in (reserver, spender) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = service.get_actor_current_month_usage_details(leo)["usage"]["total"]
    assert total == sum(accepted) and total <= ALLOWANCE
    assert total >= ALLOWANCE - 5  # the racers used all that any of them could still fit


# ---------------------------------------------------------------------------------------------
# Stores: a hold outlives a restart, never its expiry; SIGKILL between reserve and settle.


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_a_hold_survives_a_restart_and_still_expires(tmp_path: Path, backend: str) -> None:
    clock = FakeClock()
    path = tmp_path / "store"
    mia = Actor("mia")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        kept = service.reserve(mia, cost=300, ttl=120)
        settled = service.reserve(mia, cost=200, ttl=120)
        released = service.reserve(mia, cost=100, ttl=120)
        assert kept is not None and settled is not None and released is not None
        settled.settle(cost=150, usage_type="llm:output")
        released.release()
    clock.advance(60)
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        assert [(h.id, h.amount, h.expires_at) for h in service.holds(mia)] == [
            (kept.id, 300, kept.expires_at)
        ]
        assert budget(service, mia) == (150, 300, 550)
        fresh = service.reserve(mia, cost=1)
        assert fresh is not None and fresh.id not in {kept.id, settled.id, released.id}
        fresh.release()
        clock.advance(60)
        assert service.holds(mia) == [] and budget(service, mia) == (150, 0, 850)


CRASH_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from usagemeter import Actor, CostMap, MeteringService, Policy
    path, backend = sys.argv[1], sys.argv[2]
    prices = CostMap.from_dict({"llm:output": 2, "llm:input": "0.5"})
    service = MeteringService(prices, policies=[Policy("temp_free", 1000)], store=path,
                              store_backend=backend, snapshot_interval=0.05)
    actor = Actor("ned")
    hold = service.reserve(actor, cost=700, ttl=30)
    service.increment_usage(actor, "llm:output", 10)
    service.flush()
    print(json.dumps({"id": hold.id, "expires_at": hold.expires_at}), flush=True)
    time.sleep(600)  # killed here, between reserve and settle
    """
)


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_sigkill_between_reserve_and_settle_leaves_no_hold_past_its_ttl(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "store"
    with subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(path), backend], stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, "the worker died before reserving"
            held = json.loads(line)
        finally:
            process.kill()
            process.wait(30)
    assert process.returncode == -9
    clock = FakeClock(time.time())
    ned = Actor("ned")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        # The hold and the charge after it both reached the store: neither lost nor doubled.
        assert [h.id for h in service.holds(ned)] == [held["id"]]
        assert budget(service, ned) == (20, 700, 280)
        clock.now = held["expires_at"]
        assert service.holds(ned) == [] and budget(service, ned) == (20, 0, 980)
        # A new process settles by the stored handle while the hold lives (tested above); here,
        # after the ttl, the settle still books the call's usage exactly once.
        assert service.get_actor_current_month_usage_details(ned)["usage"]["total"] == 20


# ---------------------------------------------------------------------------------------------
# Against an exact model: holds, charges, credit, the clock and month rollover interleaved.

TTL = 60.0


class HoldsAgainstAModel(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.service = new_service(clock=self.clock)
        self.actor = Actor("model")
        self.used = 0  # allowance used this month
        self.overage = 0
        self.purchased = 0
        self.consumed = 0
        self.month_total = 0
        self.live: dict[int, tuple[int, float]] = {}  # id -> (amount, expires_at)
        self.month = self._month()

    def _month(self) -> str:
        return time.strftime("%Y-%m", time.gmtime(self.clock.now))

    def _held(self) -> int:
        return sum(amount for amount, expires in self.live.values() if expires > self.clock.now)

    def _remaining(self) -> int:
        return max(0, ALLOWANCE - self.used) + self.purchased - self.consumed

    def _charge(self, cost: int) -> None:
        allowance_part = min(cost, max(0, ALLOWANCE - self.used))
        purchased_part = min(cost - allowance_part, self.purchased - self.consumed)
        self.used += allowance_part
        self.consumed += purchased_part
        self.overage += cost - allowance_part - purchased_part
        self.month_total += cost

    @rule(target=holds, cost=st.integers(0, 700))
    def reserve(self, cost: int) -> Hold | None:
        hold = self.service.reserve(self.actor, cost=cost, ttl=TTL)
        fits = self._remaining() - self._held() >= cost
        assert (hold is not None) == fits, (cost, self._remaining(), self._held())
        if hold is not None:
            self.live[hold.id] = (cost, self.clock.now + TTL)
        return hold

    @rule(hold=consumes(holds), real=st.integers(0, 900))
    def settle(self, hold: Hold | None, real: int) -> None:
        if hold is None:
            return
        hold.settle(cost=real, usage_type="llm:output")
        self.live.pop(hold.id)
        self._charge(real)

    @rule(hold=consumes(holds))
    def release(self, hold: Hold | None) -> None:
        if hold is None:
            return
        _, expires = self.live.pop(hold.id)
        assert hold.release() == (expires > self.clock.now)

    @rule(cost=st.integers(1, 400))
    def try_charge(self, cost: int) -> None:
        total = self.service.try_increment_usage(self.actor, "llm:output", 0, cost)
        fits = self._remaining() - self._held() >= cost
        assert (total is not None) == fits
        if fits:
            self._charge(cost)

    @rule(cost=st.integers(1, 400))
    def charge(self, cost: int) -> None:
        self.service.increment_usage(self.actor, "llm:output", 0, cost)
        self._charge(cost)

    @rule(amount=st.integers(1, 300))
    def buy(self, amount: int) -> None:
        self.service.update_addon_credit("model", amount)
        self.purchased += amount

    @rule(seconds=st.sampled_from([1.0, 30.0, 59.0, 61.0, 86_400.0 * 20]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)
        if self._month() != self.month:  # a new month: a fresh allowance, holds still count
            self.month = self._month()
            self.used = self.overage = self.month_total = 0

    @invariant()
    def budget_matches(self) -> None:
        figures = self.service.get_actor_budget(self.actor)
        assert figures["held"] == self._held()
        assert figures["allowance_used"] == self.used
        assert figures["overage"] == self.overage
        assert figures["remaining"] == max(0, self._remaining() - self._held())
        assert [h.id for h in self.service.holds(self.actor)] == sorted(
            i for i, (_, expires) in self.live.items() if expires > self.clock.now
        )


HoldsAgainstAModel.TestCase.settings = settings(stateful_step_count=40, deadline=None)
test_holds_against_an_exact_model = HoldsAgainstAModel.TestCase


@pytest.mark.parametrize("hold_id", [-1, 2**64, 1.5, "7", None, True, b"1"])
def test_junk_hold_ids_are_refused_by_every_native_entry_point(hold_id: Any) -> None:
    service = new_service()
    olga = Actor("olga")
    kept = service.reserve(olga, cost=100)
    assert kept is not None
    calls: list[Callable[[], object]] = [
        lambda: service._settle(olga, hold_id, None, 5, "llm:output"),
        lambda: service._release(olga, hold_id),
        lambda: service._extend(olga, hold_id, 1_000),
    ]
    for call in calls:
        with pytest.raises((TypeError, ValueError)):
            call()
    ttls: list[Any] = [0, -1, 2**63, 1.0, True]
    for ttl in ttls:
        with pytest.raises((TypeError, ValueError)):
            service._extend(olga, kept.id, ttl)
    assert budget(service, olga) == (0, 100, 900)
    assert service.get_actor_current_month_usage_details(olga)["usage"]["total"] == 0


def test_a_settle_with_an_idempotency_key_records_once_even_after_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "store"
    pia = Actor("pia")
    with new_service(clock=clock, store=path) as service:
        hold = service.reserve(pia, cost=500)
        assert hold is not None
        assert hold.settle(usages=[("llm:output", 100)], idempotency_key="settle-1") == 200
        # The same handle retried (a timeout that hid the first answer): replayed, not recorded.
        assert hold.settle(usages=[("llm:output", 100)], idempotency_key="settle-1") == 200
        held_id = hold.id
    with new_service(clock=clock, store=path) as service:
        # Another process's handle on the same hold, after a restart.
        again = Hold(service, pia, (held_id, 500, 0))
        assert again.settle(usages=[("llm:output", 100)], idempotency_key="settle-1") == 200
        assert service.get_actor_current_month_usage_details(pia)["usage"]["llm:output"]["count"] == 1
        other = Hold(service, pia, (held_id, 500, 0))
        with pytest.raises(ValueError, match="idempotency"):
            other.settle(usages=[("llm:output", 99)], idempotency_key="settle-1")
        assert budget(service, pia) == (200, 0, 800)


def usage_count(service: MeteringService, actor: Actor) -> int:
    """The calls recorded for the actor this month, over every usage type."""
    usage = service.get_actor_current_month_usage_details(actor)["usage"]
    return sum(figures["count"] for figures in usage.values() if isinstance(figures, dict))


def test_a_hold_settles_once_whatever_the_key_or_the_handle() -> None:
    """Issue 18, point 4: a second key, no key, or another handle recorded a second time."""
    service = new_service()
    rex = Actor("rex")
    hold = service.reserve(rex, cost=500)
    assert hold is not None
    assert hold.settle(usages=[("llm:output", 100)], idempotency_key="a") == 200
    with pytest.raises(HoldSettledError, match=f"hold {hold.id} was already settled"):
        hold.settle(usages=[("llm:output", 100)], idempotency_key="b")
    assert hold.settle(usages=[("llm:output", 100)], idempotency_key="a") == 200  # a retry
    other = Hold(service, rex, (hold.id, 500, 0))
    attempts: list[Callable[[], object]] = [
        lambda: other.settle(usages=[("llm:output", 1)]),
        lambda: other.settle(usages=[("llm:output", 1)], idempotency_key="c"),
        other.release,
        lambda: other.extend(10),
    ]
    for attempt in attempts:
        with pytest.raises(HoldSettledError):
            attempt()
    assert budget(service, rex) == (200, 0, 800) and usage_count(service, rex) == 1
    # A handle from `service.holds` on a hold its first handle settled (unkeyed) or released.
    settled, released = service.reserve(rex, cost=100), service.reserve(rex, cost=100)
    assert settled is not None and released is not None
    handles = {h.id: h for h in service.holds(rex)}
    assert settled.settle(usages=[("llm:output", 10)]) == 220
    assert released.release() is True
    for hold_id in (settled.id, released.id):
        with pytest.raises(HoldSettledError):
            handles[hold_id].settle(usages=[("llm:output", 10)])
        with handles[hold_id]:  # its exit has nothing left to release, and does not raise
            pass
    assert budget(service, rex) == (220, 0, 780) and usage_count(service, rex) == 2
    # A HoldSettledError is a ValueError, as "already settled" was.
    assert issubclass(HoldSettledError, ValueError)


def race_to_settle(hold: Hold, threads: int, key_prefix: str | None) -> list[str]:
    """`threads` threads released together settle `hold`, each with its own key (or none)."""
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []

    def settle(index: int) -> None:
        barrier.wait()
        key = None if key_prefix is None else f"{key_prefix}-{index}"
        try:
            hold.settle(usages=[("llm:input", 2)], idempotency_key=key)
            outcomes.append("settled")
        except HoldSettledError:
            outcomes.append("refused")

    workers = [threading.Thread(target=settle, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return outcomes


@pytest.mark.parametrize("keyed", [False, True])
def test_threads_racing_to_settle_one_hold_record_exactly_once(keyed: bool) -> None:
    """Issue 18, point 4: 58 of 3,000 holds were settled twice by two threads."""
    service = new_service()
    sam = Actor("sam")
    rounds, threads = 300, 4
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for round_ in range(rounds):
            hold = service.reserve(sam, cost=0)
            assert hold is not None
            outcomes = race_to_settle(hold, threads, f"r{round_}" if keyed else None)
            assert sorted(outcomes) == ["refused"] * (threads - 1) + ["settled"], outcomes
    finally:
        sys.setswitchinterval(previous)
    assert usage_count(service, sam) == rounds
    assert service.get_actor_current_month_usage_details(sam)["usage"]["total"] == rounds


@pytest.mark.parametrize("backend", ["sled", "redb"])
def test_a_hold_settled_or_released_before_a_restart_stays_finished_after_it(
    tmp_path: Path, backend: str
) -> None:
    """Issue 18, point 4: the store kept only live holds, so a settled hold's id was unknown
    after a restart, and settling it recorded again."""
    clock = FakeClock()
    path = tmp_path / "store"
    tia = Actor("tia")
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        settled = service.reserve(tia, cost=300, ttl=60)
        released = service.reserve(tia, cost=200, ttl=60)
        live = service.reserve(tia, cost=100, ttl=60)
        assert settled is not None and released is not None and live is not None
        assert settled.settle(usages=[("llm:output", 50)], idempotency_key="k") == 100
        assert released.release() is True
    with new_service(clock=clock, store=path, store_backend=backend) as service:
        assert [h.id for h in service.holds(tia)] == [live.id]
        assert budget(service, tia) == (100, 100, 800)
        again = Hold(service, tia, (settled.id, 300, 0))
        assert again.settle(usages=[("llm:output", 50)], idempotency_key="k") == 100  # a retry
        with pytest.raises(HoldSettledError, match="already settled"):
            again.settle(usages=[("llm:output", 50)], idempotency_key="other")
        with pytest.raises(HoldSettledError, match="already settled"):
            Hold(service, tia, (settled.id, 300, 0)).settle(usages=[("llm:output", 50)])
        with pytest.raises(HoldSettledError, match="already released"):
            Hold(service, tia, (released.id, 200, 0)).settle(usages=[("llm:output", 50)])
        # Still remembered after the holds' own expiry (the idempotency window is longer).
        clock.advance(3_600)
        with pytest.raises(HoldSettledError):
            Hold(service, tia, (settled.id, 300, 0)).settle(usages=[("llm:output", 50)])
        assert budget(service, tia) == (100, 0, 900) and usage_count(service, tia) == 1
