"""`petrel_client.client.Client` is `petrel.Client` (see petrel/client.py)."""

from __future__ import annotations

from petrel.client import Client

__all__ = ["Client"]
