"""Versioned SQL migrations, applied under an advisory lock, plus runtime grants."""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from . import ledger

# Any constant works; it only has to be the same for every host running migrate.
ADVISORY_LOCK_KEY = 0x5041_59C0_4E1E_D6E2 - (1 << 63)
LOCK_POLL_SECONDS = 0.2
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# First line of a migration that must run outside a transaction (the online-safe
# pattern: CREATE INDEX CONCURRENTLY, which a transaction block refuses).
NO_TRANSACTION = "-- paycore: no transaction"
_CONCURRENT_INDEX_RE = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE,
)

# Least privileges of the runtime role (the HTTP service and the webhook
# delivery worker): no UPDATE/DELETE on the journal, no UPDATE on accounts
# (balances change only through the entries trigger) and no INSERT of its
# balance column (accounts open at 0; sql/0005 also enforces that for every
# role), no DDL, and nothing only the admin commands need (ADMIN_GRANTS).
# Each statement is idempotent.
RUNTIME_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON schema_migrations TO {role}",
    # Earlier releases let it create merchants and keys and record reconcile
    # runs; a table-level REVOKE also revokes the column grants.
    "REVOKE INSERT ON merchants FROM {role}",
    "GRANT SELECT ON merchants TO {role}",
    "REVOKE INSERT, UPDATE ON api_keys FROM {role}",
    "GRANT SELECT ON api_keys TO {role}",
    "GRANT SELECT ON accounts TO {role}",
    # A table-level INSERT (granted by earlier releases) covers every column:
    # revoke it (this also revokes column grants), then grant the columns.
    "REVOKE INSERT ON accounts FROM {role}",
    "GRANT INSERT (id, kind, merchant_id, currency, shard) ON accounts TO {role}",
    "GRANT SELECT, INSERT ON journal_transactions TO {role}",
    "GRANT SELECT, INSERT ON entries TO {role}",
    # Refunds only; approving or rejecting a payment under review is the admin's.
    "REVOKE UPDATE ON payments FROM {role}",
    "GRANT SELECT, INSERT ON payments TO {role}",
    "GRANT UPDATE (amount_refunded, updated_at) ON payments TO {role}",
    "GRANT SELECT, INSERT ON refunds TO {role}",
    "GRANT SELECT, INSERT ON payouts TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {role}",
    # Read for /metrics; reconcile (the admin's) records the runs.
    "REVOKE INSERT ON reconcile_runs FROM {role}",
    "GRANT SELECT ON reconcile_runs TO {role}",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "GRANT EXECUTE ON FUNCTION ledger_lock_accounts(text[]) TO {role}",
    # The rate limit state only; the overrides (per_second, burst) are the admin's.
    "GRANT SELECT, UPDATE (tat_us, last_granted) ON merchant_rate_limits TO {role}",
    # Events are written only by the triggers of sql/0011 (as the owner).
    "GRANT SELECT ON events TO {role}",
    "GRANT SELECT, INSERT, DELETE ON webhook_endpoints TO {role}",
    "GRANT UPDATE (consecutive_failures, last_success_at, last_failure_at)"
    " ON webhook_endpoints TO {role}",
    "GRANT SELECT ON webhook_deliveries TO {role}",
    "GRANT UPDATE (state, attempts, next_attempt_at, finished_at) ON webhook_deliveries TO {role}",
    "GRANT SELECT, INSERT ON webhook_attempts TO {role}",
    "GRANT SELECT ON public_id_key TO {role}",
)

# Least privileges of the admin role (the CLI's merchants, payments,
# reconcile, idempotency purge and webhooks create|list|delete): exactly
# what those commands write and read, no DDL. Each statement is idempotent.
ADMIN_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON schema_migrations TO {role}",
    # merchants create|ensure|list|revoke-key (the rate limit row of a new
    # merchant is inserted by a SECURITY DEFINER trigger).
    "GRANT SELECT, INSERT ON merchants TO {role}",
    "GRANT SELECT, INSERT ON api_keys TO {role}",
    "GRANT UPDATE (revoked_at) ON api_keys TO {role}",
    # merchants rate-limit: the overrides, not the service's state.
    "GRANT SELECT, UPDATE (per_second, burst) ON merchant_rate_limits TO {role}",
    # payments approve (posts the journal transaction) and reject.
    "GRANT SELECT ON accounts TO {role}",
    "GRANT SELECT, INSERT ON journal_transactions TO {role}",
    "GRANT SELECT, INSERT ON entries TO {role}",
    "GRANT SELECT, UPDATE (status, transaction_id, updated_at) ON payments TO {role}",
    # reconcile reads these (and the above) and records its run.
    "GRANT SELECT ON refunds, payouts TO {role}",
    "GRANT SELECT, INSERT ON reconcile_runs TO {role}",
    # idempotency purge
    "GRANT SELECT, DELETE ON idempotency_keys TO {role}",
    # webhooks create|list|delete (a delete cascades as the owner).
    "GRANT SELECT, INSERT, DELETE ON webhook_endpoints TO {role}",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
)


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION)

    def statements(self) -> list[str]:
        """A no-transaction migration's statements, one per `;` at a line end
        (such a migration holds plain statements only, no function bodies)."""
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        parts = re.split(r";\s*$", "\n".join(lines), flags=re.MULTILINE)
        return [part.strip() for part in parts if part.strip()]

    def concurrent_indexes(self) -> list[str]:
        return _CONCURRENT_INDEX_RE.findall(self.sql)


def available() -> list[Migration]:
    found = []
    for item in resources.files("paycore_ledger.sql").iterdir():
        match = _FILE_RE.match(item.name)
        if match:
            found.append(Migration(int(match[1]), match[2], item.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("duplicate migration versions in the package")
    return found


async def migrate(
    conn: asyncpg.Connection,
    app_role: str | None = None,
    currencies: tuple[str, ...] | list[str] = (),
    admin_role: str | None = None,
) -> list[int]:
    """Apply pending migrations; returns the versions applied. Safe to run concurrently.

    Afterwards every system account shard (ledger.SYSTEM_SHARDS per currency)
    exists for each of `currencies` (the configured set) and each currency
    already in the ledger, so no posting can pick a shard that is missing.
    """
    await _take_lock(conn)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    int PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done = []
        for migration in available():
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed"
                        " after it was applied"
                    )
                continue
            if migration.transactional:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await _record(conn, migration)
            else:
                await _apply_without_transaction(conn, migration)
                await _record(conn, migration)
            done.append(migration.version)
        await ensure_all_system_accounts(conn, currencies)
        if app_role:
            await grant_runtime(conn, app_role)
        if admin_role:
            await grant_admin(conn, admin_role)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)


async def _take_lock(conn: asyncpg.Connection) -> None:
    """The migration lock, polled rather than waited for: a session blocked in
    pg_advisory_lock holds a snapshot for the whole wait, and CREATE INDEX
    CONCURRENTLY in the session holding the lock waits for every older
    snapshot to go: a deadlock (PostgreSQL aborts one of the two). A
    pg_try_advisory_lock statement ends at once, so it never holds one long."""
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_LOCK_KEY):
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def _record(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        migration.version,
        migration.name,
        migration.checksum,
    )


async def _apply_without_transaction(conn: asyncpg.Connection, migration: Migration) -> None:
    """Each statement alone (autocommit), so writers are never blocked for long.
    Re-runnable after an interruption: its statements are written to be
    idempotent (IF NOT EXISTS / IF EXISTS), and an index that an interrupted
    CREATE INDEX CONCURRENTLY left invalid (which IF NOT EXISTS would keep) is
    dropped first, concurrently, to be built again."""
    # Building an index over millions of rows outlasts any request's
    # statement_timeout; the writers it must not block are never blocked.
    await conn.execute("SET statement_timeout = 0")
    try:
        for name in migration.concurrent_indexes():
            invalid = await conn.fetchval(
                "SELECT true FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace"
                " AND NOT i.indisvalid",
                name,
            )
            if invalid:
                quoted = await conn.fetchval("SELECT quote_ident($1)", name)
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quoted}")
        for statement in migration.statements():
            await conn.execute(statement)
    finally:
        await conn.execute("RESET statement_timeout")


async def ensure_all_system_accounts(
    conn: asyncpg.Connection, currencies: tuple[str, ...] | list[str] = ()
) -> int:
    """Create missing system shards for `currencies` and every currency in use;
    returns how many were created."""
    in_use = await conn.fetch("SELECT DISTINCT currency FROM accounts")
    created = 0
    for currency in sorted({*currencies, *(r["currency"] for r in in_use)}):
        created += await ledger.ensure_system_accounts(conn, currency)
    return created


async def grant_runtime(conn: asyncpg.Connection, role: str) -> None:
    await _grant(conn, role, RUNTIME_GRANTS, "application")


async def grant_admin(conn: asyncpg.Connection, role: str) -> None:
    await _grant(conn, role, ADMIN_GRANTS, "admin")


async def _grant(conn: asyncpg.Connection, role: str, grants: tuple[str, ...], what: str) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        raise MigrationError(f"{what} role {role!r} does not exist")
    quoted = await conn.fetchval("SELECT quote_ident($1)", role)
    async with conn.transaction():
        for statement in grants:
            await conn.execute(statement.format(role=quoted))


async def pending(conn: asyncpg.Connection) -> list[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [m.version for m in available() if m.version not in applied]
