"""asyncpg pool that survives the database going away and coming back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import asyncpg

from .config import Settings
from .problems import Problem

# Errors that mean "the database is not reachable right now", as opposed to a
# bug or a constraint violation. They become 503 and never a 500.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

log = logging.getLogger("paycore.db")

ACQUIRE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0


def unavailable() -> Problem:
    return Problem(
        503,
        "database_unavailable",
        "the ledger database is unavailable; retry later",
        headers={"Retry-After": "1"},
    )


def timed_out() -> Problem:
    """statement_timeout (or an operator's cancel) ended the query: 503, retry."""
    return Problem(
        503,
        "database_timeout",
        "the ledger database did not answer in time; retry later",
        headers={"Retry-After": "1"},
    )


def server_settings(settings: Settings) -> dict[str, str]:
    return {
        "application_name": "paycore-ledger",
        "lock_timeout": str(settings.lock_timeout_ms),
        "statement_timeout": str(settings.statement_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
    }


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook. Handlers never change session state (only SET LOCAL inside
    transactions, no LISTEN, no advisory locks), so asyncpg's default RESET ALL
    round trip on every release is skipped; open transactions are still ended."""


class Database:
    """Owns the pool; creates it lazily so the service starts while PG is down."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._last_warning = -10.0

    async def pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._settings.require_database_url(),
                    min_size=0,
                    max_size=self._settings.db_pool_max,
                    timeout=CONNECT_TIMEOUT_S,
                    max_inactive_connection_lifetime=300,
                    server_settings=server_settings(self._settings),
                    reset=_keep_session,
                )
            return self._pool

    async def warm_up(self) -> None:
        """Open db_pool_min connections if the database is there; never fails."""
        with contextlib.suppress(*UNAVAILABLE_ERRORS):
            pool = await self.pool()
            conns = [
                await pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
                for _ in range(self._settings.db_pool_min)
            ]
            for conn in conns:
                await pool.release(conn)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; unreachable database -> Problem 503."""
        try:
            pool = await self.pool()
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        except UNAVAILABLE_ERRORS:
            raise unavailable() from None
        except Exception as exc:
            # Reached but refused: login, missing database, bad connection
            # options. Still "unavailable" to the client, and worth a log line.
            self._warn_refused(exc)
            raise unavailable() from None
        try:
            yield conn
        except asyncpg.QueryCanceledError:  # class 57 like OperatorIntervention: first
            raise timed_out() from None
        except UNAVAILABLE_ERRORS:
            raise unavailable() from None
        finally:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await pool.release(conn)

    def _warn_refused(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10:  # at most one line per 10 s per worker
            self._last_warning = now
            first = str(exc).splitlines()[0] if str(exc) else ""
            log.warning(
                "cannot open a database connection",
                extra={"error": f"{type(exc).__name__}: {first}"},
            )

    def stats(self) -> tuple[int, int]:
        """(open connections, connections in use)."""
        if self._pool is None:
            return 0, 0
        size = self._pool.get_size()
        return size, size - self._pool.get_idle_size()

    async def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await asyncio.wait_for(self._pool.close(), timeout=10)
            self._pool = None


async def connect(settings: Settings) -> asyncpg.Connection:
    """A single connection for CLI commands."""
    return await asyncpg.connect(
        settings.require_database_url(),
        timeout=CONNECT_TIMEOUT_S,
        server_settings=server_settings(settings),
    )
