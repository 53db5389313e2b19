"""Typed results: the reports' `TypedDict`s, what they check under `mypy --strict`, the native
methods' signatures, and `get_actor_report`.

User code is type-checked as a user would: written to a file and run through `mypy --strict`
(`mypy.api.run`, with its own empty configuration) against the installed package and its stub.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NotRequired, get_args, get_origin, get_type_hints

import pytest
import usagemeter._core
from mypy import api as mypy_api
from support import FRACTION, FakeClock, small_cost_map
from usagemeter import (
    GET_USER_SUBSCRIPTION,
    REGISTER_AVAILABLE_POLICIES,
    SERVICE_METHODS,
    Actor,
    CostMap,
    GetUserSubscriptionEvent,
    Meter,
    MeteringService,
    MeteringServiceWrapper,
    Policy,
    RegisterAvailablePoliciesEvent,
)
from usagemeter._core import MeteringCore
from usagemeter.aio import AsyncMeteringService
from usagemeter.store import copy_store, recover_store, verify_store
from usagemeter.types import (
    ActorBudget,
    ActorReport,
    AddonCredits,
    AllowedUsage,
    AppTotals,
    ServiceStats,
    StoreCopy,
    StoreRecovery,
    StoreSummary,
    SyncStats,
    UsageDetails,
    UsageFigures,
    UsageReport,
    usage_by_type,
)

STUB = Path(usagemeter._core.__file__).with_name("_core.pyi")
if not STUB.exists():  # an editable install: the stub sits beside the package's sources
    STUB = Path(__file__).parents[1] / "python" / "usagemeter" / "_core.pyi"

PRO = Policy("pro", 1_000_000)


def run_mypy(tmp_path: Path, code: str) -> tuple[str, int]:
    """`mypy --strict` on `code` as a user's module; returns (report, exit status)."""
    source = tmp_path / "user_code.py"
    source.write_text(textwrap.dedent(code))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    return stdout + stderr, status


# 1. What mypy --strict says about a user's code.

USER_CODE = """
    import asyncio

    from usagemeter import Actor, MeteringService
    from usagemeter.aio import AsyncMeteringService
    from usagemeter.store import verify_store
    from usagemeter.types import ActorReport, AllowedUsage, UsageFigures, usage_by_type


    def dollars(microcents: int) -> str:
        return f"${microcents / 100_000_000:.2f}"


    def invoice_lines(service: MeteringService, actor: Actor) -> list[str]:
        details = service.get_actor_current_month_usage_details(actor)
        lines = [f"total {dollars(details['usage']['total'])}"]
        for usage_type, figures in usage_by_type(details["usage"]).items():
            units: int = figures["units"]
            lines.append(f"{usage_type}: {units} units, {dollars(figures['cost'])}")
        for app_id, app in details["app_totals"].items():
            lines.append(f"{app_id}: {app['count']} charges, {dollars(app['total'])}")
        return lines


    def headroom(service: MeteringService, actor: Actor) -> int:
        budget = service.get_actor_budget(actor)
        allowed: AllowedUsage = service.get_allowed_usage(actor)
        addons = service.get_actor_addons(actor)
        return (
            budget["remaining"] - budget["overage"] + allowed["addons"]["purchased_credits"]
            - addons["consumed_purchase_credits"]
        )


    def one_call(service: MeteringService, actor: Actor) -> int:
        report: ActorReport = service.get_actor_report(actor)
        plan: str = report["plan_id"]
        allowance: int = service.get_actor_subscription(actor).monthly_allowance
        assert allowance >= 0
        budget = report["budget"]
        spent: int = report["usage"]["total"]
        return spent if budget is None or not plan else budget["remaining"]


    def everyone(service: MeteringService) -> dict[str, UsageFigures]:
        total: int = service.get_global_usage()["total"]
        app: int = service.get_actor_app_usage(Actor("u", "chat"), "chat")["total"]
        assert total >= app
        return usage_by_type(service.get_global_usage())


    def records(path: str) -> int:
        summary = verify_store(path)
        backend: str = summary["backend"]
        return summary["records"] + len(backend)


    async def remaining(service: AsyncMeteringService, actor: Actor) -> int:
        budget = await service.get_actor_budget(actor)
        report = await service.get_actor_report(actor, "2026-10")
        spent: int = report["usage"]["total"]  # a usage report is dict[str, Any]: say it is an int
        return budget["remaining"] - spent


    print(asyncio.run(remaining(AsyncMeteringService(MeteringService()), Actor("u"))))
"""


def test_user_code_using_the_reports_passes_mypy_strict(tmp_path: Path) -> None:
    report, status = run_mypy(tmp_path, USER_CODE)
    assert status == 0, report
    assert "Success: no issues found in 1 source file" in report


# Each mistake, and what mypy must say about it.
MISTAKES = {
    'details["usgae"]': 'TypedDict "UsageDetails" has no key "usgae"',
    'budget["remainig"]': 'TypedDict "ActorBudget" has no key "remainig"',
    'allowed["addons"]["purchased"]': 'TypedDict "AddonCredits" has no key "purchased"',
    'report["budget"]["overage"]': 'Value of type "ActorBudget | None" is not indexable',
    'app["totl"]': 'TypedDict "AppTotals" has no key "totl"',
    'summary["record"]': 'TypedDict "StoreSummary" has no key "record"',
    'figures["price"]': 'TypedDict "UsageFigures" has no key "price"',
    "service.get_actor_subscription(actor).allowance": '"Policy" has no attribute "allowance"',
}


def test_mistakes_in_user_code_fail_mypy_strict(tmp_path: Path) -> None:
    code = """
        from usagemeter import Actor, MeteringService
        from usagemeter.store import verify_store
        from usagemeter.types import usage_by_type

        service = MeteringService()
        actor = Actor("u")
        details = service.get_actor_current_month_usage_details(actor)
        budget = service.get_actor_budget(actor)
        allowed = service.get_allowed_usage(actor)
        report = service.get_actor_report(actor)
        app = service.get_actor_app_usage(actor, "chat")
        summary = verify_store("ledger")
        figures = usage_by_type(details["usage"])["kv:write"]
        wrong_type: str = budget["remaining"]
    """
    code = textwrap.dedent(code) + "".join(f"print({expression})\n" for expression in MISTAKES)
    report, status = run_mypy(tmp_path, code)
    assert status == 1, report
    for expression, message in MISTAKES.items():
        assert message in report, (expression, report)
    assert 'Incompatible types in assignment (expression has type "int", variable has type "str")' in report
    assert f"Found {len(MISTAKES) + 1} errors in 1 file" in report


# 2. The TypedDicts say what the methods return, key for key and type for type.


def conforms(value: object, expected: Any, where: str = "result") -> None:
    """Assert `value` has exactly the shape of the type `expected` (TypedDicts key for key)."""
    origin = get_origin(expected)
    if typing.is_typeddict(expected):
        assert isinstance(value, dict), where
        hints = get_type_hints(expected)
        assert set(value) >= expected.__required_keys__, (where, sorted(value))
        assert set(value) <= set(hints), (where, sorted(value))
        for key, item in value.items():
            conforms(item, hints[key], f"{where}[{key!r}]")
    elif origin in (types.UnionType, typing.Union):
        errors = []
        for option in get_args(expected):
            try:
                conforms(value, option, where)
                return
            except AssertionError as error:
                errors.append(error)
        raise AssertionError(where, errors)
    elif origin is dict:
        key_type, value_type = get_args(expected)
        assert isinstance(value, dict), where
        for key, item in value.items():
            conforms(key, key_type, f"{where} key")
            conforms(item, value_type, f"{where}[{key!r}]")
    elif origin is list:
        assert isinstance(value, list), where
        for index, item in enumerate(value):
            conforms(item, get_args(expected)[0], f"{where}[{index}]")
    elif expected is type(None):
        assert value is None, where
    elif expected is Any:
        pass
    else:
        assert type(value) is expected, (where, value, expected)


def conforms_to_usage_report(report: UsageReport, where: str) -> None:
    """A `UsageReport`: an int `total`, every other key a usage type with `UsageFigures`."""
    assert type(report["total"]) is int, where
    for usage_type, figures in usage_by_type(report).items():
        conforms(figures, UsageFigures, f"{where}[{usage_type!r}]")


def test_the_typeddicts_say_what_the_reports_return(tmp_path: Path) -> None:
    clock = FakeClock()
    service = MeteringService(small_cost_map(), clock=clock)
    user, app = Actor("u"), Actor("u", "chat")
    service.increment_usage(user, "kv:write", 2)
    service.increment_usage(app, FRACTION, 3)
    service.update_addon_credit("u", 500)

    conforms(service.get_allowed_usage(user), AllowedUsage)
    conforms(service.get_actor_budget(user), ActorBudget)
    assert set(service.get_actor_budget(user)) == set(ActorBudget.__required_keys__)
    conforms(service.get_actor_addons(user), AddonCredits)
    conforms(service.get_actor_app_usage(app, "chat"), AppTotals)
    conforms(service._stats(), ServiceStats)
    assert service._sync_stats() is None
    for actor in (user, app):
        for details in (
            service.get_actor_current_month_usage_details(actor),
            service.get_actor_month_usage_details(actor, "2026-10"),
            service.get_actor_month_usage_details(actor, "2026-01"),
        ):
            conforms({**details, "usage": {"total": 0}}, UsageDetails)
            conforms_to_usage_report(details["usage"], "usage")
        report = service.get_actor_report(actor)
        conforms({**report, "usage": {"total": 0}}, ActorReport)
        conforms_to_usage_report(report["usage"], "report usage")
    conforms_to_usage_report(service.get_global_usage(), "global")
    conforms_to_usage_report(service.get_actor_current_month_app_usage_details(app), "app")
    assert set(usage_by_type(service.get_global_usage())) == {"kv:write", FRACTION}

    with MeteringService(small_cost_map(), store=tmp_path / "ledger") as stored:
        stored.increment_usage(user, "kv:read", 1)
        stored.flush()
        stats = stored._stats()
        conforms(stats, ServiceStats)
        assert set(stats) == {"refusals", "store_failures", "store_lag_ms"}
    conforms(verify_store(tmp_path / "ledger"), StoreSummary)
    conforms(recover_store(tmp_path / "ledger"), StoreRecovery)
    conforms(copy_store(tmp_path / "ledger", tmp_path / "copy"), StoreCopy)


def test_a_fleet_workers_sync_stats_are_sync_stats(redis_url: str) -> None:
    with MeteringService(small_cost_map(), store=redis_url) as worker:
        worker.increment_usage(Actor("u"), "kv:read", 1)
        worker.flush()
        stats = worker._sync_stats()
        conforms(stats, SyncStats)
        assert stats is not None and set(stats) == set(SyncStats.__required_keys__)


def test_conforms_catches_a_wrong_shape() -> None:
    """The checker above can fail: a missing key, an extra key, a wrong type, a None."""
    good: AppTotals = {"total": 1, "count": 1}
    conforms(good, AppTotals)
    for bad in ({"total": 1}, {"total": 1, "count": 1, "extra": 0}, {"total": "1", "count": 1}, None):
        with pytest.raises(AssertionError):
            conforms(bad, AppTotals)
    with pytest.raises(AssertionError):
        conforms({"refusals": 0, "store_lag_ms": 1.5}, ServiceStats)
    assert NotRequired  # ServiceStats marks the store's figures NotRequired
    assert ServiceStats.__optional_keys__ == {"store_failures", "store_lag_ms"}


# 3. help() and inspect.signature on the native methods name the stub's parameters.


def stub_signatures() -> dict[str, dict[str, list[tuple[str, str, bool]]]]:
    """`{class or "": {function: [(parameter, kind, has default)]}}` from `_core.pyi`."""

    def parameters(function: ast.FunctionDef, drop_first: bool) -> list[tuple[str, str, bool]]:
        arguments = function.args
        positional = [*arguments.posonlyargs, *arguments.args]
        defaults = [False] * (len(positional) - len(arguments.defaults)) + [True] * len(arguments.defaults)
        found = [
            (a.arg, "positional", has_default) for a, has_default in zip(positional, defaults, strict=True)
        ][1 if drop_first else 0 :]
        if arguments.vararg is not None:
            found.append((arguments.vararg.arg, "var_positional", False))
        for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
            found.append((argument.arg, "keyword_only", default is not None))
        if arguments.kwarg is not None:
            found.append((arguments.kwarg.arg, "var_keyword", False))
        return found

    def is_static(function: ast.FunctionDef) -> bool:
        return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)

    def is_property(function: ast.FunctionDef) -> bool:
        return any(isinstance(d, ast.Name) and d.id == "property" for d in function.decorator_list)

    tree = ast.parse(STUB.read_text())
    found: dict[str, dict[str, list[tuple[str, str, bool]]]] = {"": {}}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[""][node.name] = parameters(node, drop_first=False)
        elif isinstance(node, ast.ClassDef):
            methods = found.setdefault(node.name, {})
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not is_property(item):
                    methods[item.name] = parameters(item, drop_first=not is_static(item))
    return found


def runtime_parameters(function: Callable[..., object], drop_first: bool) -> list[tuple[str, str, bool]]:
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.VAR_POSITIONAL: "var_positional",
        inspect.Parameter.KEYWORD_ONLY: "keyword_only",
        inspect.Parameter.VAR_KEYWORD: "var_keyword",
    }
    parameters = list(inspect.signature(function).parameters.values())[1 if drop_first else 0 :]
    return [(p.name, kinds[p.kind], p.default is not inspect.Parameter.empty) for p in parameters]


NATIVE_CLASSES: dict[str, type] = {
    "MeteringCore": MeteringCore,
    "CostMap": CostMap,
    "Actor": Actor,
    "Meter": Meter,
}


@pytest.mark.parametrize("class_name", sorted(NATIVE_CLASSES))
def test_native_methods_have_the_stubs_signatures(class_name: str) -> None:
    cls = NATIVE_CLASSES[class_name]
    stubbed = stub_signatures()[class_name]
    public = sorted(
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member) and not isinstance(member, property)
    )
    assert public, class_name
    assert set(public) <= set(stubbed), set(public) - set(stubbed)
    for name in public:
        native = getattr(cls, name)
        assert native.__text_signature__, f"{class_name}.{name} has no __text_signature__"
        static = isinstance(vars(cls)[name], staticmethod)
        assert runtime_parameters(native, drop_first=not static) == stubbed[name], f"{class_name}.{name}"
    if "__new__" in stubbed:  # the constructor's signature is the class's
        assert runtime_parameters(cls, drop_first=False) == stubbed["__new__"], f"{class_name}()"


def test_native_functions_have_the_stubs_signatures() -> None:
    stubbed = stub_signatures()[""]
    for name in ("verify_store", "recover_store", "copy_store"):
        function = getattr(usagemeter._core, name)
        assert function.__text_signature__, name
        assert runtime_parameters(function, drop_first=False) == stubbed[name], name


def test_the_signature_check_can_fail() -> None:
    """A parameter renamed, or a default lost, in the stub would be caught."""
    stubbed = stub_signatures()["MeteringCore"]["increment_usage"]
    actual = runtime_parameters(MeteringCore.increment_usage, drop_first=True)
    assert (
        actual
        == stubbed
        == [
            ("actor", "positional", False),
            ("usage_type", "positional", False),
            ("amount", "positional", False),
            ("cost_override", "positional", True),
            ("idempotency_key", "keyword_only", True),
        ]
    )
    assert actual != [("actor", "positional", False), ("kind", "positional", False), *stubbed[2:]]
    assert actual != [*stubbed[:3], ("cost_override", "positional", False)]


def test_help_shows_every_service_methods_signature() -> None:
    for name in SERVICE_METHODS:
        method = getattr(MeteringService, name)
        signature = inspect.signature(method)
        assert next(iter(signature.parameters)) == "self", name
        assert method.__doc__, name
    text = pydoc_text(MeteringService.get_actor_budget)
    assert "get_actor_budget(self, /, actor)" in text


def pydoc_text(thing: object) -> str:
    import pydoc

    return pydoc.render_doc(thing, renderer=pydoc.plaintext)  # type: ignore[attr-defined]


# 4. get_actor_report: a user's month in one call.


def report_service(clock: FakeClock) -> MeteringService:
    service = MeteringService(small_cost_map(), clock=clock)

    def register(event: RegisterAvailablePoliciesEvent) -> None:
        event.available_policies.append(PRO)

    def pro_for_ann(event: GetUserSubscriptionEvent) -> None:
        if event.actor.user_id == "ann":
            event.user_subscription_id = "pro"

    service.events.on(REGISTER_AVAILABLE_POLICIES, register)
    service.events.on(GET_USER_SUBSCRIPTION, pro_for_ann)
    return service


def test_get_actor_report_is_the_three_calls_in_one(clock: FakeClock) -> None:
    service = report_service(clock)
    ann, ann_chat = Actor("ann"), Actor("ann", "chat")
    service.increment_usage(ann, "kv:write", 2)
    service.increment_usage(ann_chat, FRACTION, 3)
    service.update_addon_credit("ann", 1_000)

    for actor in (ann, ann_chat):
        report = service.get_actor_report(actor)
        details = service.get_actor_current_month_usage_details(actor)
        expected: ActorReport = {
            "user_id": "ann",
            "month": "2026-10",
            "plan_id": "pro",
            "budget": service.get_actor_budget(actor),
            "usage": details["usage"],
            "app_totals": details["app_totals"],
        }
        assert report == expected
        assert service.get_actor_report(actor, "2026-10") == expected
    assert service.get_actor_report(ann)["usage"]["total"] == 250 + 94  # 2 x 125, 3 x 31.25
    assert service.get_actor_report(ann_chat)["app_totals"] == {
        "chat": {"total": 94, "count": 1},
        "others": {"total": 250, "count": 1},
    }
    assert service.get_actor_report(Actor("bob"))["plan_id"] == "temp_free"
    assert MeteringServiceWrapper(service).get_actor_report(ann) == service.get_actor_report(ann)


def test_get_actor_report_of_another_month_has_no_budget(clock: FakeClock) -> None:
    service = report_service(clock)
    ann = Actor("ann")
    service.increment_usage(ann, "kv:write", 2)
    october = service.get_actor_report(ann)
    clock.advance(31 * 86_400)  # November
    past = service.get_actor_report(ann, "2026-10")
    assert past["budget"] is None
    assert (past["month"], past["usage"], past["app_totals"]) == (
        "2026-10",
        october["usage"],
        october["app_totals"],
    )
    now = service.get_actor_report(ann)
    assert now["month"] == "2026-11"
    assert now["usage"] == {"total": 0}
    assert now["budget"] is not None and now["budget"]["remaining"] == PRO.monthly_allowance


def test_get_actor_report_refuses_bad_input_and_creates_nothing(clock: FakeClock) -> None:
    service = report_service(clock)
    accounts = service._account_count()
    with pytest.raises(ValueError, match="system actor"):
        service.get_actor_report(Actor.system())
    with pytest.raises(ValueError, match="YYYY-MM"):
        service.get_actor_report(Actor("ann"), "October")
    with pytest.raises(TypeError, match="month"):
        service.get_actor_report(Actor("ann"), 202610)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Actor"):
        service.get_actor_report("ann")  # type: ignore[arg-type]
    service.get_actor_report(Actor("never-charged"))
    assert service._account_count() == accounts


def test_async_get_actor_report_awaits_an_async_plan_listener(clock: FakeClock) -> None:
    service = AsyncMeteringService(MeteringService(small_cost_map(), clock=clock, policies=[PRO]))

    async def pro(event: GetUserSubscriptionEvent) -> None:
        await asyncio.sleep(0)  # a plan read from an async database
        event.user_subscription_id = "pro"

    service.events.on(GET_USER_SUBSCRIPTION, pro)

    async def main() -> tuple[ActorReport, ActorReport]:
        await service.increment_usage(Actor("ann"), "kv:write", 2)
        return await service.get_actor_report(Actor("ann")), await service.get_actor_report(
            Actor("ann"), "2026-09"
        )

    now, september = asyncio.run(main())
    assert now["plan_id"] == "pro"
    assert now["budget"] == service.sync.get_actor_budget(Actor("ann"))
    assert now["usage"]["total"] == 250
    assert september["budget"] is None and september["usage"] == {"total": 0}
