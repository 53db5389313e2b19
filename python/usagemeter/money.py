"""Exact conversion of dollar amounts to microcents (1 µ¢ = 1/1,000,000 cent)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

__all__ = ["MICROCENTS_PER_DOLLAR", "to_microcents"]

MICROCENTS_PER_DOLLAR = 100_000_000

# Dollar amounts of 10^30 or more are refused: far beyond the ledger's range (10^10 dollars per
# actor), and a bound on the work an exponent like "1e999999999" could ask for.
MAX_DOLLAR_DIGITS = 30


def to_microcents(dollars: str | Decimal | int) -> int:
    """Convert dollars to whole microcents exactly: ``to_microcents("0.04") == 4_000_000``.

    Accepts ``str``, ``decimal.Decimal`` and ``int``. A ``float`` is refused with ``TypeError``
    (it cannot hold most cent values exactly); a value that is not a whole number of microcents,
    or is NaN or infinite, raises ``ValueError``; $10^30 or more raises ``OverflowError``.
    """
    if isinstance(dollars, bool) or isinstance(dollars, float):
        raise TypeError(
            f"dollars must be str, Decimal or int, not {type(dollars).__name__}: "
            "pass a str or decimal.Decimal (e.g. '0.04') so the amount stays exact"
        )
    if isinstance(dollars, int):
        dollars = Decimal(int(dollars))
    if isinstance(dollars, str):
        try:
            dollars = Decimal(dollars.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {dollars!r}") from None
    if not isinstance(dollars, Decimal):
        raise TypeError(f"dollars must be str, Decimal or int, not {type(dollars).__name__}")
    if not dollars.is_finite():
        raise ValueError(f"dollars must be finite, got {dollars}")
    # Exact integer arithmetic on the digits: no context precision, no rounding.
    sign, digits, exponent = dollars.as_tuple()
    assert isinstance(exponent, int)
    coefficient = int("".join(map(str, digits)) or "0")
    if coefficient == 0:
        return 0
    if dollars.adjusted() >= MAX_DOLLAR_DIGITS:
        # Refused before any power of ten is built: "1e999999999" must not hang the caller.
        raise OverflowError(f"${dollars} is beyond any amount the ledger can hold")
    scaled_exponent = exponent + 8  # $1 = 10^8 µ¢
    if -scaled_exponent >= len(digits):
        raise ValueError(f"${dollars} is not a whole number of microcents")
    microcents: int
    if scaled_exponent >= 0:
        microcents = coefficient * 10**scaled_exponent
    else:
        microcents, remainder = divmod(coefficient, 10**-scaled_exponent)
        if remainder:
            raise ValueError(f"${dollars} is not a whole number of microcents")
    return -microcents if sign else microcents
