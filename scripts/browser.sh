#!/usr/bin/env bash
# Idempotent installer for the browser review test (tests/review):
#   1. Debian's chromium (apt), if no chromium binary is on PATH;
#   2. the Playwright Python driver in the project venv (PyPI), if missing.
# We never run `playwright install`: it downloads browsers from a CDN that is unreachable
# here. Playwright drives the Debian binary via launch(executable_path=...).
# Usage: scripts/browser.sh            (VENV=.venv by default; run as root or with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PLAYWRIGHT_PIN="${PLAYWRIGHT_PIN:-playwright==1.65.2}"

chromium_bin() { command -v chromium || command -v chromium-browser || true; }

if [ -z "$(chromium_bin)" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
BIN="$(chromium_bin)"
[ -n "$BIN" ] || { echo "chromium not found after install" >&2; exit 1; }
echo "chromium: $BIN ($("$BIN" --version 2>/dev/null | head -1))"

if ! "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
    "$VENV/bin/pip" install --progress-bar off "$PLAYWRIGHT_PIN"
fi
echo "playwright: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))')"
