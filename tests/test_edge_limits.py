"""The edge's per-address limits are an abuse guard, not the merchants' limit.

Merchants' rate limits are the ledger's own (per API key, shared by every
ledger host; service/README.md). The edge's nginx.conf, rendered from the role
for the gateway of each inventory as site.yml would (test_contract.Site),
must keep a per-address guard far above a merchant's default budget, cap the
requests in progress per address, and time out slow clients; a change of the
role's variables must move the rendered file. `nginx -t` checks the file at
converge time (the role's `validate:`; molecule/edge)."""

from __future__ import annotations

import re

from test_contract import Site, sources  # noqa: F401  (the inventories fixture)

# The ledger's default per-merchant budget (service config.py).
MERCHANT_DEFAULT_PER_SECOND = 100


def rendered(site: Site) -> str:
    gateway = site.group("gateway")[0]
    return site.render("edge", gateway, "nginx.conf.j2")


def directive(conf: str, pattern: str) -> re.Match:
    match = re.search(pattern, conf, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in the rendered nginx.conf"
    return match


def test_the_per_address_guard_does_not_bind_a_merchant(sources):  # noqa: F811
    conf = rendered(Site(sources))
    rate = int(directive(conf, r"^\s*limit_req_zone \$binary_remote_addr .* rate=(\d+)r/s;")[1])
    burst = int(directive(conf, r"^\s*limit_req zone=paycore_per_client burst=(\d+) nodelay;")[1])
    # Several merchants at their default budget behind one address still pass.
    assert rate >= 4 * MERCHANT_DEFAULT_PER_SECOND
    assert burst >= 2 * MERCHANT_DEFAULT_PER_SECOND
    directive(conf, r"^\s*limit_conn_zone \$binary_remote_addr zone=paycore_conn_per_client:")
    assert int(directive(conf, r"^\s*limit_conn paycore_conn_per_client (\d+);")[1]) >= 16
    directive(conf, r"^\s*limit_conn_status 429;")
    directive(conf, r"^\s*client_header_timeout \d+s;")
    directive(conf, r"^\s*client_body_timeout \d+s;")


def test_the_limits_follow_the_role_variables(sources):  # noqa: F811
    site = Site(
        sources,
        extra_vars={
            "edge_rate_limit": "321r/s",
            "edge_rate_limit_burst": 654,
            "edge_conn_limit": 77,
            "edge_client_header_timeout": "7s",
            "edge_client_body_timeout": "9s",
        },
    )
    conf = rendered(site)
    directive(conf, r"rate=321r/s;")
    directive(conf, r"burst=654 nodelay;")
    directive(conf, r"^\s*limit_conn paycore_conn_per_client 77;")
    directive(conf, r"^\s*client_header_timeout 7s;")
    directive(conf, r"^\s*client_body_timeout 9s;")
