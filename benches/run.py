"""The benchmark suite of usagemeter's Python API: ``make bench`` (release build).

Every benchmark first runs its workload on the candidate and on the pure-Python reference
(``reference.py``) and asserts identical results (every value returned, every actor's month
details and budget, the global aggregate, the alarms), and only then times it. Candidates run side
by side in the same rounds, interleaved (the order rotates each round), and each figure is the
median of the rounds: this machine is shared and noisy, so only ratios measured together mean
anything. Records are warm: the correctness pass has created every record the timed passes touch.

Candidates:
- ``reference``: ``reference.ReferenceMeter``, dicts + one ``threading.Lock``, exact int money.
- ``floor``: ``service._noop_increment_usage(actor, usage_type, amount)``, a native method that
  takes the same arguments and does nothing: the cost of calling into Rust at all.
- ``usagemeter``: ``increment_usage``, ``try_increment_usage``, ``has_enough_credits_for`` and
  ``batch_increment_usages`` (per item, batches of 100), from 1 thread and from 2 threads (total
  throughput of both); and ``meter.add``, the pre-resolved handle of ``service.meter``.
- ``sqlite`` and ``redis`` (``alternatives.py``): the same records, exact, per call and batched.
Plus peak RSS per (actor, month, usage type) record, measured in a fresh process.

``--write-results`` writes ``benches/RESULTS.md``, keeping its ``<!-- analysis -->``,
``<!-- rust -->``, ``<!-- store -->``, ``<!-- overuse -->`` and ``<!-- abi3 -->`` sections (written
by hand from profiles, the criterion bench, ``make bench-store``, ``make bench-overuse`` and
``benches/compare_builds.py``), its ``<!-- asgi -->``, ``<!-- aio -->``, ``<!-- idempotency -->`` and
``<!-- holds -->`` sections (``benches/asgi.py``, ``benches/aio.py``, ``benches/idempotency.py``,
``benches/holds.py``) and its ``<!-- fleet -->`` section (written by ``benches/fleet.py
--write-results``, which ``make bench`` runs next).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import usagemeter
from alternatives import RedisMeter, RedisServer, SqliteMeter, redis_unavailable, scratch_directory
from reference import RefActor, ReferenceMeter
from usagemeter import ALARM, Actor, CostMap, MeteringService, Policy
from workload import Call, Workload, WorkloadConfig, build_workload

BENCHES = Path(__file__).resolve().parent
RESULTS = BENCHES / "RESULTS.md"
T = TypeVar("T")

# Targets of issue 4, as ratios measured in one run.
TARGET_VS_REFERENCE = 5.0
TARGET_VS_FLOOR = 2.0
TARGET_BATCH_VS_REFERENCE = 20.0
TARGET_BYTES_PER_RECORD = 200
# "Orders of magnitude ahead" of the databases, per call: read as at least two (100x).
TARGET_VS_DATABASES = 100.0

# The floor's pass is ~15 ms of 200,000 calls: repeated so that each timing lasts as long as
# usagemeter's (see `Runner.repeat`).
FLOOR_REPEAT = 5
# In the databases benchmark the in-process candidates run their (short) pass this many times
# per timing, for the same reason; the databases run it once (it takes seconds).
IN_PROCESS_REPEAT = 10


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Candidates and timing


def call_loop(fn: Callable[[T, str, int], object], calls: Sequence[tuple[T, str, int]]) -> None:
    """The timed loop of the single-usage operations (the same for every candidate)."""
    for actor, usage_type, amount in calls:
        fn(actor, usage_type, amount)


def batch_loop(fn: Callable[[T, list[tuple[str, int]]], object], batches: Sequence[tuple[T, Any]]) -> None:
    """The timed loop of the batches."""
    for actor, items in batches:
        fn(actor, items)


def meter_loop(adds: Sequence[tuple[Callable[[int], object], int]]) -> None:
    """The timed loop of pre-resolved meter handles (``meter.add(amount)``)."""
    for add, amount in adds:
        add(amount)


@dataclass(eq=False)
class Runner:
    """One candidate of one benchmark: runs a pass (split over threads) and times it."""

    candidate: str
    threads: int
    ops: int
    """Operations in one pass (calls, or batch items)."""
    parts: list[Callable[[], None]]
    """One callable per thread, together one pass."""
    repeat: int = 1
    """Passes per timing: a fast candidate that changes nothing (the floor) repeats its pass, so
    that every timing lasts long enough (tens of ms) not to be one scheduler hiccup."""
    ns_per_op: list[float] = field(default_factory=list)
    """Wall time per operation, one per round."""
    cpu_ns_per_op: list[float] = field(default_factory=list)
    """CPU time of the benchmark's threads per operation, one per round: unlike wall time, it
    does not count time the scheduler gave to other processes of this shared machine."""

    def run(self) -> None:
        """Run ``repeat`` passes; record their wall and CPU time per operation."""
        parts = self.parts
        if self.repeat > 1:
            parts = [_repeated(part, self.repeat) for part in self.parts]
        gc.collect()
        gc.disable()
        try:
            if len(parts) == 1:
                cpu_started = time.thread_time_ns()
                started = time.perf_counter_ns()
                parts[0]()
                elapsed = time.perf_counter_ns() - started
                cpu = time.thread_time_ns() - cpu_started
            else:
                elapsed, cpu = _run_threads(parts)
        finally:
            gc.enable()
        self.ns_per_op.append(elapsed / (self.ops * self.repeat))
        self.cpu_ns_per_op.append(cpu / (self.ops * self.repeat))


def _repeated(part: Callable[[], None], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            part()

    return run


def _run_threads(parts: list[Callable[[], None]]) -> tuple[int, int]:
    """Wall time, and CPU time summed over the threads, of running ``parts`` in as many threads
    started together."""
    barrier = threading.Barrier(len(parts) + 1)
    errors: list[BaseException] = []
    cpu_times: list[int] = []

    def work(part: Callable[[], None]) -> None:
        barrier.wait()
        started = time.thread_time_ns()
        try:
            part()
        except BaseException as error:
            errors.append(error)
        cpu_times.append(time.thread_time_ns() - started)

    threads = [threading.Thread(target=work, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter_ns()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter_ns() - started
    if errors:
        raise errors[0]
    return elapsed, sum(cpu_times)


def interleave(runners: list[Runner], rounds: int) -> None:
    """Run every runner once per round, rotating the order so none always runs first."""
    for round_index in range(rounds):
        shift = round_index % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            runner.run()


@dataclass(frozen=True)
class Figure:
    """A median over the rounds of one candidate of one benchmark."""

    benchmark: str
    candidate: str
    threads: int
    ns_per_op: float
    cpu_ns_per_op: float
    spread: float
    """(max - min) / median of the rounds."""
    rounds: int

    @property
    def ops_per_second(self) -> float:
        """Throughput."""
        return 1e9 / self.ns_per_op


def figures_of(benchmark: str, runners: list[Runner]) -> list[Figure]:
    """The medians of ``runners``."""
    result = []
    for runner in runners:
        median = statistics.median(runner.ns_per_op)
        spread = (max(runner.ns_per_op) - min(runner.ns_per_op)) / median
        cpu = statistics.median(runner.cpu_ns_per_op)
        result.append(
            Figure(benchmark, runner.candidate, runner.threads, median, cpu, spread, len(runner.ns_per_op))
        )
    return result


# --------------------------------------------------------------------------------------------
# Setup and correctness


@dataclass
class Setup:
    """What every benchmark builds its candidates from."""

    workload: Workload
    cost_map: CostMap
    native_actors: list[Actor]
    reference_actors: list[RefActor]


def new_service(setup: Setup) -> tuple[MeteringService, list[object]]:
    """A usagemeter service configured like the reference, with purchased credits granted.

    Every actor has no email, so its plan is ``temp_free``, which the policy below redefines as
    the workload's allowance: every user gets the same allowance, as in the reference. The plan
    cache lives an hour so plan resolution (Python event listeners, a slow path outside this
    benchmark) runs once per user, not again in the middle of a run.
    """
    config = setup.workload.config
    service = MeteringService(
        setup.cost_map,
        policies=[Policy("temp_free", config.monthly_allowance)],
        subscription_ttl=3600,
    )
    alarms: list[object] = []
    service.events.on(ALARM, alarms.append)
    for user_id, credit in setup.workload.credits:
        service.update_addon_credit(user_id, credit)
    return service, alarms


def new_reference(setup: Setup) -> ReferenceMeter:
    """A reference meter with the workload's allowance and purchased credits."""
    reference = ReferenceMeter(setup.workload.prices, setup.workload.config.monthly_allowance)
    for user_id, credit in setup.workload.credits:
        reference.update_addon_credit(user_id, credit)
    return reference


def assert_same_state(
    what: str,
    setup: Setup,
    reference: ReferenceMeter,
    service: MeteringService,
    alarms: list[object] | None = None,
) -> None:
    """Every actor's month details and budget, and the global aggregate, agree exactly."""
    for native, pure in zip(setup.native_actors, setup.reference_actors, strict=True):
        got = service.get_actor_current_month_usage_details(native)
        expected = reference.get_actor_current_month_usage_details(pure)
        assert got == expected, f"{what}: usage of {native!r} differs:\n{got}\n!=\n{expected}"
        got_budget = service.get_actor_budget(native)
        expected_budget = reference.get_actor_budget(pure)
        assert got_budget == expected_budget, (
            f"{what}: budget of {native!r}:\n{got_budget} != {expected_budget}"
        )
    got_global, expected_global = service.get_global_usage(), reference.get_global_usage()
    assert got_global == expected_global, f"{what}: global usage differs"
    if alarms is not None:
        assert len(alarms) == reference.alarms, f"{what}: {len(alarms)} alarms != {reference.alarms}"


def split_round_robin(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` dealt over ``parts`` lists: every thread hits the hot actors too."""
    return [list(items[start::parts]) for start in range(parts)]


def split_by_user(calls: Sequence[Call], setup: Setup, parts: int) -> list[list[int]]:
    """Indexes of ``calls``, each user's calls in one part (in order), parts balanced by count.

    ``try_increment_usage`` decides each call from the user's earlier calls, so a user's calls
    must keep their order for the result to be comparable with the reference.
    """
    per_user = Counter(setup.workload.actor_keys[call.actor][0] for call in calls)
    loads = [0] * parts
    part_of: dict[str, int] = {}
    for user, count in per_user.most_common():
        lightest = loads.index(min(loads))
        part_of[user] = lightest
        loads[lightest] += count
    indexes: list[list[int]] = [[] for _ in range(parts)]
    for index, call in enumerate(calls):
        indexes[part_of[setup.workload.actor_keys[call.actor][0]]].append(index)
    return indexes


# --------------------------------------------------------------------------------------------
# The benchmarks


def bench_single(setup: Setup, operation: str, rounds: int) -> list[Figure]:
    """``increment_usage``, ``try_increment_usage`` or ``has_enough_credits_for``, 1 and 2 threads."""
    workload = setup.workload
    reference = new_reference(setup)
    service, alarms = new_service(setup)
    native_calls = workload.call_args(setup.native_actors)
    pure_calls = workload.call_args(setup.reference_actors)
    if operation == "has_enough_credits_for":
        # Credit checks read budgets: spend first, so some users are out of budget.
        call_loop(reference.increment_usage, pure_calls)
        call_loop(service.increment_usage, native_calls)
    log(f"{operation}: correctness pass on the reference and on usagemeter")
    pure_fn = getattr(reference, operation)
    native_fn = getattr(service, operation)
    expected = [pure_fn(*args) for args in pure_calls]
    got = [native_fn(*args) for args in native_calls]
    assert got == expected, f"{operation}: returned values differ from the reference"
    floor = [service._noop_increment_usage(*args) for args in native_calls]
    assert floor == [call.amount for call in workload.calls], "the floor returned something else"
    assert_same_state(operation, setup, reference, service, alarms)
    outcome = ""
    if operation != "increment_usage":
        accepted = sum(1 for value in got if value is not None and value is not False)
        outcome = f" ({accepted:,} of {len(got):,} calls accepted)"
    log(f"{operation}: results identical{outcome}; timing {rounds} rounds")

    if operation == "try_increment_usage":
        parts = split_by_user(workload.calls, setup, 2)
        native_parts = [[native_calls[i] for i in part] for part in parts]
        pure_parts = [[pure_calls[i] for i in part] for part in parts]
    else:
        native_parts = split_round_robin(native_calls, 2)
        pure_parts = split_round_robin(pure_calls, 2)
    ops = len(native_calls)
    noop = service._noop_increment_usage

    def loop(fn: Callable[[Any, str, int], object], calls: list[Any]) -> Callable[[], None]:
        return lambda: call_loop(fn, calls)

    runners = [
        Runner("reference", 1, ops, [loop(pure_fn, pure_calls)]),
        Runner("floor", 1, ops, [loop(noop, native_calls)], repeat=FLOOR_REPEAT),
        Runner("usagemeter", 1, ops, [loop(native_fn, native_calls)]),
        Runner("reference", 2, ops, [loop(pure_fn, part) for part in pure_parts]),
        Runner("floor", 2, ops, [loop(noop, part) for part in native_parts], repeat=FLOOR_REPEAT),
        Runner("usagemeter", 2, ops, [loop(native_fn, part) for part in native_parts]),
    ]
    checks = [(reference, service)]
    if operation == "increment_usage":
        runners += meter_runners(setup, checks, ops)
    interleave(runners, rounds)
    if operation != "has_enough_credits_for":
        for checked_reference, checked_service in checks:
            assert_same_state(f"{operation} after timing", setup, checked_reference, checked_service)
        log(f"{operation}: results still identical after timing")
    return figures_of(operation, runners)


def meter_runners(
    setup: Setup, checks: list[tuple[ReferenceMeter, MeteringService]], ops: int
) -> list[Runner]:
    """``service.meter(actor, usage_type).add(amount)``, 1 and 2 threads.

    It gets its own service and its own reference, given the same passes, to check it against.
    """
    reference = new_reference(setup)
    service, alarms = new_service(setup)
    handles: dict[tuple[int, str], Callable[[int], object]] = {}
    adds = []
    for call in setup.workload.calls:
        key = (call.actor, call.usage_type)
        if key not in handles:
            handles[key] = service.meter(setup.native_actors[call.actor], call.usage_type).add
        adds.append((handles[key], call.amount))
    pure_calls = setup.workload.call_args(setup.reference_actors)
    expected = [reference.increment_usage(*args) for args in pure_calls]
    got = [add(amount) for add, amount in adds]
    assert got == expected, "meter.add returned other totals than the reference"
    assert_same_state("meter.add", setup, reference, service, alarms)
    log("increment_usage: meter.add results identical")
    checks.append((reference, service))

    def pure(calls: list[tuple[RefActor, str, int]]) -> Callable[[], None]:
        return lambda: call_loop(reference.increment_usage, calls)

    def native(part: list[tuple[Callable[[int], object], int]]) -> Callable[[], None]:
        return lambda: meter_loop(part)

    name = "reference (for meter.add)"
    return [
        Runner(name, 1, ops, [pure(pure_calls)]),
        Runner("usagemeter meter.add", 1, ops, [native(adds)]),
        Runner(name, 2, ops, [pure(part) for part in split_round_robin(pure_calls, 2)]),
        Runner("usagemeter meter.add", 2, ops, [native(part) for part in split_round_robin(adds, 2)]),
    ]


def bench_batch(setup: Setup, rounds: int) -> list[Figure]:
    """``batch_increment_usages`` per item, batches of ``batch_size``, 1 and 2 threads."""
    workload = setup.workload
    reference = new_reference(setup)
    service, alarms = new_service(setup)
    native_batches = workload.batch_args(setup.native_actors)
    pure_batches = workload.batch_args(setup.reference_actors)
    native_calls = workload.call_args(setup.native_actors)
    log("batch_increment_usages: correctness pass")
    expected = [reference.batch_increment_usages(*args) for args in pure_batches]
    got = [service.batch_increment_usages(*args) for args in native_batches]
    assert got == expected, "batch_increment_usages: returned totals differ from the reference"
    assert_same_state("batch_increment_usages", setup, reference, service, alarms)
    log(f"batch_increment_usages: results identical; timing {rounds} rounds")
    items = sum(len(batch) for _, batch in native_batches)
    noop = service._noop_increment_usage

    def batches(fn: Callable[[Any, list[tuple[str, int]]], object], part: list[Any]) -> Callable[[], None]:
        return lambda: batch_loop(fn, part)

    def calls(fn: Callable[[Any, str, int], object], part: list[Any]) -> Callable[[], None]:
        return lambda: call_loop(fn, part)

    runners = [
        Runner("reference", 1, items, [batches(reference.batch_increment_usages, pure_batches)]),
        Runner("floor (per call)", 1, len(native_calls), [calls(noop, native_calls)], repeat=FLOOR_REPEAT),
        Runner("usagemeter", 1, items, [batches(service.batch_increment_usages, native_batches)]),
        Runner(
            "reference",
            2,
            items,
            [batches(reference.batch_increment_usages, part) for part in split_round_robin(pure_batches, 2)],
        ),
        Runner(
            "floor (per call)",
            2,
            len(native_calls),
            [calls(noop, part) for part in split_round_robin(native_calls, 2)],
            repeat=FLOOR_REPEAT,
        ),
        Runner(
            "usagemeter",
            2,
            items,
            [batches(service.batch_increment_usages, part) for part in split_round_robin(native_batches, 2)],
        ),
    ]
    interleave(runners, rounds)
    assert_same_state("batch_increment_usages after timing", setup, reference, service)
    log("batch_increment_usages: results still identical after timing")
    return figures_of(f"batch_increment_usages (per item, batches of {workload.config.batch_size})", runners)


def bench_databases(
    setup: Setup, rounds: int, calls: int, sqlite: bool, redis: bool, notes: list[str]
) -> list[Figure]:
    """``increment_usage`` against SQLite and Redis keeping the same records, on the first
    ``calls`` calls of the workload (they are 100-1000x slower), with the reference, the floor and
    usagemeter timed in the same rounds on the same calls."""
    workload = setup.workload
    subset = workload.calls[:calls]
    pure_calls = workload.call_args(setup.reference_actors, subset)
    native_calls = workload.call_args(setup.native_actors, subset)
    reference = new_reference(setup)
    service, _ = new_service(setup)
    stores: list[tuple[str, Any, Callable[[], None] | None]] = []
    with scratch_directory() as directory, RedisServerIf(redis, notes) as server:
        prices = workload.prices
        allowance = workload.config.monthly_allowance
        if sqlite:
            for every in (1, 1000):
                meter = SqliteMeter(directory / f"meter-{every}.db", prices, allowance, commit_every=every)
                name = "sqlite, commit per call" if every == 1 else f"sqlite, commit per {every:,} calls"
                stores.append((name, meter, meter.flush if every > 1 else None))
        if server is not None:
            for database, pipeline in ((0, 1), (1, 100)):
                redis_meter = RedisMeter(server.port, database, prices, allowance, pipeline=pipeline)
                name = "redis, Lua per call" if pipeline == 1 else f"redis, Lua pipelined by {pipeline}"
                stores.append((name, redis_meter, redis_meter.flush if pipeline > 1 else None))
        for _, store, _ in stores:
            for user_id, credit in workload.credits:
                store.update_addon_credit(user_id, credit)
        log(f"databases: correctness pass ({len(subset):,} calls each)")
        expected = [reference.increment_usage(*args) for args in pure_calls]
        got = [service.increment_usage(*args) for args in native_calls]
        assert got == expected, "usagemeter returned other totals than the reference"
        for name, store, flush in stores:
            returned = [store.increment_usage(*args) for args in pure_calls]
            if flush is None:
                assert returned == expected, f"{name}: returned totals differ from the reference"
            else:
                flush()
        check_stores(setup, reference, stores, "after the correctness pass")
        log(f"databases: results identical; timing {rounds} rounds")
        # The timed reference and usagemeter repeat their pass; the stores are checked against a
        # reference given exactly the stores' passes.
        store_reference = new_reference(setup)
        call_loop(store_reference.increment_usage, pure_calls)
        count = len(subset)
        repeat = IN_PROCESS_REPEAT
        runners = [
            Runner("reference", 1, count, [lambda: call_loop(reference.increment_usage, pure_calls)], repeat),
            Runner(
                "floor", 1, count, [lambda: call_loop(service._noop_increment_usage, native_calls)], repeat
            ),
            Runner(
                "usagemeter", 1, count, [lambda: call_loop(service.increment_usage, native_calls)], repeat
            ),
        ]
        for name, store, flush in stores:
            # A batched candidate's pass includes sending/committing its last partial batch.
            fn = store.increment_usage

            def part(fn: Callable[..., object] = fn, flush: Callable[[], None] | None = flush) -> None:
                call_loop(fn, pure_calls)
                if flush is not None:
                    flush()

            runners.append(Runner(name, 1, len(subset), [part]))
        interleave(runners, rounds)
        for _ in range(rounds):
            call_loop(store_reference.increment_usage, pure_calls)
        check_stores(setup, store_reference, stores, "after timing")
        assert_same_state("usagemeter (databases subset) after timing", setup, reference, service)
        log("databases: results still identical after timing")
        for _, store, _ in stores:
            store.close()
    return figures_of("increment_usage vs databases", runners)


class RedisServerIf:
    """A ``RedisServer`` when Redis is wanted and available; otherwise None and a note why."""

    def __init__(self, wanted: bool, notes: list[str]) -> None:
        """Decide whether to start a server."""
        self._server: RedisServer | None = None
        reason = None if wanted else "skipped by --skip-redis"
        if wanted:
            reason = redis_unavailable()
        if reason is None:
            self._server = RedisServer()
        else:
            message = f"redis: not measured: {reason}"
            log(message)
            notes.append(message)

    def __enter__(self) -> RedisServer | None:
        """Start the server, if any."""
        if self._server is not None:
            self._server.start()
            log(f"redis: redis-server started on 127.0.0.1:{self._server.port}")
        return self._server

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server, if any."""
        if self._server is not None:
            self._server.stop()
            log("redis: redis-server stopped")


def check_stores(
    setup: Setup, reference: ReferenceMeter, stores: list[tuple[str, Any, Any]], when: str
) -> None:
    """Every user's records, pools and the global aggregate agree with the reference exactly."""
    users = reference.users()
    expected = {user: reference.user_view(user) for user in users}
    for name, store, _ in stores:
        if isinstance(store, RedisMeter):
            views = store.user_views(users)
        else:
            views = {user: store.user_view(user) for user in users}
        for user in users:
            assert views[user] == expected[user], f"{name} {when}: {user}: {views[user]} != {expected[user]}"
        assert store.global_usage() == reference.get_global_usage(), f"{name} {when}: global usage differs"


# --------------------------------------------------------------------------------------------
# Memory


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def rss_child(which: str, users: int, types: int) -> None:
    """In a fresh process: record ``users x types`` (actor, month, type) records; print JSON.

    Each user gets one batch of ``types`` items (its month record and its app record hold one
    counter per type each, as for any actor). The high-water mark is read before and after.
    """
    logging.getLogger("usagemeter").setLevel(logging.ERROR)
    cost_map = CostMap.default()
    config = WorkloadConfig()
    names = [name for name, price in sorted(cost_map.items()) if price > 0][:types]
    items = [(name, 1 + index) for index, name in enumerate(names)]
    width = len(str(users - 1))
    gc.collect()
    meter: MeteringService | ReferenceMeter
    make_actor: Callable[[str], Any]
    if which == "usagemeter":
        meter = MeteringService(
            cost_map, policies=[Policy("temp_free", config.monthly_allowance)], subscription_ttl=3600
        )
        make_actor = Actor
    else:
        meter = ReferenceMeter(cost_map.items(), config.monthly_allowance)
        make_actor = RefActor

    def record(user: str) -> None:
        actor: Any = make_actor(user)  # an Actor for usagemeter, a RefActor for the reference
        meter.batch_increment_usages(actor, items)

    def count() -> int:
        usage = meter.get_global_usage()
        return sum(int(counter["count"]) for name, counter in usage.items() if name != "total")

    record("warm-up")  # first-call allocations (plan cache, type registry) are not per record
    gc.collect()
    before_hwm, before_rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    started = time.perf_counter()
    for index in range(users):
        record(f"user-{index:0{width}d}")
    seconds = time.perf_counter() - started
    after_hwm, after_rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    assert count() == (users + 1) * types, "not every record was recorded"
    print(
        json.dumps(
            {
                "records": users * types,
                "before_hwm_kb": before_hwm,
                "after_hwm_kb": after_hwm,
                "before_rss_kb": before_rss,
                "after_rss_kb": after_rss,
                "seconds": seconds,
            }
        )
    )


@dataclass(frozen=True)
class MemoryFigure:
    """Peak RSS growth per record of one candidate."""

    candidate: str
    records: int
    peak_bytes_per_record: float
    rss_bytes_per_record: float
    seconds: float


def bench_memory(users: int, types: int) -> list[MemoryFigure]:
    """Peak RSS per record for usagemeter and for the reference, each in a fresh process."""
    figures = []
    for which in ("usagemeter", "reference"):
        log(f"memory: {users:,} users x {types} types in a fresh {which} process")
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rss-child",
                which,
                "--rss-users",
                str(users),
                "--rss-types",
                str(types),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        records = result["records"]
        figures.append(
            MemoryFigure(
                which,
                records,
                (result["after_hwm_kb"] - result["before_hwm_kb"]) * 1024 / records,
                (result["after_rss_kb"] - result["before_rss_kb"]) * 1024 / records,
                result["seconds"],
            )
        )
    return figures


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    """Everything measured in one run."""

    config: WorkloadConfig
    rounds: int
    database_calls: int
    figures: list[Figure] = field(default_factory=list)
    memory: list[MemoryFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    seconds: float = 0.0

    def find(self, benchmark: str, candidate: str, threads: int = 1) -> Figure | None:
        """The figure of one candidate, if measured."""
        for figure in self.figures:
            if figure.benchmark == benchmark and figure.candidate == candidate and figure.threads == threads:
                return figure
        return None

    def baseline(self, figure: Figure, candidate: str) -> Figure | None:
        """The reference or floor measured in the same benchmark with as many threads."""
        if candidate == "floor" and figure.benchmark.startswith("batch_increment_usages"):
            candidate = "floor (per call)"
        if candidate == "reference" and figure.candidate == "usagemeter meter.add":
            candidate = "reference (for meter.add)"
        return self.find(figure.benchmark, candidate, figure.threads)


CANDIDATES = [
    "- `reference`: `benches/reference.py`, the same semantics in pure Python (dicts, one "
    "`threading.Lock`, exact int attocents).",
    "- `floor`: `service._noop_increment_usage(actor, usage_type, amount)`, a native method that "
    "takes the same arguments and does nothing: the cost of calling into Rust at all.",
    "- `usagemeter`: the release build's `MeteringService`, every actor on one policy with the same "
    "allowance as the reference. The `Actor` objects are made once and reused, as a server that "
    "keeps them would (each keeps its user's account after the first call).",
    "- `usagemeter meter.add`: the handle API, `service.meter(actor, usage_type).add(amount)`, one "
    "meter per (actor, usage type) pair of the workload, made before timing; checked against its "
    "own reference run (`reference (for meter.add)`).",
    "- `sqlite`: `benches/alternatives.py`, the same records as UPSERTs (money exact in two integer "
    "columns), the pools read and split in one `BEGIN IMMEDIATE` transaction; WAL, "
    "`synchronous=NORMAL`; a commit per call, or per 1,000 calls.",
    "- `redis`: the same records as one Lua script per call (HMGET/HSET of the pools, HINCRBY of "
    "every counter, money exact as two integer fields), on a `redis-server` started for the run "
    '(`--save "" --appendonly no`, loopback); per call, or pipelined by 100.',
]


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"


def figures_table(report: Report) -> list[str]:
    """The Markdown table of every timing, with ratios."""
    lines = [
        "| benchmark | candidate | threads | ops/s | ns/op | throughput vs reference | time vs floor "
        "| spread | CPU ns/op |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for figure in report.figures:
        reference = report.baseline(figure, "reference")
        floor = report.baseline(figure, "floor")
        vs_reference = None if reference is None else reference.ns_per_op / figure.ns_per_op
        vs_floor = None if floor is None else figure.ns_per_op / floor.ns_per_op
        lines.append(
            f"| {figure.benchmark} | {figure.candidate} | {figure.threads} | {figure.ops_per_second:,.0f} "
            f"| {figure.ns_per_op:,.0f} | {_fmt_ratio(vs_reference)} | {_fmt_ratio(vs_floor)} "
            f"| {figure.spread:.0%} | {figure.cpu_ns_per_op:,.0f} |"
        )
    return lines


def scaling_table(report: Report) -> list[str]:
    """Total throughput on 2 threads over 1 thread, per candidate."""
    lines = ["| benchmark | candidate | 2 threads / 1 thread |", "|---|---|---:|"]
    for figure in report.figures:
        if figure.threads != 2:
            continue
        single = report.find(figure.benchmark, figure.candidate, 1)
        if single is not None:
            lines.append(
                f"| {figure.benchmark} | {figure.candidate} | {single.ns_per_op / figure.ns_per_op:.2f}x |"
            )
    return lines


def _status_at_least(measured: float, target: float) -> str:
    if measured >= target:
        return "met"
    return f"missed: needs {target / measured:.2f}x more throughput to reach {target:g}x"


def _status_at_most(measured: float, target: float) -> str:
    if measured <= target:
        return "met"
    return f"missed: {measured / target:.2f}x over the target"


def _ratio_row(target: str, threads: int | str, wall: float, cpu: float | None, status: str) -> str:
    cpu_text = "-" if cpu is None else _fmt_ratio(cpu)
    return f"| {target} | {threads} | {_fmt_ratio(wall)} | {cpu_text} | {status} |"


def targets_table(report: Report) -> list[str]:
    """The issue's targets, measured, with met / missed by how much.

    The status is decided on wall time, as the issue asks; the same ratio from CPU time is shown
    beside it because it is far less disturbed by other processes on a shared machine.
    """
    lines = [
        "| target | threads | measured (wall time) | same ratio from CPU time | status |",
        "|---|---:|---:|---:|---|",
    ]
    for operation in ("increment_usage", "has_enough_credits_for", "try_increment_usage"):
        for threads in (1, 2):
            figure = report.find(operation, "usagemeter", threads)
            reference = report.find(operation, "reference", threads)
            floor = report.find(operation, "floor", threads)
            if figure is None or reference is None or floor is None:
                continue
            vs_reference = reference.ns_per_op / figure.ns_per_op
            vs_floor = figure.ns_per_op / floor.ns_per_op
            lines.append(
                _ratio_row(
                    f"`{operation}` >= {TARGET_VS_REFERENCE:g}x `reference` throughput",
                    threads,
                    vs_reference,
                    reference.cpu_ns_per_op / figure.cpu_ns_per_op,
                    _status_at_least(vs_reference, TARGET_VS_REFERENCE),
                )
            )
            lines.append(
                _ratio_row(
                    f"`{operation}` <= {TARGET_VS_FLOOR:g}x the time of `floor`",
                    threads,
                    vs_floor,
                    figure.cpu_ns_per_op / floor.cpu_ns_per_op,
                    _status_at_most(vs_floor, TARGET_VS_FLOOR),
                )
            )
    for threads in (1, 2):
        meter = report.find("increment_usage", "usagemeter meter.add", threads)
        floor = report.find("increment_usage", "floor", threads)
        if meter is not None and floor is not None:
            vs_floor = meter.ns_per_op / floor.ns_per_op
            lines.append(
                _ratio_row(
                    f"the handle API: `meter.add` <= {TARGET_VS_FLOOR:g}x the time of `floor` "
                    "(`increment_usage`'s)",
                    threads,
                    vs_floor,
                    meter.cpu_ns_per_op / floor.cpu_ns_per_op,
                    _status_at_most(vs_floor, TARGET_VS_FLOOR),
                )
            )
    for threads in (1, 2):
        batch = [f for f in report.figures if f.benchmark.startswith("batch") and f.threads == threads]
        figure = next((f for f in batch if f.candidate == "usagemeter"), None)
        reference = next((f for f in batch if f.candidate == "reference"), None)
        if figure is not None and reference is not None:
            ratio = reference.ns_per_op / figure.ns_per_op
            lines.append(
                _ratio_row(
                    f"`batch_increment_usages` >= {TARGET_BATCH_VS_REFERENCE:g}x `reference` per item "
                    f"(batches of {report.config.batch_size})",
                    threads,
                    ratio,
                    reference.cpu_ns_per_op / figure.cpu_ns_per_op,
                    _status_at_least(ratio, TARGET_BATCH_VS_REFERENCE),
                )
            )
    for item in report.memory:
        if item.candidate == "usagemeter":
            bytes_per_record = item.peak_bytes_per_record
            status = (
                "met"
                if bytes_per_record <= TARGET_BYTES_PER_RECORD
                else f"missed: {bytes_per_record / TARGET_BYTES_PER_RECORD:.3f}x the budget"
            )
            lines.append(
                f"| peak RSS <= {TARGET_BYTES_PER_RECORD} B per record at {item.records:,} records | - "
                f"| {bytes_per_record:,.0f} B | - | {status} |"
            )
    databases = "increment_usage vs databases"
    usagemeter_db = report.find(databases, "usagemeter")
    for figure in report.figures:
        if figure.benchmark != databases or usagemeter_db is None:
            continue
        if figure.candidate.startswith(("sqlite", "redis")):
            ratio = figure.ns_per_op / usagemeter_db.ns_per_op
            per_call = figure.candidate in ("sqlite, commit per call", "redis, Lua per call")
            status = (
                _status_at_least(ratio, TARGET_VS_DATABASES)
                if per_call
                else "for information (batched; the target is per call)"
            )
            # Redis does its work in another process: this process's CPU time says nothing there.
            cpu = (
                None
                if figure.candidate.startswith("redis")
                else figure.cpu_ns_per_op / usagemeter_db.cpu_ns_per_op
            )
            lines.append(
                _ratio_row(
                    f"orders of magnitude (>= {TARGET_VS_DATABASES:g}x) ahead of {figure.candidate}",
                    1,
                    ratio,
                    cpu,
                    status,
                )
            )
    lines.append(
        "| Rust core >= 20M increments/s on one core over 1,000,000 keys; hot key from all threads "
        "not slower than from one | - | see the Rust section | - | criterion (`cargo bench --bench core`) |"
    )
    return lines


def memory_table(report: Report) -> list[str]:
    """Peak RSS per record."""
    lines = [
        "| candidate | records | peak RSS growth per record | RSS growth per record | time to record |",
        "|---|---:|---:|---:|---:|",
    ]
    for item in report.memory:
        lines.append(
            f"| {item.candidate} | {item.records:,} | {item.peak_bytes_per_record:,.0f} B "
            f"| {item.rss_bytes_per_record:,.0f} B | {item.seconds:.1f} s |"
        )
    return lines


def machine_lines() -> list[str]:
    """What this ran on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    try:
        commit = subprocess.run(
            ["git", "-C", str(BENCHES), "describe", "--always", "--dirty"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- CPU: {cpu}, `nproc` = {cores}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} "
        f"({'GIL enabled' if gil else 'free-threaded, GIL disabled'}), {platform.platform()}",
        f"- usagemeter {usagemeter.__version__} (release build, `make bench-build`), "
        f"commit `{commit or 'unknown'}`",
    ]


def _preserved(existing: str, name: str, placeholder: str) -> str:
    match = re.search(rf"<!-- {name} -->.*?<!-- /{name} -->", existing, flags=re.DOTALL)
    if match is not None:
        return match.group(0)
    return f"<!-- {name} -->\n{placeholder}\n<!-- /{name} -->"


def render(report: Report, command: str, existing: str) -> str:
    """RESULTS.md: machine, command (Markdown), every figure with ratios, targets; keeps the
    analysis, rust and store sections of ``existing`` (written by hand)."""
    config = report.config
    workload_line = (
        f"{config.users:,} users ({config.app_share:.0%} through one of {config.apps} apps, "
        f"{config.second_app_share:.0%} through a second app too), Zipf-skewed (s = {config.actor_skew}); "
        f"{config.usage_types} priced usage types of `CostMap.default()` (Zipf s = {config.type_skew}); "
        f"{config.calls:,} calls per pass (batches: {config.calls // config.batch_size:,} x "
        f"{config.batch_size} items); allowance {config.monthly_allowance:,} µ¢ a month, "
        f"{config.credit_share:.0%} of users with purchased credit; seed {config.seed}"
    )
    lines = [
        "# Benchmark results",
        "",
        "<!-- Written by `benches/run.py --write-results` (`make bench`); the rust, store, overuse,",
        "     abi3, fleet, asgi, aio, idempotency and holds sections and the analysis are kept as they",
        "     are when the file is rewritten (those five are written by `benches/fleet.py`, `asgi.py`,",
        "     `aio.py`, `idempotency.py` and `holds.py`). -->",
        "",
        f"Run on {report.started:%Y-%m-%d %H:%M} UTC, {report.seconds / 60:.1f} minutes.",
        "",
        *machine_lines(),
        f"- Command: {command}",
        f"- Workload: {workload_line}",
        f"- Method: each benchmark first checks that every candidate returns and records exactly what "
        f"the reference does (then checks again after timing); then {report.rounds} interleaved rounds "
        f"(order rotated each round), warm records, GC off during a pass; figures are medians, "
        f"*spread* is (max - min) / median over the rounds. Ratios compare candidates of the same "
        f"benchmark and thread count, timed in the same rounds. Two threads share one pass: calls "
        f"dealt round robin (both threads hit the hot actors), except `try_increment_usage`, split "
        f"by user so that each user's accept/refuse decisions keep their order and can be checked. "
        f"The databases run on the first {report.database_calls:,} calls of the same workload.",
        "",
        "## Python API",
        "",
        *CANDIDATES,
        "",
        *figures_table(report),
        "",
        "*throughput vs reference*: ops/s over the reference's ops/s (higher is better). "
        "*time vs floor*: ns/op over the floor's ns/op, the native no-op with the same arguments "
        "(lower is better; the batch's floor is per call). *CPU ns/op*: the median CPU time of the "
        "benchmark's threads per operation (for Redis, only the client's side).",
        "",
        "### Two threads",
        "",
        *scaling_table(report),
        "",
        "## Memory",
        "",
        *memory_table(report),
        "",
        "A fresh process per candidate gives each of its users one batch of distinct usage types "
        "(usagemeter keeps each (actor, month, usage type) counter once, in its app's month; the "
        "reference keeps it in the user's month and in the app's), reading `VmHWM` and `VmRSS` from "
        "`/proc/self/status` before and after; the growth is divided by the number of records. "
        "Peak RSS moves by a few bytes per record from run to run.",
        "",
        "## Targets (issue 4)",
        "",
        *targets_table(report),
        "",
        "## Where the time goes",
        "",
        _preserved(existing, "analysis", "Not written yet: profile and explain the misses."),
        "",
    ]
    notes = list(report.notes)
    if getattr(sys, "_is_gil_enabled", lambda: True)():
        notes.append(
            "Free-threaded CPython (3.14t) could not be measured: no free-threaded interpreter is "
            "installable from the registries this machine reaches (Debian 12 packages none, PyPI "
            "ships no interpreters). `run.py` runs under any CPython >= 3.11 and records whether "
            "the GIL is enabled; with the GIL, two threads cannot run Python code at once, so the "
            "2-thread rows measure contention, not scaling."
        )
    lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    lines += [
        "## Rust core (criterion)",
        "",
        _preserved(existing, "rust", "Not measured yet: `cargo bench --bench core`."),
        "",
        "## Store",
        "",
        _preserved(existing, "store", "Not measured yet: `make bench-store`."),
        "",
        "## Overuse alarms",
        "",
        _preserved(existing, "overuse", "Not measured yet: `make bench-overuse`."),
        "",
        "## abi3 or one wheel per Python",
        "",
        _preserved(existing, "abi3", "Not measured yet: `benches/compare_builds.py`."),
        "",
        "## Fleet: workers sharing one ledger in Redis",
        "",
        _preserved(existing, "fleet", "Not measured yet: `make bench-fleet`."),
        "",
        "## ASGI gate: a trivial app with and without MeteringMiddleware",
        "",
        _preserved(existing, "asgi", "Not measured yet: `make bench-asgi`."),
        "",
        "## Async API: awaited calls vs sync calls",
        "",
        _preserved(existing, "aio", "Not measured yet: `make bench-aio`."),
        "",
        "## Idempotency keys: keyed vs unkeyed calls",
        "",
        _preserved(existing, "idempotency", "Not measured yet: `make bench-idempotency`."),
        "",
        "## Holds: reserve + settle vs try_increment_usage",
        "",
        _preserved(existing, "holds", "Not measured yet: `make bench-holds`."),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main() -> None:
    """Run the suite; print the tables; with ``--write-results``, write RESULTS.md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = WorkloadConfig()
    parser.add_argument("--users", type=int, default=defaults.users, help="distinct users (1,000-100,000)")
    parser.add_argument("--types", type=int, default=defaults.usage_types, help="usage types (100-1,100)")
    parser.add_argument("--calls", type=int, default=defaults.calls, help="calls (and batch items) per pass")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (medians)")
    parser.add_argument("--database-calls", type=int, default=10_000, help="calls per pass for sqlite/redis")
    parser.add_argument(
        "--rss-users", type=int, default=100_000, help="users x --rss-types records (0: skip)"
    )
    parser.add_argument("--rss-types", type=int, default=10)
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--only", choices=["single", "batch", "databases", "memory"], action="append")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the suite")
    parser.add_argument("--write-results", nargs="?", const=str(RESULTS), metavar="PATH")
    parser.add_argument("--rss-child", choices=["usagemeter", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.rss_users, args.rss_types)
        return
    if args.quick:
        args.users, args.calls, args.rounds = 2_000, 20_000, 3
        args.database_calls, args.rss_users = 1_000, 10_000
    # Alarms are emitted (they are part of a charge) but not printed.
    logging.getLogger("usagemeter").setLevel(logging.ERROR)

    started = time.perf_counter()
    config = dataclasses.replace(
        defaults,
        users=args.users,
        usage_types=args.types,
        calls=args.calls,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    cost_map = CostMap.default()
    workload = build_workload(config, cost_map.items())
    setup = Setup(
        workload,
        cost_map,
        [Actor(user, app) for user, app in workload.actor_keys],
        [RefActor(user, app) for user, app in workload.actor_keys],
    )
    log(
        f"workload: {len(workload.actor_keys):,} actors of {config.users:,} users, "
        f"{len(workload.usage_types)} usage types, {len(workload.calls):,} calls, "
        f"{len(workload.batches):,} batches"
    )
    report = Report(config, args.rounds, min(args.database_calls, config.calls))
    only = set(args.only or ["single", "batch", "databases", "memory"])
    if "single" in only:
        for operation in ("increment_usage", "try_increment_usage", "has_enough_credits_for"):
            report.figures += bench_single(setup, operation, args.rounds)
    if "batch" in only:
        report.figures += bench_batch(setup, args.rounds)
    if "databases" in only and not (args.skip_sqlite and args.skip_redis):
        report.figures += bench_databases(
            setup, args.rounds, report.database_calls, not args.skip_sqlite, not args.skip_redis, report.notes
        )
    if "memory" in only and args.rss_users > 0:
        report.memory = bench_memory(args.rss_users, args.rss_types)
    report.seconds = time.perf_counter() - started
    log(f"done in {report.seconds:.0f} s")

    print("\n".join(figures_table(report)))
    print()
    print("\n".join(scaling_table(report)))
    print()
    if report.memory:
        print("\n".join(memory_table(report)))
        print()
    print("\n".join(targets_table(report)))
    if args.write_results:
        path = Path(args.write_results)
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        command = "`" + " ".join(["python", "benches/run.py", *sys.argv[1:]]) + "`"
        if os.environ.get("MAKELEVEL"):
            command = f"`make bench` (which runs {command})"
        path.write_text(render(report, command, existing), encoding="utf-8")
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
