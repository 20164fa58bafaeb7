"""Group commit: many money-moving requests, one call and one commit.

Each worker collects the payment requests that arrive close together and sends
them to PostgreSQL as one `ledger_pay_batch` call (sql/0008): one round trip,
one transaction, one WAL flush for all of them, each item with its own answer.
Refunds and payouts likewise go together through `ledger_debit_batch`, in a
batcher of their own (payment_call.py and debit_call.py say how to call and
answer each kind).
A batch leaves when it holds `max_items` requests, or `window` after its first
request arrived, but never while the worker's previous batch is still
running: requests arriving meanwhile wait for the next batch, which leaves
as soon as the previous one returns, before its requests are answered. So
under load batches grow by themselves, and a lone request waits one window at most
(uvloop's timers have millisecond resolution: a window under 500 µs means
"at the next turn of the event loop", after the requests already received).
A payment batch of one goes through `ledger_pay` exactly as without batching.

Failure isolation: the batch is one transaction, so it commits whole or not at
all. A business outcome (unknown key, missing account, replay, reused key) is
an item's own answer and never fails the batch. An item whose key another
request still holds ('busy'), or whose key vanished, runs again alone on the
path used without batching (which waits for that other request).
If the batch statement itself fails for anything but a transient cause
(a value PostgreSQL refuses, a missing shard, ...), nothing of it was applied
and every item runs again alone, so only the faulty item fails.
Transient causes (database unreachable, statement or lock timeout) answer every
item as they would answer a single request; deadlocks are retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .db import UNAVAILABLE_ERRORS, Database
from .idempotency import MAX_ATTEMPTS, RETRYABLE, Answer
from .problems import Problem

# One batch in flight per worker and kind (each worker process has its own,
# so with N workers N payment batches run at once): the next batch forms
# while the previous one executes and waits for its commit. Measured
# (service/README.md), two per worker made batches smaller and cost more CPU
# per payment.
MAX_IN_FLIGHT = 1

# Answered to every item of the batch, as to a single request.
_TRANSIENT = (
    Problem,  # 503 from the pool: unavailable, timed out
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
    *UNAVAILABLE_ERRORS,
)

_Item = tuple[Any, asyncio.Future]


class Batcher:
    """One worker's group commit for one kind of request.

    call(conn, requests) -> one result per request, from one statement;
    answer_for(request, result) -> the answer, or None to run the request alone;
    run_alone(conn, request) -> the answer on the path used without batching.
    """

    def __init__(
        self,
        db: Database,
        max_items: int,
        window_s: float,
        *,
        call: Callable[[asyncpg.Connection, list], Awaitable[list]],
        answer_for: Callable[[Any, Any], Answer | None],
        run_alone: Callable[[asyncpg.Connection, Any], Awaitable[Answer]],
    ) -> None:
        self._call = call
        self._answer_for = answer_for
        self._run_alone = run_alone
        self._db = db
        self._max = max_items
        self._window = window_s
        self._pending: list[_Item] = []
        self._due = False  # the first pending request has waited its window
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()

    async def answer(self, req: Any) -> Answer:
        """The answer the request would get alone, via a batch."""
        result = await self._submit(req)
        if result is not None:
            answer = self._answer_for(req, result)
            if answer is not None:
                return answer
        async with self._db.connection() as conn:
            return await self._run_alone(conn, req)

    def _submit(self, req: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((req, future))
        if len(self._pending) >= self._max:
            self._dispatch()
        elif self._timer is None and not self._due:
            self._timer = loop.call_later(self._window, self._window_over)
        return future

    def _window_over(self) -> None:
        self._timer = None
        self._due = True
        self._dispatch()

    def _dispatch(self) -> None:
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            if not self._due and len(self._pending) < self._max:
                return
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._pending:
            self._due = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def _run(self, batch: list[_Item]) -> None:
        results: list | None = None
        error: BaseException | None = None
        try:
            try:
                results = await self._post([req for req, _ in batch])
            except _TRANSIENT as exc:
                error = exc
            except Exception as exc:
                if len(batch) == 1:
                    error = exc  # the request's own error, as without batching
                else:
                    results = [None] * len(batch)  # each on its own
        finally:
            self._in_flight -= 1
            # The next batch leaves before this one's requests are answered:
            # their handlers and responses keep the event loop busy for longer
            # than PostgreSQL needs to start on the next batch, which would
            # otherwise wait for all of them (service/README.md, benchmark).
            self._dispatch()
        _settle(batch, results=results, exc=error)

    async def _post(self, reqs: list) -> list:
        async with self._db.connection() as conn:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    return await self._call(conn, reqs)
                except RETRYABLE:
                    if attempt == MAX_ATTEMPTS:
                        raise
        raise AssertionError("unreachable")


def _settle(
    batch: list[_Item],
    *,
    results: list | None = None,
    exc: BaseException | None = None,
) -> None:
    for i, (_, future) in enumerate(batch):
        if future.done():  # the request was cancelled (client gone)
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(results[i])
