"""Minor units of currencies (ISO 4217) and the amount limit each implies."""

from __future__ import annotations

# ISO 4217's "minor unit" column: the decimal places of an amount. Every
# active currency not listed here has 2 (cents, kobo, pence).
_EXPONENT_NOT_2 = {
    # none: amounts are in major units
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "ISK": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    # thousandths (fils, baisa, millimes, dirhams)
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    # ten-thousandths (units of account)
    "CLF": 4,
    "UYW": 4,
}
DEFAULT_EXPONENT = 2

# The largest amount accepted, in major units of any currency: 10 billion
# (dollars, naira, yen, dinars), far above any real payment, refund or payout.
MAX_MAJOR_UNITS = 10**10


def exponent(currency: str) -> int:
    """Decimal places of `currency`'s minor unit (ISO 4217)."""
    return _EXPONENT_NOT_2.get(currency, DEFAULT_EXPONENT)


def max_amount(currency: str) -> int:
    """The largest amount in `currency`'s minor units: MAX_MAJOR_UNITS major units
    (10¹² for a two-decimal currency, 10¹⁰ yen, 10¹³ fils of a dinar)."""
    return MAX_MAJOR_UNITS * 10 ** exponent(currency)


# The largest over all currencies: the bound for an amount whose currency the
# request does not name (a refund is in its payment's currency, and the
# database bounds it by the payment's amount).
MAX_AMOUNT_ANY_CURRENCY = MAX_MAJOR_UNITS * 10 ** max(DEFAULT_EXPONENT, *_EXPONENT_NOT_2.values())
