"""The command line with a fleet's shared ledger in Redis: ``store copy``, ``report --store redis://``
and ``demo --workers N``, run as a user runs them (``python -m usagemeter ...`` in a subprocess)
against real ``redis-server`` processes (``redis_support``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_support import RedisCluster, RedisServer, free_port
from support import FakeClock
from test_cli import PAST, PAST_MONTH, report_json, run_cli
from usagemeter import Actor, MeteringService, Policy, to_microcents
from usagemeter.cli.store import detect_backend


def assert_clean_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A non-zero exit with a message on stderr naming ``needles``, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def without_location(document: dict[str, Any]) -> dict[str, Any]:
    """A report document less what names the store (its path or URL, and backend)."""
    return {key: value for key, value in document.items() if key not in ("store", "backend")}


def make_sled_store(path: Path) -> None:
    """A sled store with usage in this month and in March 2024, credit, and one plan chosen by events."""
    pro = Policy("pro", to_microcents("20"))
    clock = FakeClock(PAST)
    with MeteringService(store=str(path), store_backend="sled", clock=clock) as service:
        service.increment_usage(Actor("alice", "app-1"), "kv:write", 4_000)
        service.increment_usage(Actor("bob"), "kv:read", 12_345)
    with MeteringService(store=str(path), store_backend="sled") as service:
        service.events.on("metering:registerAvailablePolicies", lambda e: e.available_policies.append(pro))
        service.events.on(
            "metering:getUserSubscription",
            lambda e: setattr(e, "user_subscription_id", "pro" if e.actor.user_id == "carol" else None),
        )
        service.update_addon_credit("alice", to_microcents("5"))
        service.increment_usage(Actor("alice", "app-1"), "kv:write", 1_000_000)
        service.increment_usage(Actor("alice", "app-2"), "aws-polly:neural:character", 777)
        service.increment_usage(Actor("bob", email="bob@example.com"), "filesystem:egress:bytes", 123_457)
        service.increment_usage(Actor("carol"), "kv:read", 99)


def reports(store: str) -> list[dict[str, Any]]:
    """The month reports (this month, March 2024) and alice's report of ``store``, less its name."""
    return [
        without_location(report_json("--store", store)),
        without_location(report_json("--store", store, "--month", PAST_MONTH)),
        without_location(report_json("--store", store, "--actor", "alice")),
    ]


def test_copy_sled_to_redis_to_redb_keeps_every_figure(tmp_path: Path, redis_server: RedisServer) -> None:
    sled = tmp_path / "sled-store"
    make_sled_store(sled)
    expected = reports(str(sled))
    assert expected[0]["users"] == 3 and expected[1]["users"] == 2

    into_redis = run_cli("store", "copy", str(sled), redis_server.url)
    assert into_redis.returncode == 0, into_redis.stderr
    assert (
        f"copied 3 users (5 user months) from {sled} (sled) to {redis_server.url} (redis)"
        in into_redis.stdout
    )
    assert reports(redis_server.url) == expected

    redb = tmp_path / "redb-store"
    back = run_cli("store", "copy", redis_server.url, str(redb), "--backend", "redb")
    assert back.returncode == 0, back.stderr
    assert f"copied 3 users (5 user months) from {redis_server.url} (redis) to {redb} (redb)" in back.stdout
    assert detect_backend(redb) == "redb"
    assert reports(str(redb)) == expected
    carol = report_json("--store", str(redb), "--actor", "carol")["balance"]
    assert carol["plan"] == "pro" and carol["plan_stored"]
    verified = run_cli("store", "verify", str(redb))
    assert verified.returncode == 0, verified.stderr


def test_copy_into_a_redis_cluster_and_report_from_it(tmp_path: Path, redis_cluster: RedisCluster) -> None:
    sled = tmp_path / "sled-store"
    make_sled_store(sled)
    seeds = ",".join(redis_cluster.urls)
    copied = run_cli("store", "copy", str(sled), seeds, "--backend", "redis-cluster")
    assert copied.returncode == 0, copied.stderr
    assert f"to {seeds} (redis-cluster)" in copied.stdout
    document = report_json("--store", seeds, "--backend", "redis-cluster")
    assert document["backend"] == "redis-cluster"
    assert without_location(document) == without_location(report_json("--store", str(sled)))


def test_copy_refuses_a_destination_that_is_not_new(tmp_path: Path, redis_server: RedisServer) -> None:
    sled = tmp_path / "sled-store"
    make_sled_store(sled)
    assert run_cli("store", "copy", str(sled), redis_server.url).returncode == 0
    keys_before = redis_server.command("DBSIZE")
    again = run_cli("store", "copy", str(sled), redis_server.url)
    assert_clean_failure(again, "usagemeter store copy:")
    assert redis_server.command("DBSIZE") == keys_before  # nothing written
    onto_itself = run_cli("store", "copy", redis_server.url, str(sled))
    assert_clean_failure(onto_itself, "usagemeter store copy:")
    missing = run_cli("store", "copy", str(tmp_path / "nothing"), redis_server.url)
    assert_clean_failure(missing, "no store at")


def test_copy_from_an_unreachable_redis_fails_cleanly(tmp_path: Path) -> None:
    result = run_cli("store", "copy", f"redis://127.0.0.1:{free_port()}/0", str(tmp_path / "copy"))
    assert_clean_failure(result, "usagemeter store copy:")
    assert not (tmp_path / "copy" / "usagemeter.manifest").exists()


def test_copy_of_a_redis_that_lists_no_users_says_so_and_writes_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # A wrong database number, a flushed Redis: copying "0 users" with exit 0 hid the mistake,
    # and left a new empty store where the right copy had to go.
    empty = run_cli("store", "copy", redis_server.url, str(tmp_path / "from-empty"))
    assert_clean_failure(
        empty, "usagemeter store copy:", "lists no users", "usagemeter:users", "nothing to copy"
    )
    assert empty.stdout == ""
    assert not (tmp_path / "from-empty").exists()

    # The users' records are there, but the set that lists them was lost.
    sled = tmp_path / "sled-store"
    make_sled_store(sled)
    assert run_cli("store", "copy", str(sled), redis_server.url).returncode == 0
    redis_server.command("DEL", "usagemeter:users")
    keys_before = redis_server.command("DBSIZE")
    unlisted = run_cli("store", "copy", redis_server.url, str(tmp_path / "from-unlisted"))
    assert_clean_failure(unlisted, "lists no users", "usagemeter:users")
    assert not (tmp_path / "from-unlisted").exists()
    assert redis_server.command("DBSIZE") == keys_before  # the source is only read


def test_copy_of_a_store_without_users_into_redis_says_so_and_writes_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    store = tmp_path / "never-charged"
    with MeteringService(store=str(store), store_backend="sled"):
        pass
    result = run_cli("store", "copy", str(store), redis_server.url)
    assert_clean_failure(result, "usagemeter store copy:", "holds no users", "nothing to copy")
    assert redis_server.command("DBSIZE") == "0"


def test_verify_and_recover_refuse_a_url(redis_url: str) -> None:
    for command in ("verify", "recover"):
        result = run_cli("store", command, redis_url)
        assert_clean_failure(result, f"usagemeter store {command}:", "shared ledger")


def test_report_on_an_unreachable_redis_fails_cleanly() -> None:
    result = run_cli("report", "--store", f"redis://127.0.0.1:{free_port()}/0")
    assert_clean_failure(result, "usagemeter report:", "StoreUnavailableError")


# A server of the fleet: meters "live" on the shared ledger until its standard input closes.
# Its plans come from the application's events ("pro" for user "live"), as a real server's do.
SERVER = textwrap.dedent(
    """
    import sys, time
    from usagemeter import Actor, MeteringService, Policy, to_microcents

    pro = Policy("pro", to_microcents("20"))
    with MeteringService(store=sys.argv[1], snapshot_interval=0.1) as service:
        service.events.on("metering:registerAvailablePolicies", lambda e: e.available_policies.append(pro))
        service.events.on(
            "metering:getUserSubscription",
            lambda e: setattr(e, "user_subscription_id", "pro" if e.actor.user_id == "live" else None),
        )
        service.increment_usage(Actor("live"), "kv:write", 1_000)
        service.flush()
        print("ready", flush=True)
        for line in sys.stdin:  # one line: meter one more batch and flush it, then say so
            service.increment_usage(Actor("live"), "kv:write", 1_000)
            service.flush()
            print("flushed", flush=True)
    """
)


@pytest.fixture
def live_server(redis_url: str) -> Iterator[subprocess.Popen[str]]:
    """A process holding a service open on ``redis_url`` and metering user "live"."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, redis_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_report_reads_a_ledger_that_another_process_holds_open(
    redis_url: str, live_server: subprocess.Popen[str]
) -> None:
    first = report_json("--store", redis_url, "--actor", "live")
    assert first["backend"] == "redis" and first["store"] == redis_url
    assert first["increments"] == 1 and first["total"] == 1_000 * 125
    # The plan the server's events chose is the stored one the report shows.
    assert first["balance"]["plan"] == "pro" and first["balance"]["plan_stored"]
    assert first["balance"]["remaining"] == to_microcents("20") - first["total"]

    assert live_server.stdin is not None and live_server.stdout is not None
    live_server.stdin.write("more\n")
    live_server.stdin.flush()
    assert live_server.stdout.readline().strip() == "flushed"
    second = report_json("--store", redis_url)
    assert second["users"] == 1 and second["increments"] == 2 and second["total"] == 2_000 * 125
    text = run_cli("report", "--store", redis_url, "--exact")
    assert text.returncode == 0, text.stderr
    assert f"store {redis_url} (redis)" in text.stdout
    row = r"live\s+2\s+\$0\.00250000\s+pro\s+\$20\.00000000\s+\$19\.99750000\s"
    assert re.search(row, text.stdout), text.stdout
    assert live_server.poll() is None  # the report did not disturb the server


def test_demo_workers_needs_a_shared_ledger(tmp_path: Path) -> None:
    for store in (str(tmp_path / "store"), "none"):
        result = run_cli("demo", "--workers", "2", "--store", store, "--requests", "10", cwd=tmp_path)
        assert_clean_failure(result, "--workers needs a shared ledger")
    assert not (tmp_path / "store").exists()


def test_demo_workers_share_one_ledger_and_honour_budgets(redis_url: str, tmp_path: Path) -> None:
    result = run_cli(
        "demo",
        *("--workers", "2", "--threads", "1", "--actors", "200", "--requests", "2000"),
        *("--store", redis_url),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "on 2 workers (processes) x 1 thread" in result.stdout
    assert "ledger check: the " in result.stdout
    assert "budgets honoured: all 6 users, never overspent by the fleet" in result.stdout
    rows = re.findall(
        r"^(race-\S+)\s+2,000,000\s+(\d+) \+ (\d+)\s+([\d,]+)\s+([\d,]+)\s.*\s(yes|NO)$",
        result.stdout,
        re.M,
    )
    assert len(rows) == 6, result.stdout
    for _user, first, second, accepted, in_ledger, honoured in rows:
        calls = int(first) + int(second)
        assert 119 <= calls <= 125  # 16,000 µ¢ a call, $0.02 budget: at most 125, >= 95% spent
        assert accepted == in_ledger and honoured == "yes"
    assert not (tmp_path / "usagemeter-data").exists()  # nothing written to the default store
    # The same ledger, read by the report command.
    document = report_json("--store", redis_url, "--top", "0")
    race = [row for row in document["top_actors"] if row["user_id"].startswith("race-")]
    assert len(race) == 6
    for row in race:
        assert row["total"] <= 2_000_000 and row["balance"]["plan"] == "demo-tiny"
