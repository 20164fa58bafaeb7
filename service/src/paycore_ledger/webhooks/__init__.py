"""Webhooks: endpoints merchants register (registration.py), the addresses
they may reach (addresses.py), the Paycore-Signature header (signing.py) and
the worker that delivers events to them (delivery.py)."""
