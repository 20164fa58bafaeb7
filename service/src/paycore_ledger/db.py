"""Database connections for one worker: a small pool that survives the database
going away and coming back.

Not asyncpg's Pool: its release runs in a task of its own (asyncio.shield)
under a timeout, and its acquire goes through an asyncio.Queue, a few dozen
Python calls and an extra event-loop turn per request on the hot path
(service/README.md, benchmark). Handing out and taking back a connection here
is a list pop/append. Handlers never change session state (only SET LOCAL
inside transactions, no LISTEN, no advisory locks, no prepared statements of
their own), so a connection is reusable unless it is closed, still inside a
transaction or was interrupted mid-query; those are closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

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
    # A write refused by a standby: in a failover, the proxy may route to the
    # new leader a moment before PostgreSQL has finished its promotion.
    # Nothing was written; the connection is dropped (see _Lease).
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)

log = logging.getLogger("paycore.db")

ACQUIRE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
MAX_IDLE_S = 300.0  # idle connections older than this are closed (trim)
CLOSE_TIMEOUT_S = 10.0


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


class Database:
    """The worker's connections to PostgreSQL, opened on demand (so the service
    starts while the database is down), at most `max_connections` of them
    (default: db_pool_max)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_connections: int | None = None,
        session: dict[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._server_settings = {**server_settings(settings), **(session or {})}
        self._max = max_connections or settings.db_pool_max
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # LIFO: warm first
        self._size = 0  # open connections, plus those being opened
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False
        self._last_warning = -10.0

    @property
    def max_connections(self) -> int:
        return self._max

    def connection(self) -> _Lease:
        """`async with db.connection() as conn`: a connection for this request; an
        unreachable database -> Problem 503, a statement timeout -> 503 too."""
        return _Lease(self)

    async def warm_up(self) -> None:
        """Open db_pool_min connections if the database is there; never fails."""
        conns = []
        with contextlib.suppress(Exception):
            for _ in range(self._settings.db_pool_min):
                conns.append(await self._acquire())
        for conn in conns:
            self._release(conn, reusable=True)

    async def _acquire(self) -> asyncpg.Connection:
        if self._closed:
            raise unavailable()
        while self._idle:
            conn, _ = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._size -= 1
        if self._size < self._max:
            self._size += 1
            return await self._open()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(ACQUIRE_TIMEOUT_S):
                conn = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection (or a slot) just as we gave up: pass it on.
                handed = waiter.result()
                if handed is None:
                    self._size -= 1
                    self._free_slot()
                else:
                    self._release(handed, reusable=True)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise unavailable() from None
            raise
        # None: a slot was freed for us (size already counts it); open one.
        return conn if conn is not None else await self._open()

    async def _open(self) -> asyncpg.Connection:
        """Open a connection for a slot already counted in _size."""
        try:
            return await asyncpg.connect(
                self._settings.require_database_url(),
                timeout=CONNECT_TIMEOUT_S,
                server_settings=self._server_settings,
            )
        except BaseException as exc:
            self._size -= 1
            self._free_slot()
            if isinstance(exc, UNAVAILABLE_ERRORS):
                raise unavailable() from None
            if isinstance(exc, Exception):
                # Reached but refused: login, missing database, bad options.
                # Still "unavailable" to the client, and worth a log line.
                self._warn_refused(exc)
                raise unavailable() from None
            raise

    def _release(self, conn: asyncpg.Connection, reusable: bool) -> None:
        if not reusable or self._closed or conn.is_closed() or conn.is_in_transaction():
            if not conn.is_closed():
                conn.terminate()
            self._size -= 1
            self._free_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append((conn, time.monotonic()))

    def _free_slot(self) -> None:
        """A connection went away: let the first waiter open a new one."""
        while self._waiters and self._size < self._max:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(None)
                return

    def trim(self) -> None:
        """Close connections idle for longer than MAX_IDLE_S (called periodically)."""
        cutoff = time.monotonic() - MAX_IDLE_S
        keep = self._settings.db_pool_min
        old = [item for item in self._idle[: max(0, len(self._idle) - keep)] if item[1] < cutoff]
        for item in old:
            self._idle.remove(item)
            self._size -= 1
            item[0].terminate()

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
        return self._size, self._size - len(self._idle)

    async def close(self) -> None:
        """Close every idle connection (in-flight requests have drained by now)."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(unavailable())
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._size -= 1
            try:
                await asyncio.wait_for(conn.close(), timeout=CLOSE_TIMEOUT_S)
            except Exception:  # TimeoutError included
                conn.terminate()


class _Lease:
    """The async context manager behind Database.connection (a class: cheaper
    per request than a generator-based one)."""

    __slots__ = ("_conn", "_db")

    def __init__(self, db: Database) -> None:
        self._db = db

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._db._acquire()
        return self._conn

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        conn, self._conn = self._conn, None
        # A query interrupted by cancellation (a client gone, or a timeout of
        # ours: asyncio.timeout and wait_for raise TimeoutError) may still be
        # running on the server: never hand that connection to another request.
        interrupted = isinstance(exc, (asyncio.CancelledError, TimeoutError))
        # A standby's session stays one: the next request opens a connection
        # through the proxy again, which finds the leader.
        on_a_standby = isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError)
        self._db._release(conn, reusable=not (interrupted or on_a_standby))
        if exc is None:
            return False
        if isinstance(exc, asyncpg.QueryCanceledError):  # class 57 like OperatorIntervention
            raise timed_out() from None
        if isinstance(exc, UNAVAILABLE_ERRORS):
            raise unavailable() from None
        return False


async def connect(settings: Settings) -> asyncpg.Connection:
    """A single connection for CLI commands."""
    return await asyncpg.connect(
        settings.require_database_url(),
        timeout=CONNECT_TIMEOUT_S,
        server_settings=server_settings(settings),
    )
