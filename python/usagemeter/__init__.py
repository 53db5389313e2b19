"""usagemeter: exact, thread-safe usage metering and credits for Python servers.

Prices come from cost maps (µ¢ per unit, exact decimals); each actor has a monthly allowance
from a policy plus purchased credits; usage is kept per actor, month, usage type and app. The
ledger is native (Rust): money is fixed-point, never a float, and every charge is atomic.
"""

from usagemeter._core import (
    Actor,
    CostMap,
    CostMapError,
    HoldSettledError,
    IdempotencyKeyLimitError,
    IdempotencyKeyReused,
    Meter,
    StoreClosedError,
    StoreCorruptedError,
    StoreError,
    StoreLockedError,
    StoreOutcomeUnknownError,
    StoreUnavailableError,
    StoreVersionError,
    StoreWriteError,
    UnknownUsageType,
    __version__,
)
from usagemeter.events import (
    ALARM,
    GET_USER_SUBSCRIPTION,
    MONTHLY_CHARGES,
    OVERRIDE_DEFAULT_SUBSCRIPTION,
    REFUND,
    REGISTER_AVAILABLE_POLICIES,
    AlarmEvent,
    AsyncListenerError,
    EventBus,
    GetUserSubscriptionEvent,
    MonthlyCharge,
    MonthlyChargesApplied,
    MonthlyChargesEvent,
    OverrideDefaultSubscriptionEvent,
    RefundEvent,
    RegisterAvailablePoliciesEvent,
)
from usagemeter.holds import Hold
from usagemeter.money import MICROCENTS_PER_DOLLAR, to_microcents
from usagemeter.policies import BUILTIN_POLICIES, TEMP_FREE, USER_FREE, Policy
from usagemeter.service import SERVICE_METHODS, MeteringService, MeteringServiceWrapper

__all__ = [
    "ALARM",
    "BUILTIN_POLICIES",
    "GET_USER_SUBSCRIPTION",
    "MICROCENTS_PER_DOLLAR",
    "MONTHLY_CHARGES",
    "OVERRIDE_DEFAULT_SUBSCRIPTION",
    "REFUND",
    "REGISTER_AVAILABLE_POLICIES",
    "SERVICE_METHODS",
    "TEMP_FREE",
    "USER_FREE",
    "Actor",
    "AlarmEvent",
    "AsyncListenerError",
    "CostMap",
    "CostMapError",
    "EventBus",
    "GetUserSubscriptionEvent",
    "Hold",
    "HoldSettledError",
    "IdempotencyKeyLimitError",
    "IdempotencyKeyReused",
    "Meter",
    "MeteringService",
    "MeteringServiceWrapper",
    "MonthlyCharge",
    "MonthlyChargesApplied",
    "MonthlyChargesEvent",
    "OverrideDefaultSubscriptionEvent",
    "Policy",
    "RefundEvent",
    "RegisterAvailablePoliciesEvent",
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
    "to_microcents",
]
