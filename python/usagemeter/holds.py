"""``Hold``: credit reserved before a call whose cost is known only after it ran.

``service.reserve(actor, usages=[...])`` reserves the worst case (say, the prompt and
``max_tokens`` of output) atomically, like ``try_increment_usage``: ``None`` when the actor's
remaining budget, net of its other holds, does not cover it. While outstanding, the hold lowers
``get_remaining_usage`` and every credit check, so two requests of one user in flight cannot
together overspend. ``hold.settle(usages=[...])`` then records the real usage and frees the
rest, in one atomic step; ``hold.release()`` frees it all. A hold expires after its ``ttl``
(seconds, on the service's clock): a crash never leaves budget held for longer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from usagemeter._core import Actor, HoldSettledError

if TYPE_CHECKING:
    from usagemeter.aio import AsyncMeteringService
    from usagemeter.service import MeteringService

__all__ = ["MAX_HOLD_TTL", "Hold"]

Usages = Iterable[tuple[str, int] | tuple[str, int, int | None]]

MAX_HOLD_TTL = 366 * 86_400.0
"""The longest a hold may last, in seconds: holds are for calls in flight."""


def ttl_ms(ttl: object) -> int:
    """``ttl`` seconds as whole milliseconds (rounded up, so a tiny ttl is not 0)."""
    # A tuple, not `int | float`: that union would be built at every call (a third of what
    # `reserve` added to its native call, measured with `benches/holds.py`).
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not 0 < ttl <= MAX_HOLD_TTL:
        raise ValueError(f"ttl must be above 0 and at most 366 days ({MAX_HOLD_TTL:.0f} s), got {ttl}")
    return math.ceil(ttl * 1000)


class Hold:
    """Credit held for one actor until it is settled, released, or expires.

    ``amount`` is what it holds (µ¢), ``expires_at`` when it stops holding it (epoch seconds on
    the service's clock), ``state`` ``"held"``, ``"settled"`` or ``"released"``. As a context
    manager (``with hold:`` or ``async with hold:``) it is released when the block ends without
    a settle, exception or not: budget is never left held by a call that did not record.
    """

    __slots__ = (
        "_aio",
        "_expires_ms",
        "_service",
        "_service_tier",
        "_state",
        "_usage_type",
        "actor",
        "amount",
        "id",
    )

    def __init__(
        self,
        service: MeteringService,
        actor: Actor,
        hold: tuple[int, int, int],
        usage_type: str | None = None,
        aio: AsyncMeteringService | None = None,
        service_tier: str | None = None,
    ) -> None:
        """A handle on the native hold ``(id, amount, expires_ms)`` (made by ``reserve``);
        ``service_tier`` is the one it was reserved in, which ``settle`` prices in by default."""
        self._service = service
        self._aio = aio
        self.actor = actor
        self.id, self.amount, self._expires_ms = hold
        self._usage_type = usage_type
        self._service_tier = service_tier
        self._state: Literal["held", "settled", "released"] = "held"

    @property
    def expires_at(self) -> float:
        """When the hold stops holding anything, in epoch seconds (the service's clock)."""
        return self._expires_ms / 1000

    @property
    def state(self) -> Literal["held", "settled", "released"]:
        """``"held"`` until ``settle`` or ``release`` (an expired hold stays ``"held"`` here)."""
        return self._state

    def __repr__(self) -> str:
        return f"<Hold {self.id} of {self.amount} µ¢ for {self.actor!r}: {self._state}>"

    def _open(self, action: str) -> None:
        # Only a shortcut for this handle: the ledger decides natively, under the user's lock,
        # for every handle and thread (HoldSettledError from `_settle`, `_release`, `_extend`).
        if self._state != "held":
            raise HoldSettledError(f"cannot {action} hold {self.id}: it was already {self._state}")

    def settle(
        self,
        usages: Usages | None = None,
        cost: int | None = None,
        *,
        usage_type: str | None = None,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int:
        """Record the call's real usage and free the hold, atomically; return the month total.

        ``usages`` are batch items, as for ``batch_increment_usages``; or ``cost`` (µ¢) is booked
        as ``usage_type`` (default: the one usage type the hold was reserved for). More than the
        hold is recorded too (the call ran: it goes to the pools, then overage); what the hold
        held beyond the real cost is free again. The usage is recorded even if the hold expired.
        Bad input raises and changes nothing (the hold stays). A hold is settled or released
        once, whatever the handle or thread: another settle raises ``HoldSettledError`` (a
        ``ValueError``) and records nothing, unless it is a retry with the first settle's
        ``idempotency_key`` (from this handle or another, after a timeout or a restart): that
        records nothing and returns the first total. ``usages`` are one request for a price
        table (README, "The price model"), priced in ``service_tier`` (default: the service tier
        the hold was reserved in).
        """
        if idempotency_key is None or self._state != "settled":
            self._open("settle")
        if cost is not None and usage_type is None and usages is None:
            usage_type = self._usage_type
            if usage_type is None:
                raise ValueError(
                    "settle(cost=...) needs usage_type=: the hold was not reserved for exactly one usage type"
                )
        items = None if usages is None else list(usages)
        tier = self._service_tier if service_tier is None else service_tier
        total, _ = self._service._settle(self.actor, self.id, items, cost, usage_type, idempotency_key, tier)
        self._state = "settled"
        return total

    def release(self) -> bool:
        """Free the hold without recording anything; whether it was still holding (not expired).
        A hold settled or released before (by any handle) raises ``HoldSettledError``."""
        self._open("release")
        live = self._service._release(self.actor, self.id)
        self._state = "released"
        return live

    def extend(self, ttl: float) -> bool:
        """Make the hold expire ``ttl`` seconds from now; False if it already expired (an expired
        hold is not revived: its budget may be spent)."""
        self._open("extend")
        expires_ms = self._service._extend(self.actor, self.id, ttl_ms(ttl))
        if expires_ms is None:
            return False
        self._expires_ms = expires_ms
        return True

    async def asettle(
        self,
        usages: Usages | None = None,
        cost: int | None = None,
        *,
        usage_type: str | None = None,
        idempotency_key: str | None = None,
        service_tier: str | None = None,
    ) -> int:
        """``settle`` for async code: awaits async plan listeners when the plan is not cached."""
        items = None if usages is None else list(usages)
        if self._aio is None:
            return self.settle(
                items, cost, usage_type=usage_type, idempotency_key=idempotency_key, service_tier=service_tier
            )
        if idempotency_key is not None:  # on a fleet it waits on the shared ledger: off the loop
            return await self._aio._keyed(
                self.actor,
                self.settle,
                items,
                cost,
                usage_type=usage_type,
                idempotency_key=idempotency_key,
                service_tier=service_tier,
            )
        return await self._aio._with_plan(
            self.actor, self.settle, items, cost, usage_type=usage_type, service_tier=service_tier
        )

    async def arelease(self) -> bool:
        """``release`` for async code (it never waits)."""
        return self.release()

    async def aextend(self, ttl: float) -> bool:
        """``extend`` for async code (it never waits)."""
        return self.extend(ttl)

    def __enter__(self) -> Hold:
        """The hold itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the hold unless it was settled (or released) in the block."""
        if self._state == "held":
            self._release_at_exit()

    def _release_at_exit(self) -> None:
        try:
            self.release()
        except HoldSettledError:
            # Settled or released through another handle: nothing is held any more.
            self._state = "settled"

    async def __aenter__(self) -> Hold:
        """The hold itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the hold unless it was settled (or released) in the block."""
        if self._state == "held":
            self._release_at_exit()


def reserved_usage_type(usages: list[tuple[str, int] | tuple[str, int, int | None]] | None) -> str | None:
    """The one usage type a hold was reserved for, if its items (checked by the reserve that
    accepted them) name exactly one."""
    names = {item[0] for item in usages or ()}
    return names.pop() if len(names) == 1 else None
