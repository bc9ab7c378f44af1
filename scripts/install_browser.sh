#!/usr/bin/env bash
# Set-up for the browser test (tests/service/test_browser.py): Debian's chromium package and the
# playwright Python package, which drives it. Playwright never downloads a browser of its own
# here: the test launches /usr/bin/chromium. Without these the test is skipped and says why.
#
#   bash scripts/install_browser.sh && pytest tests/service/test_browser.py
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip install -c constraints.txt 'playwright>=1.40'
chromium --version
python -c "import playwright.sync_api; print('playwright ready')"
