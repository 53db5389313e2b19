"""The fleet (issue 10): every process sharing one Redis URL is one ledger.

Real `redis-server` processes (`redis_support`) and real worker interpreters (`fleet_workers.py`,
`subprocess.Popen`), no mocks. The short forms run in `make test`; `USAGEMETER_FLEET_LONG=1`
(`make fleet-long`) runs the heavy ones at full size.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest
from fleet_workers import FLEET_PRICES, NO_APP, SUM_TYPES, fleet_cost_map
from redis_support import RedisCluster, RedisServer, _die_with_parent, free_port
from support import round_half_up
from usagemeter import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    Actor,
    AlarmEvent,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    StoreError,
    StoreUnavailableError,
)

LONG = os.environ.get("USAGEMETER_FLEET_LONG") == "1"
WORKERS_SCRIPT = Path(__file__).with_name("fleet_workers.py")
INTERVAL = 0.1  # seconds between two syncs of every service here
COST = 1_000  # µ¢ per call of the budget tests (a cost override)
EVENT_TIMEOUT = 900.0 if LONG else 120.0  # seconds a worker may take to report (debug build, shared machine)


def unique_prefix(name: str) -> str:
    """User ids no other test touches (the cluster is shared by the module)."""
    return f"{name}-{uuid.uuid4().hex[:8]}-"


def open_fleet(url: str, **options: Any) -> MeteringService:
    options.setdefault("snapshot_interval", INTERVAL)
    return MeteringService(fleet_cost_map(), store=url, **options)


def close_anyway(service: MeteringService) -> None:
    """Closes a service whose last sync may fail (a test that has failed already)."""
    try:
        service.close()
    except StoreError:
        with contextlib.suppress(StoreError):
            service._close_at_exit()  # stops the sync thread even when the last sync fails


def budget_policies(allowance: int) -> list[Policy]:
    """temp_free (the plan of every actor without an email) with `allowance` µ¢ a month."""
    return [Policy("temp_free", allowance)]


@pytest.fixture
def fleet_url(redis_server: RedisServer) -> str:
    """A fresh server's URL (it has not cached the write script: the first round loads it)."""
    return redis_server.url


# ---------------------------------------------------------------------------------------------
# Worker processes


class FleetWorker:
    """One `fleet_workers.py` process: JSON lines from its stdout arrive on a queue."""

    def __init__(self, config: dict[str, Any], directory: Path, name: str) -> None:
        self.name = name
        self.stderr_path = directory / f"{name}.stderr"
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")  # closed in close()
        self.process = subprocess.Popen(
            [sys.executable, str(WORKERS_SCRIPT), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=_die_with_parent,  # the kernel kills it if the test process dies
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, name=f"reader-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def stderr_tail(self) -> str:
        """The end of the worker's stderr, without the alarm log lines (one a failed sync)."""
        self._stderr.flush()
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        alarms = [line for line in lines if line.startswith("metering alarm")]
        others = [line for line in lines if not line.startswith("metering alarm")]
        summary = f"({len(alarms)} alarm lines, the last: {alarms[-1]})" if alarms else "(no alarm lines)"
        return "\n".join([summary, *others[-30:]])

    def expect(self, event: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The next line of kind `event` (earlier lines are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"worker {self.name}: no {event!r} in {timeout:.0f} s\n{self.stderr_tail()}")
            if line is None:
                self.lines.put(None)
                code = self.process.wait()
                pytest.fail(f"worker {self.name} exited ({code}) before {event!r}\n{self.stderr_tail()}")
            self.seen.append(line)
            if line["event"] == event:
                return line

    def drain(self) -> list[dict[str, Any]]:
        """Every line up to the end of stdout (the process has ended or is ending)."""
        self._reader.join(EVENT_TIMEOUT)
        while True:
            line = self.lines.get(timeout=EVENT_TIMEOUT)
            if line is None:
                self.lines.put(None)
                return self.seen
            self.seen.append(line)

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The `done` report, and a clean exit."""
        done = self.expect("done", timeout)
        code = self.process.wait(timeout)
        assert code == 0, f"worker {self.name} exited with {code}\n{self.stderr_tail()}"
        return done

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(EVENT_TIMEOUT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(EVENT_TIMEOUT)
        self._reader.join(EVENT_TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass  # a broken pipe to a killed worker
        self._stderr.close()


Spawn = Callable[..., FleetWorker]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Starts workers; every one still running at the end of the test is killed and reaped."""
    started: list[FleetWorker] = []

    def start(name: str, **config: Any) -> FleetWorker:
        config.setdefault("interval", INTERVAL)
        worker = FleetWorker(config, tmp_path, name)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def start_together(workers: list[FleetWorker]) -> None:
    """Waits until every worker has opened its service, then lets them all go at once."""
    for worker in workers:
        worker.expect("ready")
    for worker in workers:
        worker.send("go")


def print_timings(label: str, reports: list[dict[str, Any]]) -> None:
    """What each worker took (seen with `pytest -s`), and its sync traffic."""
    for index, report in enumerate(reports):
        print(
            f"{label} worker {index}: {report['seconds']:.1f} s working, "
            f"closed after {report['closed_after']:.1f} s; sync {report['stats']}"
        )


# ---------------------------------------------------------------------------------------------
# Reading figures


def figures(service: MeteringService, user: str) -> dict[str, Any]:
    """A user's current-month record as reported (usage per type, and per app)."""
    details: Any = service.get_actor_current_month_usage_details(Actor(user))
    result: dict[str, Any] = details
    return result


def units_of(service: MeteringService, user: str, usage_type: str) -> int:
    usage = figures(service, user)["usage"]
    entry = usage.get(usage_type)
    return 0 if entry is None else int(entry["units"])


def spend_until_refused(service: MeteringService, user: str, limit: int = 100_000) -> int:
    actor = Actor(user)
    for accepted in range(limit):
        if service.try_increment_usage(actor, "fleet:call", 1, COST) is None:
            return accepted
    raise AssertionError(f"{limit} calls accepted: the budget is not enforced")


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Seconds until `condition()` held; AssertionError after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(step)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# 0. A server that has not cached the write script yet (fresh, or restarted).


@pytest.mark.timeout(60)
def test_the_first_sync_of_several_users_on_a_fresh_server(redis_url: str) -> None:
    """The first round's pipeline sends EVALSHA for every user; on a server without the script
    each reply is NOSCRIPT, and every one of them is sent again with the script's text. (Only the
    first used to be: the second failed the round, and every later round the same way.)"""
    service = open_fleet(redis_url)
    errors: list[str] = []
    try:
        service.increment_usage(Actor("first"), "fleet:int", 1)
        service.increment_usage(Actor("second"), "fleet:int", 1)
        for _ in range(3):
            try:
                service.flush()
            except StoreError as error:
                errors.append(f"{type(error).__name__}: {error}")
    finally:
        close_anyway(service)
    assert errors == [], errors
    with open_fleet(redis_url) as fresh:
        assert units_of(fresh, "first", "fleet:int") == 1
        assert units_of(fresh, "second", "fleet:int") == 1


def units_of_all(service: MeteringService, users: list[str]) -> list[int]:
    return [units_of(service, user, "fleet:int") for user in users]


@pytest.mark.timeout(60)
def test_a_write_refused_for_one_user_leaves_the_others_counted_once(redis_server: RedisServer) -> None:
    """When one write of a round's pipeline gets an error reply, the writes after it are settled
    from their own replies. (They used to be dropped although Redis applied them: their users'
    versions then looked moved by "another worker", the worker merged its own write in again,
    and each was counted twice, here and in Redis.) One user's hash holding a string (WRONGTYPE) makes
    the error deterministic; after a restart, `-LOADING` replies do the same (see the restart test)."""
    url = redis_server.url
    users = [f"u{index}" for index in range(10)]
    service = open_fleet(url, snapshot_interval=3_600.0)  # rounds only when the test flushes
    try:
        service.increment_usage(Actor("loader"), "fleet:int", 1)
        service.flush()  # one user: the server caches the write script
        for user in users:
            service.increment_usage(Actor(user), "fleet:int", 1)
        service.flush()
        redis_server.command("SET", "usagemeter:u:bad", "not a hash")
        for user in ["bad", *users]:
            service.increment_usage(Actor(user), "fleet:int", 1)
        with pytest.raises(StoreError):
            service.flush()  # the bad user's write is refused: that much is expected
        redis_server.command("DEL", "usagemeter:u:bad")
        for user in users:
            service.increment_usage(Actor(user), "fleet:int", 1)
        service.flush()
        service.flush()
        local = units_of_all(service, users)
    finally:
        close_anyway(service)
    with open_fleet(url) as fresh:
        saved = units_of_all(fresh, users)
    assert (local, saved) == ([3] * 10, [3] * 10)


@pytest.mark.timeout(60)
def test_usage_kept_through_a_refused_round_reaches_redis(redis_server: RedisServer) -> None:
    """Usage kept through a round that failed (the server stopped) reaches the restarted server
    once, although the restarted server has lost its script cache (every write of the round gets
    NOSCRIPT and is sent again; such writes used to be dropped after the first, and their usage
    lost)."""
    url = redis_server.url
    users = [f"u{index}" for index in range(5)]
    service = open_fleet(url, snapshot_interval=3_600.0)  # rounds only when the test flushes
    try:
        for user in users:
            service.increment_usage(Actor(user), "fleet:int", 1)
        service.flush()
        for user in users:
            service.increment_usage(Actor(user), "fleet:int", 1)
        redis_server.stop()
        with pytest.raises(StoreUnavailableError):
            service.flush()
        for user in users:
            service.increment_usage(Actor(user), "fleet:int", 1)
        redis_server.start()  # its script cache is empty
        service.flush()
        local = units_of_all(service, users)
    finally:
        close_anyway(service)
    with open_fleet(url) as fresh:
        saved = units_of_all(fresh, users)
    assert (local, saved) == ([3] * 5, [3] * 5)


# ---------------------------------------------------------------------------------------------
# 1. Two services in one process share one ledger.


def record_a_mix(service: MeteringService, prefix: str) -> None:
    alice, alice_x, alice_y, bob = (
        Actor(f"{prefix}alice"),
        Actor(f"{prefix}alice", "x"),
        Actor(f"{prefix}alice", "y"),
        Actor(f"{prefix}bob", "x"),
    )
    for round_ in range(3):
        service.increment_usage(alice, "fleet:int", 7 + round_)
        service.increment_usage(alice_x, "fleet:frac", 3)  # 93.75 µ¢: fractions add up exactly
        service.increment_usage(alice_y, "fleet:tiny", 500_001)
        service.increment_usage(bob, "fleet:small", 11)
        service.increment_usage(bob, "fleet:call", 1, 12_345)
    service.increment_usage(alice_x, "fleet:free", 5)


def everything_about(service: MeteringService, prefix: str) -> list[object]:
    alice, bob = f"{prefix}alice", f"{prefix}bob"
    return [
        service.get_actor_current_month_usage_details(Actor(alice)),
        service.get_actor_current_month_usage_details(Actor(bob)),
        service.get_actor_current_month_app_usage_details(Actor(alice), "x"),
        service.get_actor_current_month_app_usage_details(Actor(alice), "y"),
        service.get_actor_current_month_app_usage_details(Actor(bob), "x"),
        service.get_actor_app_usage(Actor(alice), "x"),
        service.get_actor_app_usage(Actor(bob), "x"),
        service.get_actor_current_month_usage_details(Actor(alice, "x")),
        service.get_actor_budget(Actor(alice)),
        service.get_global_usage(),
        sorted(service.get_actors_usage()),
    ]


@pytest.mark.timeout(120)
def test_two_services_on_one_url_share_one_ledger(fleet_url: str) -> None:
    prefix = unique_prefix("two")
    a = open_fleet(fleet_url)
    b = open_fleet(fleet_url)
    try:
        assert a._worker_id and b._worker_id and a._worker_id != b._worker_id
        record_a_mix(a, prefix)
        expected = everything_about(a, prefix)
        usage = expected[0]["usage"]  # type: ignore[index]
        assert usage["fleet:frac"] == {"units": 9, "cost": 281, "count": 3}  # 281.25 rounded
        a.flush()
        b.flush()
        time.sleep(INTERVAL)
        assert everything_about(b, prefix) == expected
        stats = a._sync_stats()
        assert stats is not None and stats["rounds"] > 0 and stats["writes"] > 0
        a.close()
        time.sleep(2 * INTERVAL)
        assert everything_about(b, prefix) == expected
        with open_fleet(fleet_url) as fresh:
            assert everything_about(fresh, prefix) == expected
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(120)
def test_usage_from_both_sides_adds_up(fleet_url: str) -> None:
    prefix = unique_prefix("both")
    with open_fleet(fleet_url) as a, open_fleet(fleet_url) as b:
        for service in (a, b, a, b):
            record_a_mix(service, prefix)
        a.flush()
        b.flush()
        a.flush()
        assert everything_about(a, prefix) == everything_about(b, prefix)
        usage = figures(a, f"{prefix}alice")["usage"]
        assert usage["fleet:frac"] == {"units": 36, "cost": 1125, "count": 12}
        assert usage["fleet:tiny"]["units"] == 4 * 3 * 500_001
        assert usage["fleet:int"] == {"units": 4 * (7 + 8 + 9), "cost": 4 * 24 * 125, "count": 12}


# ---------------------------------------------------------------------------------------------
# 2. Racing try_increment_usage never overspends a budget, across processes.

RACE_USERS = 10
RACE_BUDGET_CALLS = 200
RACE_CALLS = 20_000 if LONG else 2_000


def run_race(spawn: Spawn, url: str, backend: str | None) -> None:
    prefix = unique_prefix("race")
    allowance = RACE_BUDGET_CALLS * COST
    workers = [
        spawn(
            f"race-{index}",
            mode="race",
            url=url,
            backend=backend,
            seed=index,
            prefix=prefix,
            users=RACE_USERS,
            calls=RACE_CALLS,
            cost=COST,
            allowance=allowance,
        )
        for index in range(4)
    ]
    start_together(workers)
    reports = [worker.finish() for worker in workers]
    print_timings("race", reports)
    accepted = {f"{prefix}{index}": 0 for index in range(RACE_USERS)}
    for report in reports:
        for user, count in report["accepted"].items():
            accepted[user] += count
    options = {"store_backend": backend} if backend else {}
    print(f"accepted calls per user (budget {RACE_BUDGET_CALLS}): {sorted(accepted.values())}")
    with open_fleet(url, policies=budget_policies(allowance), **options) as fresh:
        for user, count in accepted.items():
            spent = figures(fresh, user)["usage"].get("fleet:call", {"units": 0, "cost": 0})
            assert spent["units"] == count, (user, spent, count)
            assert spent["cost"] == count * COST
            assert fresh.get_remaining_usage(Actor(user)) == max(0, allowance - count * COST)
    overspent = {user: count for user, count in accepted.items() if count * COST > allowance}
    assert not overspent, f"calls accepted beyond the budget of {RACE_BUDGET_CALLS}: {overspent}"
    short = {user: count for user, count in accepted.items() if count < 0.95 * RACE_BUDGET_CALLS}
    assert not short, f"less than 95% of the budget of {RACE_BUDGET_CALLS} spent: {short}"


@pytest.mark.timeout(1200 if LONG else 120)
def test_racing_workers_never_overspend(spawn: Spawn, fleet_url: str) -> None:
    run_race(spawn, fleet_url, None)


@pytest.mark.timeout(1200 if LONG else 180)
def test_racing_workers_never_overspend_on_a_cluster(spawn: Spawn, redis_cluster: RedisCluster) -> None:
    run_race(spawn, ",".join(redis_cluster.urls), "redis-cluster")


# ---------------------------------------------------------------------------------------------
# 2b. Holds across processes: strict through the budget leases, and dead with a dead worker.

HOLD_COST = 7_000  # µ¢ a hold reserves; the real cost settled is 1..HOLD_COST
HOLD_BUDGET = 100 * HOLD_COST


@pytest.mark.timeout(180)
def test_four_processes_holding_the_last_credits_never_exceed_the_budget(
    spawn: Spawn, fleet_url: str
) -> None:
    user = unique_prefix("holds") + "u"
    workers = [
        spawn(
            f"holds-{index}",
            mode="holds",
            url=fleet_url,
            seed=index,
            user=user,
            calls=400,
            cost=HOLD_COST,
            allowance=HOLD_BUDGET,
        )
        for index in range(4)
    ]
    start_together(workers)
    reports = [worker.finish() for worker in workers]
    settled = sum(report["settled"] for report in reports)
    counts = [{key: report[key] for key in ("settled", "refused", "released")} for report in reports]
    print(f"settled {settled} of {HOLD_BUDGET} µ¢: {counts}")
    assert all(report["refused"] > 0 for report in reports), reports  # the budget ran out
    with open_fleet(fleet_url, policies=budget_policies(HOLD_BUDGET)) as fresh:
        usage = figures(fresh, user)["usage"]
        assert usage["fleet:call"]["cost"] == settled
        assert fresh.get_actor_budget(Actor(user))["held"] == 0
    assert settled <= HOLD_BUDGET
    # Most of it was used (the real costs average half a hold; leases leave some behind).
    assert settled >= HOLD_BUDGET // 2, reports


@pytest.mark.timeout(120)
def test_a_killed_workers_holds_end_with_its_lease(spawn: Spawn, fleet_url: str) -> None:
    user = unique_prefix("held") + "u"
    victim = spawn(
        "hold-victim",
        mode="hold_victim",
        url=fleet_url,
        user=user,
        cost=HOLD_BUDGET,
        allowance=HOLD_BUDGET,
        lease_ttl=2.0,
    )
    start_together([victim])
    assert victim.expect("held")["held"] is True
    with open_fleet(fleet_url, policies=budget_policies(HOLD_BUDGET), lease_ttl=2.0) as other:
        actor = Actor(user)
        # Held by the victim's lease: nothing is left for another worker.
        assert other.try_increment_usage(actor, "fleet:call", 1, HOLD_COST) is None
        victim.kill()
        # Its hold was for an hour; its lease lapses in seconds, and the budget with it.
        waited = wait_until(
            lambda: other.reserve(actor, cost=HOLD_BUDGET) is not None, timeout=30.0, step=0.2
        )
        print(f"the dead worker's hold ended {waited:.1f} s after the kill")
        assert other.try_increment_usage(actor, "fleet:call", 1, 1) is None  # held here now


# ---------------------------------------------------------------------------------------------
# 3. Exact sums over many workers.

SUM_WORKERS = 4
SUM_CALLS = 100_000 if LONG else 10_000
SUM_USERS = 10_000 if LONG else 1_000


def expected_sums(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per user and type [units, exact cost, count], per user and app [exact cost, count]."""
    types: dict[str, dict[str, list[Any]]] = {}
    apps: dict[str, dict[str, list[Any]]] = {}
    for path in paths:
        data = json.loads(path.read_text())
        for user, per_type in data["types"].items():
            for usage_type, (units, cost, count) in per_type.items():
                entry = types.setdefault(user, {}).setdefault(usage_type, [0, Decimal(0), 0])
                entry[0] += units
                entry[1] += Decimal(cost)
                entry[2] += count
        for user, per_app in data["apps"].items():
            for app, (cost, count) in per_app.items():
                app_entry = apps.setdefault(user, {}).setdefault(app, [Decimal(0), 0])
                app_entry[0] += Decimal(cost)
                app_entry[1] += count
    return types, apps


def run_sums(spawn: Spawn, url: str, backend: str | None, tmp_path: Path, check_global: bool) -> None:
    prefix = unique_prefix("sums")
    options = {"store_backend": backend} if backend else {}
    with open_fleet(url, **options) as before:
        baseline: Any = before.get_global_usage()
    paths = [tmp_path / f"expected-{index}.json" for index in range(SUM_WORKERS)]
    workers = [
        spawn(
            f"sums-{index}",
            mode="sums",
            url=url,
            backend=backend,
            seed=1_000 + index,
            prefix=prefix,
            users=SUM_USERS,
            calls=SUM_CALLS,
            expected_path=str(path),
        )
        for index, path in enumerate(paths)
    ]
    start_together(workers)
    print_timings("sums", [worker.finish() for worker in workers])
    types, apps = expected_sums(paths)
    mismatches: list[str] = []
    with open_fleet(url, **options) as fresh:
        global_cost = Decimal(0)
        global_count = 0
        for user, per_type in types.items():
            details = figures(fresh, user)
            usage = details["usage"]
            for usage_type, (units, cost, count) in per_type.items():
                want = {"units": units, "cost": round_half_up(cost), "count": count}
                if usage.get(usage_type) != want:
                    mismatches.append(f"{user} {usage_type}: {usage.get(usage_type)} != {want}")
            user_cost = sum((entry[1] for entry in per_type.values()), Decimal(0))
            global_cost += user_cost
            global_count += sum(entry[2] for entry in per_type.values())
            if usage_total(usage) != round_half_up(user_cost):
                mismatches.append(f"{user} total: {usage['total']} != {round_half_up(user_cost)}")
            for app, (cost, count) in apps[user].items():
                record = fresh.get_actor_app_usage(Actor(user), app)
                want_app = {"total": round_half_up(cost), "count": count}
                if dict(record) != want_app:
                    mismatches.append(f"{user} app {app}: {record} != {want_app}")
            if len(mismatches) > 20:
                break
        assert not mismatches, "\n".join(mismatches)
        if check_global:
            report: Any = fresh.get_global_usage()
            assert usage_total(report) == usage_total(baseline) + round_half_up(global_cost), report
            for usage_type in SUM_TYPES:
                units = sum(per_type.get(usage_type, [0])[0] for per_type in types.values())
                units += baseline.get(usage_type, {"units": 0})["units"]
                assert report[usage_type]["units"] == units, (usage_type, report[usage_type])


def usage_total(usage: dict[str, Any]) -> int:
    """`usage["total"]`, whether it is a number or a record with a cost."""
    total = usage["total"]
    if isinstance(total, dict):
        return int(total["cost"] if "cost" in total else total["total"])
    return int(total)


@pytest.mark.timeout(1200 if LONG else 180)
def test_many_workers_sum_exactly(spawn: Spawn, fleet_url: str, tmp_path: Path) -> None:
    run_sums(spawn, fleet_url, None, tmp_path, check_global=True)


@pytest.mark.timeout(1200 if LONG else 180)
def test_many_workers_sum_exactly_on_a_cluster(
    spawn: Spawn, redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    run_sums(spawn, redis_cluster.url, "redis-cluster", tmp_path, check_global=False)


# ---------------------------------------------------------------------------------------------
# 4. A worker SIGKILLed under load.

LEASE_TTL = 2.0
VICTIM_USERS = 50


@pytest.mark.timeout(180)
def test_a_killed_worker_loses_at_most_its_unsynced_usage_and_its_lease_expires(
    spawn: Spawn, fleet_url: str, tmp_path: Path
) -> None:
    prefix = unique_prefix("kill")
    lease_user = f"{prefix}budget"
    allowance = 1_000_000 * COST  # never runs out: the victim spends about one call in 20
    attempts_path = tmp_path / "attempts"
    attempts_path.write_bytes(bytes(8 * (VICTIM_USERS + 1)))
    victim = spawn(
        "victim",
        mode="victim",
        url=fleet_url,
        prefix=f"{prefix}victim-",
        users=VICTIM_USERS,
        lease_user=lease_user,
        lease_every=20,
        cost=COST,
        allowance=allowance,
        lease_ttl=LEASE_TTL,
        flush_every=2_000,
        attempts_path=str(attempts_path),
    )
    others = [
        spawn(f"steady-{index}", mode="steady", url=fleet_url, prefix=f"{prefix}steady{index}-", users=20)
        for index in range(2)
    ]
    start_together([victim, *others])
    for _ in range(3):
        victim.expect("flushed")
    time.sleep(0.15)  # between two flushes, with syncs in between
    victim.kill()
    killed_at = time.monotonic()
    # Within its lease_ttl, the dead worker's lease still holds part of the budget.
    with open_fleet(fleet_url, policies=budget_policies(allowance)) as early:
        held_back = allowance - units_of(early, lease_user, "fleet:call") * COST
        early_all = early.try_increment_usage(Actor(lease_user), "fleet:call", 1, held_back)
        early_seconds = time.monotonic() - killed_at
    if early_seconds < LEASE_TTL - 3 * INTERVAL:
        assert early_all is None, "the dead worker's lease held nothing back right after the kill"
    flushes = [line for line in victim.drain() if line["event"] == "flushed"]
    lower: dict[str, int] = flushes[-1]["units"]
    raw = attempts_path.read_bytes()
    names = [*(f"{prefix}victim-{index}" for index in range(VICTIM_USERS)), lease_user]
    upper = {name: int.from_bytes(raw[8 * slot : 8 * slot + 8], "little") for slot, name in enumerate(names)}
    time.sleep(0.5)
    for worker in others:
        worker.send("stop")
    reports = [worker.finish() for worker in others]
    for report in reports:
        assert report["errors"] == []
    # The lease was renewed at most one round before the kill, and never since.
    time.sleep(max(0.0, killed_at + LEASE_TTL + 3 * INTERVAL - time.monotonic()))
    with open_fleet(fleet_url, policies=budget_policies(allowance)) as fresh:
        for report in reports:
            for user, units in report["units"].items():
                assert units_of(fresh, user, "fleet:int") == units, user
        lost = 0
        for name in names[:-1]:
            saved = units_of(fresh, name, "fleet:int")
            assert lower[name] <= saved <= upper[name], (name, lower[name], saved, upper[name])
            lost += upper[name] - saved
        spent = units_of(fresh, lease_user, "fleet:call")
        assert lower[lease_user] <= spent <= upper[lease_user], (lower[lease_user], spent, upper[lease_user])
        # The whole rest of the budget in one call: refused if any of it were still leased.
        rest = allowance - spent * COST
        assert fresh.try_increment_usage(Actor(lease_user), "fleet:call", 1, rest) is not None
        assert fresh.try_increment_usage(Actor(lease_user), "fleet:call", 1, 1) is None
        assert fresh.get_remaining_usage(Actor(lease_user)) == 0
    print(
        f"the killed worker lost at most {lost} increments and {upper[lease_user] - spent} budget calls; "
        f"{len(flushes)} flushes; the early check ran {early_seconds:.2f} s after the kill"
    )


# ---------------------------------------------------------------------------------------------
# 5. Redis stopped and restarted while workers meter.

OUTAGE_SECONDS = 5.0 if LONG else 2.0


@pytest.mark.timeout(300)
def test_workers_meter_through_a_redis_restart_and_every_call_lands_once(
    spawn: Spawn, redis_server: RedisServer
) -> None:
    """The restarted server reloads its AOF (every write it confirmed) but not its script cache,
    and answers `-LOADING` while it reads the AOF: every write refused then is retried with its
    write id, never dropped nor applied twice."""
    prefix = unique_prefix("outage")
    workers = [
        spawn(f"steady-{index}", mode="steady", url=redis_server.url, prefix=f"{prefix}{index}-", users=50)
        for index in range(4)
    ]
    start_together(workers)
    time.sleep(1.0)
    redis_server.stop()
    time.sleep(OUTAGE_SECONDS)
    redis_server.start()
    time.sleep(1.0)
    for worker in workers:
        worker.send("stop")
    reports = [worker.finish() for worker in workers]
    total_units = 0
    wrong: list[str] = []
    with open_fleet(redis_server.url) as fresh:
        for worker, report in zip(workers, reports, strict=True):
            assert report["errors"] == [], report["errors"]
            kinds = {alarm["kind"] for alarm in report["alarms"]}
            assert "store_error" in kinds, f"{worker.name} saw no store_error alarm: {report['alarms']}"
            for user, units in report["units"].items():
                saved = units_of(fresh, user, "fleet:int")
                if saved != units:
                    wrong.append(f"{user}: {saved} in Redis, {units} recorded")
                total_units += units
        saved_total = fresh.get_global_usage()["fleet:int"]["units"]
    messages = sorted({alarm["message"] for report in reports for alarm in report["alarms"]})
    assert not wrong, f"{len(wrong)} users wrong:\n" + "\n".join([*wrong[:20], *messages])
    assert saved_total == total_units
    print(f"{total_units} increments metered through a {OUTAGE_SECONDS} s outage")


# ---------------------------------------------------------------------------------------------
# 6. try_increment_usage while Redis is down.


@pytest.mark.timeout(120)
def test_offline_try_increment_refuses_by_default(redis_server: RedisServer) -> None:
    user = unique_prefix("offline") + "u"
    actor = Actor(user)
    allowance = 1_000 * COST
    with open_fleet(redis_server.url, policies=budget_policies(allowance)) as service:
        alarms: list[AlarmEvent] = []
        service.events.on(ALARM, alarms.append)
        for _ in range(10):
            assert service.try_increment_usage(actor, "fleet:call", 1, COST) is not None
        service.flush()
        redis_server.stop()
        time.sleep(10 * INTERVAL)
        assert [service.try_increment_usage(actor, "fleet:call", 1, COST) for _ in range(20)] == [None] * 20
        assert service.increment_usage(actor, "fleet:int", 1) > 0  # recording goes on
        wait_until(lambda: any(alarm.kind == "store_error" for alarm in alarms), 5.0, 0.05)
        redis_server.start()
        wait_until(lambda: service.try_increment_usage(actor, "fleet:call", 1, COST) is not None, 10.0, 0.05)
        service.flush()
    with open_fleet(redis_server.url, policies=budget_policies(allowance)) as fresh:
        assert units_of(fresh, user, "fleet:call") == 11
        assert units_of(fresh, user, "fleet:int") == 1


@pytest.mark.timeout(120)
def test_offline_spending_of_leases_stays_within_them(redis_server: RedisServer) -> None:
    user = unique_prefix("leases") + "u"
    actor = Actor(user)
    budget_calls = 100
    allowance = budget_calls * COST
    options: dict[str, Any] = {
        "policies": budget_policies(allowance),
        "offline_spending": "leases",
        "lease_ttl": 60.0,  # longer than the outage: the leases stay valid
    }
    a = open_fleet(redis_server.url, **options)
    b = open_fleet(redis_server.url, **options)
    try:
        for _ in range(5):
            for service in (a, b):
                assert service.try_increment_usage(actor, "fleet:call", 1, COST) is not None
        a.flush()
        b.flush()
        redis_server.stop()
        time.sleep(10 * INTERVAL)
        offline = {name: spend_until_refused(service, user) for name, service in (("a", a), ("b", b))}
        assert sum(offline.values()) > 0, "no lease was spent while Redis was down"
        assert 10 + sum(offline.values()) <= budget_calls, offline
        # Once refused, still refused: a lease is never spent twice.
        assert a.try_increment_usage(actor, "fleet:call", 1, COST) is None
        redis_server.start()
        a.close()
        b.close()
    finally:
        a.close()
        b.close()
    with open_fleet(redis_server.url, policies=budget_policies(allowance)) as fresh:
        spent = units_of(fresh, user, "fleet:call")
        assert spent == 10 + sum(offline.values())
        assert spent + spend_until_refused(fresh, user) == budget_calls


# ---------------------------------------------------------------------------------------------
# 7. Redis unreachable at open.


@pytest.mark.timeout(60)
def test_nothing_listening_is_store_unavailable_at_once() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as raised:
        open_fleet(url)
    elapsed = time.monotonic() - started
    assert isinstance(raised.value, StoreError)
    assert elapsed < 2.0, f"{elapsed:.2f} s to notice a refused connection"
    assert url.split("/")[2] in str(raised.value)


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_is_store_unavailable_within_the_connect_timeout() -> None:
    """A listener on loopback that takes the connection and never says a word (a hung host; the
    tests send nothing beyond this machine)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            open_fleet(f"redis://127.0.0.1:{listener.getsockname()[1]}/1", connect_timeout=0.5)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert elapsed < 3.0, f"{elapsed:.2f} s with connect_timeout=0.5"


# ---------------------------------------------------------------------------------------------
# 8. Plans and purchased credit across workers.


@pytest.mark.timeout(120)
def test_credit_and_plan_changes_reach_the_other_workers(fleet_url: str) -> None:
    user = unique_prefix("plans") + "u"
    actor = Actor(user)
    plans = {user: "basic"}
    lookups: list[str] = []
    policies = [Policy("basic", 10 * COST), Policy("pro", 1_000 * COST)]

    def subscription(event: GetUserSubscriptionEvent) -> None:
        if event.actor.user_id == user:
            lookups.append(plans[user])
            event.user_subscription_id = plans[user]

    a = open_fleet(fleet_url, policies=policies, subscription_ttl=float("inf"))
    b = open_fleet(fleet_url, policies=policies, subscription_ttl=float("inf"))
    try:
        a.events.on(GET_USER_SUBSCRIPTION, subscription)
        b.events.on(GET_USER_SUBSCRIPTION, subscription)
        b.increment_usage(actor, "fleet:call", 1, COST)
        assert b.get_remaining_usage(actor) == 9 * COST
        b.flush()
        a.flush()
        a.update_addon_credit(user, 500 * COST)
        took = wait_until(lambda: b.get_remaining_usage(actor) == 509 * COST, 5.0)
        assert took <= 2 * INTERVAL + 0.5, f"the credit took {took:.2f} s to reach the other worker"
        b_lookups = len(lookups)
        plans[user] = "pro"
        a.invalidate_subscription(user)
        took = wait_until(lambda: b.get_actor_subscription(actor).id == "pro", 5.0)
        assert took <= 2 * INTERVAL + 0.5, f"the invalidation took {took:.2f} s to reach the other worker"
        assert len(lookups) > b_lookups
        assert b.get_remaining_usage(actor) == 999 * COST + 500 * COST
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# 9. Bad options.


def test_a_redis_url_with_an_embedded_backend_is_a_value_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for backend in ("sled", "redb"):
        with pytest.raises(ValueError):
            MeteringService(fleet_cost_map(), store=url, store_backend=backend)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_with_a_redis_backend_is_a_value_error(tmp_path: Path) -> None:
    for backend in ("redis", "redis-cluster"):
        with pytest.raises(ValueError):
            MeteringService(fleet_cost_map(), store=tmp_path / "store", store_backend=backend)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("seconds", [0, 0.0, -1, -0.5, float("nan")])
def test_a_lease_ttl_that_is_not_positive_is_a_value_error(seconds: float) -> None:
    with pytest.raises(ValueError):
        MeteringService(fleet_cost_map(), store=f"redis://127.0.0.1:{free_port()}/0", lease_ttl=seconds)


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_a_connect_timeout_that_is_not_positive_is_a_value_error(seconds: float) -> None:
    with pytest.raises(ValueError):
        MeteringService(fleet_cost_map(), store=f"redis://127.0.0.1:{free_port()}/0", connect_timeout=seconds)


def test_an_unknown_offline_spending_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        MeteringService(
            fleet_cost_map(),
            store=f"redis://127.0.0.1:{free_port()}/0",
            offline_spending="x",  # type: ignore[arg-type]
        )


def test_fleet_prices_are_what_the_tests_assume() -> None:
    assert fleet_cost_map()["fleet:frac"] == Decimal("31.25")
    assert set(FLEET_PRICES) >= set(SUM_TYPES)
    assert NO_APP == "os-global"
