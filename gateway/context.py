"""Typed keys for what the gateway keeps on the app and on each request (no globals)."""

from __future__ import annotations

REQUEST_ID = "petrel.request_id"
ACCESS_KEY = "petrel.access_key"
OPERATION = "petrel.operation"
