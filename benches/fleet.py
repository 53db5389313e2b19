"""Fleet figures: workers sharing one ledger in Redis, measured side by side in one run.

    python benches/fleet.py [--write-results]      # release build: `make bench-fleet`

Every service here is ``MeteringService(cost_map, store=..., snapshot_interval=1.0)`` with
``store`` None (memory only) or ``redis://127.0.0.1:PORT/DB``, a real ``redis-server`` started for
the run by the tests' ``RedisServer`` (``tests/redis_support.py``), without persistence (``--save ""
--appendonly no``, as the Redis rows of ``run.py``), on loopback. It measures:

1. ``increment_usage`` throughput of one process, ``store=None`` vs ``store="redis://..."``
   (target >= 0.8x), the final ``flush()`` timed separately;
2. the same calls through a naive reference: one Redis Lua call per increment (``EVALSHA`` of a
   script that ``HINCRBY``s units, cost and count of the user's usage type and the user's total,
   with the ``redis`` package), as a metering service without a local ledger would (target:
   usagemeter >= 100x faster);
3. the sync traffic (``service._sync_stats()`` deltas) per 1,000 increments, for 1,000 users and
   for 10 hot users, over a few seconds of calls at full speed (several sync rounds);
4. 4 worker processes racing ``increment_usage`` over the same users on the same Redis: total
   calls/s vs 1 process.

1 and 2 run in interleaved rounds (order rotated each round), 4 alternates 1 and 4 processes;
figures are medians (and best) of the rounds, ratios are taken between candidates of the same
run. Every figure is checked: the in-process totals against the calls' exact cost, the naive
reference's totals in Redis, and what a fresh worker loads from Redis after each ``flush()``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usagemeter import Actor, CostMap, MeteringService, Policy

BENCHES = Path(__file__).resolve().parent
RESULTS = BENCHES / "RESULTS.md"
sys.path.insert(0, str(BENCHES.parent / "tests"))
from redis_support import RedisServer  # noqa: E402  (a real redis-server; the module imports pytest)
from sections import write_section  # noqa: E402  (benches/, the script's directory)

TYPES = {f"fleet:model-{i}:tokens": price for i, price in enumerate((3, 5, 7, 11))}
COST_MAP = CostMap.from_dict(dict(TYPES))
# Far above what any user spends here: no overuse alarm, no plan change during the run.
ALLOWANCE = 10**15
INTERVAL = 1.0

TARGET_VS_MEMORY = 0.8
TARGET_VS_NAIVE = 100.0

# The naive service: one script call per increment, the user's month in one hash.
NAIVE_SCRIPT = """
local cost = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':units', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':cost', cost)
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':count', 1)
return redis.call('HINCRBY', KEYS[1], 'total', cost)
"""

Call = tuple[Actor, str, int]


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_calls(users: int, calls: int, seed: int) -> list[Call]:
    """``calls`` increments of random users and types (1-100 units); one Actor per user, reused."""
    rng = random.Random(seed)
    actors = [Actor(f"user-{i:05d}") for i in range(users)]
    names = list(TYPES)
    return [(rng.choice(actors), rng.choice(names), rng.randint(1, 100)) for _ in range(calls)]


def cost_of(calls: Sequence[Call]) -> int:
    """The exact µ¢ the calls charge."""
    return sum(amount * TYPES[usage_type] for _, usage_type, amount in calls)


def new_service(store: str | None, interval: float = INTERVAL) -> MeteringService:
    """Every user on one plan with a huge allowance; plans cached for the whole run."""
    return MeteringService(
        COST_MAP,
        policies=[Policy("temp_free", ALLOWANCE)],
        subscription_ttl=3600,
        store=store,
        snapshot_interval=interval,
    )


def measured_pass(service: MeteringService, calls: Sequence[Call]) -> tuple[float, float, float]:
    """``increment_usage`` of every call, GC off: seconds of wall time, of this thread's CPU time
    and of the process's CPU time (every thread: the sync thread's work during the pass too)."""
    increment = service.increment_usage
    gc.collect()
    gc.disable()
    try:
        thread, process = time.thread_time(), time.process_time()
        started = time.perf_counter()
        for actor, usage_type, amount in calls:
            increment(actor, usage_type, amount)
        wall = time.perf_counter() - started
        return wall, time.thread_time() - thread, time.process_time() - process
    finally:
        gc.enable()


def timed_pass(service: MeteringService, calls: Sequence[Call]) -> float:
    """Seconds for ``increment_usage`` of every call, GC off."""
    return measured_pass(service, calls)[0]


def timed_flush(service: MeteringService) -> float:
    started = time.perf_counter()
    service.flush()
    return time.perf_counter() - started


def fleet_total(url: str) -> int:
    """This month's total as a fresh worker loads it from Redis (closed at once)."""
    with new_service(url) as reader:
        total: int = reader.get_global_usage()["total"]
    return total


def stats_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after}


def resp_bytes(args: Sequence[str | int]) -> int:
    """Bytes of one command in RESP, as a client sends it."""
    size = len(f"*{len(args)}\r\n")
    for arg in args:
        encoded = str(arg).encode()
        size += len(f"${len(encoded)}\r\n") + len(encoded) + 2
    return size


class NaiveRedisMeter:
    """The reference of part 2: every increment is one ``EVALSHA`` round trip."""

    def __init__(self, port: int, db: int) -> None:
        import redis  # optional: only this reference needs it

        self.client: Any = redis.Redis(host="127.0.0.1", port=port, db=db)
        self.client.flushdb()
        self.sha: str = self.client.script_load(NAIVE_SCRIPT)

    def key(self, user_id: str) -> str:
        return f"naive:{time.strftime('%Y-%m', time.gmtime())}:{user_id}"

    def increment_usage(self, user_id: str, usage_type: str, amount: int) -> int:
        cost = amount * TYPES[usage_type]
        total: int = self.client.evalsha(self.sha, 1, self.key(user_id), usage_type, amount, cost)
        return total

    def command_bytes(self, user_id: str, usage_type: str, amount: int) -> int:
        cost = amount * TYPES[usage_type]
        return resp_bytes(["EVALSHA", self.sha, 1, self.key(user_id), usage_type, amount, cost])

    def total(self) -> int:
        return sum(int(self.client.hget(key, "total")) for key in self.client.scan_iter("naive:*"))


def naive_pass(naive: NaiveRedisMeter, calls: Sequence[tuple[str, str, int]]) -> float:
    increment = naive.increment_usage
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for user_id, usage_type, amount in calls:
            increment(user_id, usage_type, amount)
        return time.perf_counter() - started
    finally:
        gc.enable()


# --------------------------------------------------------------------------------------------
# 1 and 2: one process


@dataclass
class Samples:
    """Seconds per call of one candidate, one per round (and flush seconds for the Redis one)."""

    name: str
    calls: int
    per_call: list[float] = field(default_factory=list)
    flush: list[float] = field(default_factory=list)
    per_call_with_flush: list[float] = field(default_factory=list)
    thread_cpu: list[float] = field(default_factory=list)
    """CPU seconds per call of the calling thread."""
    process_cpu: list[float] = field(default_factory=list)
    """CPU seconds per call of the whole process (calling thread, sync thread) during the pass."""

    def add_pass(self, wall: float, thread: float, process: float) -> None:
        self.per_call.append(wall / self.calls)
        self.thread_cpu.append(thread / self.calls)
        self.process_cpu.append(process / self.calls)

    def rate(self, which: str = "per_call", best: bool = False) -> float:
        values: list[float] = getattr(self, which)
        return 1 / (min(values) if best else statistics.median(values))


def bench_throughput(
    server: RedisServer, users: int, calls: int, naive_calls: int, rounds: int, notes: list[str]
) -> dict[str, Samples]:
    """Rounds of: a pass on store=None, a pass on store=redis (+ its flush), the naive reference."""
    workload = make_calls(users, calls, seed=1)
    expected = cost_of(workload)
    url = f"redis://127.0.0.1:{server.port}/1"
    memory, shared = new_service(None), new_service(url)
    # The diagnostic: the same worker without a sync round during its passes (only the flush).
    quiet_url = f"redis://127.0.0.1:{server.port}/6"
    quiet = new_service(quiet_url, interval=3600)
    naive: NaiveRedisMeter | None = None
    try:
        naive = NaiveRedisMeter(server.port, 2)
    except ImportError:
        notes.append("the `redis` package is not installed in this venv: the naive reference was skipped")
    naive_workload = [(actor.user_id, t, n) for actor, t, n in workload[:naive_calls]]
    naive_expected = cost_of(workload[:naive_calls])

    # Warm: every account created, every plan resolved, then checked.
    log(f"throughput: warm pass ({calls:,} calls, {users:,} users) and checks")
    timed_pass(memory, workload)
    timed_pass(shared, workload)
    shared.flush()
    timed_pass(quiet, workload)
    quiet.flush()
    assert memory.get_global_usage()["total"] == expected, "store=None: wrong total"
    for service, where in ((shared, url), (quiet, quiet_url)):
        assert service.get_global_usage()["total"] == expected, "store=redis: wrong local total"
        assert fleet_total(where) == expected, "store=redis: Redis holds another total after flush()"
    if naive is not None:
        naive_pass(naive, naive_workload)
        assert naive.total() == naive_expected, "naive reference: wrong total in Redis"

    samples = {
        "memory": Samples("store=None", calls),
        "redis": Samples("store=redis", calls),
        "quiet": Samples("store=redis, interval 3600 s", calls),
        "naive": Samples("naive: one Lua call per increment", naive_calls),
    }

    def run_memory() -> None:
        samples["memory"].add_pass(*measured_pass(memory, workload))

    def run_on_redis(service: MeteringService, sample: Samples) -> None:
        seconds, thread, process = measured_pass(service, workload)
        flush = timed_flush(service)
        sample.add_pass(seconds, thread, process)
        sample.flush.append(flush)
        sample.per_call_with_flush.append((seconds + flush) / calls)

    def run_shared() -> None:
        run_on_redis(shared, samples["redis"])

    def run_quiet() -> None:
        run_on_redis(quiet, samples["quiet"])

    def run_naive() -> None:
        assert naive is not None
        samples["naive"].per_call.append(naive_pass(naive, naive_workload) / naive_calls)

    runners: list[Callable[[], None]] = [run_memory, run_shared, run_quiet]
    if naive is not None:
        runners.append(run_naive)
    log(f"throughput: {rounds} interleaved rounds")
    for index in range(rounds):
        shift = index % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            runner()
    passes = rounds + 1
    assert memory.get_global_usage()["total"] == passes * expected, "store=None: wrong total"
    for service, where in ((shared, url), (quiet, quiet_url)):
        assert service.get_global_usage()["total"] == passes * expected, "store=redis: wrong local total"
        assert fleet_total(where) == passes * expected, "store=redis: Redis holds another total"
    if naive is not None:
        assert naive.total() == passes * naive_expected, "naive reference: wrong total in Redis"
    memory.close()
    shared.close()
    quiet.close()
    return samples


# --------------------------------------------------------------------------------------------
# 3: traffic


@dataclass
class Traffic:
    label: str
    users: int
    calls: int
    seconds: float
    flush: float
    stats: dict[str, int]
    naive_bytes_per_call: float


def bench_traffic(server: RedisServer, db: int, users: int, seconds: float) -> Traffic:
    """Calls at full speed for ``seconds`` (passes of 100,000), then flush(): the stats' delta."""
    url = f"redis://127.0.0.1:{server.port}/{db}"
    workload = make_calls(users, 100_000, seed=2 + users)
    expected = cost_of(workload)
    with new_service(url) as service:
        log(f"traffic: {users:,} users, warm pass, then {seconds:g} s of calls")
        timed_pass(service, workload)
        service.flush()
        before = service._sync_stats()
        assert before is not None
        passes, elapsed = 0, 0.0
        while elapsed < seconds:
            elapsed += timed_pass(service, workload)
            passes += 1
        flush = timed_flush(service)
        after = service._sync_stats()
        assert after is not None
        assert service.get_global_usage()["total"] == (passes + 1) * expected
    assert fleet_total(url) == (passes + 1) * expected, "Redis holds another total after flush()"
    month = time.strftime("%Y-%m", time.gmtime())
    naive_bytes = statistics.fmean(
        resp_bytes(["EVALSHA", "0" * 40, 1, f"naive:{month}:{a.user_id}", t, n, n * TYPES[t]])
        for a, t, n in workload[:10_000]
    )
    label = f"{users:,} users x {len(TYPES)} types" + (" (hot)" if users <= 10 else "")
    return Traffic(
        label, users, passes * len(workload), elapsed, flush, stats_delta(after, before), naive_bytes
    )


# --------------------------------------------------------------------------------------------
# 4: processes


def worker(url: str | None, users: int, calls: int, seed: int) -> None:
    """One worker process: warm pass, "ready", wait for "go", timed pass, flush, JSON result.

    ``url`` None: a memory-only service, the control of how this machine runs that many processes.
    """
    logging.getLogger("usagemeter").setLevel(logging.ERROR)
    workload = make_calls(users, calls, seed)
    with new_service(url) as service:
        timed_pass(service, workload)
        service.flush()
        before = service._sync_stats() or {}
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        gc.collect()
        gc.disable()
        increment = service.increment_usage
        started = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
        for actor, usage_type, amount in workload:
            increment(actor, usage_type, amount)
        ended = time.monotonic()
        gc.enable()
        service.flush()
        flushed = time.monotonic()
        after = service._sync_stats() or {}
    print(
        json.dumps(
            {
                "calls": calls,
                "started": started,
                "ended": ended,
                "flushed": flushed,
                "charged": 2 * cost_of(workload),
                "stats": stats_delta(after, before),
            }
        ),
        flush=True,
    )


@dataclass
class Race:
    processes: int
    shared: bool
    """Workers on Redis, or memory-only (the control)."""
    calls_per_second: list[float] = field(default_factory=list)
    with_flush: list[float] = field(default_factory=list)
    conflicts: int = 0
    writes: int = 0


def race(
    server: RedisServer, db: int, processes: int, users: int, calls: int, seed: int, shared: bool
) -> dict[str, Any]:
    """``processes`` workers started together, on one empty database (``shared``: then checked
    against Redis) or memory-only."""
    url = f"redis://127.0.0.1:{server.port}/{db}" if shared else "none"
    server.command("-n", str(db), "FLUSHDB")
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, str(users), str(calls), str(seed + index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            assert line == "ready", f"a worker failed to start: {line!r}"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            assert child.stdout is not None
            results.append(json.loads(child.stdout.readline()))
            assert child.wait(timeout=120) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    total = sum(r["charged"] for r in results)
    if shared:
        assert fleet_total(url) == total, f"{processes} workers: Redis holds another total than they charged"
    first = min(r["started"] for r in results)
    count = sum(r["calls"] for r in results)
    return {
        "calls_per_second": count / (max(r["ended"] for r in results) - first),
        "with_flush": count / (max(r["flushed"] for r in results) - first),
        "conflicts": sum(r["stats"].get("conflicts", 0) for r in results),
        "writes": sum(r["stats"].get("writes", 0) for r in results),
    }


def bench_processes(
    server: RedisServer, users: int, calls: int, rounds: int, counts: Sequence[int]
) -> list[Race]:
    races = {(count, shared): Race(count, shared) for shared in (True, False) for count in counts}
    order = list(races)
    log(f"processes: {rounds} rounds of {', '.join(map(str, counts))} workers x {calls:,} calls")
    for index in range(rounds):
        shift = index % len(order)
        for count, shared in order[shift:] + order[:shift]:
            result = race(server, 3, count, users, calls, seed=100 * index, shared=shared)
            item = races[count, shared]
            item.calls_per_second.append(result["calls_per_second"])
            item.with_flush.append(result["with_flush"])
            item.conflicts += result["conflicts"]
            item.writes += result["writes"]
    return list(races.values())


# --------------------------------------------------------------------------------------------
# Report


def _status_at_least(ratio: float, target: float) -> str:
    return "met" if ratio >= target else f"missed ({ratio / target:.2f}x of the target)"


def render(
    samples: dict[str, Samples],
    traffic: list[Traffic],
    races: list[Race],
    args: argparse.Namespace,
    command: str,
    seconds: float,
    loads: tuple[str, str],
    notes: list[str],
) -> list[str]:
    from run import machine_lines  # the suite's machine note (run.py is a sibling script)

    memory, shared, naive, quiet = samples["memory"], samples["redis"], samples["naive"], samples["quiet"]
    lines = [
        "<!-- fleet -->",
        f"Written by `benches/fleet.py --write-results`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} "
        f"UTC, {seconds / 60:.1f} minutes.",
        "",
        *machine_lines(),
        f"- Command: {command}",
        f"- Load average (1, 5, 15 min) at start: {loads[0]}; at the end: {loads[1]}. The machine is "
        "shared with other builds and tests, and `redis-server` and each worker's sync thread run on "
        "the same 2 cores as the calls: only ratios measured in the same run mean anything.",
        f"- Redis: `redis-server` {redis_version()} started for the run (`tests/redis_support.py`), "
        '`--save "" --appendonly no`, loopback; usagemeter services with `snapshot_interval=1.0`.',
        f"- Workload: {args.users:,} users x {len(TYPES)} usage types (prices 3-11 µ¢ a unit), random "
        f"users, types and 1-100 units (seeded); {args.calls:,} calls per pass; the naive reference runs "
        f"the first {args.naive_calls:,} of them per pass. Accounts warm (one untimed pass first), GC "
        "off during a pass.",
        "",
        f"### One process ({args.rounds} interleaved rounds, order rotated)",
        "",
        "| candidate | calls per pass | calls/s, median | calls/s, best | vs store=None (median) | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    vs_memory = shared.rate() / memory.rate()
    lines.append(
        f"| `store=None` | {memory.calls:,} | {memory.rate():,.0f} "
        f"| {memory.rate(best=True):,.0f} | 1.00x | |"
    )
    lines.append(
        f'| `store="redis://..."`, calls only | {shared.calls:,} | {shared.rate():,.0f} '
        f"| {shared.rate(best=True):,.0f} | {vs_memory:.2f}x "
        f"| >= {TARGET_VS_MEMORY}x: {_status_at_least(vs_memory, TARGET_VS_MEMORY)} |"
    )
    with_flush = shared.rate("per_call_with_flush")
    lines.append(
        f'| `store="redis://..."`, calls + final `flush()` | {shared.calls:,} | {with_flush:,.0f} '
        f"| {shared.rate('per_call_with_flush', best=True):,.0f} | {with_flush / memory.rate():.2f}x | |"
    )
    lines.append(
        f'| diagnostic: `store="redis://..."`, `snapshot_interval=3600`, calls only | {quiet.calls:,} '
        f"| {quiet.rate():,.0f} | {quiet.rate(best=True):,.0f} | {quiet.rate() / memory.rate():.2f}x | |"
    )
    if naive.per_call:
        lines.append(
            f"| naive: one `EVALSHA` per increment | {naive.calls:,} | {naive.rate():,.0f} "
            f"| {naive.rate(best=True):,.0f} | {naive.rate() / memory.rate():.4f}x | |"
        )

    def cpu_row(label: str, sample: Samples) -> str:
        thread, process = statistics.median(sample.thread_cpu), statistics.median(sample.process_cpu)
        thread_ratio = statistics.median(memory.thread_cpu) / thread
        process_ratio = statistics.median(memory.process_cpu) / process
        return (
            f"| {label} | {thread * 1e9:,.0f} | {process * 1e9:,.0f} | {thread_ratio:.2f}x "
            f"| {process_ratio:.2f}x |"
        )

    lines += [
        "",
        "The same passes by CPU time (medians), which the machine's other jobs disturb less than wall "
        "time: the calling thread's alone, and the whole process's (the calling thread plus the sync "
        "thread's work during the pass).",
        "",
        "| candidate | calling thread CPU ns/call | process CPU ns/call | vs store=None, thread CPU "
        "| vs store=None, process CPU |",
        "|---|---:|---:|---:|---:|",
        cpu_row("`store=None`", memory),
        cpu_row('`store="redis://..."`', shared),
        cpu_row('diagnostic: `store="redis://..."`, `snapshot_interval=3600`', quiet),
        "",
        "The diagnostic row is the same worker with no sync round during its passes (only the final "
        "`flush()`, as for the others): the difference between it and the `snapshot_interval=1.0` "
        "row is what the background rounds during a pass cost the calls.",
    ]
    lines += [
        "",
        f"Final `flush()` after a pass of {shared.calls:,} calls (one sync round: {args.users:,} users' "
        "compare-and-set scripts in one pipeline, the feed): "
        f"median {statistics.median(shared.flush) * 1e3:,.1f} ms, "
        f"range {min(shared.flush) * 1e3:,.1f}-{max(shared.flush) * 1e3:,.1f} ms. It costs per user "
        "changed since the last round, not per call: spread over a pass, the longer the pass the less "
        "it weighs (the background rounds during a pass are in the calls-only figure).",
        "",
    ]
    if naive.per_call:
        ratio = shared.rate() / naive.rate()
        ratio_flush = with_flush / naive.rate()
        lines += [
            '| usagemeter (`store="redis://..."`) vs the naive reference, same rounds | ratio (median) '
            "| target |",
            "|---|---:|---|",
            f"| calls only | {ratio:,.0f}x "
            f"| >= {TARGET_VS_NAIVE:g}x: {_status_at_least(ratio, TARGET_VS_NAIVE)} |",
            f"| calls + final `flush()` | {ratio_flush:,.0f}x "
            f"| >= {TARGET_VS_NAIVE:g}x: {_status_at_least(ratio_flush, TARGET_VS_NAIVE)} |",
            "",
        ]
    lines += [
        "### Sync traffic per 1,000 increments",
        "",
        f"One worker making calls at full speed for about {args.traffic_seconds:g} s (passes of 100,000 "
        "calls, accounts warm), then `flush()`: the deltas of `service._sync_stats()`. "
        "`round_trips` counts every exchange with Redis (the server's `TIME`, the write pipeline, the "
        "feed's `XADD` and read); `bytes_sent` counts the write pipelines and the feed's `XADD` (not "
        "the small `TIME` and feed reads). The naive reference makes one round trip per increment; its "
        "bytes are the RESP size of its `EVALSHA` commands.",
        "",
        "| workload | calls | calls/s | sync rounds | writes | round trips | bytes sent | round trips "
        "/ 1,000 calls | bytes / 1,000 calls | naive: round trips / bytes per 1,000 calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for item in traffic:
        stats, per = item.stats, 1000 / item.calls
        lines.append(
            f"| {item.label} | {item.calls:,} | {item.calls / item.seconds:,.0f} | {stats['rounds']:,} "
            f"| {stats['writes']:,} | {stats['round_trips']:,} | {stats['bytes_sent']:,} "
            f"| {stats['round_trips'] * per:.3f} | {stats['bytes_sent'] * per:,.1f} "
            f"| 1,000 / {item.naive_bytes_per_call * 1000:,.0f} |"
        )
    lines += [
        "",
        "Traffic depends on the users changed per interval, not on the calls: per 1,000 calls it "
        "falls as the call rate rises.",
        "",
        f"### Worker processes racing on one Redis ({args.process_rounds} rounds, alternated)",
        "",
        f'Each worker is a fresh process (`store="redis://..."`, the same {args.users:,} users, its '
        f"own random order) that warms up, then all start together on a signal and make "
        f"{args.process_calls:,} calls each, then `flush()`. Total calls/s = all calls / (last end - "
        "first start), on one clock (`CLOCK_MONOTONIC`). After each race a fresh worker checks that "
        "Redis holds exactly what the workers charged.",
        "",
        "| store | workers | total calls/s, median | best | vs 1 process (median) "
        "| vs `store=None`, same workers (median) | incl. final `flush()`, median "
        "| writes (all rounds) | CAS conflicts (all rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def median_of(processes: int, shared: bool) -> float:
        item = next(r for r in races if r.processes == processes and r.shared == shared)
        return statistics.median(item.calls_per_second)

    for item in sorted(races, key=lambda r: (not r.shared, r.processes)):
        median = statistics.median(item.calls_per_second)
        vs_memory = f"{median / median_of(item.processes, False):.2f}x" if item.shared else "1.00x"
        lines.append(
            f"| {'`redis://...`' if item.shared else '`None` (control)'} | {item.processes} "
            f"| {median:,.0f} | {max(item.calls_per_second):,.0f} "
            f"| {median / median_of(1, item.shared):.2f}x | {vs_memory} "
            f"| {statistics.median(item.with_flush):,.0f} | {item.writes:,} | {item.conflicts:,} |"
        )
    lines += [
        "",
        f"`nproc` = {os.cpu_count()}: {max(r.processes for r in races)} workers share the cores with "
        "each other, their sync threads and `redis-server` (and this machine's other jobs), so more "
        "than 2x one process cannot be expected here. The memory-only rows (the same processes with "
        "`store=None`, in the same rounds) show what this machine gives 4 processes at all; the "
        "fleet's own cost is the `vs store=None` column.",
    ]
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    lines += ["<!-- /fleet -->"]
    return lines


def redis_version() -> str:
    output = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", output)
    return match.group(1) if match else "unknown"


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, users, calls, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        worker(None if url == "none" else url, users, calls, seed)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls per pass")
    parser.add_argument(
        "--naive-calls", type=int, default=10_000, help="calls per pass of the naive reference"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--traffic-seconds", type=float, default=5.0)
    parser.add_argument("--hot-users", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--process-calls", type=int, default=500_000, help="calls per worker process")
    parser.add_argument("--process-rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--write-results", nargs="?", const=str(RESULTS), metavar="PATH")
    parser.add_argument("--made-by", help=argparse.SUPPRESS)  # --made-by="make bench-fleet"
    args = parser.parse_args()
    if args.quick:
        args.calls, args.naive_calls, args.rounds = 20_000, 1_000, 2
        args.traffic_seconds, args.process_calls, args.process_rounds = 1.0, 20_000, 1
    logging.getLogger("usagemeter").setLevel(logging.ERROR)
    started, load_start = time.perf_counter(), load_average()
    notes: list[str] = []
    with RedisServer(appendonly=False) as server:
        samples = bench_throughput(server, args.users, args.calls, args.naive_calls, args.rounds, notes)
        traffic = [
            bench_traffic(server, 4, args.users, args.traffic_seconds),
            bench_traffic(server, 5, args.hot_users, args.traffic_seconds),
        ]
        races = bench_processes(
            server, args.users, args.process_calls, args.process_rounds, (1, args.processes)
        )
    seconds = time.perf_counter() - started
    argv = [arg for arg in sys.argv[1:] if not arg.startswith("--made-by")]
    command = "`" + " ".join(["python", "benches/fleet.py", *argv]) + "`"
    if args.made_by:
        command = f"`{args.made_by}` (which runs {command})"
    section = render(samples, traffic, races, args, command, seconds, (load_start, load_average()), notes)
    print("\n".join(section))
    if args.write_results:
        title = "Fleet: workers sharing one ledger in Redis"
        write_section(Path(args.write_results), "fleet", title, section)
        log(f"wrote {args.write_results}")


if __name__ == "__main__":
    main()
