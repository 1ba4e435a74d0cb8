"""Typed keys for what the gateway keeps on the app and on each request (no globals)."""

from __future__ import annotations

from aiohttp import web

from petrel.store import Store
from petrel_gateway.qos import Qos
from petrel_gateway.settings import GatewaySettings

REQUEST_ID = "petrel.request_id"
ACCESS_KEY = "petrel.access_key"
OPERATION = "petrel.operation"

# On the app: the open store and the settings (set up in petrel_gateway.app.build_app).
STORE = web.AppKey("petrel.store", Store)
SETTINGS = web.AppKey("petrel.settings", GatewaySettings)
# The QoS state (limits replaceable while running: Qos.configure).
QOS = web.AppKey("petrel.qos", Qos)
