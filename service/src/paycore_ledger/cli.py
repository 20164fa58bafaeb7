"""The `paycore-ledger` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from . import __version__, config, logs

EXIT_USAGE = 2

log = logging.getLogger("paycore.cli")


class CommandError(Exception):
    """Fails the command with one line on stderr."""


# Commands that connect as the admin role (PAYCORE_ADMIN_DATABASE_URL[_FILE],
# else PAYCORE_DATABASE_URL[_FILE]); `webhooks deliver` runs as the runtime role.
ADMIN_COMMANDS = ("merchants", "payments", "reconcile", "idempotency", "webhooks")
ADMIN_CREDENTIALS_HINT = (
    "this command needs the admin role's credentials: set PAYCORE_ADMIN_DATABASE_URL_FILE"
    " (on a ledger host: sudo paycore-ledger-admin ...)"
)


def is_admin_command(args: argparse.Namespace) -> bool:
    return args.command in ADMIN_COMMANDS and getattr(args, "action", None) != "deliver"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paycore-ledger", description="PayCore ledger service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    migrate = sub.add_parser("migrate", help="create or upgrade the schema (safe to re-run)")
    migrate.add_argument(
        "--app-role", help="grant the runtime role its least privileges (or PAYCORE_APP_ROLE)"
    )
    migrate.add_argument(
        "--admin-role", help="grant the admin role its least privileges (or PAYCORE_ADMIN_ROLE)"
    )

    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument(
        "--host", action="append", help="listen address; repeat or comma-separate for several"
    )
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="worker processes (default: CPU count)")

    merchants = sub.add_parser("merchants", help="merchant and API key administration")
    msub = merchants.add_subparsers(dest="action", required=True)
    create = msub.add_parser("create", help="create a merchant; prints its new API key once")
    create.add_argument("--name", required=True)
    ensure = msub.add_parser(
        "ensure", help="idempotently create a merchant and register the API key read from stdin"
    )
    ensure.add_argument("--name", required=True)
    revoke = msub.add_parser("revoke-key", help="revoke an API key by id, or the key on stdin")
    group = revoke.add_mutually_exclusive_group(required=True)
    group.add_argument("key_id", nargs="?")
    group.add_argument("--stdin", action="store_true", help="read the key itself from stdin")
    msub.add_parser("list", help="list merchants and their key ids")
    limit = msub.add_parser(
        "rate-limit",
        help="show or set a merchant's rate limit (default: PAYCORE_RATE_LIMIT_*)",
    )
    which = limit.add_mutually_exclusive_group(required=True)
    which.add_argument("--merchant-id")
    which.add_argument("--name")
    limit.add_argument("--per-second", type=int, help="sustained requests per second")
    limit.add_argument("--burst", type=int, help="requests at once (the bucket's size)")
    limit.add_argument(
        "--default", action="store_true", help="drop the override: the service's defaults apply"
    )

    payments = sub.add_parser("payments", help="operator decisions on payments under review")
    psub = payments.add_subparsers(dest="action", required=True)
    for action in ("approve", "reject"):
        p = psub.add_parser(action, help=f"{action} a payment in requires_review")
        p.add_argument("payment_id")

    reconcile = sub.add_parser("reconcile", help="prove the ledger is consistent")
    reconcile.add_argument("--textfile", help="also write node-exporter textfile metrics here")

    hooks = sub.add_parser("webhooks", help="webhook endpoints and their delivery worker")
    hsub = hooks.add_subparsers(dest="action", required=True)
    hcreate = hsub.add_parser(
        "create", help="register a merchant's endpoint; prints its signing secret once"
    )
    hcreate.add_argument("--merchant-id", required=True)
    hcreate.add_argument("--url", required=True)
    hcreate.add_argument("--description")
    hlist = hsub.add_parser("list", help="a merchant's endpoints")
    hlist.add_argument("--merchant-id", required=True)
    hdelete = hsub.add_parser("delete", help="delete an endpoint (pending deliveries dropped)")
    hdelete.add_argument("--merchant-id", required=True)
    hdelete.add_argument("endpoint_id")
    deliver = hsub.add_parser("deliver", help="run the delivery worker (until SIGTERM)")
    deliver.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: none)"
    )
    deliver.add_argument("--metrics-host", default="127.0.0.1")

    idem = sub.add_parser("idempotency", help="idempotency key maintenance")
    isub = idem.add_subparsers(dest="action", required=True)
    isub.add_parser("purge", help="delete keys older than the retention")
    return parser


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def _with_conn(settings: config.Settings, fn: Callable[[Any], Awaitable[int]]) -> int:
    from .db import UNAVAILABLE_ERRORS, connect

    try:
        conn = await connect(settings)
    except UNAVAILABLE_ERRORS as exc:
        raise CommandError(f"cannot connect to the database: {_reason(exc)}") from None
    except Exception as exc:
        raise CommandError(f"cannot connect to the database: {_reason(exc)}") from None
    try:
        return await fn(conn)
    finally:
        await conn.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_stdin_key() -> str:
    key = sys.stdin.readline().strip()
    if not key:
        raise CommandError("expected the API key on stdin")
    return key


def _run(args: argparse.Namespace, settings: config.Settings) -> int:
    from . import idempotency, ledger, merchants, migrations, reconcile

    if args.command == "migrate":
        role = args.app_role or settings.app_role
        admin_role = args.admin_role or settings.admin_role

        async def do_migrate(conn) -> int:
            applied = await migrations.migrate(conn, role, settings.currencies, admin_role)
            _print({"applied": applied, "app_role": role, "admin_role": admin_role})
            return 0

        return asyncio.run(_with_conn(settings, do_migrate))

    if args.command == "merchants":

        async def do_merchants(conn) -> int:
            if args.action == "create":
                _print(await merchants.create(conn, args.name))
            elif args.action == "ensure":
                _print(await merchants.ensure(conn, args.name, key))
            elif args.action == "rate-limit":
                _print(
                    await merchants.rate_limit(
                        conn,
                        merchants.MerchantRef(args.merchant_id, args.name),
                        per_second=args.per_second,
                        burst=args.burst,
                        default=args.default,
                    )
                )
            elif args.action == "revoke-key":
                _print(
                    await merchants.revoke_key(
                        conn, key_id=args.key_id, key=key if args.stdin else None
                    )
                )
            else:
                for item in await merchants.list_all(conn):
                    _print(item)
            return 0

        key = ""
        if args.action == "ensure" or (args.action == "revoke-key" and args.stdin):
            key = _read_stdin_key()
        return asyncio.run(_with_conn(settings, do_merchants))

    if args.command == "payments":

        async def do_decide(conn) -> int:
            payment = await ledger.decide_payment(conn, args.payment_id, args.action == "approve")
            _print(payment)
            return 0

        return asyncio.run(_with_conn(settings, do_decide))

    if args.command == "reconcile":

        async def do_reconcile(conn) -> int:
            report = await reconcile.run(conn, timeout_ms=settings.reconcile_timeout_ms)
            if args.textfile:
                _write_reconcile_textfile(args.textfile, report)
            _print(report)
            if not report["ok"]:
                sys.stderr.write(f"reconcile: {report['problems']} problem(s) found\n")
            return 0 if report["ok"] else 1

        try:
            return asyncio.run(_with_conn(settings, do_reconcile))
        except CommandError:
            if args.textfile:
                _write_reconcile_textfile(args.textfile, None)
            raise

    if args.command == "webhooks":
        return _webhooks(args, settings)

    if args.command == "idempotency":

        async def do_purge(conn) -> int:
            deleted = await idempotency.purge(conn, settings.idempotency_retention_hours)
            _print({"deleted": deleted, "retention_hours": settings.idempotency_retention_hours})
            return 0

        return asyncio.run(_with_conn(settings, do_purge))

    raise CommandError(f"unknown command {args.command}")


def _webhooks(args: argparse.Namespace, settings: config.Settings) -> int:
    from .webhooks import delivery, registration
    from .webhooks.addresses import RefusedUrl

    if args.action == "deliver":
        if not 0 <= args.metrics_port <= 65535:
            raise CommandError(f"--metrics-port {args.metrics_port} is out of range")
        # Its metrics stay in this process (its own port), never in the
        # service's multiprocess directory (the same environment file sets it).
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return delivery.run_forever(settings, args.metrics_port, args.metrics_host)

    async def do_webhooks(conn) -> int:
        if args.action == "create":
            try:
                created = await registration.register(
                    conn,
                    args.merchant_id,
                    args.url,
                    args.description,
                    settings.webhook_allow_http,
                    settings.webhook_allowed_networks,
                )
            except RefusedUrl as exc:
                raise CommandError(f"url refused: {exc}") from None
            except registration.TooManyEndpoints as exc:
                raise CommandError(str(exc)) from None
            _print(created)
        elif args.action == "list":
            for item in await registration.list_for(conn, args.merchant_id):
                _print(item)
        elif not await registration.delete(conn, args.merchant_id, args.endpoint_id):
            raise CommandError(f"no webhook endpoint {args.endpoint_id} of that merchant")
        else:
            _print({"id": args.endpoint_id, "deleted": True})
        return 0

    return asyncio.run(_with_conn(settings, do_webhooks))


def _write_reconcile_textfile(path: str, report: dict[str, Any] | None) -> None:
    from . import reconcile

    try:
        reconcile.write_textfile(path, report)
    except OSError as exc:
        raise CommandError(f"cannot write the textfile metric {path}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = config.load()
        if args.command == "serve":
            overrides: dict[str, Any] = {}
            if args.host:
                overrides["hosts"] = config.split_hosts(args.host)
            if args.port is not None:
                if not 0 <= args.port <= 65535:
                    raise config.ConfigError(f"--port {args.port} is out of range")
                overrides["port"] = args.port
            if args.workers is not None:
                if not 1 <= args.workers <= 256:
                    raise config.ConfigError(f"--workers {args.workers} is out of range [1, 256]")
                overrides["workers"] = args.workers
            if overrides:
                settings = config.Settings(**{**settings.__dict__, **overrides})
            settings.require_database_url()
        elif is_admin_command(args):
            settings = settings.as_admin()
        else:
            settings.require_database_url()
    except config.ConfigError as exc:
        sys.stderr.write(f"paycore-ledger: configuration error: {exc}\n")
        return EXIT_USAGE
    # The service logs to stdout (journald); other commands keep stdout for
    # their JSON result and log to stderr.
    logs.setup(settings.log_level, None if args.command == "serve" else sys.stderr)
    try:
        if args.command == "serve":
            from .server import serve

            return serve(settings)
        return _run(args, settings)
    except config.ConfigError as exc:
        sys.stderr.write(f"paycore-ledger: configuration error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        import asyncpg

        from .ledger import ReviewError
        from .merchants import MerchantError
        from .migrations import MigrationError

        known = CommandError | ReviewError | MerchantError | MigrationError | asyncpg.PostgresError
        if not isinstance(exc, known):
            log.exception("command failed")
        message = _reason(exc) if not isinstance(exc, CommandError) else str(exc)
        if isinstance(exc, asyncpg.InsufficientPrivilegeError) and is_admin_command(args):
            message = f"{message}; {ADMIN_CREDENTIALS_HINT}"
        sys.stderr.write(f"paycore-ledger: {message}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
