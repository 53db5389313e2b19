"""The shared ledger under attack (issue 18): credentials, refunds across workers, outcome-unknown
errors, a server that cannot serve now, and the bound on what a caller waits for a hung Redis.

Real `redis-server` processes (`redis_support`), SIGSTOP and SIGCONT, real CLI processes; no
mocks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_workers import fleet_cost_map
from redis_support import RedisCluster, RedisServer, free_port
from test_fleet import INTERVAL, close_anyway, open_fleet
from usagemeter import (
    ALARM,
    MONTHLY_CHARGES,
    Actor,
    AlarmEvent,
    MeteringService,
    MonthlyCharge,
    MonthlyChargesEvent,
    Policy,
    StoreError,
    StoreOutcomeUnknownError,
    StoreUnavailableError,
    StoreWriteError,
)
from usagemeter.store import redact_url

SECRET = "s3cr3t-" + uuid.uuid4().hex[:12]
COST = 1_000


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def retried(call: Callable[[], object], seconds: float = 15.0) -> object:
    """`call()` once the shared ledger takes it: retried while it raises StoreUnavailableError."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the shared ledger did not come back"
            time.sleep(0.05)


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server frozen by SIGSTOP (a hung host: connections open, nothing answers)."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def usage(service: MeteringService, user: str) -> dict[str, Any]:
    """A user's current month as reported: ``{"total": µ¢, "<usage type>": figures, ...}``."""
    report: dict[str, Any] = service.get_actor_current_month_usage_details(Actor(user))["usage"]
    return report


def month_total(service: MeteringService, user: str) -> int:
    return int(usage(service, user)["total"])


def units(service: MeteringService, user: str, usage_type: str) -> int:
    entry = usage(service, user).get(usage_type)
    return 0 if entry is None else int(entry["units"])


# ---------------------------------------------------------------------------------------------
# 1. The password never appears.


@pytest.fixture
def secret_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=("--requirepass", SECRET)) as server:
        yield server


def secret_url(server: RedisServer, password: str = SECRET, db: int = 0) -> str:
    return f"redis://:{password}@127.0.0.1:{server.port}/{db}"


def test_redact_url_masks_every_form_of_password() -> None:
    assert redact_url(f"redis://:{SECRET}@h:1/0") == "redis://:***@h:1/0"
    assert redact_url(f"redis://bob:{SECRET}@h:1/0") == "redis://bob:***@h:1/0"
    assert redact_url(f"rediss://{SECRET}@h") == "rediss://***@h"
    assert redact_url(f"redis+unix:///s.sock?db=0&pass={SECRET}") == "redis+unix:///s.sock?db=0&pass=***"
    assert redact_url(f"redis://:{SECRET}@a:1,redis://:{SECRET}@b:2") == "redis://:***@a:1,redis://:***@b:2"
    assert redact_url("/var/lib/usagemeter") == "/var/lib/usagemeter"


def raised_text(call: Callable[[], object]) -> str:
    """The message and type of what `call` raised (it must raise a StoreError or ValueError)."""
    with pytest.raises((StoreError, ValueError)) as raised:
        call()
    return f"{type(raised.value).__name__}: {raised.value!s} {raised.value!r}"


@pytest.mark.timeout(120)
def test_the_password_is_in_no_error_message(secret_server: RedisServer) -> None:
    texts = {
        "wrong password": raised_text(lambda: open_fleet(secret_url(secret_server, SECRET + "x"))),
        "unreachable": raised_text(lambda: open_fleet(f"redis://:{SECRET}@127.0.0.1:{free_port()}/0")),
        "bad db": raised_text(lambda: open_fleet(secret_url(secret_server, db=99))),
        "tls to plain": raised_text(
            lambda: open_fleet(f"rediss://:{SECRET}@127.0.0.1:{secret_server.port}/0", connect_timeout=2.0)
        ),
        "does not parse": raised_text(lambda: open_fleet(f"redis://:{SECRET}@127.0.0.1:notaport/0")),
        "several without cluster": raised_text(
            lambda: open_fleet(f"redis://:{SECRET}@127.0.0.1:1/0,redis://:{SECRET}@127.0.0.1:2/0")
        ),
        "embedded backend": raised_text(lambda: open_fleet(secret_url(secret_server), store_backend="sled")),
    }
    for name, text in texts.items():
        assert SECRET not in text, f"{name}: {text}"
    assert "***" in texts["wrong password"] and "refused the user or password" in texts["wrong password"]


@pytest.mark.timeout(180)
def test_the_password_is_in_no_channel_while_redis_fails(
    secret_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """store_path, repr, alarms, log lines, keyed calls, flush and close, Prometheus text."""
    caplog.set_level(logging.WARNING, logger="usagemeter")
    url = secret_url(secret_server)
    service = open_fleet(url)
    seen: list[str] = [service.store_path or "", repr(service)]
    alarms: list[AlarmEvent] = []
    service.events.on(ALARM, alarms.append)
    user = Actor(unique("secret"))
    try:
        service.increment_usage(user, "fleet:int", 1)
        service.flush()
        secret_server.stop()
        for call in (
            lambda: service.increment_usage(user, "fleet:int", 1, idempotency_key=unique("k")),
            lambda: service.refund(user, "fleet:int", units=1),
            service.flush,
        ):
            seen.append(raised_text(call))
        deadline = time.monotonic() + 10
        while not any(alarm.kind == "store_error" for alarm in alarms) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(alarm.kind == "store_error" for alarm in alarms)
        seen += [alarm.message for alarm in alarms]
        from prometheus_client import CollectorRegistry, generate_latest
        from usagemeter.prometheus import register

        registry = CollectorRegistry()
        register(service, registry=registry)
        seen.append(generate_latest(registry).decode())
        seen.append(raised_text(service.close))
    finally:
        close_anyway(service)
        secret_server.start()
    seen += [record.getMessage() for record in caplog.records]
    assert service.store_path == f"redis://:***@127.0.0.1:{secret_server.port}/0"
    for text in seen:
        assert SECRET not in text, text
    assert len(seen) > 8


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usagemeter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(300)
def test_the_password_is_in_no_cli_output(secret_server: RedisServer, tmp_path: Path) -> None:
    url = secret_url(secret_server)
    with open_fleet(url) as service:
        service.increment_usage(Actor(unique("cli")), "fleet:int", 3)
    results = {
        "report": run_cli("report", "--store", url),
        "report --json": run_cli("report", "--store", url, "--json"),
        "report wrong password": run_cli("report", "--store", secret_url(secret_server, SECRET + "x")),
        "store verify": run_cli("store", "verify", url),
        "store copy out": run_cli("store", "copy", url, str(tmp_path / "copy")),
        "store copy into a full ledger": run_cli("store", "copy", str(tmp_path / "copy"), url),
        "store copy wrong password": run_cli(
            "store", "copy", secret_url(secret_server, SECRET + "x"), str(tmp_path / "other")
        ),
    }
    for name, result in results.items():
        assert SECRET not in result.stdout + result.stderr, f"{name}: {result.stdout}{result.stderr}"
    assert results["report"].returncode == 0, results["report"].stderr
    assert "redis://:***@" in results["report"].stdout
    assert json.loads(results["report --json"].stdout)["store"].startswith("redis://:***@")
    assert results["store copy out"].returncode == 0, results["store copy out"].stderr
    failing = (
        "report wrong password",
        "store verify",
        "store copy into a full ledger",
        "store copy wrong password",
    )
    for failed in failing:
        assert results[failed].returncode != 0 and results[failed].stderr.strip(), failed


@pytest.mark.timeout(120)
def test_the_password_is_not_in_the_line_written_at_exit(secret_server: RedisServer) -> None:
    """A process that exits with Redis gone prints the 'could not write the last snapshot' line."""
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from fleet_workers import fleet_cost_map
from usagemeter import Actor, MeteringService
service = MeteringService(fleet_cost_map(), store={secret_url(secret_server)!r}, snapshot_interval=60)
service.increment_usage(Actor("exit-user"), "fleet:int", 1)
os.kill({secret_server.pid}, signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    secret_server._reap()
    assert "could not write the last snapshot" in result.stderr, result.stderr
    assert "***" in result.stderr
    assert SECRET not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# 2. A charge is refunded once across the fleet.


@pytest.mark.timeout(120)
@pytest.mark.parametrize("keys", [(None, None), ("first", None), (None, "second")])
def test_two_workers_cannot_refund_the_same_charge_twice(
    redis_server: RedisServer, keys: tuple[str | None, str | None]
) -> None:
    user = Actor(unique("refund"))
    a, b = open_fleet(redis_server.url), open_fleet(redis_server.url)
    try:
        charged = a.increment_usage(user, "fleet:int", 10)
        assert charged > 0
        a.flush()
        b.flush()
        assert month_total(b, user.user_id) == charged
        a.refund(user, "fleet:int", units=10, idempotency_key=keys[0])
        with pytest.raises(ValueError, match="cannot refund"):
            b.refund(user, "fleet:int", units=10, idempotency_key=keys[1])
        a.flush()
        b.flush()
        for worker in (a, b):
            assert month_total(worker, user.user_id) == 0
            budget = worker.get_actor_budget(user)
            assert budget["allowance_used"] >= 0, budget
        # Half and half: each worker may give back what the other has not.
        a.increment_usage(user, "fleet:int", 10)
        a.flush()
        b.flush()
        a.refund(user, "fleet:int", units=5)
        b.refund(user, "fleet:int", units=5)
        with pytest.raises(ValueError):
            a.refund(user, "fleet:int", units=1)
    finally:
        close_anyway(a)
        close_anyway(b)
    with open_fleet(redis_server.url) as fresh:
        assert month_total(fresh, user.user_id) == 0


@pytest.mark.timeout(120)
def test_racing_refunds_from_threads_of_two_workers_give_back_at_most_the_charge(
    redis_server: RedisServer,
) -> None:
    user = Actor(unique("refund-race"))
    a, b = open_fleet(redis_server.url), open_fleet(redis_server.url)
    try:
        a.increment_usage(user, "fleet:int", 40)
        a.flush()
        b.flush()
        given: list[int] = []
        lock = threading.Lock()

        def refund_all(worker: MeteringService) -> None:
            for _ in range(20):
                try:
                    worker.refund(user, "fleet:int", units=1)
                except (ValueError, StoreUnavailableError):
                    continue
                with lock:
                    given.append(1)

        threads = [threading.Thread(target=refund_all, args=(w,)) for w in (a, b, a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        a.flush()
        b.flush()
        assert len(given) <= 40
        with open_fleet(redis_server.url) as fresh:
            refunded = units(fresh, user.user_id, "refund:fleet:int")
            assert refunded == len(given) and units(fresh, user.user_id, "fleet:int") == 40
    finally:
        close_anyway(a)
        close_anyway(b)


# ---------------------------------------------------------------------------------------------
# 6. Outcome unknown, and a server that cannot serve now.


@pytest.mark.timeout(120)
def test_a_keyed_call_whose_reply_never_came_is_outcome_unknown_and_its_retry_records_once(
    redis_server: RedisServer,
) -> None:
    user = Actor(unique("unknown"))
    with open_fleet(redis_server.url, caller_timeout=0.5) as service:
        service.increment_usage(user, "fleet:int", 1)
        service.flush()
        # Writes (and every script) wait while reads and TIME are answered: the keyed call's
        # compare-and-set is sent, and its reply comes after the caller gave up.
        redis_server.command("CLIENT", "PAUSE", "2000", "WRITE")
        with pytest.raises(StoreOutcomeUnknownError) as raised:
            service.increment_usage(user, "fleet:int", 7, idempotency_key="charge-1")
        assert isinstance(raised.value, StoreUnavailableError)
        assert "may have been recorded" in str(raised.value) and "same idempotency key" in str(raised.value)
        time.sleep(2.0)
        total = retried(lambda: service.increment_usage(user, "fleet:int", 7, idempotency_key="charge-1"))
        service.flush()
        assert total == month_total(service, user.user_id)
    with open_fleet(redis_server.url) as fresh:
        assert units(fresh, user.user_id, "fleet:int") == 8  # the first call landed once


@pytest.mark.timeout(120)
def test_a_busy_server_is_unavailable_and_says_nothing_was_recorded(redis_server: RedisServer) -> None:
    user = Actor(unique("busy"))
    redis_server.command("CONFIG", "SET", "busy-reply-threshold", "50")
    with open_fleet(redis_server.url, caller_timeout=1.0) as service:
        service.increment_usage(user, "fleet:int", 1)
        service.flush()
        spin = subprocess.Popen(
            [
                "redis-cli", "-p", str(redis_server.port), "EVAL",
                "local t = redis.call('TIME'); local s = t[1] * 1000000 + t[2]; "
                "while true do local n = redis.call('TIME'); "
                "if n[1] * 1000000 + n[2] - s > 3000000 then break end end return 1",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.3)
            with pytest.raises(StoreUnavailableError) as raised:
                service.increment_usage(user, "fleet:int", 5, idempotency_key="busy-1")
            assert not isinstance(raised.value, (StoreWriteError, StoreOutcomeUnknownError))
            assert "BUSY" in str(raised.value) and "nothing" in str(raised.value)
        finally:
            spin.wait(30)
        retried(lambda: service.increment_usage(user, "fleet:int", 5, idempotency_key="busy-1"))
        service.flush()
        assert units(service, user.user_id, "fleet:int") == 6


@pytest.mark.timeout(60)
def test_a_port_that_is_not_redis_says_so() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                connection.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(StoreUnavailableError, match="does not answer as Redis does"):
            open_fleet(f"redis://127.0.0.1:{port}/0", connect_timeout=2.0)
    finally:
        listener.close()


# ---------------------------------------------------------------------------------------------
# 7. A hung Redis: no caller waits more than caller_timeout.

BOUND = 1.0  # the default caller_timeout
NOISE = 0.75  # scheduling on a shared 2-core machine running a debug build


def timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.monotonic()
    try:
        result: object = call()
    except StoreUnavailableError as error:
        result = error
    return time.monotonic() - started, result


@pytest.mark.timeout(180)
def test_every_call_waits_at_most_the_callers_bound_while_redis_is_hung(redis_server: RedisServer) -> None:
    allowance = 1_000 * COST
    service = open_fleet(redis_server.url, policies=[Policy("temp_free", allowance)])
    monthly_users: set[str] = set()

    def monthly(event: MonthlyChargesEvent) -> list[MonthlyCharge]:
        monthly_users.add(event.actor.user_id)
        return [MonthlyCharge("fleet:seat", 500)]

    service.events.on(MONTHLY_CHARGES, monthly)
    known = Actor(unique("hung-known"))
    try:
        service.increment_usage(known, "fleet:int", 1)
        service.flush()
        waits: list[tuple[str, float]] = []
        with stopped(redis_server):
            time.sleep(0.2)
            for round_ in range(3):
                calls: dict[str, Callable[[], object]] = {
                    "keyed": lambda: service.increment_usage(
                        known, "fleet:int", 1, idempotency_key=unique("k")
                    ),
                    "try new user": lambda: service.try_increment_usage(
                        Actor(unique("new")), "fleet:call", 1, COST
                    ),
                    "reserve": lambda: service.reserve(Actor(unique("hung-hold")), cost=COST),
                    "unclaimed month": lambda: service.increment_usage(
                        Actor(unique("month")), "fleet:int", 1
                    ),
                    "refund": lambda: service.refund(known, "fleet:int", units=1),
                    "plain": lambda: service.increment_usage(known, "fleet:int", 1),
                }
                for name, call in calls.items():
                    elapsed, result = timed(call)
                    waits.append((f"{name} #{round_}", elapsed))
                    if name == "plain":
                        assert isinstance(result, int), result  # recording goes on from memory
            time.sleep(1.0)
        slowest = max(waits, key=lambda w: w[1])
        print("waits while hung:", ", ".join(f"{n} {s:.2f}s" for n, s in waits))
        assert slowest[1] <= BOUND + NOISE, f"{slowest[0]} waited {slowest[1]:.2f} s"
        # Once Redis answers again, calls go through and nothing was counted twice.
        deadline = time.monotonic() + 15
        while service.try_increment_usage(known, "fleet:call", 1, COST) is None:
            assert time.monotonic() < deadline, "strict spending did not come back"
            time.sleep(0.05)
        service.flush()
        local = usage(service, known.user_id)
    finally:
        close_anyway(service)
    with open_fleet(redis_server.url) as fresh:
        assert usage(fresh, known.user_id) == local


@pytest.mark.timeout(120)
def test_a_cluster_node_opened_as_one_server_says_to_use_redis_cluster(redis_cluster: RedisCluster) -> None:
    for url in redis_cluster.urls:
        with pytest.raises(StoreError, match="store_backend='redis-cluster'") as raised:
            open_fleet(url)
        assert "Moved" not in str(raised.value)


def answers_loading(port: int) -> bool:
    """Whether the server on `port` is loading its data: it answers PING with -LOADING, or takes
    the connection and is too busy loading to answer within a second (raw RESP)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            try:
                return connection.recv(64).startswith(b"-LOADING")
            except TimeoutError:
                return True
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_a_server_loading_after_a_restart_is_unavailable_and_retryable() -> None:
    # 60,000 keys loaded at 100 µs each: the restarted server answers LOADING for seconds.
    # It answers (LOADING) between every kilobyte it loads.
    delay = (
        *("--enable-debug-command", "yes", "--key-load-delay", "100"),
        *("--loading-process-events-interval-bytes", "1024"),
    )
    with RedisServer(extra_args=delay) as server:
        server.command("DEBUG", "POPULATE", "60000", "filler")
        server.command("BGREWRITEAOF")
        deadline = time.monotonic() + 60
        while "aof_rewrite_in_progress:0" not in server.command("INFO", "persistence"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        user = Actor(unique("loading"))
        service = open_fleet(server.url)
        try:
            service.increment_usage(user, "fleet:int", 1)
            service.flush()
            server.kill()
            starting = threading.Thread(target=server.start)
            starting.start()
            deadline = time.monotonic() + 30
            while not answers_loading(server.port):
                assert time.monotonic() < deadline, "the server never answered LOADING"
                time.sleep(0.02)
            time.sleep(3 * INTERVAL)  # the sync thread meets it too
            assert answers_loading(server.port), "loaded too fast for this test"
            with pytest.raises(StoreUnavailableError) as raised:
                service.increment_usage(user, "fleet:int", 5, idempotency_key="loading-1")
            assert not isinstance(raised.value, (StoreWriteError, StoreOutcomeUnknownError))
            assert "LOADING" in str(raised.value) and "nothing of this call was recorded" in str(raised.value)
            starting.join(60)
            for _ in range(2):  # the call, then its retry: recorded once
                retried(lambda: service.increment_usage(user, "fleet:int", 5, idempotency_key="loading-1"))
            service.flush()
            assert units(service, user.user_id, "fleet:int") == 6
        finally:
            close_anyway(service)


# ---------------------------------------------------------------------------------------------
# 10. A refusal allocates nothing that outlives the call, on a fleet too.


@pytest.mark.timeout(180)
def test_refused_strict_calls_of_strangers_make_no_account_on_a_fleet(redis_server: RedisServer) -> None:
    allowance = 1_000 * COST
    with open_fleet(redis_server.url, policies=[Policy("temp_free", allowance)]) as service:
        service.increment_usage(Actor(unique("regular")), "fleet:int", 1)
        before = service._account_count()
        too_much = allowance + 1
        for i in range(500):
            stranger = Actor(unique(f"stranger-{i}"))
            assert service.try_increment_usage(stranger, "fleet:call", 1, too_much) is None
            assert service.try_batch_increment_usages(stranger, [("fleet:call", 1, too_much)]) is None
            assert service.reserve(stranger, cost=too_much) is None
            keyed = service.try_increment_usage(stranger, "fleet:call", 1, too_much, idempotency_key=f"k{i}")
            assert keyed is None
        assert service._account_count() == before
        # A stranger's affordable call asks the fleet for a lease and records (its account then).
        newcomer = Actor(unique("newcomer"))
        assert service.try_increment_usage(newcomer, "fleet:call", 1, COST) is not None
        assert service._account_count() == before + 1
        service.flush()
        assert int(redis_server.command("SCARD", "usagemeter:users")) == 2


@pytest.mark.timeout(180)
def test_a_hung_cluster_node_bounds_every_call_too(redis_cluster: RedisCluster) -> None:
    """One node frozen (below the cluster's failover timeout): calls whose user lives there wait
    at most the caller's bound, and the others go on."""
    service = MeteringService(
        fleet_cost_map(),
        store=",".join(redis_cluster.urls),
        store_backend="redis-cluster",
        snapshot_interval=INTERVAL,
    )
    frozen = redis_cluster.nodes[1]
    users = [Actor(unique("cluster-hung")) for _ in range(12)]
    try:
        for user in users:
            service.increment_usage(user, "fleet:int", 1)
        service.flush()
        waits: list[float] = []
        assert frozen.pid is not None
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            time.sleep(0.2)
            for user in users:
                keyed = functools.partial(
                    service.increment_usage, user, "fleet:int", 1, idempotency_key=unique("k")
                )
                refund = functools.partial(service.refund, user, "fleet:int", units=1)
                waits += [timed(keyed)[0], timed(refund)[0]]
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
        print("waits with a node frozen:", ", ".join(f"{w:.2f}" for w in waits))
        assert max(waits) <= BOUND + NOISE, max(waits)
        retried(lambda: service.increment_usage(users[0], "fleet:int", 1, idempotency_key="after"))
    finally:
        close_anyway(service)


@pytest.mark.timeout(120)
def test_the_password_is_not_in_the_alarms_of_a_wiped_ledger(
    secret_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="usagemeter")
    service = open_fleet(secret_url(secret_server))
    alarms: list[AlarmEvent] = []
    service.events.on(ALARM, alarms.append)
    second: MeteringService | None = None
    try:
        service.increment_usage(Actor(unique("wiped")), "fleet:int", 1)
        service.flush()
        subprocess.run(
            ["redis-cli", "-p", str(secret_server.port), "--no-auth-warning", "-a", SECRET, "FLUSHALL"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 20
        while not any(alarm.kind == "ledger_lost" for alarm in alarms):
            assert time.monotonic() < deadline, [alarm.message for alarm in alarms]
            time.sleep(0.02)
        second = open_fleet(secret_url(secret_server))  # opened during the restore: it says so
        second.events.on(ALARM, alarms.append)
        deadline = time.monotonic() + 20
        while not any("opened while" in alarm.message for alarm in alarms):
            assert time.monotonic() < deadline, [alarm.message for alarm in alarms]
            time.sleep(0.02)
    finally:
        for opened in (service, second):
            if opened is not None:
                close_anyway(opened)
    texts = [alarm.message for alarm in alarms] + [record.getMessage() for record in caplog.records]
    assert any("lost its data" in text or "restor" in text for text in texts), texts
    for text in texts:
        assert SECRET not in text, text


@pytest.mark.timeout(120)
def test_two_workers_cannot_refund_the_same_charge_twice_on_a_cluster(redis_cluster: RedisCluster) -> None:
    seeds = ",".join(redis_cluster.urls)

    def worker() -> MeteringService:
        return MeteringService(
            fleet_cost_map(), store=seeds, store_backend="redis-cluster", snapshot_interval=INTERVAL
        )

    users = [Actor(unique("cluster-refund")) for _ in range(6)]  # over the nodes' slots
    a, b = worker(), worker()
    try:
        for user in users:
            a.increment_usage(user, "fleet:int", 10)
        a.flush()
        b.flush()
        for user in users:
            a.refund(user, "fleet:int", units=10, idempotency_key=None if users.index(user) % 2 else "r")
            with pytest.raises(ValueError, match="cannot refund"):
                b.refund(user, "fleet:int", units=10)
        a.flush()
        b.flush()
    finally:
        close_anyway(a)
        close_anyway(b)
    with worker() as fresh:
        for user in users:
            assert month_total(fresh, user.user_id) == 0
            assert units(fresh, user.user_id, "refund:fleet:int") == 10


@pytest.mark.timeout(60)
def test_a_server_without_info_still_opens() -> None:
    """The cluster check at connection (INFO cluster) must not lock out a server that refuses INFO
    (an ACL, a renamed command): it opens as before."""
    with RedisServer(extra_args=("--rename-command", "INFO", "")) as server:
        user = Actor(unique("no-info"))
        with open_fleet(server.url) as service:
            service.increment_usage(user, "fleet:int", 2)
        with open_fleet(server.url) as fresh:
            assert units(fresh, user.user_id, "fleet:int") == 2
