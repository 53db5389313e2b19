"""The shapes of the dicts the reports return, as ``TypedDict`` s for type checkers.

``from usagemeter.types import UsageDetails``: ``mypy --strict`` then checks the keys a program
reads (``details["usgae"]`` is an error) and their types. At run time the reports return plain
``dict`` s; these classes cost nothing and check nothing then.

Every amount of money is an ``int`` of microcents (µ¢); units and counts are ``int`` s too.

A usage report (``UsageReport``: ``get_global_usage()``, the ``"usage"`` of a user's details, an
app's details) holds ``"total"`` (an ``int``) and one key per usage type, each a
``UsageFigures``. No ``TypedDict`` says that to mypy yet: PEP 728's ``extra_items`` would, and
mypy does not support it. A ``TypedDict`` declaring only ``total`` would make the natural
``report["kv:write"]["cost"]`` an error, and ``dict[str, UsageFigures | int]`` would make every
read need an ``isinstance``; so ``UsageReport`` is ``dict[str, Any]``, and
``usage_by_type(report)`` returns the usage types typed as ``dict[str, UsageFigures]``.
"""

# No `from __future__ import annotations`: TypedDict must see NotRequired itself (Python 3.11).
from typing import Any, NotRequired, TypeAlias, TypedDict

__all__ = [
    "ActorBudget",
    "ActorReport",
    "AddonCredits",
    "AllowedUsage",
    "AppTotals",
    "DayUsage",
    "ServiceStats",
    "StoreCopy",
    "StoreRecovery",
    "StoreSummary",
    "SyncStats",
    "UsageByDay",
    "UsageDetails",
    "UsageFigures",
    "UsageReport",
    "usage_by_type",
]


class UsageFigures(TypedDict):
    """One usage type's month: ``units`` recorded, ``cost`` in µ¢ (the exact sum rounded half up
    once), and ``count`` of charges."""

    units: int
    cost: int
    count: int


UsageReport: TypeAlias = dict[str, Any]
"""``{"total": µ¢, "<usage type>": UsageFigures, ...}``: ``get_global_usage()``,
``get_actor_current_month_app_usage_details()`` and the ``"usage"`` of ``UsageDetails``.

A ``dict[str, Any]`` to type checkers (see the module): ``report["total"]`` is an ``int``, every
other key a usage type; ``usage_by_type(report)`` is the usage types typed as ``UsageFigures``.
``total`` is the exact sum rounded once, so it may differ by a few µ¢ from the sum of the
rounded ``cost`` s.
"""


class AppTotals(TypedDict):
    """One app's month: ``total`` in µ¢ and ``count`` of charges (``get_actor_app_usage()``)."""

    total: int
    count: int


class UsageDetails(TypedDict):
    """A user's month: ``get_actor_current_month_usage_details()`` and
    ``get_actor_month_usage_details()``.

    ``app_totals`` is keyed by app id (usage without an app: ``"os-global"``); for an app actor
    it holds its own app and ``"others"``, the sum of its user's other apps.
    """

    usage: UsageReport
    app_totals: dict[str, AppTotals]


class AddonCredits(TypedDict):
    """Purchased credit, lifetime, in µ¢: ``get_actor_addons()``."""

    purchased_credits: int
    consumed_purchase_credits: int


class AllowedUsage(TypedDict):
    """``get_allowed_usage()``: what remains this month, the plan's allowance, and the credit."""

    remaining: int
    monthly_allowance: int
    addons: AddonCredits


class ActorBudget(TypedDict):
    """``get_actor_budget()``: this month's two pools in µ¢, rounded so that
    ``allowance_used + consumed_this_month + overage`` is the month's total and
    ``remaining == max(0, max(0, monthly_allowance - allowance_used) + purchased_credits -
    consumed_purchase_credits - held)`` hold on these integers. ``held`` is what outstanding
    holds reserve (``reserve``): it lowers ``remaining``, not the allowance figures."""

    monthly_allowance: int
    allowance_used: int
    purchased_credits: int
    consumed_purchase_credits: int
    consumed_this_month: int
    overage: int
    held: int
    remaining: int


class ActorReport(TypedDict):
    """``get_actor_report(actor, month=None)``: a user's month in one call.

    ``plan_id`` is the user's plan now; ``budget`` is ``get_actor_budget()`` for the current
    month and None for another month (``get_actor_budget`` reads the current one only);
    ``usage`` and ``app_totals`` are the month's ``UsageDetails``.
    """

    user_id: str
    month: str
    plan_id: str
    budget: ActorBudget | None
    usage: UsageReport
    app_totals: dict[str, AppTotals]


class DayUsage(TypedDict):
    """A user's usage on one UTC day, over all its apps: ``total`` in µ¢ (the exact sum rounded
    half up once, like a report's ``"total"``), ``count`` of charges, and ``by_type`` the
    figures of each usage type booked that day (refunds as ``refund:<type>``, ``set_total`` as
    ``manual_adjustment``)."""

    total: int
    count: int
    by_type: dict[str, UsageFigures]


class UsageByDay(TypedDict):
    """``get_actor_usage_by_day(actor, month=None)``: a user's month per UTC day.

    ``days`` maps ``"YYYY-MM-DD"`` to that day's ``DayUsage``, in date order, for the days with
    usage only. Summed over ``days`` and ``undated``, each usage type's units, cost and count are
    the month's (``get_actor_month_usage_details``; costs to the µ¢ before each rounding).
    ``undated`` is None unless the month was loaded from a store written by a usagemeter that
    kept no per-day figures (store format 1 or 2): then it holds what the month had then, and
    ``days`` only what was recorded since.
    """

    month: str
    days: dict[str, DayUsage]
    undated: DayUsage | None


class ServiceStats(TypedDict):
    """The service's counters for metrics (``usagemeter.prometheus``): ``refusals`` since it
    opened; with a store ``store_failures`` and ``store_lag_ms`` too."""

    refusals: int
    store_failures: NotRequired[int]
    store_lag_ms: NotRequired[int]


class SyncStats(TypedDict):
    """A fleet worker's traffic with the shared ledger since it opened."""

    rounds: int
    round_trips: int
    bytes_sent: int
    writes: int
    conflicts: int
    lease_requests: int


class StoreSummary(TypedDict):
    """``verify_store(path)``: what the verified store holds."""

    backend: str
    format_version: int
    generation: int
    records: int
    users: int
    user_months: int


class StoreRecovery(TypedDict):
    """``recover_store(path)``: records kept, and a description of each record dropped."""

    kept: int
    dropped: list[str]


class StoreCopy(TypedDict):
    """``copy_store(source, destination)``: users and user-months copied."""

    users: int
    user_months: int


def usage_by_type(report: UsageReport) -> dict[str, UsageFigures]:
    """The usage types of a report without its ``"total"``: ``{usage_type: UsageFigures}``."""
    return {key: value for key, value in report.items() if key != "total"}
