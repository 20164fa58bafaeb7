#!/usr/bin/env bash
# Every linter the project holds itself to; any finding fails.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> yamllint";     yamllint --strict .
echo "==> ansible-lint"; ansible-lint --strict -q
echo "==> ruff";         ruff check . && ruff format --check .
