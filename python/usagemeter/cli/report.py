"""``usagemeter report --store PATH``: what a store holds for a month, or for one user.

PATH is a store directory or a fleet's shared ledger (``redis://...``). A shared ledger is opened
as one more worker of the fleet (non-exclusive, so servers may run and meter meanwhile), which
loads every user from Redis: the report shows the ledger as of that moment.

Without ``--actor``: the month's users, increments and total, the per-type totals and the top
users by spend with their plan and balances. With ``--actor ID``: that user's usage per type and
per app, plan and balances. ``--json`` (``--format json``) prints one document, money in integer
µ¢, of the shape JSON_SHAPE shows (``usagemeter report --help`` prints it too).

``--by-day`` adds the month per UTC day (``get_actor_usage_by_day``): the user's days with
``--actor``, else each day summed over the month's users (each user's day rounded to the µ¢
first, as a past month's per-type totals are). ``--format csv`` exports the month as CSV, one row
per (user, day, usage type): CSV_COLUMNS, money in integer µ¢; a month loaded from a store that
kept no per-day figures has its older figures on rows with an empty ``date``.

Balances come from ``get_actor_subscription`` and ``get_actor_budget`` of a service opened on the
store. The store keeps, with each user, the plan (id and monthly allowance) the application's
events last resolved the user to; the report uses it. A user with no stored plan (a store written
before plans were kept) is shown under the plan the built-in rules give a bare user id
(``temp_free``), marked ``*`` in text and ``"plan_stored": false`` in JSON.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from usagemeter import (
    GET_USER_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    Actor,
    GetUserSubscriptionEvent,
    MeteringService,
    Policy,
    RegisterAvailablePoliciesEvent,
    StoreError,
)
from usagemeter.cli.output import Printer, count, format_dollars, make_table
from usagemeter.cli.store import (
    AnyBackend,
    detect_backend,
    open_service,
    store_error_message,
    store_problem,
)
from usagemeter.store import is_shared_url, shown

__all__ = ["CSV_COLUMNS", "JSON_SHAPE", "ReportFormat", "current_month", "run_report"]

# The --json document's shape, documented here once and printed by `usagemeter report --help`.
# Keys are fixed names or data (usage types, app ids); usage types, apps and users are listed
# largest first. Adding a key is compatible; renaming or removing one is not.
JSON_SHAPE = """\
{
  "store": "PATH", "backend": "sled" | "redb" | "redis" | "redis-cluster", "month": "YYYY-MM",
  "balances_month": "YYYY-MM",   (the current month: balances are as of now)
  month report (no --actor):
  "users": int, "increments": int, "total": µ¢,
  "usage": {"<usage type>": {"units": int, "cost": µ¢, "count": int}, ...},
  "top_actors": [{"user_id": str, "total": µ¢, "count": int, "balance": BALANCE}, ...]
  actor report (--actor ID):
  "user_id": str, "total": µ¢, "increments": int, "usage": {...as above...},
  "app_totals": {"<app id>": {"total": µ¢, "count": int}, ...}, "balance": BALANCE
  with --by-day (the user's days with --actor, else summed over the month's users):
  "days": {"YYYY-MM-DD": DAY, ...}, "undated": DAY | null   (null: every figure has its day)
}
BALANCE = {"plan": str, "plan_stored": bool, "monthly_allowance": µ¢, "allowance_used": µ¢,
           "purchased_credits": µ¢, "consumed_purchase_credits": µ¢, "remaining": µ¢}
DAY = {"total": µ¢, "count": int, "by_type": {"<usage type>": {"units", "cost": µ¢, "count"}},
       "users": int   (month report only)}
"""

# The --format csv header: one row per (user, day, usage type) of the month, money in µ¢.
CSV_COLUMNS = ("month", "date", "user_id", "usage_type", "units", "cost_microcents", "count")

ReportFormat = Literal["text", "json", "csv"]

REPORT_CONNECT_TIMEOUT = 5.0  # seconds until an unreachable shared ledger is an error

_PLAN_NOTE = "* no plan stored for this user: the built-in rules' plan for a bare user id"


def use_stored_plans(service: MeteringService) -> None:
    """Resolve each user's plan to the one the store keeps for it (the application's events do
    not run here); a user without one gets the built-in rules' plan."""

    def register(event: RegisterAvailablePoliciesEvent) -> None:
        stored = service._last_plan(event.actor.user_id)
        if stored is not None:
            event.available_policies.append(Policy(*stored))

    def subscription(event: GetUserSubscriptionEvent) -> None:
        stored = service._last_plan(event.actor.user_id)
        if stored is not None:
            event.user_subscription_id = stored[0]

    service.events.on(REGISTER_AVAILABLE_POLICIES, register)
    service.events.on(GET_USER_SUBSCRIPTION, subscription)


def current_month() -> str:
    """The current UTC month, ``YYYY-MM``, as the service computes it from the system clock."""
    return time.strftime("%Y-%m", time.gmtime())


def _usage_records(usage: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """The per-type records ``{"<type>": {"units", "cost", "count"}}`` of a usage dict, largest cost
    first (no "total")."""
    records = {
        usage_type: {"units": record["units"], "cost": record["cost"], "count": record["count"]}
        for usage_type, record in usage.items()
        if usage_type != "total" and isinstance(record, Mapping)
    }
    return dict(sorted(records.items(), key=lambda item: (-item[1]["cost"], item[0])))


def _balance(service: MeteringService, user_id: str) -> dict[str, Any]:
    """The user's plan and this month's balances (µ¢), as the report's BALANCE object."""
    actor = Actor(user_id)
    stored = service._last_plan(user_id) is not None  # before resolving, which keeps a plan
    budget = service.get_actor_budget(actor)
    return {
        "plan": service.get_actor_subscription(actor).id,
        "plan_stored": stored,
        "monthly_allowance": budget["monthly_allowance"],
        "allowance_used": budget["allowance_used"],
        "purchased_credits": budget["purchased_credits"],
        "consumed_purchase_credits": budget["consumed_purchase_credits"],
        "remaining": budget["remaining"],
    }


def _month_report(service: MeteringService, month: str, top: int | None) -> dict[str, Any]:
    """What the open store holds for ``month``: the per-type totals and the users by spend.

    For the current month the per-type totals are ``get_global_usage()`` (exact sums, each rounded
    once); for another month they are the sums of every user's ``get_actor_month_usage_details``
    (each user's figure rounded to the µ¢ before summing), since the global aggregate covers only
    the current month.
    """
    # Largest total first, ties by user id so that the order is the same on every run.
    actors = sorted(service.get_actors_usage(month), key=lambda row: (-row[1], row[0]))
    if month == current_month():
        global_usage = service.get_global_usage()
        usage = _usage_records(global_usage)
        total: int = global_usage["total"]
    else:
        summed: dict[str, dict[str, int]] = {}
        for user_id, _total, _count in actors:
            details = service.get_actor_month_usage_details(Actor(user_id), month)
            for usage_type, record in _usage_records(details["usage"]).items():
                into = summed.setdefault(usage_type, {"units": 0, "cost": 0, "count": 0})
                for key in ("units", "cost", "count"):
                    into[key] += record[key]
        usage = _usage_records(summed)
        total = sum(user_total for _, user_total, _ in actors)
    top_actors = actors if top is None else actors[:top]
    return {
        "users": len(actors),
        "increments": sum(increments for _, _, increments in actors),
        "total": total,
        "usage": usage,
        "top_actors": [
            {"user_id": user_id, "total": spent, "count": increments, "balance": _balance(service, user_id)}
            for user_id, spent, increments in top_actors
        ],
    }


def _actor_report(service: MeteringService, user_id: str, month: str) -> dict[str, Any]:
    """One user's usage in ``month``: totals per usage type and per app, plan and balances."""
    details = service.get_actor_month_usage_details(Actor(user_id), month)
    usage = _usage_records(details["usage"])
    return {
        "user_id": user_id,
        "total": details["usage"]["total"],
        "increments": sum(record["count"] for record in usage.values()),
        "usage": usage,
        "app_totals": {
            app: {"total": record["total"], "count": record["count"]}
            for app, record in sorted(
                details["app_totals"].items(), key=lambda item: (-item[1]["total"], item[0])
            )
        },
        "balance": _balance(service, user_id),
    }


def _day_label(month: str, date: str | None) -> str:
    """A day's label in the text report: its date, or what undated figures are."""
    return date if date is not None else f"{month} undated"


def _days_of(service: MeteringService, user_ids: list[str], month: str, count_users: bool) -> dict[str, Any]:
    """``{"days": {date: DAY}, "undated": DAY | None}`` of ``user_ids`` summed (each user's
    figures are integer µ¢ already), with ``"users"`` per day if ``count_users``."""
    days: dict[str | None, dict[str, Any]] = {}
    for user_id in user_ids:
        by_day = service.get_actor_usage_by_day(Actor(user_id), month)
        user_days: list[tuple[str | None, Any]] = list(by_day["days"].items())
        if by_day["undated"] is not None:
            user_days.append((None, by_day["undated"]))
        for date, day in user_days:
            into = days.setdefault(date, {"total": 0, "count": 0, "by_type": {}, "users": 0})
            into["total"] += day["total"]
            into["count"] += day["count"]
            into["users"] += 1
            for usage_type, figures in day["by_type"].items():
                summed = into["by_type"].setdefault(usage_type, {"units": 0, "cost": 0, "count": 0})
                for key in ("units", "cost", "count"):
                    summed[key] += figures[key]
    for day in days.values():
        day["by_type"] = _usage_records(day["by_type"])
        if not count_users:
            del day["users"]
    dated = {date: day for date, day in sorted(days.items(), key=lambda item: item[0] or "") if date}
    return {"days": dated, "undated": days.get(None)}


def _write_csv(service: MeteringService, user_ids: list[str], month: str) -> None:
    """The month as CSV on stdout: CSV_COLUMNS, one row per (user, day, usage type), users in
    id order, days in date order (undated rows, date empty, first), usage types by name."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for user_id in sorted(user_ids):
        by_day = service.get_actor_usage_by_day(Actor(user_id), month)
        days: list[tuple[str, Any]] = []
        if by_day["undated"] is not None:
            days.append(("", by_day["undated"]))
        days.extend(sorted(by_day["days"].items()))
        for date, day in days:
            for usage_type, figures in sorted(day["by_type"].items()):
                writer.writerow(
                    (month, date, user_id, usage_type, figures["units"], figures["cost"], figures["count"])
                )


def _print_days_table(out: Printer, document: Mapping[str, Any], exact: bool) -> None:
    """Prints the --by-day part: per day the users (month report), increments and total; for one
    user, per day and usage type."""
    days: list[tuple[str | None, Mapping[str, Any]]] = list(document["days"].items())
    if document["undated"] is not None:
        days.insert(0, (None, document["undated"]))
    month = document["month"]
    if not days:
        out.print("\nno usage by day in this month")
        return
    if "user_id" in document:  # one user: a row per day and usage type
        out.print(f"\nBy day, UTC ({count(len(document['days']), 'day')})")
        table = make_table(
            ["day", "usage type", "units", "increments", "cost"], [False, False, True, True, True]
        )
        for date, day in days:
            for usage_type, figures in day["by_type"].items():
                table.add_row(
                    _day_label(month, date),
                    usage_type,
                    f"{figures['units']:,}",
                    f"{figures['count']:,}",
                    format_dollars(figures["cost"], exact=exact),
                )
        out.print(table)
    else:
        out.print(f"\nBy day, UTC ({count(len(document['days']), 'day')}; sums of the per-user figures)")
        table = make_table(["day", "users", "increments", "total"], [False, True, True, True])
        for date, day in days:
            table.add_row(
                _day_label(month, date),
                f"{day['users']:,}",
                f"{day['count']:,}",
                format_dollars(day["total"], exact=exact),
            )
        out.print(table)
    if document["undated"] is not None:
        out.print(
            f"{month} undated: figures loaded from a store written before per-day figures were "
            "kept; the days hold only what was recorded since"
        )


def _print_usage_table(out: Printer, title: str, usage: Mapping[str, Mapping[str, int]], exact: bool) -> None:
    """Prints per-type records (already sorted) under ``title``."""
    out.print(f"\n{title}")
    table = make_table(["usage type", "units", "increments", "cost"], [False, True, True, True])
    for usage_type, record in usage.items():
        table.add_row(
            usage_type,
            f"{record['units']:,}",
            f"{record['count']:,}",
            format_dollars(record["cost"], exact=exact),
        )
    out.print(table)


def _print_month_report(out: Printer, document: Mapping[str, Any], exact: bool) -> None:
    """Prints a month report as text: totals, per-type table, top users with their balances."""
    users = document["users"]
    out.print(
        f"{document['month']}: {count(users, 'user')}, {count(document['increments'], 'increment')}, "
        f"total {format_dollars(document['total'], exact=exact)}"
    )
    if not users:
        out.print("no usage recorded in this month")
        return
    usage = document["usage"]
    how = "" if document["month"] == document["balances_month"] else "; sums of the per-user figures"
    _print_usage_table(out, f"Usage types by cost ({count(len(usage), 'type')}{how})", usage, exact)
    top_rows = document["top_actors"]
    out.print(
        f"\nTop users by spend ({len(top_rows):,} of {count(users, 'user')}); "
        f"plans and balances in {document['balances_month']}"
    )
    table = make_table(
        ["user", "increments", "spent", "plan", "allowance", "remaining", "purchased"],
        [False, True, True, False, True, True, True],
    )
    for row in top_rows:
        balance = row["balance"]
        table.add_row(
            row["user_id"],
            f"{row['count']:,}",
            format_dollars(row["total"], exact=exact),
            _plan_label(balance),
            format_dollars(balance["monthly_allowance"], exact=exact),
            format_dollars(balance["remaining"], exact=exact),
            format_dollars(balance["purchased_credits"], exact=exact),
        )
    out.print(table)
    if not all(row["balance"]["plan_stored"] for row in top_rows):
        out.print(f"\n{_PLAN_NOTE}")


def _plan_label(balance: Mapping[str, Any]) -> str:
    """The plan's id, marked ``*`` when the store kept none for the user (see ``_PLAN_NOTE``)."""
    return str(balance["plan"]) + ("" if balance["plan_stored"] else "*")


def _print_actor_report(out: Printer, document: Mapping[str, Any], exact: bool) -> None:
    """Prints an actor report as text: totals, balances, per-type table, per-app table."""
    out.print(
        f"{document['user_id']} in {document['month']}: {count(document['increments'], 'increment')}, "
        f"total {format_dollars(document['total'], exact=exact)}"
    )
    balance = document["balance"]
    out.print(
        f"plan in {document['balances_month']}: {_plan_label(balance)}, "
        f"allowance {format_dollars(balance['monthly_allowance'], exact=exact)} a month, "
        f"{format_dollars(balance['allowance_used'], exact=exact)} used"
    )
    out.print(
        f"purchased credit: {format_dollars(balance['purchased_credits'], exact=exact)}, "
        f"{format_dollars(balance['consumed_purchase_credits'], exact=exact)} consumed; "
        f"remaining {format_dollars(balance['remaining'], exact=exact)}"
    )
    if not balance["plan_stored"]:
        out.print(_PLAN_NOTE)
    if not document["usage"] and not document["app_totals"]:
        out.print("no usage recorded for this user in this month")
        return
    usage = document["usage"]
    _print_usage_table(out, f"Usage types by cost ({count(len(usage), 'type')})", usage, exact)
    apps = document["app_totals"]
    out.print(f"\nApps ({count(len(apps), 'app')})")
    table = make_table(["app", "increments", "total"], [False, True, True])
    for app, record in apps.items():
        table.add_row(app, f"{record['count']:,}", format_dollars(record["total"], exact=exact))
    out.print(table)


def run_report(
    store: str,
    month: str | None,
    actor: str | None,
    as_json: bool,
    top: int | None,
    exact: bool = False,
    backend: AnyBackend | None = None,
    by_day: bool = False,
    output_format: ReportFormat | None = None,
) -> int:
    """``usagemeter report``: prints what the store at ``store`` holds for ``month`` (default: now).

    Without ``actor``: the users, increments and total of the month, the per-type totals and the
    ``top`` users by spend (default 10 in text, all of them in JSON; 0: all) with their plan and
    balances. With ``actor`` (a user id): that user's usage per type and per app, plan and
    balances. ``as_json`` (or ``output_format="json"``) prints one JSON document (shape in the
    module docstring; money as integer µ¢); ``exact`` shows text money to the µ¢ instead of the
    cent. ``by_day`` adds the month per UTC day; ``output_format="csv"`` prints the month as CSV
    instead, one row per (user, day, usage type) (CSV_COLUMNS). ``store`` may be a shared
    ledger's URL (``redis://...``), read while other workers run; ``backend`` is the store's (None:
    the directory's store's, ``redis`` for a URL). Never creates a store: a path without one is an
    error. Returns the exit code: 0, or 1 (message on stderr) if the store is missing, locked by
    another process, unreachable or cannot be read.
    """
    problem = store_problem(store, need_manifest=True, allow_url=True)
    if problem is not None:
        print(f"usagemeter report: {problem}", file=sys.stderr)
        return 1
    month = month or current_month()
    output_format = output_format or ("json" if as_json else "text")
    as_json = output_format == "json"
    if top is None:
        limit = None if as_json else 10
    else:
        limit = top or None  # 0: every user
    try:
        if backend is None and not is_shared_url(store):
            backend = detect_backend(Path(store))
        with open_service(store, backend, connect_timeout=REPORT_CONNECT_TIMEOUT) as service:
            use_stored_plans(service)
            opened_backend = service.store_backend
            balances_month = current_month()
            if output_format == "csv":
                users = [actor] if actor is not None else [row[0] for row in service.get_actors_usage(month)]
                _write_csv(service, users, month)
                return 0
            if actor is None:
                body = _month_report(service, month, limit)
                users = [row[0] for row in service.get_actors_usage(month)]
            else:
                body = _actor_report(service, actor, month)
                users = [actor]
            if by_day:
                body.update(_days_of(service, users, month, count_users=actor is None))
    except StoreError as error:
        print(f"usagemeter report: {store_error_message(error, store)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:  # ValueError: a store or backend the library refuses
        print(f"usagemeter report: {error}", file=sys.stderr)
        return 1
    document = {
        "store": shown(store),
        "backend": opened_backend,
        "month": month,
        "balances_month": balances_month,
        **body,
    }
    if as_json:
        json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    out = Printer(sys.stdout)
    out.print(f"store {shown(store)} ({opened_backend})")
    if actor is None:
        _print_month_report(out, document, exact)
    else:
        _print_actor_report(out, document, exact)
    if by_day:
        _print_days_table(out, document, exact)
    return 0
