"""The ``usagemeter`` command line, run as a user runs it: ``python -m usagemeter ...`` in a subprocess.

Every command that may touch ``./usagemeter-data`` runs with ``cwd`` in a temporary directory.
"""

from __future__ import annotations

import calendar
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import FakeClock
from usagemeter import Actor, CostMap, MeteringService, Policy, __version__, to_microcents
from usagemeter.cli import main
from usagemeter.cli.demo import BLOCK_SIZE, make_population, workload_block
from usagemeter.cli.output import WIDTH, format_dollars
from usagemeter.cli.report import JSON_SHAPE
from usagemeter.store import verify_store

Backend = Literal["sled", "redb"]
BACKENDS: tuple[Backend, ...] = ("sled", "redb")
DATA = "usagemeter-data"  # the demo's default store, relative to its working directory
MANIFEST = "usagemeter.manifest"
PAST_MONTH = "2024-03"
PAST = calendar.timegm((2024, 3, 10, 12, 0, 0))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m usagemeter *args`` (in ``cwd``) and captures its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "usagemeter", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def number(text: str) -> int:
    """``"12,345"`` -> 12345."""
    return int(text.replace(",", ""))


def dollars_to_microcents(text: str) -> int:
    """``"$1,234.56789012"`` (as ``--exact`` prints it) -> its exact µ¢."""
    assert re.fullmatch(r"-?\$[\d,]+\.\d{8}", text), f"not exact dollars: {text!r}"
    return to_microcents(text.replace("$", "").replace(",", ""))


# Nouns the commands print after a count: "1 user", never "1 users".
COUNTED_NOUNS = (
    "users",
    "increments",
    "actors",
    "threads",
    "requests",
    "prices",
    "types",
    "apps",
    "entries",
    "files",
    "records",
    "buyers",
    "top-ups",
)


def assert_fits_and_singular(text: str) -> None:
    """Every line of ``text`` fits WIDTH columns, and no count of 1 takes a plural noun."""
    for line in text.splitlines():
        assert len(line) <= WIDTH, f"{len(line)} columns: {line!r}"
    plural_one = re.search(rf"(?<![\d,.$])\b1 ({'|'.join(COUNTED_NOUNS)})\b", text)
    assert plural_one is None, plural_one.group(0)


def table(lines: list[str], title: str) -> list[list[str]]:
    """The rows (cells split on runs of 2+ spaces) of the table printed under ``title``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3 :]:  # title, header, rule
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def current_month() -> str:
    """The current UTC month, ``YYYY-MM``."""
    return time.strftime("%Y-%m", time.gmtime())


def report_json(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    """Runs ``usagemeter report --json *args`` and parses its output."""
    result = run_cli("report", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def files_under(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> content), to compare a store before and after."""
    return {
        str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()
    }


# ---- demo -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One small demo run (on a new store in a temporary directory), shared by the demo tests."""
    directory = tmp_path_factory.mktemp("demo")
    result = run_cli(
        "demo",
        *("--requests", "3000", "--actors", "300", "--threads", "3", "--seed", "7", "--exact"),
        cwd=directory,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_counts_add_up(demo_output: str) -> None:
    pattern = r"^requests: ([\d,]+) \(([\d,]+) served, ([\d,]+) refused\) in [\d.]+ s$"
    match = re.search(pattern, demo_output, re.M)
    assert match, demo_output
    requests, served, refused = (number(group) for group in match.groups())
    assert requests == 3000
    assert served + refused == requests
    assert served > 0
    assert refused > 0, "some actors must run out of credit"


def test_demo_prints_throughput(demo_output: str) -> None:
    match = re.search(
        r"^throughput: ([\d,]+) requests/s, ([\d,]+) increments/s \(([\d,]+) increments\)$", demo_output, re.M
    )
    assert match, demo_output
    requests_per_second, increments_per_second, increments = (number(group) for group in match.groups())
    assert requests_per_second > 0
    assert increments_per_second > 0
    served_match = re.search(r"([\d,]+) served", demo_output)
    assert served_match
    served = number(served_match.group(1))
    assert increments >= served  # a served request books one usage type or more
    assert f"ledger check: all {increments:,} increments counted; every cost" in demo_output


def test_demo_tables_are_consistent(demo_output: str) -> None:
    lines = demo_output.splitlines()
    default = CostMap.default()
    global_line = re.search(r"^global total: (\$[\d,.]+)$", demo_output, re.M)
    assert global_line, demo_output
    global_total = dollars_to_microcents(global_line.group(1))

    types = table(lines, "Top usage types by cost")
    assert 0 < len(types) <= 10
    costs = [dollars_to_microcents(row[3]) for row in types]
    assert costs == sorted(costs, reverse=True)
    assert sum(costs) <= global_total
    for usage_type, units, count, _cost in types:
        assert usage_type in default
        assert number(units) > 0
        assert number(count) > 0

    actors = table(lines, "Top actors by spend")
    assert 0 < len(actors) <= 10
    spent = [dollars_to_microcents(row[2]) for row in actors]
    assert spent == sorted(spent, reverse=True)
    assert sum(spent) <= global_total + len(actors)  # each total is rounded to whole µ¢
    for _actor, plan, _spent, purchased, overage, remaining in actors:
        assert plan in {"temp_free", "user_free", "demo-tiny"}
        assert dollars_to_microcents(purchased) >= 0
        assert dollars_to_microcents(overage) >= 0
        assert dollars_to_microcents(remaining) >= 0


def test_demo_says_where_the_data_is(demo_output: str) -> None:
    assert re.search(rf"^store: new (sled|redb) store at \./{DATA}, opened in [\d.]+ s$", demo_output, re.M)
    assert re.search(
        rf"^store: flushed and closed in [\d.]+ s; the data is in \./{DATA} \((sled|redb)\)",
        demo_output,
        re.M,
    )


def test_demo_with_no_requests(tmp_path: Path) -> None:
    result = run_cli("demo", "--requests", "0", "--actors", "10", "--threads", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "requests: 0 (0 served, 0 refused)" in result.stdout
    assert "global total: $0.00\n" in result.stdout


@pytest.mark.parametrize("option", ["--actors", "--threads"])
def test_demo_rejects_bad_counts(option: str, tmp_path: Path) -> None:
    result = run_cli("demo", option, "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr
    assert list(tmp_path.iterdir()) == []


def demo_increments(stdout: str) -> int:
    """The increments a demo run reports having made."""
    match = re.search(r"^throughput: .* \(([\d,]+) increments\)$", stdout, re.M)
    assert match, stdout
    return number(match.group(1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_continues_from_its_store(tmp_path: Path, backend: str) -> None:
    month = current_month()
    small = ("--requests", "2000", "--actors", "200", "--threads", "2", "--seed", "3")
    first = run_cli("demo", *small, "--backend", backend, "--exact", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"store: new {backend} store at ./{DATA}" in first.stdout
    assert (tmp_path / DATA / MANIFEST).is_file()
    first_increments = demo_increments(first.stdout)
    after_first = report_json("--store", DATA, cwd=tmp_path)
    assert after_first["backend"] == backend
    assert after_first["increments"] == first_increments
    assert after_first["total"] > 0

    second = run_cli("demo", *small, "--exact", cwd=tmp_path)  # no --backend: the store's is detected
    assert second.returncode == 0, second.stderr
    assert re.search(rf"^continuing from \./{DATA} \({backend}\), opened in [\d.]+ s$", second.stdout, re.M)
    continuing = re.search(
        r"^  this month so far: ([\d,]+) users, ([\d,]+) increments, (\$[\d,.]+)$", second.stdout, re.M
    )
    if current_month() != month:
        pytest.skip("the month changed during the test")
    assert continuing, second.stdout
    assert number(continuing.group(1)) == after_first["users"]
    assert number(continuing.group(2)) == first_increments
    assert dollars_to_microcents(continuing.group(3)) == after_first["total"]
    second_increments = demo_increments(second.stdout)
    assert f"ledger check: all {second_increments:,} increments counted (this run's)" in second.stdout

    after_second = report_json("--store", DATA, cwd=tmp_path)
    assert after_second["increments"] == first_increments + second_increments
    assert after_second["total"] > after_first["total"]
    assert after_second["users"] >= after_first["users"]
    for usage_type, record in after_first["usage"].items():
        grown = after_second["usage"][usage_type]
        assert grown["units"] >= record["units"]
        assert grown["count"] >= record["count"]
    global_line = re.search(r"^global total: (\$[\d,.]+)$", second.stdout, re.M)
    assert global_line
    assert dollars_to_microcents(global_line.group(1)) == after_second["total"]


def test_demo_in_memory_creates_nothing(tmp_path: Path) -> None:
    result = run_cli("demo", "--store", "none", "--requests", "500", "--actors", "50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "store: none, memory only" in result.stdout
    assert "ledger check: all" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_demo_custom_store_path(tmp_path: Path) -> None:
    result = run_cli("demo", "--store", "nested/data", "--requests", "300", "--actors", "30", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "nested" / "data" / MANIFEST).is_file()
    assert not (tmp_path / DATA).exists()
    assert "usagemeter demo --store nested/data` continues from it" in result.stdout


def test_demo_refuses_a_store_held_by_another_process(tmp_path: Path) -> None:
    with MeteringService(store=str(tmp_path / DATA)):
        result = run_cli("demo", "--requests", "10", "--actors", "5", cwd=tmp_path)
    assert result.returncode == 1
    assert "another process holds the store" in result.stderr


# ---- a store with known contents ------------------------------------------------------------

KV_USERS = 30  # user-00 .. user-29 book kv usage in PAST_MONTH and in the current month
BUYER = "user-big"  # the top spender, who bought credit


def book(service: MeteringService, scale: int) -> None:
    """Books known usage: every user reads and writes kv, some through apps, some download."""
    for index in range(KV_USERS):
        actor = Actor(f"user-{index:02d}", f"app-{index % 3}" if index % 2 else None)
        service.increment_usage(actor, "kv:read", scale * (10 + index))
        service.increment_usage(actor, "kv:write", scale * (index + 1))
        if index % 5 == 0:
            service.increment_usage(actor, "filesystem:egress:bytes", scale * 123_457 * (index + 1))


@pytest.fixture(scope="module", params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Backend]]:
    """A store (path, backend) holding usage in PAST_MONTH and in the current month.

    BUYER bought $5 and spent more than the temp_free allowance this month, so every balance
    (allowance, purchased credit consumed, remaining) is non-trivial for that user.
    """
    backend: Backend = request.param
    path = tmp_path_factory.mktemp(f"store-{backend}") / "data"
    clock = FakeClock(PAST)
    with MeteringService(store=str(path), store_backend=backend, clock=clock) as service:
        book(service, scale=1)
        clock.now = time.time()
        book(service, scale=3)
        service.update_addon_credit(BUYER, to_microcents("5"))
        service.increment_usage(Actor(BUYER, "app-x"), "kv:write", 1_000_000)
    yield path, backend


def open_store(path: Path, backend: Backend) -> MeteringService:
    """The test's own view of a store: a MeteringService on it (use it in a ``with``)."""
    return MeteringService(store=str(path), store_backend=backend)


def expected_balance(service: MeteringService, user_id: str) -> dict[str, Any]:
    """The BALANCE object ``report --json`` must give ``user_id``, from the service's public API."""
    actor = Actor(user_id)
    stored = service._last_plan(user_id)
    if stored is not None:  # the plan the store kept, as the report resolves it
        service.events.on(
            "metering:registerAvailablePolicies",
            lambda event: event.available_policies.append(Policy(*stored)),
        )
        service.events.on(
            "metering:getUserSubscription",
            lambda event: setattr(event, "user_subscription_id", stored[0]),
        )
    budget = service.get_actor_budget(actor)
    allowed = service.get_allowed_usage(actor)
    assert allowed["remaining"] == budget["remaining"]
    assert allowed["monthly_allowance"] == budget["monthly_allowance"]
    return {
        "plan": service.get_actor_subscription(actor).id,
        "plan_stored": stored is not None,
        "monthly_allowance": budget["monthly_allowance"],
        "allowance_used": budget["allowance_used"],
        "purchased_credits": budget["purchased_credits"],
        "consumed_purchase_credits": budget["consumed_purchase_credits"],
        "remaining": budget["remaining"],
    }


def expected_month(service: MeteringService, month: str) -> dict[str, Any]:
    """What ``report --json`` must say about ``month``, computed from the service's own queries."""
    actors = sorted(service.get_actors_usage(month), key=lambda row: (-row[1], row[0]))
    usage: dict[str, dict[str, int]] = {}
    if month == current_month():
        global_usage = service.get_global_usage()
        total = global_usage["total"]
        usage = {key: dict(record) for key, record in global_usage.items() if key != "total"}
    else:
        for user_id, _, _ in actors:
            details = service.get_actor_month_usage_details(Actor(user_id), month)["usage"]
            for key, record in details.items():
                if key == "total":
                    continue
                summed = usage.setdefault(key, {"units": 0, "cost": 0, "count": 0})
                for field in ("units", "cost", "count"):
                    summed[field] += record[field]
        total = sum(spent for _, spent, _ in actors)
    return {
        "users": len(actors),
        "increments": sum(count for _, _, count in actors),
        "total": total,
        "usage": usage,
        "top_actors": [
            {"user_id": user, "total": spent, "count": count, "balance": expected_balance(service, user)}
            for user, spent, count in actors
        ],
    }


# ---- report ---------------------------------------------------------------------------------

# The keys of the --json documents, as JSON_SHAPE documents them.
REPORT_KEYS = {"store", "backend", "month", "balances_month"}
MONTH_KEYS = REPORT_KEYS | {"users", "increments", "total", "usage", "top_actors"}
ACTOR_KEYS = REPORT_KEYS | {"user_id", "total", "increments", "usage", "app_totals", "balance"}
TOP_ACTOR_KEYS = {"user_id", "total", "count", "balance"}
BALANCE_KEYS = {
    "plan",
    "plan_stored",
    "monthly_allowance",
    "allowance_used",
    "purchased_credits",
    "consumed_purchase_credits",
    "remaining",
}
RECORD_KEYS = {"units", "cost", "count"}


@pytest.mark.parametrize("month", [None, PAST_MONTH])
def test_report_json_matches_the_service(store: tuple[Path, Backend], month: str | None) -> None:
    path, backend = store
    document = report_json("--store", str(path), *(("--month", month) if month else ()))
    with open_store(path, backend) as service:
        expected = expected_month(service, month or current_month())
    assert document["store"] == str(path)
    assert document["backend"] == backend
    assert document["month"] == (month or current_month())
    assert document["balances_month"] == current_month()
    for key in ("users", "increments", "total", "usage", "top_actors"):
        assert document[key] == expected[key], key
    assert isinstance(document["total"], int)  # money stays an exact integer of µ¢
    # ... and agrees with what was booked (units and counts do not depend on prices).
    scale = 1 if month else 3
    assert document["users"] == KV_USERS + (0 if month else 1)
    assert document["usage"]["kv:read"]["units"] == scale * sum(10 + index for index in range(KV_USERS))
    assert document["usage"]["kv:read"]["count"] == KV_USERS
    assert document["usage"]["filesystem:egress:bytes"]["count"] == len(range(0, KV_USERS, 5))
    assert document["increments"] == 2 * KV_USERS + len(range(0, KV_USERS, 5)) + (0 if month else 1)


@pytest.mark.parametrize("actor", [None, BUYER, "nobody"])
def test_report_json_keys_are_data(store: tuple[Path, Backend], actor: str | None) -> None:
    """Every key is a documented name or data (a usage type, an app); no value names the code."""
    path, _ = store
    document = report_json("--store", str(path), *(("--actor", actor) if actor else ()))
    assert set(document) == (MONTH_KEYS if actor is None else ACTOR_KEYS)
    default = CostMap.default()
    for usage_type, record in document["usage"].items():
        assert usage_type in default
        assert set(record) == RECORD_KEYS
    if actor is None:
        assert document["top_actors"]
        for row in document["top_actors"]:
            assert set(row) == TOP_ACTOR_KEYS
            assert set(row["balance"]) == BALANCE_KEYS
    else:
        assert set(document["balance"]) == BALANCE_KEYS
        for app, record in document["app_totals"].items():
            assert app.startswith(("app-", "os-global"))
            assert set(record) == {"total", "count"}
    documented = set(re.findall(r'"([a-z_]+)":', JSON_SHAPE))
    assert MONTH_KEYS | ACTOR_KEYS | TOP_ACTOR_KEYS | BALANCE_KEYS | RECORD_KEYS <= documented
    text = json.dumps(document)
    for internal in ("get_global_usage", "get_actor", "per_type_totals"):
        assert internal not in text


def test_report_help_documents_the_json_shape() -> None:
    result = run_cli("report", "--help")
    assert result.returncode == 0
    assert JSON_SHAPE in result.stdout
    assert_fits_and_singular(result.stdout)


def test_report_top(store: tuple[Path, Backend]) -> None:
    path, _ = store
    document = report_json("--store", str(path), "--top", "3")
    assert len(document["top_actors"]) == 3
    assert document["top_actors"][0]["user_id"] == BUYER
    assert document["users"] == KV_USERS + 1


def test_report_text(store: tuple[Path, Backend]) -> None:
    path, backend = store
    result = run_cli("report", "--store", str(path), "--exact")
    assert result.returncode == 0, result.stderr
    with open_store(path, backend) as service:
        expected = expected_month(service, current_month())
    lines = result.stdout.splitlines()
    assert lines[0] == f"store {path} ({backend})"
    total = expected["total"]
    assert (
        lines[1] == f"{current_month()}: {expected['users']:,} users, {expected['increments']:,} increments, "
        f"total {format_dollars(total, exact=True)}"
    )
    types = table(lines, "Usage types by cost")
    assert {row[0] for row in types} == set(expected["usage"])
    for usage_type, units, count, cost in types:
        record = expected["usage"][usage_type]
        assert (number(units), number(count), dollars_to_microcents(cost)) == (
            record["units"],
            record["count"],
            record["cost"],
        )
    users = table(lines, "Top users by spend")
    assert len(users) == 10
    for row, actor in zip(users, expected["top_actors"], strict=False):
        balance = actor["balance"]
        assert row == [
            actor["user_id"],
            f"{actor['count']:,}",
            format_dollars(actor["total"], exact=True),
            balance["plan"] + ("" if balance["plan_stored"] else "*"),
            format_dollars(balance["monthly_allowance"], exact=True),
            format_dollars(balance["remaining"], exact=True),
            format_dollars(balance["purchased_credits"], exact=True),
        ]
    assert_fits_and_singular(result.stdout)


@pytest.mark.parametrize("backend", BACKENDS)
def test_report_shows_the_plan_the_application_chose(tmp_path: Path, backend: Backend) -> None:
    """A plan chosen through the events (not the built-in rules) is kept in the store and reported."""
    path = tmp_path / "store"
    pro = Policy("pro", to_microcents("20"))
    with MeteringService(store=str(path), store_backend=backend) as service:
        service.events.on(
            "metering:registerAvailablePolicies", lambda event: event.available_policies.append(pro)
        )
        service.events.on(
            "metering:getUserSubscription",
            lambda event: setattr(
                event, "user_subscription_id", "pro" if event.actor.user_id == "p" else None
            ),
        )
        service.increment_usage(Actor("p"), "kv:write", 1_000)
        service.increment_usage(Actor("free"), "kv:write", 1)
        spent = service.get_actor_current_month_usage_details(Actor("p"))["usage"]["total"]
    with open_store(path, backend) as reopened:
        assert reopened._last_plan("p") == ("pro", to_microcents("20"))
        assert reopened._last_plan("free") == ("temp_free", 25_000_000)
    document = report_json("--store", str(path), "--actor", "p")
    assert document["balance"]["plan"] == "pro" and document["balance"]["plan_stored"]
    assert document["balance"]["monthly_allowance"] == to_microcents("20")
    assert document["balance"]["remaining"] == to_microcents("20") - spent
    text = run_cli("report", "--store", str(path), "--actor", "p")
    assert f"plan in {current_month()}: pro, allowance $20.00 a month" in text.stdout
    assert "no plan stored" not in text.stdout
    with open_store(path, backend) as reopened:  # the report wrote nothing
        assert reopened._last_plan("p") == ("pro", to_microcents("20"))


def test_report_shows_plans_and_balances(store: tuple[Path, Backend]) -> None:
    """The buyer's row and actor report show the plan, allowance, remaining and purchased credit."""
    path, backend = store
    with open_store(path, backend) as service:
        balance = expected_balance(service, BUYER)
    assert balance["plan"] == "temp_free"  # a bare user id: no email in a store
    assert balance["purchased_credits"] == to_microcents("5")
    assert 0 < balance["consumed_purchase_credits"] < balance["purchased_credits"]
    assert balance["allowance_used"] == balance["monthly_allowance"] > 0
    assert 0 < balance["remaining"] < balance["purchased_credits"]

    result = run_cli("report", "--store", str(path), "--top", "1")
    assert result.returncode == 0, result.stderr
    (row,) = table(result.stdout.splitlines(), "Top users by spend")
    assert row[0] == BUYER
    assert balance["plan_stored"]  # the store kept the plan the buyer was charged under
    assert row[3:] == [
        "temp_free",
        format_dollars(balance["monthly_allowance"]),
        format_dollars(balance["remaining"]),
        "$5.00",
    ]
    assert "Top users by spend (1 of 31 users)" in result.stdout
    assert "no plan stored" not in result.stdout

    actor = run_cli("report", "--store", str(path), "--actor", BUYER)
    assert actor.returncode == 0, actor.stderr
    remaining = format_dollars(balance["remaining"])
    assert f"plan in {current_month()}: temp_free, allowance $0.25 a month, $0.25 used" in actor.stdout
    consumed = format_dollars(balance["consumed_purchase_credits"])
    assert f"purchased credit: $5.00, {consumed} consumed; remaining {remaining}" in actor.stdout
    assert report_json("--store", str(path), "--actor", BUYER)["balance"] == balance


def test_report_past_month_text(store: tuple[Path, Backend]) -> None:
    path, _ = store
    result = run_cli("report", "--store", str(path), "--month", PAST_MONTH, "--top", "0")
    assert result.returncode == 0, result.stderr
    assert "sums of the per-user figures" in result.stdout
    assert f"plans and balances in {current_month()}" in result.stdout
    assert len(table(result.stdout.splitlines(), "Top users by spend")) == KV_USERS
    assert_fits_and_singular(result.stdout)


def test_report_empty_month(store: tuple[Path, Backend]) -> None:
    path, _ = store
    result = run_cli("report", "--store", str(path), "--month", "2001-01")
    assert result.returncode == 0, result.stderr
    assert "2001-01: 0 users, 0 increments, total $0.00\n" in result.stdout
    assert report_json("--store", str(path), "--month", "2001-01")["top_actors"] == []


@pytest.mark.parametrize(
    ("user_id", "month"), [("user-03", PAST_MONTH), ("user-03", None), ("user-04", None)]
)
def test_report_actor(store: tuple[Path, Backend], user_id: str, month: str | None) -> None:
    path, backend = store
    month_args = ("--month", month) if month else ()
    document = report_json("--store", str(path), "--actor", user_id, *month_args)
    with open_store(path, backend) as service:
        details = service.get_actor_month_usage_details(Actor(user_id), month or current_month())
        balance = expected_balance(service, user_id)
    assert document["user_id"] == user_id
    assert document["backend"] == backend
    assert document["total"] == details["usage"]["total"]
    assert document["usage"] == {key: value for key, value in details["usage"].items() if key != "total"}
    assert document["app_totals"] == details["app_totals"]
    assert document["increments"] == sum(record["count"] for record in document["usage"].values())
    assert document["balance"] == balance
    app = "app-0" if user_id == "user-03" else "os-global"  # user-03 books through app-0; user-04 has none
    assert document["app_totals"][app]["total"] == document["total"]

    result = run_cli("report", "--store", str(path), "--actor", user_id, "--exact", *month_args)
    assert result.returncode == 0, result.stderr
    total = document["total"]
    assert f"{user_id} in {month or current_month()}: " in result.stdout
    assert f"total {format_dollars(total, exact=True)}\n" in result.stdout
    apps = table(result.stdout.splitlines(), "Apps")
    assert [app, f"{document['app_totals'][app]['count']:,}", format_dollars(total, exact=True)] in apps
    assert "Apps (1 app)" in result.stdout
    assert_fits_and_singular(result.stdout)


def test_report_unknown_actor(store: tuple[Path, Backend]) -> None:
    path, _ = store
    result = run_cli("report", "--store", str(path), "--actor", "nobody")
    assert result.returncode == 0, result.stderr
    assert "nobody in " in result.stdout
    assert ": 0 increments, total $0.00\n" in result.stdout
    assert "plan in " in result.stdout
    assert "remaining $0.25" in result.stdout  # the temp_free allowance, untouched


def test_report_reads_without_changing_what_is_stored(store: tuple[Path, Backend]) -> None:
    path, _ = store
    before = report_json("--store", str(path), "--month", PAST_MONTH)
    # Not the files' bytes: redb rewrites its header on every open. No snapshot was written if the
    # generation and the record count stay as they were.
    summary = verify_store(path)
    report_json("--store", str(path))
    report_json("--store", str(path), "--actor", "nobody")  # balances of a user the store lacks
    assert run_cli("report", "--store", str(path), "--top", "0").returncode == 0
    assert verify_store(path) == summary
    assert report_json("--store", str(path), "--month", PAST_MONTH) == before


def test_report_counts_one_in_the_singular(tmp_path: Path) -> None:
    """A month with one user who made one increment of one type through one app."""
    path = tmp_path / "one"
    with MeteringService(store=str(path)) as service:
        service.increment_usage(Actor("solo", "app-1"), "kv:read", 1)
    for args in ((), ("--actor", "solo")):
        result = run_cli("report", "--store", str(path), *args)
        assert result.returncode == 0, result.stderr
        assert_fits_and_singular(result.stdout)
        assert "1 increment, total $0.00" in result.stdout  # 63 µ¢ rounds to $0.00
        assert "(1 type)" in result.stdout
    month = run_cli("report", "--store", str(path))
    assert f"{current_month()}: 1 user, 1 increment, total $0.00" in month.stdout
    assert "Top users by spend (1 of 1 user)" in month.stdout


def test_report_missing_store_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = run_cli("report", "--store", str(missing), cwd=tmp_path)
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert str(missing) in result.stderr
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_report_directory_without_a_store(tmp_path: Path) -> None:
    result = run_cli("report", "--store", str(tmp_path))
    assert result.returncode == 1
    assert MANIFEST in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_store_is_a_file(tmp_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("not a store")
    result = run_cli("report", "--store", str(regular))
    assert result.returncode == 1
    assert result.stderr == f"usagemeter report: no store at {regular}: it is a file, not a directory\n"
    assert result.stdout == ""


@pytest.mark.parametrize("month", ["2024-13", "2024-3", "march"])
def test_report_bad_month(tmp_path: Path, month: str) -> None:
    result = run_cli("report", "--store", str(tmp_path), "--month", month)
    assert result.returncode == 2
    assert "not a month YYYY-MM" in result.stderr


def test_report_on_a_store_held_by_another_process(store: tuple[Path, Backend]) -> None:
    path, backend = store
    with open_store(path, backend):
        result = run_cli("report", "--store", str(path))
    assert result.returncode == 1
    assert "another process holds the store" in result.stderr


# ---- store verify / recover -----------------------------------------------------------------


def verified(path: Path) -> dict[str, str]:
    """Runs ``store verify`` (which must succeed) and returns its summary lines as a dict."""
    result = run_cli("store", "verify", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}: ok, every record verified"
    return dict(line.strip().split(": ", 1) for line in lines[1:])


def test_store_verify_good_store(store: tuple[Path, Backend]) -> None:
    path, backend = store
    summary = verified(path)
    assert summary["backend"] == backend
    assert_fits_and_singular(run_cli("store", "verify", str(path)).stdout)
    for key in ("format version", "generation", "records", "users", "user months"):
        assert key in summary
    assert number(summary["records"]) > 0
    assert number(summary["users"].split()[0]) == KV_USERS + 1
    # One per user and month: 30 users in PAST_MONTH, the same 30 and user-big this month.
    assert number(summary["user months"]) == 2 * KV_USERS + 1


def manifest_positions(path: Path) -> list[int]:
    """Byte offsets to flip in a manifest: its first byte, its middle, its last before the newline."""
    size = len((path / MANIFEST).read_bytes().rstrip(b"\n"))
    return [0, size // 2, size - 1]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_store_verify_corrupted_manifest(store: tuple[Path, Backend], tmp_path: Path, which: int) -> None:
    path, _ = store
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    manifest = copy / MANIFEST
    content = bytearray(manifest.read_bytes())
    content[manifest_positions(copy)[which]] ^= 0x01
    manifest.write_bytes(bytes(content))

    result = run_cli("store", "verify", str(copy))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"usagemeter store verify: {copy}: Store")
    # Opening the copy to report on it must refuse too, never show an empty or altered ledger.
    report = run_cli("report", "--store", str(copy))
    assert report.returncode == 1, report.stdout
    assert report.stderr.startswith("usagemeter report: Store")
    verified(path)  # the original is untouched


def test_store_verify_missing_path(tmp_path: Path) -> None:
    for command in ("verify", "recover"):
        result = run_cli("store", command, str(tmp_path / "missing"))
        assert result.returncode == 1
        assert "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_store_verify_held_by_another_process(store: tuple[Path, Backend]) -> None:
    path, backend = store
    with open_store(path, backend):
        result = run_cli("store", "verify", str(path))
    assert result.returncode == 1
    assert "another process holds the store" in result.stderr
    assert str(path) in result.stderr


def test_store_recover_good_store_keeps_everything(store: tuple[Path, Backend], tmp_path: Path) -> None:
    path, _ = store
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    records = verified(copy)["records"]
    before = [report_json("--store", str(copy), *month) for month in ((), ("--month", PAST_MONTH))]

    result = run_cli("store", "recover", str(copy))
    assert result.returncode == 0, result.stderr
    # One line, wrapped where the path makes it longer than 100 columns.
    assert " ".join(result.stdout.split()) == f"{copy}: kept {records} records, dropped 0 records"
    assert verified(copy)["records"] == records
    after = [report_json("--store", str(copy), *month) for month in ((), ("--month", PAST_MONTH))]
    for old, new in zip(before, after, strict=True):
        old.pop("store")
        new.pop("store")
        assert new == old


def test_store_command_needs_a_subcommand() -> None:
    result = run_cli("store")
    assert result.returncode == 2
    assert "usage: usagemeter store" in result.stderr
    help_text = run_cli("store", "--help").stdout
    assert "verify" in help_text
    assert "recover" in help_text


# ---- costmap check --------------------------------------------------------------------------


def test_costmap_check_good_files(tmp_path: Path) -> None:
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps({"chat:model:input": "31.25", "chat:model:output": 125}))
    egress = tmp_path / "egress.json"
    egress.write_text('{"files:egress:bytes": 0.0111758708953857421875}')
    result = run_cli("costmap", "check", str(chat), str(egress))
    assert result.returncode == 0, result.stderr
    assert f"{chat}: 2 entries" in result.stdout
    assert f"{egress}: 1 entry" in result.stdout
    assert "ok: 3 entries in 2 files" in result.stdout
    assert "files:egress:bytes" in result.stdout
    assert "0.0111758708953857421875 -> 0.011175870895" in result.stdout
    assert result.stderr == ""


def test_costmap_check_without_rounding(tmp_path: Path) -> None:
    kv = tmp_path / "kv.json"
    kv.write_text('{"kv:read": 63, "kv:write": "125"}')
    result = run_cli("costmap", "check", str(kv))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{kv}: 2 entries", "ok: 2 entries in 1 file"]


@pytest.mark.parametrize(
    "content",
    ['{"chat:model:input": -1}', '{"chat:model:input": "lots"}', '{"chat:model:input": "NaN"}'],
)
def test_costmap_check_bad_price(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "bad-prices.json"
    bad.write_text(content)
    result = run_cli("costmap", "check", str(bad))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "bad-prices.json" in result.stderr
    assert "chat:model:input" in result.stderr


def test_costmap_check_same_key_in_two_files(tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    first.write_text('{"kv:read": 63}')
    second = tmp_path / "second.json"
    second.write_text('{"kv:read": 64}')
    result = run_cli("costmap", "check", str(first), str(second))
    assert result.returncode == 1
    assert "kv:read" in result.stderr
    assert "second.json" in result.stderr


def test_costmap_check_malformed_json(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"kv:read": 63,')
    result = run_cli("costmap", "check", str(broken))
    assert result.returncode == 1
    assert "broken.json" in result.stderr


def test_costmap_check_missing_file(tmp_path: Path) -> None:
    result = run_cli("costmap", "check", str(tmp_path / "missing.json"))
    assert result.returncode == 1
    assert "missing.json" in result.stderr


# ---- costmap show ---------------------------------------------------------------------------


def shown_entries(stdout: str) -> list[tuple[str, Decimal, str]]:
    """The (key, price, source) rows printed by ``costmap show``."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["usage", "type", "µ¢/unit", "source"]
    rows = []
    for line in lines[2:-1]:  # header, rule ... count line
        key, price, source = line.split()
        rows.append((key, Decimal(price), source))
    return rows


@pytest.mark.parametrize("prefix", ["claude:claude-sonnet-4-5", "filesystem:", "kv:", "openai:gpt-image-1:"])
def test_costmap_show_prefix(prefix: str) -> None:
    result = run_cli("costmap", "show", prefix)
    assert result.returncode == 0, result.stderr
    default = CostMap.default()
    expected = sorted(key for key in default.keys() if key.startswith(prefix))
    assert expected
    rows = shown_entries(result.stdout)
    assert [key for key, _, _ in rows] == expected
    for key, price, source in rows:
        assert price == default[key]  # exact, digit for digit
        assert source == Path(default.source_of(key)).stem
    count_line = f"{len(expected):,} of {len(default):,} entries matching {prefix!r}"
    assert result.stdout.splitlines()[-1] == count_line


def test_costmap_show_exact_prices() -> None:
    result = run_cli("costmap", "show", "filesystem:egress")
    assert "0.011175870895" in result.stdout  # rounded at load to 12 digits, never via a float
    assert not re.search(r"\dE[+-]?\d", result.stdout, re.I)  # no exponent notation


def test_costmap_show_everything() -> None:
    result = run_cli("costmap", "show")
    assert result.returncode == 0, result.stderr
    default = CostMap.default()
    assert [key for key, _, _ in shown_entries(result.stdout)] == sorted(default.keys())
    assert result.stdout.splitlines()[-1] == f"{len(default):,} of {len(default):,} entries"
    assert_fits_and_singular(result.stdout)  # the longest key, price and source side by side


def test_costmap_show_no_match() -> None:
    result = run_cli("costmap", "show", "no-such-provider:")
    assert result.returncode == 0
    count_line = f"0 of {len(CostMap.default()):,} entries matching 'no-such-provider:'"
    assert result.stdout.splitlines() == [count_line]


# ---- entry points ---------------------------------------------------------------------------


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "report", "store", "costmap"):
        assert command in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: usagemeter" in result.stderr


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    from usagemeter.cli import main

    assert main(["costmap", "show", "kv:"]) == 0
    out = capsys.readouterr().out
    assert "kv:read" in out
    assert "kv:write" in out


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"usagemeter {importlib.metadata.version('usagemeter')}\n"
    assert importlib.metadata.version("usagemeter") == __version__


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"usagemeter {__version__}\n"


def test_import_usagemeter_loads_neither_rich_nor_the_cli() -> None:
    """The library is for servers: its import must not pay for the command line's dependencies."""
    code = (
        "import sys, usagemeter, usagemeter.store\n"
        "loaded = sorted(name for name in sys.modules if name == 'rich' or name.startswith(('rich.', "
        "'usagemeter.cli')))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


# ---- money in human output ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("microcents", "cents", "exact"),
    [
        (0, "$0.00", "$0.00000000"),
        (1, "$0.00", "$0.00000001"),
        (499_999, "$0.00", "$0.00499999"),
        (500_000, "$0.01", "$0.00500000"),  # half a cent rounds up
        (123_456_789, "$1.23", "$1.23456789"),
        (1_234_500_000, "$12.35", "$12.34500000"),
        (1_234_499_999, "$12.34", "$12.34499999"),
        (99_999_999, "$1.00", "$0.99999999"),
        (10**18, "$10,000,000,000.00", "$10,000,000,000.00000000"),
        (-500_000, "-$0.01", "-$0.00500000"),  # half away from zero
        (-499_999, "$0.00", "-$0.00499999"),  # never "-$0.00"
    ],
)
def test_format_dollars(microcents: int, cents: str, exact: str) -> None:
    assert format_dollars(microcents) == cents
    assert format_dollars(microcents, exact=True) == exact


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_format_dollars_is_decimal_rounding(microcents: int) -> None:
    """Cents are the exact amount rounded half up (away from zero); exact shows every µ¢."""
    with localcontext(prec=100):  # enough digits for every amount drawn: the reference is exact
        exact = (Decimal(microcents) / 100_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    shown = format_dollars(microcents)
    assert Decimal(shown.replace("$", "").replace(",", "")) == exact
    assert (
        to_microcents(format_dollars(microcents, exact=True).replace("$", "").replace(",", "")) == microcents
    )


def test_demo_money_is_in_cents_by_default(tmp_path: Path) -> None:
    small = ("--requests", "500", "--actors", "50", "--threads", "2", "--store", "none")
    default = run_cli("demo", *small, cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    amounts = re.findall(r"\$[\d,]+\.(\d+)", default.stdout)
    assert amounts
    assert {len(fraction) for fraction in amounts} == {2}
    exact = run_cli("demo", *small, "--exact", cwd=tmp_path)
    assert exact.returncode == 0, exact.stderr
    assert {len(fraction) for fraction in re.findall(r"\$[\d,]+\.(\d+)", exact.stdout)} == {8}


# ---- demo: the store path, the seed, the width ----------------------------------------------


def test_demo_store_is_a_file(tmp_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("not a store")
    result = run_cli("demo", "--store", str(regular), "--requests", "10", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"usagemeter demo: --store {regular}: it is a file, not a directory (a store is a directory)\n"
    )
    assert regular.read_text() == "not a store"

    below = run_cli("demo", "--store", "notes.txt/data", "--requests", "10", cwd=tmp_path)
    assert below.returncode == 1
    assert "notes.txt is a file, not a directory" in below.stderr
    assert "Traceback" not in below.stderr


def test_demo_store_is_a_file_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("")
    assert main(["demo", "--store", str(regular), "--requests", "10"]) == 1
    assert "is a file, not a directory" in capsys.readouterr().err


def test_demo_workload_depends_on_the_seed_only() -> None:
    """The actors, their deals and every request are fixed by the seed, whoever serves them."""

    def population(
        seed: int,
    ) -> tuple[list[tuple[str, str | None, str | None]], frozenset[str], frozenset[str]]:
        made = make_population(200, seed)
        actors = [(actor.user_id, actor.app_id, actor.email) for actor in made.actors]
        return actors, made.tiny_plan_users, made.buyers

    def block(seed: int, number: int) -> list[tuple[str, object, tuple[int, ...]]]:
        calls = workload_block(make_population(200, seed), seed, number, BLOCK_SIZE)
        return [(call.actor.user_id, call.request, call.amounts) for call in calls]

    assert population(7) == population(7)
    assert population(7) != population(8)
    assert block(7, 0) == block(7, 0)
    assert block(7, 3) == block(7, 3)
    assert block(7, 0) != block(7, 1)
    assert block(7, 0) != block(8, 0)


def without_timings(stdout: str) -> str:
    """A demo's output with every figure that depends on the machine's speed masked."""
    stdout = re.sub(r"[\d,.]+ (s|requests/s|increments/s)\b", r"T \1", stdout)
    return stdout


def test_demo_seed_repeats_a_single_thread_run(tmp_path: Path) -> None:
    run = ("demo", "--requests", "2500", "--actors", "100", "--threads", "1", "--seed", "11", "--exact")
    first = run_cli(*run, "--store", "none", cwd=tmp_path)
    second = run_cli(*run, "--store", "none", cwd=tmp_path)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert " refused)" in first.stdout and ", 0 refused)" not in first.stdout  # refusals happen
    assert without_timings(first.stdout) == without_timings(second.stdout)
    other_seed = run_cli(*run[:-2], "12", "--exact", "--store", "none", cwd=tmp_path)
    assert without_timings(other_seed.stdout) != without_timings(first.stdout)


def test_demo_seed_help_says_what_it_does_not_fix() -> None:
    result = run_cli("demo", "--help")
    help_text = " ".join(result.stdout.split())
    assert "It does not fix which requests are refused, nor the totals, when several threads run" in help_text
    assert "With --threads 1 on a new store (or --store none) a run repeats exactly" in help_text


def test_demo_output_fits_and_counts_one_in_the_singular(tmp_path: Path, demo_output: str) -> None:
    assert_fits_and_singular(demo_output)
    result = run_cli("demo", "--requests", "1", "--actors", "1", "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usagemeter demo: 1 request from 1 actor on 1 thread (seed 42)" in result.stdout
    assert_fits_and_singular(result.stdout)
    again = run_cli("demo", "--requests", "1", "--actors", "1", "--threads", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "  this month so far: 1 user, " in again.stdout
    assert_fits_and_singular(again.stdout)
