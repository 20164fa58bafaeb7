"""Typed keys of what the aiohttp application holds (aiohttp AppKey objects)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .batching import Batcher
from .config import Settings
from .db import Database
from .public_ids import PublicIds
from .ratelimit import RateLimiter

DB_KEY = web.AppKey("db", Database)
SETTINGS_KEY = web.AppKey("settings", Settings)
POOL_TASK_KEY = web.AppKey("pool_task", asyncio.Task)
# Group commit (batching.py); absent when PAYCORE_POST_BATCH_MAX is 1.
PAYMENT_BATCHER_KEY = web.AppKey("payment_batcher", Batcher)
DEBIT_BATCHER_KEY = web.AppKey("debit_batcher", Batcher)  # refunds and payouts
RATE_LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)
PUBLIC_IDS_KEY = web.AppKey("public_ids", PublicIds)
