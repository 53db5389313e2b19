"""Type stubs of the native module ``usagemeter._core`` (hand-written; checked by stubtest)."""

import os
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from typing import Any, Self, TypeVar, final

from typing_extensions import disjoint_base

from usagemeter.policies import Policy
from usagemeter.types import (
    ActorBudget,
    AddonCredits,
    AllowedUsage,
    AppTotals,
    ServiceStats,
    StoreCopy,
    StoreRecovery,
    StoreSummary,
    SyncStats,
    UsageByDay,
    UsageDetails,
    UsageReport,
)

__all__ = [
    "GLOBAL_APP",
    "MANUAL_ADJUSTMENT",
    "Actor",
    "CostMap",
    "CostMapError",
    "HoldSettledError",
    "IdempotencyKeyLimitError",
    "IdempotencyKeyReused",
    "Meter",
    "MeteringCore",
    "StoreClosedError",
    "StoreCorruptedError",
    "StoreError",
    "StoreLockedError",
    "StoreOutcomeUnknownError",
    "StoreUnavailableError",
    "StoreVersionError",
    "StoreWriteError",
    "UnknownUsageType",
    "__version__",
    "copy_store",
    "recover_store",
    "redact_url",
    "verify_store",
]

__version__: str
GLOBAL_APP: str
MANUAL_ADJUSTMENT: str

_T = TypeVar("_T")

class CostMapError(ValueError):
    """A cost map could not be loaded; the message names the file and the key."""

class UnknownUsageType(KeyError):
    """A usage type that is not in the cost map was charged without a cost override."""

class IdempotencyKeyReused(ValueError):
    """An idempotency key still kept was passed again with another payload (method, app or
    items); nothing was recorded. Use a new key for a new call."""

class HoldSettledError(ValueError):
    """A hold settled or released before was settled, released or extended again (from any
    handle, thread or process of its store, with another idempotency key or none): a hold is
    finished once, and nothing was recorded. A retry with the first settle's key replays it."""

class IdempotencyKeyLimitError(RuntimeError):
    """A new idempotency key would pass the bound on keys kept (``max_idempotency_keys_per_user``
    or ``max_idempotency_keys``); nothing was recorded. Keys already kept are never forgotten
    early: that would turn their retries into double charges."""

class StoreError(Exception):
    """The store could not be opened, read or written."""

class StoreLockedError(StoreError):
    """Another process or service holds the store; the message names the path, and says that a
    directory store belongs to one process (several worker processes share ``redis://``)."""

class StoreUnavailableError(StoreError):
    """The shared ledger (a Redis server or cluster) cannot be reached; nothing of the call was recorded.

    The message names the URL, its password masked."""

class StoreOutcomeUnknownError(StoreUnavailableError):
    """A call was sent to the shared ledger and no answer came back in time: it may have been
    recorded or not. A retry with the same idempotency key is safe (it replays or records once)."""

class StoreCorruptedError(StoreError):
    """The store is damaged, truncated or lost data; the message names what failed."""

class StoreVersionError(StoreError):
    """The store was written by a newer version of usagemeter."""

class StoreWriteError(StoreError):
    """A snapshot could not be written (disk full, read-only); usage stays in memory and is retried."""

class StoreClosedError(StoreError):
    """The service was closed."""

def verify_store(path: str | os.PathLike[str]) -> StoreSummary:
    """Check every record of the store at ``path`` (taking its lock) and describe it."""

def recover_store(path: str | os.PathLike[str]) -> StoreRecovery:
    """Keep every record of the store at ``path`` whose checksum holds; delete the others."""

def redact_url(location: str) -> str:
    """``location`` as it may be shown: a shared ledger's URL with its password masked (``***``)."""

def copy_store(
    source: str,
    destination: str,
    source_backend: str | None = None,
    destination_backend: str | None = None,
) -> StoreCopy:
    """Copy every user of ``source`` into a new store at ``destination`` (a directory or a
    ``redis://`` URL, either way); returns ``{"users": n, "user_months": m}``. A source without
    users raises ``StoreError``, the destination not written."""

@final
class Actor:
    """A user, optionally acting through an app. Frozen and hashable."""

    @property
    def user_id(self) -> str:
        """The user whose budget pays."""
    @property
    def app_id(self) -> str | None:
        """The app acting for the user, or None."""
    @property
    def email(self) -> str | None:
        """The user's email; users with one default to the ``user_free`` plan."""
    @property
    def is_system(self) -> bool:
        """True only for ``Actor.system()``, which is never metered."""
    def __new__(cls, user_id: str, app_id: str | None = None, *, email: str | None = None) -> Actor:
        """Build an actor; ``user_id`` and ``app_id`` must be non-empty; app ``others`` is reserved."""
    @staticmethod
    def system() -> Actor:
        """The system actor: never metered, its calls record nothing."""
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Meter:
    """``service.meter(actor, usage_type)``: ``add(amount)`` is ``increment_usage(actor,
    usage_type, amount)``, with the actor's account and the type's price found once."""

    @property
    def actor(self) -> Actor:
        """The actor this meter records for."""
    @property
    def usage_type(self) -> str:
        """The usage type this meter records."""
    def add(self, amount: int) -> int:
        """Record ``amount`` units; return the user's month total in µ¢ (as ``increment_usage``)."""

@final
class CostMap:
    """Immutable prices per usage type, in µ¢ per unit, exact to 12 fractional digits."""

    @staticmethod
    def default() -> CostMap:
        """The prices shipped with the library (one file per provider)."""
    @staticmethod
    def from_files(*paths: str | os.PathLike[str]) -> CostMap:
        """Load JSON files, each one object ``{"usage:type": price}``; a key in two files is an error."""
    @staticmethod
    def from_json(text: str, source: str = "json") -> CostMap:
        """Load one JSON text as one cost-map file (``source`` names it in errors)."""
    @staticmethod
    def from_dict(prices: dict[str, int | str | Decimal]) -> CostMap:
        """Build a map from ``{usage_type: price}`` with int, str or Decimal prices (never float)."""
    def merged(self, other: CostMap) -> CostMap:
        """A new map with the prices of both; ``other`` wins where both price a usage type."""
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __getitem__(self, key: str, /) -> Decimal: ...
    def __iter__(self) -> Iterator[str]: ...
    def get(self, key: str, default: _T | None = None) -> Decimal | _T | None:
        """The price of ``key`` as a Decimal, or ``default``."""
    def keys(self) -> list[str]:
        """Usage types: the plain prices in load order, then the tables in load order."""
    def is_table(self, key: str) -> bool:
        """Whether ``key`` is priced by a table (size tiers, service tiers or dated prices).

        ``map[key]`` of a table is its first base price; a charge is priced for its request.
        """
    def items(self) -> list[tuple[str, Decimal]]:
        """``(usage_type, Decimal price)`` pairs in the order of ``keys()`` (a table's first base price)."""
    def source_of(self, key: str) -> str:
        """The file (or ``"dict"``) a usage type's price came from."""
    def rounded_prices(self) -> list[tuple[str, str, str, Decimal]]:
        """Prices rounded half-even at load: ``(usage_type, source, original_text, rounded)``."""

@disjoint_base
class MeteringCore:
    """The ledger and plan cache behind ``MeteringService``. Use ``MeteringService``."""

    def __new__(
        cls,
        cost_map: CostMap,
        unmapped_free: bool,
        subscription_ttl_ms: int,
        clock: Callable[[], float | int] | None = None,
        store_path: str | os.PathLike[str] | None = None,
        store_backend: str | None = None,
        snapshot_interval_ms: int = 1000,
        lease_ttl_ms: int = 10_000,
        serve_offline: bool = False,
        connect_timeout_ms: int = 5_000,
        caller_timeout_ms: int = 1_000,
        idempotency_window_ms: int = 86_400_000,
        max_idempotency_keys: int = 1_000_000,
        max_idempotency_keys_per_user: int = 100_000,
    ) -> Self: ...
    def flush(self) -> None:
        """Block until everything recorded before the call is durable; ``StoreWriteError`` on failure."""
    def close(self) -> None:
        """Refuse every later call, write a last snapshot holding every call that returned, stop the
        snapshot thread and release the store. Idempotent. If the last snapshot fails
        (``StoreWriteError``) the thread keeps retrying: call ``close()`` again."""
    def _close_at_exit(self) -> None:
        """``close()`` that stops the snapshot thread even if the last snapshot fails (at exit)."""
    def _forked(self) -> None:
        """In a child after ``os.fork()``: a service with a store refuses every call from now on."""
    def _take_store_errors(self) -> list[tuple[str, str]]:
        """Alarms of the background snapshot (or fleet sync) thread not yet raised, as
        ``(kind, message)``: ``store_error``, or ``ledger_lost``."""
    def _plan_email_seen(self, user_id: str) -> bool:
        """Whether an email was seen for the user when its plan was resolved (since the last
        ``invalidate_subscription``): its default plan is then that of an actor with an email."""
    def _account_count(self) -> int:
        """How many users have an account in the ledger (tests: read-only checks create none)."""
    def _sync_stats(self) -> SyncStats | None:
        """This worker's sync traffic with the shared ledger (None without one)."""
    @property
    def _worker_id(self) -> str | None:
        """This worker's id in the shared ledger (None without one)."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` has begun: every call now raises ``StoreClosedError``."""
    @property
    def store_path(self) -> str | None:
        """The store directory, or the shared ledger's URL with its password masked (``***``), or
        None for a memory-only service."""
    @property
    def store_backend(self) -> str | None:
        """The store backend (``"sled"``, ``"redb"``, ``"redis"`` or ``"redis-cluster"``), or None
        for a memory-only service."""
    def _last_plan(self, user_id: str) -> tuple[str, int] | None:
        """``(plan id, monthly allowance µ¢)`` the user was last resolved to (kept in the store)."""
    def get_actors_usage(self, month: str | None = None) -> list[tuple[str, int, int]]:
        """``(user_id, total µ¢, count)`` of every user with usage in ``month``, largest total first."""
    def _install_hooks(
        self,
        resolve_policy: Callable[..., Any],
        raise_alarm: Callable[..., Any],
        monthly_charges: Callable[..., Any],
    ) -> None:
        """Install the plan resolver, the alarm dispatcher and the monthly charges' listeners (once)."""
    @property
    def cost_map(self) -> CostMap:
        """The cost map this service prices with."""
    def _noop_increment_usage(
        self, actor: Actor, usage_type: str, amount: int, cost_override: int | None = None
    ) -> int:
        """Do nothing with ``increment_usage``'s arguments: the floor of a native call (benchmarks)."""
    def increment_usage(
        self,
        actor: Actor,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int:
        """Record ``amount`` units of ``usage_type``; return the user's month total in µ¢.

        ``idempotency_key`` (a str of 1-255 bytes; keys starting with ``usagemeter:`` are
        reserved): a retry within the service's ``idempotency_window`` records nothing and
        returns the first call's total; the same key with another payload (usage types, units,
        cost overrides, the actor's app) raises ``IdempotencyKeyReused``. The key is checked and
        kept in the same atomic step as the charge, and stored with it. Without a key the call
        runs what it always ran (the keyword is one more optional argument to parse)."""
    def meter(self, actor: Actor, usage_type: str) -> Meter:
        """A handle on ``increment_usage(actor, usage_type, amount)`` for a pair metered again
        and again: ``meter.add(amount)`` records exactly what that call would (checks, plan,
        alarms) without finding the account and the price each time. Raises ``ValueError`` for
        an invalid usage type and ``UnknownUsageType`` for an unpriced one (unless the service
        records those for free)."""
    def try_increment_usage(
        self,
        actor: Actor,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> int | None:
        """Record only if the user's remaining budget covers the cost; return the new total or None.

        With ``idempotency_key`` a retry of an accepted call returns its total and records
        nothing; a refused call keeps no key, so its retry is decided again (after a top-up, say)."""
    def batch_increment_usages(
        self,
        actor: Actor,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]],
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int:
        """Record several usages as one atomic event: all validated first, all or nothing.

        ``idempotency_key`` as for ``increment_usage`` (the items, in order, are the payload).
        The items are one request for a price table: a size tier counts them together, and
        ``service_tier`` chooses a table's service-tier price (README, "The price model")."""
    def _try_increment_usage_nowait(
        self,
        actor: Actor,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[bool, int | None]:
        """``try_increment_usage`` that never waits on the shared ledger: ``(True, total or None)``
        when decided, ``(False, None)`` (nothing recorded) when only a lease request could decide."""
    def _refund(
        self,
        actor: Actor,
        usage_type: str,
        units: int | None = None,
        cost: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, int, bool]:
        """Book a refund as ``refund:<usage_type>``; ``(month total, cost given back, booked now)``
        in µ¢ (False: a retry of ``idempotency_key``, the first call's figures)."""
    def _reserve(
        self,
        actor: Actor,
        cost: int | None,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]] | None,
        ttl_ms: int,
        service_tier: str | None = None,
    ) -> tuple[int, int, int] | None:
        """Hold ``cost`` µ¢ or what ``usages`` cost for ``ttl_ms`` if the budget net of holds
        covers it: ``(id, amount µ¢, expires_ms)``, or None. ``MeteringService.reserve`` wraps it."""
    def _settle(
        self,
        actor: Actor,
        hold_id: int,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]] | None = None,
        cost: int | None = None,
        usage_type: str | None = None,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> tuple[int, bool]:
        """Record the real usage of a hold and remove it, atomically: ``(month total, whether
        the hold was still live)``; a retry of ``idempotency_key`` records nothing and returns
        the first settle's total."""
    def _release(self, actor: Actor, hold_id: int) -> bool:
        """Remove a hold; whether it was still live."""
    def _extend(self, actor: Actor, hold_id: int, ttl_ms: int) -> int | None:
        """Make a hold expire ``ttl_ms`` from now: the new expiry (epoch ms), or None if expired."""
    def _holds(self, actor: Actor) -> list[tuple[int, int, int]]:
        """The actor's live holds, ``(id, amount µ¢, expires_ms)`` each, oldest first."""
    def try_batch_increment_usages(
        self,
        actor: Actor,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]],
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int | None:
        """Record the items as one atomic event only if the remaining budget covers them all;
        return the new month total, or None (nothing recorded, no key kept)."""
    def _try_batch_increment_usages_nowait(
        self,
        actor: Actor,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]],
        *,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> tuple[bool, int | None]:
        """``try_batch_increment_usages`` that never waits on the shared ledger."""
    def cost_of(
        self,
        usage_type: str,
        amount: int,
        cost_override: int | None = None,
        *,
        service_tier: str | None = None,
    ) -> int:
        """What ``amount`` units of ``usage_type`` cost in µ¢ (rounded half up, as reports round).

        The units are one request for a price table, priced in ``service_tier`` at the clock now."""
    def cost_of_usages(
        self,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]],
        *,
        service_tier: str | None = None,
    ) -> int:
        """What the items (as for ``batch_increment_usages``) cost together, in µ¢."""
    def has_enough_credits_for_usages(
        self,
        actor: Actor,
        usages: Iterable[tuple[str, int] | tuple[str, int, int | None]],
        *,
        service_tier: str | None = None,
    ) -> bool:
        """Whether the user's remaining budget covers all the items together."""
    def affordable_units(
        self,
        actor: Actor,
        usage_type: str,
        reserved: Iterable[tuple[str, int] | tuple[str, int, int | None]] | None = None,
    ) -> int:
        """The most units of ``usage_type`` the remaining budget pays for after ``reserved``
        (0 when nothing is left; 2**64-1 for a free type or the system actor). For a price
        table, a unit costs the price of the tier ``reserved`` plus that unit are in (a tier more
        units would reach is not foreseen)."""
    def _plan_cache_sizes(self) -> tuple[int, int]:
        """``(cached plans, of which users without an account)`` (tests: the bound holds)."""
    def _stats(self) -> ServiceStats:
        """``refusals``; with a store also ``store_failures`` and ``store_lag_ms``."""
    def has_enough_credits_for(self, actor: Actor, usage_type: str, amount: int) -> bool:
        """Whether the user's remaining budget covers ``amount`` units of ``usage_type``."""
    def has_enough_credits(self, actor: Actor, amount: int) -> bool:
        """Whether the user's remaining budget covers ``amount`` µ¢."""
    def has_any_usage(self, actor: Actor) -> bool:
        """Whether the user has budget left this month (remaining > 0); True for the system actor."""
    def has_usage_this_month(self, actor: Actor) -> bool:
        """Whether the user recorded any usage this month (False for the system actor)."""
    def get_remaining_usage(self, actor: Actor) -> int:
        """Allowance left this month plus purchased credit left, in µ¢."""
    def get_allowed_usage(self, actor: Actor) -> AllowedUsage:
        """``{"remaining", "monthly_allowance", "addons": {...}}`` in µ¢ (addons: purchased, consumed)."""
    def get_actor_budget(self, actor: Actor) -> ActorBudget:
        """This month's pools: allowance used, purchased credit, overage and what remains, in µ¢."""
    def get_actor_addons(self, actor: Actor) -> AddonCredits:
        """``{"purchased_credits", "consumed_purchase_credits"}`` in µ¢ (lifetime)."""
    def update_addon_credit(self, user_id: str, amount: int, *, idempotency_key: str | None = None) -> int:
        """Add purchased credit (µ¢, >= 0) to a user; return the user's purchased total.

        With ``idempotency_key``, a retry adds nothing and returns the first call's total."""
    def _apply_monthly_charges(
        self, actor: Actor, charges: Iterable[tuple[str, int] | tuple[str, int, int | None]]
    ) -> tuple[bool, int]:
        """Book ``(usage_type, units, cost)`` items as the month's monthly charges, billed to the
        user, once: ``(applied now, cost µ¢ booked now or the first time)``."""
    def _monthly_charges_applied(self, actor: Actor) -> int | None:
        """The cost (µ¢) the current month's monthly charges booked, or None if not applied."""
    def _idempotency_key_count(self) -> int:
        """Caller idempotency keys held in memory (tests: the bound and the pruning)."""
    def set_actor_current_month_usage_total(self, actor: Actor, total: int) -> int:
        """Set the user's month total by booking the difference as ``manual_adjustment``.

        Purchased credit is left alone: raising the total fills the allowance, then overage;
        lowering it gives back overage, then allowance. ``ValueError`` below what purchased credit
        paid this month."""
    def get_actor_month_usage_details(self, actor: Actor, month: str) -> UsageDetails:
        """The user's usage in a month (``YYYY-MM``, UTC): ``{"usage": {...}, "app_totals": {...}}``."""
    def get_actor_current_month_usage_details(self, actor: Actor) -> UsageDetails:
        """The user's usage this month: ``{"usage": {...}, "app_totals": {...}}``."""
    def get_actor_usage_by_day(self, actor: Actor, month: str | None = None) -> UsageByDay:
        """The user's usage in ``month`` (``YYYY-MM``, default: the current month on the service's
        clock) per UTC day, over all its apps: ``{"month", "days": {"YYYY-MM-DD": {"total",
        "count", "by_type"}}, "undated"}`` (``UsageByDay``).

        A charge's day comes from the same clock reading as its month. Summed over the days (and
        ``undated``: figures loaded from a store that kept no days, else None), each usage type's
        figures are the month's. ``ValueError`` for a month not ``YYYY-MM``; the system actor
        has no usage (empty ``days``)."""
    def get_actor_current_month_app_usage_details(
        self, actor: Actor, app_id: str | None = None
    ) -> UsageReport:
        """The user's usage this month through one app (default: the actor's own app)."""
    def get_actor_app_usage(self, actor: Actor, app_id: str) -> AppTotals:
        """``{"total", "count"}`` of the user's usage this month through one app."""
    def get_global_usage(self) -> UsageReport:
        """This month's usage over all actors: ``{"total", "<type>": {"units", "cost", "count"}}``.

        Summed from the actors' records when called (7-10 ms per 10,000 actors of 10 usage
        types each), so that no charge updates a figure shared by every actor. Raises ``OverflowError`` if the
        total leaves the ledger's range (10^24 µ¢: a million actors at their own limit).
        """
    def get_actor_subscription(self, actor: Actor) -> Policy:
        """The actor's plan (a ``Policy``; cached per user for ``subscription_ttl`` seconds)."""
    def invalidate_subscription(self, user_id: str) -> None:
        """Forget the cached plan of a user, so the next call resolves it again (a look-up already
        running does not cache what it read)."""
