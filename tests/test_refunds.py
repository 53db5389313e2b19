"""Refunds (issue 12): booked as `refund:<type>`, given back in the reverse order of a charge,
never more than was charged; in memory, on a store, on a fleet, and against an exact model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from redis_support import RedisServer
from usagemeter import REFUND, Actor, CostMap, MeteringService, Policy, RefundEvent, UnknownUsageType

PRICES = CostMap.from_dict({"llm:output": 2, "llm:input": "0.5", "kv:write": 1})
ALLOWANCE = 100


def new_service(**options: object) -> MeteringService:
    return MeteringService(PRICES, policies=[Policy("temp_free", ALLOWANCE)], **options)  # type: ignore[arg-type]


def pools(service: MeteringService, actor: Actor) -> tuple[int, int, int, int]:
    budget = service.get_actor_budget(actor)
    return (
        budget["allowance_used"],
        budget["consumed_this_month"],
        budget["overage"],
        budget["purchased_credits"] - budget["consumed_purchase_credits"],
    )


def test_a_refund_gives_back_overage_then_purchased_credit_then_allowance() -> None:
    service = new_service()
    alice = Actor("alice")
    service.update_addon_credit("alice", 50)
    assert service.increment_usage(alice, "llm:output", 90) == 180
    assert pools(service, alice) == (100, 50, 30, 0)  # allowance, purchased, overage, credit left
    assert service.refund(alice, "llm:output", units=20) == 140  # 40 µ¢: the price of 20 units
    assert pools(service, alice) == (100, 40, 0, 10)
    assert service.refund(alice, "llm:output", cost=60, reason="a failed generation") == 80
    assert pools(service, alice) == (80, 0, 0, 50)
    usage = service.get_actor_current_month_usage_details(alice)["usage"]
    assert usage["llm:output"] == {"units": 90, "cost": 180, "count": 1}
    assert usage["refund:llm:output"] == {"units": 20, "cost": -100, "count": 2}
    assert usage["total"] == 80
    assert service.get_remaining_usage(alice) == 20 + 50


def test_never_more_than_was_charged_and_a_refused_refund_changes_nothing() -> None:
    service = new_service()
    bob = Actor("bob")
    service.increment_usage(bob, "llm:output", 10)  # 20 µ¢
    service.refund(bob, "llm:output", units=4)  # 8 µ¢ back: 6 units and 12 µ¢ are left
    before = (pools(service, bob), service.get_actor_current_month_usage_details(bob))
    for units, cost in ((7, None), (0, 13), (6, 13), (None, 13)):
        with pytest.raises(ValueError, match="cannot refund"):
            service.refund(bob, "llm:output", units=units, cost=cost)
    with pytest.raises(ValueError, match="not charged for"):
        service.refund(bob, "kv:write", units=1)
    with pytest.raises(ValueError, match="nothing to refund"):
        service.refund(bob, "llm:output")
    assert (pools(service, bob), service.get_actor_current_month_usage_details(bob)) == before
    assert service.refund(bob, "llm:output", units=6) == 0  # exactly what was left
    with pytest.raises(ValueError, match="cannot refund"):
        service.refund(bob, "llm:output", cost=1)


def test_a_refund_is_per_app_and_fractional_prices_are_exact() -> None:
    service = new_service()
    through_app = Actor("carol", "editor")
    service.increment_usage(through_app, "llm:input", 3)  # 1.5 µ¢
    service.increment_usage(Actor("carol"), "llm:input", 3)  # another 1.5 µ¢, app os-global
    assert service.refund(through_app, "llm:input", units=3) == 2  # 1.5 µ¢ left, rounded half up
    with pytest.raises(ValueError, match="cannot refund"):
        service.refund(through_app, "llm:input", units=1)  # the editor's charge is all given back
    details = service.get_actor_current_month_app_usage_details(through_app)
    assert details["refund:llm:input"] == {"units": 3, "cost": -1, "count": 1}  # -1.5, half up


def test_the_refund_event_and_log_carry_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    service = new_service()
    heard: list[RefundEvent] = []
    service.events.on(REFUND, heard.append)
    dan = Actor("dan")
    service.increment_usage(dan, "llm:output", 5)
    with caplog.at_level(logging.INFO, logger="usagemeter"):
        total = service.refund(dan, "llm:output", units=2, reason="ticket 4411")
    assert heard == [RefundEvent(dan, "llm:output", 2, 4, "ticket 4411", total)]
    assert "ticket 4411" in caplog.text


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"units": -1}, ValueError),
        ({"units": 1.0}, TypeError),
        ({"units": True}, TypeError),
        ({"cost": -5}, ValueError),
        ({"cost": "5"}, TypeError),
        ({"units": 1, "reason": 5}, TypeError),
    ],
)
def test_bad_input_is_refused(arguments: dict[str, object], error: type[Exception]) -> None:
    service = new_service()
    eve = Actor("eve")
    service.increment_usage(eve, "llm:output", 5)
    before = service.get_actor_current_month_usage_details(eve)
    with pytest.raises(error):
        service.refund(eve, "llm:output", **arguments)  # type: ignore[arg-type]
    assert service.get_actor_current_month_usage_details(eve) == before


def test_refund_types_are_reserved_and_the_system_actor_has_nothing_to_refund() -> None:
    service = MeteringService(PRICES, unmapped="free")
    with pytest.raises(ValueError, match="reserved"):
        service.increment_usage(Actor("fay"), "refund:llm:output", 1)
    with pytest.raises(ValueError, match="not metered"):
        service.refund(Actor.system(), "llm:output", units=1)
    with pytest.raises(UnknownUsageType):
        new_service().refund(Actor("fay"), "not:priced", units=1)  # no price, no cost given
    with pytest.raises(ValueError, match="not charged"):
        new_service().refund(Actor("fay"), "not:priced", units=1, cost=3)
    assert new_service()._account_count() == 0


def test_a_refund_survives_a_restart_of_the_store(tmp_path: Path) -> None:
    with new_service(store=tmp_path / "ledger") as service:
        service.update_addon_credit("gus", 50)
        service.increment_usage(Actor("gus"), "llm:output", 90)
        service.refund(Actor("gus"), "llm:output", cost=70)
        expected = (pools(service, Actor("gus")), service.get_actor_current_month_usage_details(Actor("gus")))
    with new_service(store=tmp_path / "ledger") as reopened:
        got = (pools(reopened, Actor("gus")), reopened.get_actor_current_month_usage_details(Actor("gus")))
    assert got == expected
    assert expected[0] == (100, 10, 0, 40)


def test_a_refund_on_one_worker_of_a_fleet_reaches_the_shared_ledger(redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    with (
        new_service(store=url, snapshot_interval=0.05) as charger,
        new_service(store=url, snapshot_interval=0.05) as refunder,
    ):
        charger.update_addon_credit("hal", 50)
        charger.increment_usage(Actor("hal"), "llm:output", 90)  # 100 allowance, 50 credit, 30 overage
        charger.flush()
        refunder.flush()  # pulls the charge
        refunder.refund(Actor("hal"), "llm:output", cost=60, reason="outage")
        refunder.flush()
        charger.flush()
        charger_view = pools(charger, Actor("hal"))
    with new_service(store=url) as reader:
        assert pools(reader, Actor("hal")) == charger_view == (100, 20, 0, 30)
        usage = reader.get_actor_current_month_usage_details(Actor("hal"))["usage"]
        assert usage["refund:llm:output"] == {"units": 0, "cost": -60, "count": 1}
        assert usage["total"] == 120


class RefundsAgainstAModel(RuleBasedStateMachine):
    """Charges, refunds and purchased credit on one user, against the pools computed exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.service = new_service()
        self.actor = Actor("model")
        self.used = self.consumed_month = self.overage = 0
        self.purchased = self.consumed = 0
        self.charged = 0  # kv:write µ¢ charged, net of refunds

    @rule(cost=st.integers(1, 80))
    def charge(self, cost: int) -> None:
        self.service.increment_usage(self.actor, "kv:write", cost)
        allowance_part = min(cost, max(0, ALLOWANCE - self.used))
        purchased_part = min(cost - allowance_part, self.purchased - self.consumed)
        self.used += allowance_part
        self.consumed_month += purchased_part
        self.consumed += purchased_part
        self.overage += cost - allowance_part - purchased_part
        self.charged += cost

    @rule(cost=st.integers(1, 120))
    def refund(self, cost: int) -> None:
        if self.charged == 0 and self.used + self.overage + self.consumed_month == 0:
            with pytest.raises(ValueError):
                self.service.refund(self.actor, "kv:write", units=cost)
            return
        if cost > self.charged:
            with pytest.raises(ValueError, match="cannot refund"):
                self.service.refund(self.actor, "kv:write", units=cost)
            return
        self.service.refund(self.actor, "kv:write", units=cost)
        overage = min(cost, self.overage)
        purchased = min(cost - overage, self.consumed_month)
        self.overage -= overage
        self.consumed_month -= purchased
        self.consumed -= purchased
        self.used -= cost - overage - purchased
        self.charged -= cost

    @rule(amount=st.integers(1, 60))
    def buy(self, amount: int) -> None:
        self.service.update_addon_credit("model", amount)
        self.purchased += amount

    @invariant()
    def pools_match(self) -> None:
        assert pools(self.service, self.actor) == (
            self.used,
            self.consumed_month,
            self.overage,
            self.purchased - self.consumed,
        )
        assert (
            self.service.get_actor_current_month_usage_details(self.actor)["usage"]["total"] == self.charged
        )


RefundsAgainstAModel.TestCase.settings = settings(stateful_step_count=30, deadline=None)
test_refunds_against_an_exact_model = RefundsAgainstAModel.TestCase
