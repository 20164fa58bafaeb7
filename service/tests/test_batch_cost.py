"""bench/batch_cost.py compares a SQL variant with the migrated functions only if
it puts the migrated ones back before each of their rounds."""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from batch_cost import replaced_functions

VARIANT = """
CREATE OR REPLACE FUNCTION ledger_new_event_id() RETURNS text
LANGUAGE sql VOLATILE AS $$ SELECT 'evt_variant' $$;
"""
DEFINITION = "SELECT pg_get_functiondef('ledger_new_event_id()'::regprocedure)"


class RolledBack(Exception):
    pass


async def test_the_definitions_read_before_a_variant_put_the_migrated_function_back(
    owner_conn: asyncpg.Connection,
):
    migrated = await owner_conn.fetchval(DEFINITION)
    restore = await replaced_functions(owner_conn, VARIANT)
    # In a transaction rolled back at the end: the shared test database keeps its function.
    with pytest.raises(RolledBack):
        async with owner_conn.transaction():
            await owner_conn.execute(VARIANT)
            assert await owner_conn.fetchval("SELECT ledger_new_event_id()") == "evt_variant"
            await owner_conn.execute(restore)
            assert await owner_conn.fetchval(DEFINITION) == migrated
            assert await owner_conn.fetchval("SELECT ledger_new_event_id()") != "evt_variant"
            raise RolledBack
    assert await owner_conn.fetchval(DEFINITION) == migrated


async def test_a_variant_that_replaces_no_function_is_refused(owner_conn: asyncpg.Connection):
    with pytest.raises(SystemExit, match="replaces no function"):
        await replaced_functions(owner_conn, "SELECT 1;")
