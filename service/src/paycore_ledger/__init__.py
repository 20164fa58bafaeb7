"""PayCore ledger: double-entry payment API."""

__version__ = "0.1.0"
