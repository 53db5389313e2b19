"""What a hostile tester broke (issue 9): data lost at close, hangs, fork, panics, plan-cache races.

Each test failed before its fix. Hangs are caught by the per-test timeout and by bounded joins;
the tests that need a process of their own (interpreter exit, fork) run real subprocesses or a
real ``os.fork()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support import FakeClock, collect_alarms, small_cost_map
from test_store import BACKENDS, open_store
from test_store_disk_full import fill, tiny_tmpfs  # noqa: F401  (a fixture)
from usagemeter import (
    GET_USER_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    Actor,
    AlarmEvent,
    CostMap,
    CostMapError,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    RegisterAvailablePoliciesEvent,
    StoreClosedError,
    StoreWriteError,
    UnknownUsageType,
)

JOIN_TIMEOUT = 30.0  # seconds: a thread still running after this is a hang
PROJECT_PYTHON = sys.executable


def run_python(code: str, timeout: float = 60.0, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter (this one's), with the tests directory importable."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run(
        [PROJECT_PYTHON, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )


# ---------------------------------------------------------------------------------------------
# 1. Every call that returned before close() is in the last snapshot.


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_close_saves_every_increment_that_returned(backend: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    service = open_store(store, backend, snapshot_interval=0.02)
    returned = [0, 0, 0]
    refused = [False, False, False]
    started = threading.Barrier(4)

    def increment(slot: int) -> None:
        actor = Actor(f"user-{slot}")
        started.wait()
        while True:
            try:
                service.increment_usage(actor, "kv:read", 1)
            except StoreClosedError:
                refused[slot] = True
                return
            returned[slot] += 1

    threads = [threading.Thread(target=increment, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.3)
    service.close()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    assert refused == [True, True, True], "calls after close() began must raise StoreClosedError"
    assert all(returned), returned
    with open_store(store, backend) as reopened:
        for slot in range(3):
            usage = reopened.get_actor_current_month_usage_details(Actor(f"user-{slot}"))["usage"]
            assert usage["kv:read"]["units"] == returned[slot], (slot, returned)


# ---------------------------------------------------------------------------------------------
# 3. flush() racing close() never hangs.


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", BACKENDS)
def test_flush_racing_close_never_hangs(backend: str, tmp_path: Path) -> None:
    for run in range(10):
        service = open_store(tmp_path / f"store-{run}", backend, snapshot_interval=0.01)
        outcomes: list[str] = []

        def work(slot: int, service: MeteringService = service, outcomes: list[str] = outcomes) -> None:
            actor = Actor(f"user-{slot}")
            while True:
                try:
                    service.increment_usage(actor, "kv:read", 1)
                    service.flush()
                except StoreClosedError:
                    outcomes.append("closed")
                    return

        threads = [threading.Thread(target=work, args=(slot,)) for slot in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.05 + 0.01 * run)
        service.close()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
            assert not thread.is_alive(), f"run {run}: a flush() racing close() hangs"
        assert outcomes == ["closed"] * 3


# ---------------------------------------------------------------------------------------------
# 4. An alarm listener may call flush() and close() on a store_error.


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_store_error_listener_may_flush_and_close(backend: str, tiny_tmpfs: Path) -> None:  # noqa: F811
    service = open_store(tiny_tmpfs / "store", backend, snapshot_interval=0.05)
    filler = tiny_tmpfs / "filler"
    done = threading.Event()
    seen: list[str] = []

    def on_alarm(event: AlarmEvent) -> None:
        if event.kind != "store_error" or done.is_set():
            return
        for call in (service.flush, service.close):
            try:
                call()
                seen.append(f"{call.__name__} ok")
            except StoreWriteError:
                seen.append(f"{call.__name__} failed")
        done.set()

    service.events.on("metering:alarm", on_alarm)
    try:
        service.increment_usage(Actor("early"), "kv:read", 1)
        service.flush()
        fill(filler)
        try:
            for round_ in range(40):
                for index in range(1_000):
                    service.increment_usage(Actor(f"user-{round_}-{index}"), "kv:write", 1)
                if done.wait(0.2):
                    break
        except StoreClosedError:
            pass  # the listener closed the service while this thread metered: as it should
        assert done.wait(JOIN_TIMEOUT), "the listener never finished: flush()/close() deadlocked"
        assert seen == ["flush failed", "close failed"], seen
        assert service.closed
    finally:
        filler.unlink(missing_ok=True)
        try:
            service._close_at_exit()  # ends the snapshot thread whatever the store's state
        except StoreWriteError:
            pass  # the store's own recovery is test_store_disk_full's subject, not this test's


# ---------------------------------------------------------------------------------------------
# 5. The interpreter exits even when the last snapshot fails; a dropped service stops its thread.

EXIT_WITH_A_FULL_DISK = """
    import sys
    from pathlib import Path
    from test_store import open_store
    from test_store_disk_full import fill
    from usagemeter import Actor, StoreWriteError

    mount = Path(sys.argv[1] if len(sys.argv) > 1 else {mount!r})
    service = open_store(mount / "store", {backend!r}, snapshot_interval=0.05)
    service.increment_usage(Actor("early"), "kv:read", 1)
    service.flush()
    fill(mount / "filler")
    for index in range(20_000):
        service.increment_usage(Actor(f"user-{{index}}"), "kv:write", 1)
    try:
        service.flush()
    except StoreWriteError:
        print("flush failed as expected", flush=True)
    {ending}
"""


def run_on_a_full_disk(code: str, mount: Path) -> subprocess.CompletedProcess[str]:
    """Runs `code` (which fills `mount`), then frees the space whatever happened."""
    try:
        return run_python(code, timeout=120)
    finally:
        (mount / "filler").unlink(missing_ok=True)


def snapshot_threads() -> int:
    """Native snapshot threads alive in this process (named by the library)."""
    names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
    return sum(name.startswith("usagemeter-snap") for name in names)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_interpreter_exits_when_the_last_snapshot_fails(
    backend: str,
    tiny_tmpfs: Path,  # noqa: F811
) -> None:
    code = EXIT_WITH_A_FULL_DISK.format(mount=str(tiny_tmpfs), backend=backend, ending="# exit")
    result = run_on_a_full_disk(code, tiny_tmpfs)
    assert "flush failed as expected" in result.stdout, result.stderr
    assert result.returncode == 0, result.stderr
    assert "could not write the last snapshot" in result.stderr
    assert "panicked" not in result.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dropped_service_stops_its_thread_even_when_the_snapshot_fails(
    backend: str,
    tiny_tmpfs: Path,  # noqa: F811
) -> None:
    ending = """
    import gc, time
    from test_reliability import snapshot_threads
    assert snapshot_threads() == 1, snapshot_threads()
    del service
    gc.collect()
    time.sleep(0.5)
    print("threads after del:", snapshot_threads(), flush=True)
    """
    code = EXIT_WITH_A_FULL_DISK.format(mount=str(tiny_tmpfs), backend=backend, ending="")
    result = run_on_a_full_disk(textwrap.dedent(code) + textwrap.dedent(ending), tiny_tmpfs)
    assert result.returncode == 0, result.stderr
    assert "threads after del: 0" in result.stdout, (result.stdout, result.stderr)


def test_snapshot_threads_end_with_their_services(tmp_path: Path) -> None:
    result = run_python(
        f"""
        import gc
        import time
        from pathlib import Path
        from test_reliability import snapshot_threads
        from test_store import open_store

        def settled(expected):
            # A joined thread can stay listed in /proc/self/task for a moment: the kernel wakes
            # the joiner before it removes the task (seen once under load in CI). Wait for it,
            # up to 5 s; a thread that does not end shows as the count it stayed at.
            deadline = time.monotonic() + 5.0
            while snapshot_threads() != expected and time.monotonic() < deadline:
                time.sleep(0.01)
            return snapshot_threads()

        services = [open_store(Path({str(tmp_path)!r}) / f"s{{n}}", "sled") for n in range(3)]
        time.sleep(0.5)  # a new thread names itself once it runs
        print("open:", snapshot_threads())
        services[0].close()
        print("one closed:", settled(2))
        del services
        gc.collect()
        print("dropped:", settled(0))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["open: 3", "one closed: 2", "dropped: 0"], result.stdout


# ---------------------------------------------------------------------------------------------
# 6. os.fork(): the child's copy of a service with a store refuses; the parent is unaffected.


def wait_child(pid: int, timeout: float = JOIN_TIMEOUT) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_child_refuses_a_service_with_a_store(backend: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    service = open_store(store, backend)
    actor = Actor("parent-user")
    service.increment_usage(actor, "kv:read", 5)
    service.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        os.close(read_end)
        report = []
        try:
            try:
                service.increment_usage(actor, "kv:read", 1)
                report.append("increment worked")
            except StoreClosedError as error:
                report.append("refused" if "fork" in str(error) else f"wrong message: {error}")
            try:
                service.flush()
                report.append("flush worked")
            except StoreClosedError:
                report.append("flush refused")
            service.close()  # a no-op in the child: the store is the parent's
            report.append("closed")
            time.sleep(1.0)  # still alive while the parent closes and reopens the store
        except BaseException as error:
            report.append(f"error {error!r}")
        os.write(write_end, ",".join(report).encode())
        os._exit(0)
    os.close(write_end)
    time.sleep(0.2)
    # The parent goes on, closes, and reopens the store while the child still lives: the child
    # holds none of the store's locks.
    service.increment_usage(actor, "kv:read", 2)
    service.close()
    with open_store(store, backend) as reopened:
        assert reopened.get_actor_current_month_usage_details(actor)["usage"]["kv:read"]["units"] == 7
    assert wait_child(pid) == 0
    with os.fdopen(read_end, "rb") as pipe:
        child_report = pipe.read().decode()
    assert child_report == "refused,flush refused,closed", child_report


@pytest.mark.timeout(60)
def test_a_forked_child_keeps_its_own_copy_of_a_memory_only_service() -> None:
    service = MeteringService(small_cost_map(), clock=FakeClock())
    actor = Actor("u")
    service.increment_usage(actor, "kv:read", 1)
    pid = os.fork()
    if pid == 0:
        try:
            total = service.increment_usage(actor, "kv:read", 1)
            os._exit(0 if total == 126 else 1)
        except BaseException:
            os._exit(2)
    assert wait_child(pid) == 0
    assert service.get_actor_current_month_usage_details(actor)["usage"]["total"] == 63


# ---------------------------------------------------------------------------------------------
# 7. Purchased credit stays in range: OverflowError, never a PanicException.


def test_purchased_credit_beyond_the_range_raises_overflow_and_changes_nothing(
    service: MeteringService,
) -> None:
    actor = Actor("rich")
    assert service.update_addon_credit("rich", 10**18) == 10**18
    for _ in range(3):
        with pytest.raises(OverflowError):
            service.update_addon_credit("rich", 10**18)
        with pytest.raises(OverflowError):
            service.update_addon_credit("rich", 1)
    assert service.get_actor_addons(actor)["purchased_credits"] == 10**18
    remaining = service.get_remaining_usage(actor)
    assert remaining == 10**18 + service.get_actor_budget(actor)["monthly_allowance"]
    assert service.has_enough_credits(actor, 10**18)
    assert service.try_increment_usage(actor, "kv:read", 1) == 63


# ---------------------------------------------------------------------------------------------
# 8. invalidate_subscription wins over a look-up already running.


@pytest.mark.timeout(60)
def test_an_invalidation_during_a_slow_plan_lookup_wins(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, clock=clock, subscription_ttl=3600.0)
    plans = {"u": "free-plan"}
    in_lookup = threading.Event()
    release = threading.Event()

    def register(event: RegisterAvailablePoliciesEvent) -> None:
        event.available_policies.extend([Policy("free-plan", 100), Policy("pro", 1_000_000)])

    def subscription(event: GetUserSubscriptionEvent) -> None:
        chosen = plans[event.actor.user_id]
        if threading.current_thread().name == "slow-lookup" and not release.is_set():
            in_lookup.set()
            release.wait(JOIN_TIMEOUT)  # a slow database
        event.user_subscription_id = chosen

    service.events.on(REGISTER_AVAILABLE_POLICIES, register)
    service.events.on(GET_USER_SUBSCRIPTION, subscription)
    actor = Actor("u")
    service.update_addon_credit("u", 0)  # the user has an account, so plans are cached
    seen: list[int] = []
    lookup = threading.Thread(
        target=lambda: seen.append(service.get_remaining_usage(actor)), name="slow-lookup"
    )
    lookup.start()
    assert in_lookup.wait(JOIN_TIMEOUT)
    plans["u"] = "pro"  # the user upgrades while the old plan is being read
    service.invalidate_subscription("u")
    release.set()
    lookup.join(JOIN_TIMEOUT)
    assert not lookup.is_alive()
    assert service.get_actor_subscription(actor) == Policy("pro", 1_000_000)
    assert service.get_remaining_usage(actor) == 1_000_000
    assert seen == [1_000_000], "the look-up that raced the invalidation read the plan again"


# ---------------------------------------------------------------------------------------------
# 9 and 10. Plans: the system actor shares no cache; the fallback honours a registered user_free.


def test_the_system_actor_shares_no_plan_cache_with_a_user_named_system(service: MeteringService) -> None:
    service.get_actor_subscription(Actor.system())
    user = Actor("system", email="ops@example.com")
    assert service.get_actor_subscription(user).id == "user_free"
    service.increment_usage(user, "kv:read", 1)
    service.get_actor_subscription(Actor.system())
    assert service.get_actor_subscription(user).id == "user_free"


def test_the_unknown_plan_fallback_uses_a_registered_user_free(service: MeteringService) -> None:
    alarms = collect_alarms(service)
    custom = Policy("user_free", 7_777)
    service.events.on(REGISTER_AVAILABLE_POLICIES, lambda event: event.available_policies.append(custom))
    service.events.on(GET_USER_SUBSCRIPTION, lambda event: setattr(event, "user_subscription_id", "platinum"))
    service.events.on(
        "metering:overrideDefaultSubscription",
        lambda event: setattr(event, "default_subscription_id", "missing"),
    )
    assert service.get_actor_subscription(Actor("u")) == custom
    assert [alarm.kind for alarm in alarms] == ["unknown_plan"]
    assert "user_free" in alarms[0].message


# ---------------------------------------------------------------------------------------------
# The smaller ones: each a clear error, and nothing changes.


def test_a_zero_unit_charge_of_an_unknown_type_raises(service: MeteringService) -> None:
    actor = Actor("u")
    with pytest.raises(UnknownUsageType):
        service.increment_usage(actor, "bogus:type", 0)
    with pytest.raises(UnknownUsageType):
        service.try_increment_usage(actor, "bogus:type", 0)
    with pytest.raises(UnknownUsageType):
        service.batch_increment_usages(actor, [("kv:read", 1), ("bogus:type", 0)])
    assert service.get_actor_current_month_usage_details(actor)["usage"] == {"total": 0}
    assert service.increment_usage(actor, "kv:read", 0) == 0  # a known type at 0 units is fine


@pytest.mark.parametrize("usage_type", ["", "total"])
def test_the_system_actor_gets_the_same_input_checks(service: MeteringService, usage_type: str) -> None:
    system = Actor.system()
    with pytest.raises(ValueError):
        service.increment_usage(system, usage_type, 1)
    with pytest.raises(ValueError):
        service.try_increment_usage(system, usage_type, 1)
    with pytest.raises(ValueError):
        service.batch_increment_usages(system, [(usage_type, 1)])
    with pytest.raises(UnknownUsageType):
        service.increment_usage(system, "bogus:type", 1)


@pytest.mark.parametrize("month", ["+026-01", "2026-+1", "20260-01", " 2026-01", "2026-1"])
def test_months_must_be_four_digits_dash_two_digits(service: MeteringService, month: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        service.get_actor_month_usage_details(Actor("u"), month)
    with pytest.raises(ValueError, match="YYYY-MM"):
        service.get_actors_usage(month)


def test_a_clock_beyond_year_9999_is_refused(small_map: CostMap) -> None:
    clock = FakeClock(253_402_300_800.0)  # 10000-01-01
    service = MeteringService(small_map, clock=clock)
    with pytest.raises(ValueError, match="0000-9999"):
        service.increment_usage(Actor("u"), "kv:read", 1)
    clock.now = 10.0**30
    with pytest.raises(ValueError, match="0000-9999"):
        service.increment_usage(Actor("u"), "kv:read", 1)
    clock.now = 253_402_300_799.0  # the last second of 9999: recorded and queryable
    service.increment_usage(Actor("u"), "kv:read", 1)
    assert service.get_actor_month_usage_details(Actor("u"), "9999-12")["usage"]["total"] == 63


def test_an_infinite_subscription_ttl_caches_for_good(small_map: CostMap, clock: FakeClock) -> None:
    service = MeteringService(small_map, clock=clock, subscription_ttl=float("inf"))
    calls: list[GetUserSubscriptionEvent] = []
    service.events.on(GET_USER_SUBSCRIPTION, calls.append)
    service.increment_usage(Actor("u"), "kv:read", 1)
    clock.advance(10 * 365 * 86_400)
    service.increment_usage(Actor("u"), "kv:read", 1)
    assert len(calls) == 1


@pytest.mark.parametrize("interval", [1e300, float("inf"), 86_401.0])
def test_an_absurd_snapshot_interval_is_a_clear_value_error(small_map: CostMap, interval: float) -> None:
    with pytest.raises(ValueError, match="snapshot_interval"):
        MeteringService(small_map, snapshot_interval=interval)


def test_a_negative_price_that_rounds_to_zero_is_refused() -> None:
    with pytest.raises(CostMapError, match="negative"):
        CostMap.from_dict({"x:y": "-0.0000000000001"})
    assert CostMap.from_dict({"x:y": "-0"})["x:y"] == 0


def test_read_only_checks_of_unknown_users_allocate_no_account(service: MeteringService) -> None:
    service.increment_usage(Actor("known"), "kv:read", 1)
    assert service._account_count() == 1
    for index in range(2_000):
        stranger = Actor(f"stranger-{index}", email="x@example.com" if index % 2 else None)
        assert service.has_enough_credits_for(stranger, "kv:read", 1)
        assert service.has_enough_credits(stranger, 1)
        assert service.has_any_usage(stranger)
        assert not service.has_usage_this_month(stranger)
        assert service.get_remaining_usage(stranger) > 0
        service.get_allowed_usage(stranger)
        service.get_actor_budget(stranger)
        service.get_actor_addons(stranger)
        service.get_actor_subscription(stranger)
        service.get_actor_current_month_usage_details(stranger)
    assert service._account_count() == 1
