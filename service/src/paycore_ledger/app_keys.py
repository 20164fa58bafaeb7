"""Typed keys of what the aiohttp application holds (aiohttp AppKey objects)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .config import Settings
from .db import Database

DB_KEY = web.AppKey("db", Database)
SETTINGS_KEY = web.AppKey("settings", Settings)
POOL_TASK_KEY = web.AppKey("pool_task", asyncio.Task)
