"""Prometheus metrics of a ``MeteringService``: ``pip install usagemeter[prometheus]``.

``register(service)`` adds a ``MeteringCollector`` to ``prometheus_client``'s default registry;
every figure is read from the service when Prometheus scrapes, so nothing is added to the charging
path. The only thing that runs outside a scrape is a listener of ``metering:alarm`` that counts
alarms by kind (alarms are rare: a few per user and month at most).

``import usagemeter`` never imports this module nor ``prometheus_client``.

Metric names (namespace ``usagemeter`` by default; every name is ``<namespace>_...``):

======================================  =======  ==============  ================================
name                                    type     labels          what
======================================  =======  ==============  ================================
``month_cost_microcents``               gauge    ``usage_type``  this month's cost, µ¢
``month_units``                         gauge    ``usage_type``  this month's units
``month_charges``                       gauge    ``usage_type``  this month's charges (calls)
``month_total_cost_microcents``         gauge                    this month's total, µ¢
``refusals_total``                      counter                  ``try_increment_usage`` refusals
``alarms_total``                        counter  ``kind``        ``metering:alarm`` events
``store_lag_seconds``                   gauge                    since the last good snapshot/sync
``store_failures_total``                counter                  failed snapshots or syncs
``sync_<figure>_total``                 counter                  a fleet worker's traffic
``gate_refusals_total``                 counter  ``reason``      a gate's 402 answers by reason
``gate_<figure>_total``                 counter                  a gate's other figures
======================================  =======  ==============  ================================

The ``month_*`` figures are gauges: they are this month's (UTC, the service's clock) and start
again from zero when the month changes, and an operator's ``set_actor_current_month_usage_total``
may lower them (its ``manual_adjustment`` cost may be negative). Use ``delta()`` or ``deriv()`` on
them, not ``rate()``. The counters count from the moment the service (refusals, store, sync) or
the collector (alarms) was created.

On a fleet (``store="redis://..."``) every worker's replica holds the whole fleet's month, as of
its last sync: aggregate the ``month_*`` figures over workers with ``max()`` (or scrape one
worker), never ``sum()``; the counters are each worker's own, and do add up.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from usagemeter._core import StoreClosedError
from usagemeter.events import ALARM, AlarmEvent
from usagemeter.service import MeteringService
from usagemeter.types import SyncStats, usage_by_type

if TYPE_CHECKING:
    from usagemeter.aio import AsyncMeteringService

__all__ = ["ALARM_KINDS", "GateStats", "MeteringCollector", "register"]

ALARM_KINDS: tuple[str, ...] = (
    "unmapped_usage",
    "unknown_plan",
    "overuse",
    "store_error",
    "ledger_lost",
    "global_usage_rate",
)
"""The alarm kinds the service raises: ``alarms_total`` shows each from 0, so that ``increase()``
sees the first one. Another kind (an extension's) appears when it is first raised."""

# What `MeteringCore._sync_stats()` returns, and the metric each figure becomes.
_SYNC_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("rounds", "sync_rounds", "Sync rounds this worker made with the shared ledger."),
    ("round_trips", "sync_round_trips", "Round trips to the shared ledger (Redis)."),
    ("bytes_sent", "sync_sent_bytes", "Bytes this worker sent to the shared ledger."),
    ("writes", "sync_writes", "Writes this worker made to the shared ledger."),
    ("conflicts", "sync_conflicts", "Writes that met another worker's and were made again."),
    ("lease_requests", "sync_lease_requests", "Budget lease requests to the shared ledger."),
)

# The refusals of a gate (its 402 answers) by reason, shown even before one counts anything.
_GATE_REFUSALS = ("refused_insufficient_funds", "refused_subscription_required")

_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_GATE_KEY = re.compile(r"[a-z_][a-z0-9_]*\Z")


@runtime_checkable
class GateStats(Protocol):
    """What the collector reads from a gate (an HTTP middleware that meters requests).

    ``metering_stats()`` returns counters since the gate was created, each an ``int >= 0``,
    keyed by names of lowercase letters, digits and ``_``:

    - ``refused_<reason>`` (``refused_insufficient_funds``, ``refused_subscription_required``:
      the gate's HTTP 402 answers) -> ``<ns>_gate_refusals_total{reason="<reason>"}``; those two
      reasons are shown from 0 even before a gate reports them;
    - any other key ``k`` (``requests_metered``, ``egress_bytes_billed`` ...) ->
      ``<ns>_gate_<k>_total``.

    The figures of several gates are summed. It is called at each scrape, from the scraping
    thread: it must be thread-safe and cheap (reading a few integers).
    """

    def metering_stats(self) -> Mapping[str, int]:
        """The gate's counters (see the class)."""
        ...


class _AlarmCounts:
    """The ``metering:alarm`` listener: counts by kind. Kept apart from the collector so that the
    service's event bus does not hold the collector (nor, through it, the service)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(ALARM_KINDS, 0)

    def __call__(self, event: AlarmEvent) -> None:
        kind = getattr(event, "kind", None)
        if not isinstance(kind, str):
            return
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class MeteringCollector(Collector):
    """A ``prometheus_client`` collector of a service's figures, read when Prometheus scrapes.

    ``service`` is a ``MeteringService`` or a ``usagemeter.aio.AsyncMeteringService``.
    ``namespace`` prefixes every name (give two services in one process two namespaces).
    ``usage_by_type=False`` leaves out the ``month_*`` figures: they are summed over every user
    when scraped (``get_global_usage()``, about 1 ms per 1,000 users, off the event loop only if
    the scrape is: ``prometheus_client.start_http_server`` scrapes in its own thread).
    ``gates`` are objects with ``metering_stats()`` (see ``GateStats``); ``add_gate`` adds more.

    Creating the collector subscribes a counter to ``metering:alarm``; ``close()`` removes it.

    Prometheus values are floats: a figure in µ¢ is exact up to 2**53 µ¢ (about $90 million);
    beyond that it is the nearest float (16 significant digits). The exact figures are in the
    reports (``get_global_usage()``, ``usagemeter report``).
    """

    def __init__(
        self,
        service: MeteringService | AsyncMeteringService,
        *,
        namespace: str = "usagemeter",
        usage_by_type: bool = True,
        gates: Iterable[GateStats] = (),
    ) -> None:
        """Read ``service`` at each scrape; count its alarms from now on."""
        self._service = _sync_service(service)
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            raise ValueError(
                f"namespace must be a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*), got {namespace!r}"
            )
        if not isinstance(usage_by_type, bool):
            raise TypeError("usage_by_type must be a bool")
        self._namespace = namespace
        self._usage_by_type = usage_by_type
        self._gates: list[GateStats] = []
        self._gates_lock = threading.Lock()
        for gate in gates:
            self.add_gate(gate)
        self._alarms = _AlarmCounts()
        self._service.events.on(ALARM, self._alarms)
        self._subscribed = True

    def add_gate(self, gate: GateStats) -> None:
        """Sum ``gate.metering_stats()`` into the ``gate_*`` figures from the next scrape on."""
        if not isinstance(gate, GateStats):
            raise TypeError(f"a gate needs a metering_stats() method; {type(gate).__name__} has none")
        with self._gates_lock:
            self._gates.append(gate)

    def close(self) -> None:
        """Stop counting alarms (unsubscribe from ``metering:alarm``). Idempotent. Unregister
        the collector from its registry too: ``registry.unregister(collector)``."""
        if self._subscribed:
            self._subscribed = False
            self._service.events.off(ALARM, self._alarms)

    def _name(self, suffix: str) -> str:
        return f"{self._namespace}_{suffix}"

    def describe(self) -> Iterable[Metric]:
        """The metric families without samples: lets a registry detect clashing names without
        scraping (and so without summing every user at registration)."""
        return list(self._families(with_samples=False))

    def collect(self) -> Iterable[Metric]:
        """Read the service (and the gates) and yield the metric families."""
        return list(self._families(with_samples=True))

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        service = self._service
        if self._usage_by_type:
            yield from self._month_families(with_samples)
        stats = service._stats() if with_samples else None
        refusals = CounterMetricFamily(
            self._name("refusals"),
            "Charges refused by try_increment_usage for want of budget, since the service opened.",
        )
        if stats is not None:
            refusals.add_metric([], stats["refusals"])
        yield refusals
        alarms = CounterMetricFamily(
            self._name("alarms"),
            "metering:alarm events by kind, since the collector was created.",
            labels=["kind"],
        )
        if with_samples:
            for kind, count in sorted(self._alarms.snapshot().items()):
                alarms.add_metric([kind], count)
        yield alarms
        if service.store_path is not None:
            lag = GaugeMetricFamily(
                self._name("store_lag_seconds"),
                "Time since the last successful snapshot (or fleet sync): what a crash could lose.",
            )
            failures = CounterMetricFamily(
                self._name("store_failures"),
                "Background snapshots or fleet syncs that failed, since the service opened.",
            )
            if stats is not None and "store_lag_ms" in stats:
                lag.add_metric([], stats["store_lag_ms"] / 1000)
                failures.add_metric([], stats["store_failures"])
            yield lag
            yield failures
        if service.store_backend in ("redis", "redis-cluster"):
            sync = service._sync_stats() if with_samples else None
            figures = None if sync is None else _sync_figures(sync)
            for key, suffix, documentation in _SYNC_FIGURES:
                family = CounterMetricFamily(self._name(suffix), documentation)
                if figures is not None:
                    family.add_metric([], figures[key])
                yield family
        with self._gates_lock:
            gates = list(self._gates)
        if gates:
            yield from self._gate_families(gates, with_samples)

    def _month_families(self, with_samples: bool) -> Iterator[Metric]:
        cost = GaugeMetricFamily(
            self._name("month_cost_microcents"),
            "This month's cost by usage type in µ¢ (UTC month; starts again at 0 each month).",
            labels=["usage_type"],
        )
        units = GaugeMetricFamily(
            self._name("month_units"),
            "This month's units by usage type (UTC month; starts again at 0 each month).",
            labels=["usage_type"],
        )
        charges = GaugeMetricFamily(
            self._name("month_charges"),
            "This month's charges (recorded calls) by usage type (starts again at 0 each month).",
            labels=["usage_type"],
        )
        total = GaugeMetricFamily(
            self._name("month_total_cost_microcents"),
            "This month's total cost over every usage type in µ¢ (rounded once, from the exact sum).",
        )
        if with_samples:
            try:
                report = self._service.get_global_usage()
            except StoreClosedError:
                report = None  # a closed service has no month to show; its counters still do
            if report is not None:
                for usage_type, figures in sorted(usage_by_type(report).items()):
                    cost.add_metric([usage_type], figures["cost"])
                    units.add_metric([usage_type], figures["units"])
                    charges.add_metric([usage_type], figures["count"])
                total.add_metric([], report["total"])
        yield cost
        yield units
        yield charges
        yield total

    def _gate_families(self, gates: list[GateStats], with_samples: bool) -> Iterator[Metric]:
        # The 402 reasons are shown from 0, so that increase() sees the first refusal.
        sums: dict[str, int] = dict.fromkeys(_GATE_REFUSALS, 0)
        if with_samples:
            for gate in gates:
                for key, value in gate.metering_stats().items():
                    if not isinstance(key, str) or not _GATE_KEY.match(key):
                        raise ValueError(f"{type(gate).__name__}.metering_stats() has a bad key {key!r}")
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise ValueError(
                            f"{type(gate).__name__}.metering_stats()[{key!r}] must be an int >= 0, "
                            f"got {value!r}"
                        )
                    sums[key] = sums.get(key, 0) + value
        refusals = CounterMetricFamily(
            self._name("gate_refusals"),
            "Requests the metering gates refused, by reason (HTTP 402 answers).",
            labels=["reason"],
        )
        others: list[Metric] = []
        for key, value in sorted(sums.items()):
            if key.startswith("refused_"):
                if with_samples:
                    refusals.add_metric([key.removeprefix("refused_")], value)
            else:
                other = CounterMetricFamily(self._name(f"gate_{key}"), f"The metering gates' {key}.")
                other.add_metric([], value)
                others.append(other)
        yield refusals
        yield from others


def register(
    service: MeteringService | AsyncMeteringService,
    registry: CollectorRegistry = REGISTRY,
    *,
    namespace: str = "usagemeter",
    usage_by_type: bool = True,
    gates: Iterable[GateStats] = (),
) -> MeteringCollector:
    """Build a ``MeteringCollector`` of ``service`` and register it with ``registry`` (default:
    ``prometheus_client``'s global one); return it. A clash of names raises ``ValueError`` and
    leaves nothing subscribed."""
    collector = MeteringCollector(service, namespace=namespace, usage_by_type=usage_by_type, gates=gates)
    try:
        registry.register(collector)
    except BaseException:
        collector.close()
        raise
    return collector


def _sync_figures(sync: SyncStats) -> dict[str, int]:
    """``_sync_stats()`` as a plain dict (looked up by the names in ``_SYNC_FIGURES``)."""
    return {
        "rounds": sync["rounds"],
        "round_trips": sync["round_trips"],
        "bytes_sent": sync["bytes_sent"],
        "writes": sync["writes"],
        "conflicts": sync["conflicts"],
        "lease_requests": sync["lease_requests"],
    }


def _sync_service(service: object) -> MeteringService:
    """The ``MeteringService`` of ``service`` (itself, or an async service's ``.sync``)."""
    if isinstance(service, MeteringService):
        return service
    inner = getattr(service, "sync", None)
    if isinstance(inner, MeteringService):
        return inner
    raise TypeError(f"expected a MeteringService or an AsyncMeteringService, not {type(service).__name__}")
