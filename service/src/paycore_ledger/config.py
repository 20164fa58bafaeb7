"""Settings from PAYCORE_* environment variables, validated once at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_CURRENCIES = ("NGN", "USD", "EUR", "GBP")
DEFAULT_REVIEW_THRESHOLD = 10_000_000
MIN_IDEMPOTENCY_RETENTION_HOURS = 24
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_POST_BATCH_MAX = 64
DEFAULT_POST_BATCH_WINDOW_US = 200
# Per-merchant rate limit (ratelimit.py): what payment APIs give a live
# merchant, and two seconds of it at once.
DEFAULT_RATE_LIMIT_PER_SECOND = 100
DEFAULT_RATE_LIMIT_BURST = 200
MAX_RATE_LIMIT = 1_000_000
DEFAULT_WEBHOOK_RETRY_HOURS = 72  # also the minimum: retries last at least 3 days
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line for stderr."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 8080
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    currencies: tuple[str, ...] = DEFAULT_CURRENCIES
    review_thresholds: dict[str, int] = field(default_factory=dict)
    default_review_threshold: int = DEFAULT_REVIEW_THRESHOLD
    idempotency_retention_hours: int = MIN_IDEMPOTENCY_RETENTION_HOURS
    log_level: str = "INFO"
    db_pool_min: int = 1
    db_pool_max: int = 10
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 30000
    reconcile_timeout_ms: int = 3_600_000
    shutdown_timeout_s: float = 30.0
    app_role: str | None = None
    admin_role: str | None = None
    # The admin role's URL (PAYCORE_ADMIN_DATABASE_URL[_FILE]): the CLI's
    # admin commands connect with it when set (cli.ADMIN_COMMANDS).
    admin_database_url: str | None = None
    # Group commit of payments (batching.py): at most this many per call and
    # commit (1: one call and one commit per request) ...
    post_batch_max: int = DEFAULT_POST_BATCH_MAX
    # ... and at most this long a request waits for others to join its batch.
    post_batch_window_us: int = DEFAULT_POST_BATCH_WINDOW_US
    # Per-merchant budget shared by every ledger process (ratelimit.py);
    # a merchant's override (`merchants rate-limit`) takes precedence.
    rate_limit_per_second: int = DEFAULT_RATE_LIMIT_PER_SECOND
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST
    # Webhooks (webhooks/). http:// endpoint URLs: for tests and development only.
    webhook_allow_http: bool = False
    # Non-public networks whose addresses endpoints may resolve to anyway
    # (tests and development only: loopback receivers); every other
    # loopback, private, link-local, tunnel or reserved address is refused.
    webhook_allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # A delivery is retried, with exponential backoff, for at least this long.
    webhook_retry_seconds: int = DEFAULT_WEBHOOK_RETRY_HOURS * 3600
    webhook_retry_base_seconds: float = 30.0  # first retry after 15-30 s
    webhook_retry_cap_seconds: float = 6 * 3600.0  # at most 6 h between attempts
    webhook_timeout_seconds: float = 10.0
    # A claimed delivery is due again after this long (its worker died).
    webhook_lease_seconds: float = 60.0

    def review_threshold(self, currency: str) -> int:
        return self.review_thresholds.get(currency, self.default_review_threshold)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError("PAYCORE_DATABASE_URL (or PAYCORE_DATABASE_URL_FILE) is not set")
        return self.database_url

    def as_admin(self) -> Settings:
        """These settings with the admin URL, or the only URL there is (the
        owner's in development, a superuser's in the restore check)."""
        url = self.admin_database_url or self.database_url
        if not url:
            raise ConfigError(
                "PAYCORE_ADMIN_DATABASE_URL or PAYCORE_DATABASE_URL (or their _FILE) is not set"
            )
        return replace(self, database_url=url)


def _int(env: dict[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name}={value} is out of range [{minimum}, {maximum}]")
    return value


def _database_url(env: dict[str, str], name: str = "PAYCORE_DATABASE_URL") -> str | None:
    url = env.get(name, "").strip()
    path = env.get(f"{name}_FILE", "").strip()
    if url and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            url = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
        if not url:
            raise ConfigError(f"{name}_FILE: {path} is empty")
    if url:
        check_database_url(url, f"{name}_FILE" if path else name)
    return url or None


_HOST_RE = re.compile(r"[A-Za-z0-9._-]+")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")


def check_database_url(url: str, what: str = "PAYCORE_DATABASE_URL") -> None:
    """Validate a libpq URL fully (host list, ports, database name, known options).

    Messages never repeat the URL or its parts: it may hold a password.
    """
    if not url.startswith(("postgres://", "postgresql://")):
        raise ConfigError(f"{what}: the database URL must start with postgresql:// or postgres://")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"{what} is not a valid URL ({exc})") from None
    if parts.fragment:
        raise ConfigError(f"{what} must not have a #fragment")
    hosts = parts.netloc.rpartition("@")[2]
    for spec in hosts.split(",") if hosts else []:
        if spec.startswith("["):
            address, bracket, rest = spec[1:].partition("]")
            if not bracket or not address or (rest and not rest.startswith(":")):
                raise ConfigError(f"{what} has a malformed [IPv6] host")
            port = rest[1:] if rest else ""
        else:
            host, _, port = spec.partition(":")
            host = unquote(host)
            if host and not (host.startswith("/") or _HOST_RE.fullmatch(host)):
                raise ConfigError(f"{what} has an invalid host name")
        _check_port(what, port)
    path = parts.path
    if path not in ("", "/") and ("/" in path[1:] or not unquote(path[1:]).strip()):
        raise ConfigError(f"{what} has an invalid database name (one path segment after the host)")
    try:
        options = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"{what} has a malformed ?query") from None
    for name, value in options:
        if name == "port":
            for item in value.split(","):
                _check_port(what, item, required=True)
        elif name == "host" and not value:
            raise ConfigError(f"{what} has an empty host= option")
        elif name == "sslmode" and value not in _SSLMODES:
            raise ConfigError(f"{what}: sslmode must be one of {', '.join(_SSLMODES)}")
        elif name == "target_session_attrs" and value not in _SESSION_ATTRS:
            raise ConfigError(
                f"{what}: target_session_attrs must be one of {', '.join(_SESSION_ATTRS)}"
            )
        elif name == "connect_timeout" and not _PORT_RE.fullmatch(value):
            raise ConfigError(f"{what}: connect_timeout must be a whole number of seconds")


def _check_port(what: str, port: str, required: bool = False) -> None:
    if not port and not required:
        return
    if not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{what} has an invalid port (a number from 1 to 65535 is expected)")


def _currencies(env: dict[str, str]) -> tuple[str, ...]:
    raw = env.get("PAYCORE_CURRENCIES", "").strip()
    if not raw:
        return DEFAULT_CURRENCIES
    codes = tuple(dict.fromkeys(c.strip() for c in raw.split(",") if c.strip()))
    for code in codes:
        if not _CURRENCY_RE.match(code):
            raise ConfigError(f"PAYCORE_CURRENCIES: {code!r} is not an upper-case ISO 4217 code")
    if not codes:
        raise ConfigError("PAYCORE_CURRENCIES is empty")
    return codes


def _thresholds(env: dict[str, str], currencies: tuple[str, ...]) -> dict[str, int]:
    raw = env.get("PAYCORE_REVIEW_THRESHOLDS", "").strip()
    result: dict[str, int] = {}
    if not raw:
        return result
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        code, sep, value = item.partition("=")
        code = code.strip()
        if not sep or code not in currencies:
            raise ConfigError(
                f"PAYCORE_REVIEW_THRESHOLDS: {item!r} must be CURRENCY=AMOUNT"
                " with a configured currency"
            )
        try:
            amount = int(value.strip())
        except ValueError:
            raise ConfigError(
                f"PAYCORE_REVIEW_THRESHOLDS: {item!r} amount is not an integer"
            ) from None
        if amount < 1:
            raise ConfigError(f"PAYCORE_REVIEW_THRESHOLDS: {item!r} amount must be positive")
        result[code] = amount
    return result


def _hosts(env: dict[str, str]) -> tuple[str, ...]:
    raw = env.get("PAYCORE_HOST", "").strip()
    if not raw:
        return ("127.0.0.1",)
    return split_hosts([raw])


def split_hosts(values: list[str]) -> tuple[str, ...]:
    hosts = tuple(dict.fromkeys(h.strip() for v in values for h in v.split(",") if h.strip()))
    if not hosts:
        raise ConfigError("no listen host given")
    return hosts


def _networks(env: dict[str, str], name: str) -> tuple:
    raw = env.get(name, "").strip()
    networks = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not an address or CIDR network") from None
    return tuple(networks)


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def load(env: dict[str, str] | None = None) -> Settings:
    """Read settings; raises ConfigError with a one-line message."""
    env = dict(os.environ if env is None else env)
    currencies = _currencies(env)
    log_level = env.get("PAYCORE_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"PAYCORE_LOG_LEVEL={log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    pool_min = _int(env, "PAYCORE_DB_POOL_MIN", 1, 0, 1000)
    pool_max = _int(env, "PAYCORE_DB_POOL_MAX", 10, 1, 1000)
    if pool_min > pool_max:
        raise ConfigError(f"PAYCORE_DB_POOL_MIN={pool_min} exceeds PAYCORE_DB_POOL_MAX={pool_max}")
    app_role = env.get("PAYCORE_APP_ROLE", "").strip() or None
    admin_role = env.get("PAYCORE_ADMIN_ROLE", "").strip() or None
    webhook_timeout = _int(env, "PAYCORE_WEBHOOK_TIMEOUT_SECONDS", 10, 1, 60)
    webhook_lease = _int(env, "PAYCORE_WEBHOOK_LEASE_SECONDS", 60, 2, 3600)
    if webhook_lease <= webhook_timeout:
        raise ConfigError(
            f"PAYCORE_WEBHOOK_LEASE_SECONDS={webhook_lease} must exceed"
            f" PAYCORE_WEBHOOK_TIMEOUT_SECONDS={webhook_timeout}"
        )
    return Settings(
        database_url=_database_url(env),
        admin_database_url=_database_url(env, "PAYCORE_ADMIN_DATABASE_URL"),
        hosts=_hosts(env),
        port=_int(env, "PAYCORE_PORT", 8080, 0, 65535),
        workers=_int(env, "PAYCORE_WORKERS", os.cpu_count() or 1, 1, 256),
        currencies=currencies,
        review_thresholds=_thresholds(env, currencies),
        default_review_threshold=_int(
            env, "PAYCORE_REVIEW_THRESHOLD_DEFAULT", DEFAULT_REVIEW_THRESHOLD, 1, 10**15
        ),
        idempotency_retention_hours=_int(
            env,
            "PAYCORE_IDEMPOTENCY_RETENTION_HOURS",
            MIN_IDEMPOTENCY_RETENTION_HOURS,
            MIN_IDEMPOTENCY_RETENTION_HOURS,
            24 * 365,
        ),
        log_level=log_level,
        db_pool_min=pool_min,
        db_pool_max=pool_max,
        lock_timeout_ms=_int(env, "PAYCORE_LOCK_TIMEOUT_MS", 5000, 100, 600_000),
        statement_timeout_ms=_int(env, "PAYCORE_STATEMENT_TIMEOUT_MS", 30_000, 100, 3_600_000),
        reconcile_timeout_ms=_int(env, "PAYCORE_RECONCILE_TIMEOUT_MS", 3_600_000, 1000, 86_400_000),
        shutdown_timeout_s=float(_int(env, "PAYCORE_SHUTDOWN_TIMEOUT", 30, 1, 3600)),
        app_role=app_role,
        admin_role=admin_role,
        post_batch_max=_int(env, "PAYCORE_POST_BATCH_MAX", DEFAULT_POST_BATCH_MAX, 1, 1000),
        post_batch_window_us=_int(
            env, "PAYCORE_POST_BATCH_WINDOW_US", DEFAULT_POST_BATCH_WINDOW_US, 0, 100_000
        ),
        rate_limit_per_second=_int(
            env,
            "PAYCORE_RATE_LIMIT_PER_SECOND",
            DEFAULT_RATE_LIMIT_PER_SECOND,
            1,
            MAX_RATE_LIMIT,
        ),
        rate_limit_burst=_int(
            env, "PAYCORE_RATE_LIMIT_BURST", DEFAULT_RATE_LIMIT_BURST, 1, MAX_RATE_LIMIT
        ),
        webhook_allow_http=_flag(env, "PAYCORE_WEBHOOK_ALLOW_HTTP"),
        webhook_allowed_networks=_networks(env, "PAYCORE_WEBHOOK_ALLOWED_NETWORKS"),
        webhook_timeout_seconds=float(webhook_timeout),
        webhook_lease_seconds=float(webhook_lease),
        webhook_retry_seconds=3600
        * _int(
            env,
            "PAYCORE_WEBHOOK_RETRY_HOURS",
            DEFAULT_WEBHOOK_RETRY_HOURS,
            DEFAULT_WEBHOOK_RETRY_HOURS,
            24 * 30,
        ),
    )
