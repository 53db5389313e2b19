"""Subscription policies: how much an actor may spend each month."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUILTIN_POLICIES", "TEMP_FREE", "USER_FREE", "Policy"]


def _require_microcents(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of microcents, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


@dataclass(frozen=True, slots=True)
class Policy:
    """A subscription plan: a monthly allowance in µ¢ (and a storage allowance in bytes)."""

    id: str
    monthly_allowance: int
    monthly_storage_allowance: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("policy id must be a non-empty string")
        _require_microcents("monthly_allowance", self.monthly_allowance)
        _require_microcents("monthly_storage_allowance", self.monthly_storage_allowance)


TEMP_FREE = Policy("temp_free", 25_000_000)
"""The plan of an actor without an email: 25,000,000 µ¢ ($0.25) a month."""

USER_FREE = Policy("user_free", 50_000_000)
"""The plan of an actor with an email: 50,000,000 µ¢ ($0.50) a month."""

BUILTIN_POLICIES: tuple[Policy, ...] = (TEMP_FREE, USER_FREE)
