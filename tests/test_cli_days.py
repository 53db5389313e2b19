"""``usagemeter report --by-day`` and ``--format csv|json``: per-day figures of a store or a
fleet's shared ledger, parsed and compared with ``get_actor_usage_by_day``."""

from __future__ import annotations

import calendar
import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

import pytest
from redis_support import RedisServer
from support import FakeClock
from test_cli import PAST_MONTH, report_json, run_cli
from usagemeter import Actor, MeteringService
from usagemeter.cli.report import CSV_COLUMNS

Backend = Literal["sled", "redb"]
USERS = ("alice", "bob", "carol")
FRACTION_TYPE = "claude:claude-3-haiku-20240307:ephemeral_5m_input_tokens"  # 31.25 µ¢ a unit


def march(day: int, hour: int = 12) -> float:
    """2024-03-DD at the hour, UTC (PAST_MONTH)."""
    return float(calendar.timegm((2024, 3, day, hour, 0, 0)))


def book_days(service: MeteringService, clock: FakeClock) -> None:
    """Three users over five days of March 2024, through two apps, with a refund and a set_total."""
    for day in (1, 2, 2, 9, 31):
        clock.now = march(day, hour=day % 24)
        service.increment_usage(Actor("alice"), "kv:write", day)
        service.increment_usage(Actor("alice", "app-a"), "kv:read", 2)
        if day != 9:
            service.increment_usage(Actor("bob"), FRACTION_TYPE, day)
    service.refund(Actor("alice"), "kv:write", 3)
    service.set_actor_current_month_usage_total(Actor("carol"), 12_345)


@pytest.fixture(params=["sled", "redb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    backend: Backend = request.param
    path = tmp_path / "store"
    clock = FakeClock(march(1))
    with MeteringService(None, clock=clock, store=path, store_backend=backend) as service:
        book_days(service, clock)
    return path


def by_day_of(path: Path | str, user: str, month: str = PAST_MONTH) -> dict[str, Any]:
    with MeteringService(None, store=path) as service:
        by_day: dict[str, Any] = dict(service.get_actor_usage_by_day(Actor(user), month))
    return by_day


def test_actor_by_day_json_is_the_api(store: Path) -> None:
    for user in USERS:
        document = report_json("--store", str(store), "--month", PAST_MONTH, "--actor", user, "--by-day")
        expected = by_day_of(store, user)
        assert document["days"] == expected["days"]
        assert document["undated"] is None
        assert list(document["days"]) == sorted(document["days"])
        # Summed over the days, each usage type's figures are the month's in the same document.
        sums: dict[str, dict[str, int]] = {}
        for day in document["days"].values():
            for usage_type, figures in day["by_type"].items():
                into = sums.setdefault(usage_type, {"units": 0, "cost": 0, "count": 0})
                for key in into:
                    into[key] += figures[key]
        exact = {t: f for t, f in sums.items() if t != FRACTION_TYPE}  # rounded per day
        assert exact == {t: f for t, f in document["usage"].items() if t in exact}
    assert list(by_day_of(store, "alice")["days"]) == [f"2024-03-{d:02d}" for d in (1, 2, 9, 31)]


def test_month_by_day_json_sums_the_users(store: Path) -> None:
    document = report_json("--store", str(store), "--month", PAST_MONTH, "--by-day")
    expected: dict[str, dict[str, Any]] = {}
    for user in USERS:
        for date, day in by_day_of(store, user)["days"].items():
            into = expected.setdefault(date, {"total": 0, "count": 0, "users": 0, "by_type": {}})
            into["total"] += day["total"]
            into["count"] += day["count"]
            into["users"] += 1
            for usage_type, figures in day["by_type"].items():
                summed = into["by_type"].setdefault(usage_type, {"units": 0, "cost": 0, "count": 0})
                for key in summed:
                    summed[key] += figures[key]
    assert document["days"] == expected
    assert document["undated"] is None
    assert sum(day["count"] for day in document["days"].values()) == document["increments"]
    assert sum(day["total"] for day in document["days"].values()) == document["total"]
    # Without --by-day the document is as it was.
    plain = report_json("--store", str(store), "--month", PAST_MONTH)
    assert "days" not in plain and plain == {
        k: v for k, v in document.items() if k not in ("days", "undated")
    }
    as_format = run_cli("report", "--store", str(store), "--month", PAST_MONTH, "--format", "json")
    assert as_format.returncode == 0 and json.loads(as_format.stdout) == plain


def parse_csv(text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return list(reader)


def rows_to_days(rows: list[dict[str, str]], user: str) -> dict[str, dict[str, dict[str, int]]]:
    """A user's CSV rows as ``{date: {usage type: figures}}``."""
    days: dict[str, dict[str, dict[str, int]]] = {}
    for row in rows:
        if row["user_id"] == user:
            assert row["month"] == PAST_MONTH
            figures = {
                "units": int(row["units"]),
                "cost": int(row["cost_microcents"]),
                "count": int(row["count"]),
            }
            days.setdefault(row["date"], {})[row["usage_type"]] = figures
    return days


def test_csv_export_is_one_row_per_user_day_and_type(store: Path) -> None:
    result = run_cli("report", "--store", str(store), "--month", PAST_MONTH, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = parse_csv(result.stdout)
    assert {row["user_id"] for row in rows} == set(USERS)
    keys = [(row["user_id"], row["date"], row["usage_type"]) for row in rows]
    assert len(keys) == len(set(keys)) and keys == sorted(keys)
    for user in USERS:
        expected = {date: day["by_type"] for date, day in by_day_of(store, user)["days"].items()}
        assert rows_to_days(rows, user) == expected
    only = run_cli(
        "report", "--store", str(store), "--month", PAST_MONTH, "--format", "csv", "--actor", "bob"
    )
    assert parse_csv(only.stdout) == [row for row in rows if row["user_id"] == "bob"]
    empty = run_cli("report", "--store", str(store), "--month", "2001-01", "--format", "csv")
    assert empty.returncode == 0 and parse_csv(empty.stdout) == []


def test_text_by_day_shows_each_day(store: Path) -> None:
    result = run_cli("report", "--store", str(store), "--month", PAST_MONTH, "--by-day", "--exact")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("By day, UTC (4 days;")))
    rows = [line.split() for line in lines[at + 3 :] if line.startswith("2024-03-")]
    document = report_json("--store", str(store), "--month", PAST_MONTH, "--by-day")
    assert [row[0] for row in rows] == list(document["days"])
    for row in rows:
        day = document["days"][row[0]]
        assert (int(row[1]), int(row[2].replace(",", ""))) == (day["users"], day["count"])
    actor = run_cli("report", "--store", str(store), "--month", PAST_MONTH, "--by-day", "--actor", "alice")
    assert "By day, UTC (4 days)" in actor.stdout and "2024-03-31   kv:write" in actor.stdout
    assert "refund:kv:write" in actor.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--format", "xml"), "invalid choice: 'xml'"),
        (("--format", "csv", "--json"), "not allowed with"),
        (("--month", "2024-3", "--by-day"), "not a month YYYY-MM"),
    ],
)
def test_bad_report_options_are_refused(store: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("report", "--store", str(store), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.timeout(120)
def test_by_day_and_csv_of_a_fleet(redis_server: RedisServer) -> None:
    """Two workers (their clocks a day apart) meter one user; the report of the shared ledger
    shows both workers' days, summed."""
    url = redis_server.url
    clock_a, clock_b = FakeClock(march(4)), FakeClock(march(5))
    with (
        MeteringService(None, clock=clock_a, store=url, snapshot_interval=0.1) as a,
        MeteringService(None, clock=clock_b, store=url, snapshot_interval=0.1) as b,
    ):
        for _ in range(2):
            a.increment_usage(Actor("dora"), "kv:write", 1)
            b.increment_usage(Actor("dora", "app-b"), "kv:write", 2)
        clock_a.now = march(5)
        a.increment_usage(Actor("dora"), "kv:read", 1)
    document = report_json("--store", url, "--month", PAST_MONTH, "--actor", "dora", "--by-day")
    assert document["days"] == {
        "2024-03-04": {
            "total": 250,
            "count": 2,
            "by_type": {"kv:write": {"units": 2, "cost": 250, "count": 2}},
        },
        "2024-03-05": {
            "total": 563,
            "count": 3,
            "by_type": {
                "kv:write": {"units": 4, "cost": 500, "count": 2},
                "kv:read": {"units": 1, "cost": 63, "count": 1},
            },
        },
    }
    exported = run_cli("report", "--store", url, "--month", PAST_MONTH, "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    expected = {date: day["by_type"] for date, day in document["days"].items()}
    assert rows_to_days(parse_csv(exported.stdout), "dora") == expected
    assert json.loads(json.dumps(document))["undated"] is None
