"""`usagemeter.prometheus`: a collector of the service's figures, read when Prometheus scrapes.

Every test registers the collector with its own `CollectorRegistry` and reads what a scrape would
return (`generate_latest`, the text format Prometheus reads), or scrapes it over HTTP from
`prometheus_client.start_http_server` with httpx.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from support import FRACTION, FakeClock, small_cost_map
from usagemeter import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    Actor,
    GetUserSubscriptionEvent,
    MeteringService,
    OverrideDefaultSubscriptionEvent,
)
from usagemeter.aio import AsyncMeteringService
from usagemeter.prometheus import ALARM_KINDS, MeteringCollector, register

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def samples_of(text: str) -> Samples:
    """Every sample of a scrape: `(name, sorted labels) -> value`, parsed as Prometheus would."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names_of(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def service(clock: FakeClock) -> Iterator[MeteringService]:
    with MeteringService(small_cost_map(), clock=clock, unmapped="free") as service:
        yield service


def test_month_figures_by_usage_type_are_exact(service: MeteringService, registry: CollectorRegistry) -> None:
    register(service, registry)
    alice, bob = Actor("alice"), Actor("bob", "chat")
    service.increment_usage(alice, "kv:write", 3)  # 375 µ¢
    service.increment_usage(bob, "kv:write", 1)  # 125 µ¢
    service.increment_usage(alice, FRACTION, 1)  # 31.25 µ¢
    service.increment_usage(bob, FRACTION, 1)  # 31.25 µ¢: 62.5 together, reported as 63

    text = scrape(registry)
    assert 'usagemeter_month_cost_microcents{usage_type="kv:write"} 500.0\n' in text
    assert 'usagemeter_month_units{usage_type="kv:write"} 4.0\n' in text
    assert 'usagemeter_month_charges{usage_type="kv:write"} 2.0\n' in text
    assert f'usagemeter_month_cost_microcents{{usage_type="{FRACTION}"}} 63.0\n' in text
    assert "usagemeter_month_total_cost_microcents 563.0\n" in text
    assert "# TYPE usagemeter_month_cost_microcents gauge\n" in text
    assert "# TYPE usagemeter_refusals_total counter\n" in text
    assert service.get_global_usage()["total"] == 563  # the same figure, from the report


def test_month_figures_are_exact_up_to_2_to_the_53_microcents(
    service: MeteringService, registry: CollectorRegistry
) -> None:
    register(service, registry)
    units = (2**53 - 1) // 125  # kv:write costs 125 µ¢: the largest cost a float holds exactly
    service.update_addon_credit("whale", 0)
    service.increment_usage(Actor("whale"), "kv:write", units)
    samples = samples_of(scrape(registry))
    cost = value(samples, "usagemeter_month_cost_microcents", usage_type="kv:write")
    assert int(cost) == units * 125 == service.get_global_usage()["total"]
    assert int(value(samples, "usagemeter_month_units", usage_type="kv:write")) == units


def test_month_figures_start_again_with_a_new_month(
    service: MeteringService, registry: CollectorRegistry, clock: FakeClock
) -> None:
    register(service, registry)
    service.increment_usage(Actor("alice"), "kv:read", 2)
    assert value(samples_of(scrape(registry)), "usagemeter_month_total_cost_microcents") == 126
    clock.advance(31 * 86_400)  # November
    samples = samples_of(scrape(registry))
    assert value(samples, "usagemeter_month_total_cost_microcents") == 0
    assert ("usagemeter_month_units", (("usage_type", "kv:read"),)) not in samples


def test_a_manual_total_can_lower_the_month_figures(
    service: MeteringService, registry: CollectorRegistry
) -> None:
    """Why the month figures are gauges, not counters: an operator's correction lowers them."""
    register(service, registry)
    alice = Actor("alice")
    service.increment_usage(alice, "kv:write", 10)  # 1,250 µ¢
    service.set_actor_current_month_usage_total(alice, 100)
    text = scrape(registry)
    assert 'usagemeter_month_cost_microcents{usage_type="manual_adjustment"} -1150.0\n' in text
    assert "usagemeter_month_total_cost_microcents 100.0\n" in text


def test_usage_by_type_false_leaves_the_month_figures_out(
    service: MeteringService, registry: CollectorRegistry
) -> None:
    register(service, registry, usage_by_type=False)
    service.increment_usage(Actor("alice"), "kv:read", 2)
    names = names_of(samples_of(scrape(registry)))
    assert not any(name.startswith("usagemeter_month") for name in names)
    assert "usagemeter_refusals_total" in names


def test_refusals_are_counted(service: MeteringService, registry: CollectorRegistry) -> None:
    register(service, registry)
    poor = Actor("poor")
    allowance = service.get_remaining_usage(poor)
    assert service.try_increment_usage(poor, "kv:write", allowance // 125) is not None
    assert service.try_increment_usage(poor, "kv:write", 1) is None
    assert service.try_increment_usage(poor, "kv:write", 1000) is None
    assert value(samples_of(scrape(registry)), "usagemeter_refusals_total") == 2


def test_alarms_are_counted_by_kind(service: MeteringService, registry: CollectorRegistry) -> None:
    service.increment_usage(Actor("early"), "not:priced", 1)  # before the collector: not counted
    collector = register(service, registry)

    def unknown_default(event: OverrideDefaultSubscriptionEvent) -> None:
        event.default_subscription_id = "no-such-default"

    def unknown_plan(event: GetUserSubscriptionEvent) -> None:
        event.user_subscription_id = "no-such-plan"

    service.events.on(OVERRIDE_DEFAULT_SUBSCRIPTION, unknown_default)
    service.events.on(GET_USER_SUBSCRIPTION, unknown_plan)
    service.increment_usage(Actor("carol"), "kv:read", 1)  # unknown_plan (a priced charge needs one)
    service.increment_usage(Actor("carol"), "not:priced", 1)  # unmapped_usage
    service.increment_usage(Actor("carol"), "not:priced:either", 1)  # unmapped_usage
    # What the monitor thread does with a failed background snapshot, and an extension's kind.
    service._raise_alarm("store_error", Actor.system(), None, "disk full")
    service._raise_alarm("my_kind", Actor("carol"), None, "an extension's alarm")

    samples = samples_of(scrape(registry))
    counts = {
        labels[0][1]: count for (name, labels), count in samples.items() if name == "usagemeter_alarms_total"
    }
    assert counts == {
        **dict.fromkeys(ALARM_KINDS, 0.0),
        "unknown_plan": 1.0,
        "unmapped_usage": 2.0,
        "store_error": 1.0,
        "my_kind": 1.0,
    }

    collector.close()
    collector.close()  # idempotent
    assert service.events.listeners(ALARM) == ()
    service.increment_usage(Actor("dave"), "not:priced", 1)
    assert value(samples_of(scrape(registry)), "usagemeter_alarms_total", kind="unmapped_usage") == 2


def test_store_figures_with_a_store_and_none_without(
    tmp_path: Path, service: MeteringService, registry: CollectorRegistry
) -> None:
    register(service, registry)
    names = names_of(samples_of(scrape(registry)))
    assert "usagemeter_store_lag_seconds" not in names
    assert "usagemeter_store_failures_total" not in names
    assert not any(name.startswith("usagemeter_sync_") for name in names)

    stored_registry = CollectorRegistry()
    with MeteringService(small_cost_map(), store=tmp_path / "ledger", snapshot_interval=0.05) as stored:
        register(stored, stored_registry)
        stored.increment_usage(Actor("alice"), "kv:read", 1)
        stored.flush()
        text = scrape(stored_registry)
        assert "# TYPE usagemeter_store_lag_seconds gauge\n" in text
        samples = samples_of(text)
        assert 0 <= value(samples, "usagemeter_store_lag_seconds") < 60
        assert value(samples, "usagemeter_store_failures_total") == 0
        assert value(samples, "usagemeter_month_total_cost_microcents") == 63
    # A closed service has no month to show; its counters are still there.
    samples = samples_of(scrape(stored_registry))
    assert ("usagemeter_month_total_cost_microcents", ()) not in samples
    assert value(samples, "usagemeter_store_failures_total") == 0
    assert value(samples, "usagemeter_refusals_total") == 0


def test_fleet_workers_show_their_sync_traffic_and_the_fleets_month(redis_url: str) -> None:
    """Each worker's replica holds the whole fleet's month (so aggregate workers with max(), not
    sum()); the sync counters are each worker's own."""
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    with (
        MeteringService(small_cost_map(), store=redis_url, snapshot_interval=0.05) as first,
        MeteringService(small_cost_map(), store=redis_url, snapshot_interval=0.05) as second,
    ):
        register(first, first_registry)
        register(second, second_registry)
        first.increment_usage(Actor("alice"), "kv:write", 2)
        first.flush()
        second.increment_usage(Actor("bob"), "kv:read", 1)
        second.flush()
        # Each worker pulls the other's writes in its next sync rounds (every 0.05 s).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            service.get_global_usage()["total"] == 250 + 63 for service in (first, second)
        ):
            time.sleep(0.01)
        samples = samples_of(scrape(first_registry))
        assert value(samples, "usagemeter_sync_rounds_total") >= 1
        assert value(samples, "usagemeter_sync_writes_total") >= 1
        for key in ("round_trips", "sent_bytes", "conflicts", "lease_requests"):
            assert (f"usagemeter_sync_{key}_total", ()) in samples
        assert value(samples, "usagemeter_store_failures_total") == 0
        assert 0 <= value(samples, "usagemeter_store_lag_seconds") < 60
        for worker_samples in (samples, samples_of(scrape(second_registry))):
            assert value(worker_samples, "usagemeter_month_total_cost_microcents") == 250 + 63


class Gate:
    """What the collector reads from a metering middleware (`GateStats`)."""

    def __init__(self, **figures: int) -> None:
        self.figures = figures

    def metering_stats(self) -> Mapping[str, int]:
        return dict(self.figures)


def test_gates_are_summed(service: MeteringService, registry: CollectorRegistry) -> None:
    first = Gate(requests_metered=10, refused_insufficient_funds=2, egress_bytes_billed=1000)
    collector = register(service, registry, gates=[first])
    text = scrape(registry)
    assert 'usagemeter_gate_refusals_total{reason="insufficient_funds"} 2.0\n' in text
    assert 'usagemeter_gate_refusals_total{reason="subscription_required"} 0.0\n' in text
    assert "usagemeter_gate_requests_metered_total 10.0\n" in text

    collector.add_gate(Gate(requests_metered=5, refused_subscription_required=1, refused_quota=4))
    first.figures["requests_metered"] = 11
    samples = samples_of(scrape(registry))
    assert value(samples, "usagemeter_gate_requests_metered_total") == 16
    assert value(samples, "usagemeter_gate_egress_bytes_billed_total") == 1000
    assert value(samples, "usagemeter_gate_refusals_total", reason="insufficient_funds") == 2
    assert value(samples, "usagemeter_gate_refusals_total", reason="subscription_required") == 1
    assert value(samples, "usagemeter_gate_refusals_total", reason="quota") == 4


@pytest.mark.parametrize(
    ("figures", "message"),
    [({"requests": -1}, "int >= 0"), ({"requests": True}, "int >= 0"), ({"Bad Key": 1}, "bad key")],
)
def test_a_gate_with_bad_figures_fails_the_scrape_clearly(
    service: MeteringService, registry: CollectorRegistry, figures: dict[str, int], message: str
) -> None:
    register(service, registry, gates=[Gate(**figures)])
    with pytest.raises(ValueError, match=message):
        scrape(registry)


def test_bad_arguments_raise_and_subscribe_nothing(
    service: MeteringService, registry: CollectorRegistry
) -> None:
    with pytest.raises(TypeError, match="MeteringService or an AsyncMeteringService"):
        MeteringCollector(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        MeteringCollector(service, namespace="my-app")
    with pytest.raises(TypeError, match="metering_stats"):
        MeteringCollector(service, gates=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="usage_by_type"):
        MeteringCollector(service, usage_by_type=1)  # type: ignore[arg-type]
    assert service.events.listeners(ALARM) == ()

    register(service, registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(service, registry)  # the same names twice in one registry
    assert len(service.events.listeners(ALARM)) == 1  # the failed one unsubscribed
    register(service, registry, namespace="other")  # another namespace is fine
    assert "other_refusals_total 0.0\n" in scrape(registry)


def test_an_async_service_is_read_through_its_sync_service(registry: CollectorRegistry) -> None:
    service = AsyncMeteringService(MeteringService(small_cost_map(), clock=FakeClock()))
    register(service, registry)
    service.sync.increment_usage(Actor("alice"), "kv:read", 2)
    assert value(samples_of(scrape(registry)), "usagemeter_month_total_cost_microcents") == 126


def test_a_real_scrape_over_http(service: MeteringService, registry: CollectorRegistry) -> None:
    register(service, registry)
    service.increment_usage(Actor("alice"), "kv:write", 2)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = samples_of(response.text)
    assert value(samples, "usagemeter_month_cost_microcents", usage_type="kv:write") == 250
    assert value(samples, "usagemeter_refusals_total") == 0


def test_import_usagemeter_does_not_import_prometheus_client() -> None:
    code = (
        "import sys, usagemeter, usagemeter.aio\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
        "assert 'usagemeter.prometheus' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
